"""The benchmarks' shared timing rule, and the benchmarks themselves in --quick mode."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import rounds  # noqa: E402


def test_alternate_calls_every_candidate_once_per_round_in_turn():
    calls = []
    times = rounds.alternate(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=2
    )
    assert calls == ["a", "b"] * 5
    assert [len(times["a"]), len(times["b"])] == [3, 3]
    assert all(t >= 0 for t in times["a"] + times["b"])


def test_ratio_pairs_rounds_and_reports_median_and_quartiles():
    # Round 2 is slow for both (load): per-round ratios stay 0.5, a ratio of
    # unpaired medians would not.
    summary = rounds.ratio([1.0, 10.0, 1.0, 1.0], [2.0, 20.0, 2.0, 2.0])
    assert summary == {"median": 0.5, "q1": 0.5, "q3": 0.5, "rounds": 4}
    assert rounds.spread([1, 2, 3, 4, 5]) == {"median": 3.0, "q1": 2.0, "q3": 4.0}
    with pytest.raises(ValueError, match="rounds differ"):
        rounds.ratio([1.0], [1.0, 2.0])


def test_keras_applications_comparison_runs_quick():
    proc = subprocess.run(
        [sys.executable, "benchmarks/keras_applications.py", "--quick", "--batch_size=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Same architecture on both sides, so the timings compare like with like.
    assert result["32px"]["params"]["ours"] == result["32px"]["params"]["keras"]
    for key in ("forward_ratio", "train_ratio"):
        ratio = result["32px"][key]
        assert ratio["rounds"] == 3 and 0 < ratio["q1"] <= ratio["median"] <= ratio["q3"]
    assert len(result["load_average_before"]) == 3


def test_train_records_comparison_runs_quick():
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_records.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size"] == 224 and result["batch_size"] == 4
    ratio = result["ratio_new_over_old"]
    assert ratio["rounds"] == 3 and 0 < ratio["q1"] <= ratio["median"] <= ratio["q3"]
    assert set(result["ms_per_batch"]) == {"old", "new"}
