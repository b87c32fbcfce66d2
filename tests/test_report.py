"""experiments/report.py on a workdir the loop wrote, in a fresh process."""

import json
import os
import sys

import numpy as np
from conftest import REPO, run_script

SCRIPT = os.path.join(REPO, "experiments", "report.py")


def _report(*args):
    return run_script("experiments/report.py", *args, timeout=300)


def test_report_tables_and_plots_from_a_smoke_run(smoke_workdir, tmp_path):
    out = tmp_path / "img"
    proc = _report(
        f"--runs=main={smoke_workdir},again={smoke_workdir}",
        f"--seed_runs={smoke_workdir},{smoke_workdir}",
        f"--output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(smoke_workdir, "results.json")) as f:
        rows = json.load(f)["models"]
    teacher = rows[0]
    # One table row per model per run, with the loop's own figures.
    line = f"| main | teacher | {100 * teacher['test_top1']:.2f}% |"
    assert line in proc.stdout
    assert sum(r.startswith("| again |") for r in proc.stdout.splitlines()) == len(rows)
    # Two identical seed runs: spread 0, mean = the value.
    assert f"| teacher | 2 | {100 * teacher['test_top1']:.2f}% | 0.00 |" in proc.stdout
    # and each student's gain over its own seed's teacher, in points.
    gain = 100 * rows[1]["test_top1"] - 100 * teacher["test_top1"]
    assert f"| student 1 - teacher | 2 | {gain:+.2f} points | 0.00 |" in proc.stdout
    for name in ("accuracy.png", "confidence_histogram.png", "images_per_class.png"):
        assert (out / name).stat().st_size > 1000, name


def test_pool_manifest_counts_match_the_stored_probabilities(smoke_workdir):
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import report
    finally:
        sys.path.pop(0)
    manifest = report.pool_manifest(smoke_workdir, 0)
    from noisy_student_tf.loop import data_modes

    probs = data_modes.read_pool_labels(data_modes.pool_labels_path(smoke_workdir, 0))["probs"]
    assert manifest["in"] == len(probs)
    assert sum(manifest["confidence_histogram"]["counts"]) == len(probs)
    assert sum(p["total"] for p in manifest["per_class"]) == len(probs)
    totals = np.bincount(probs.argmax(-1), minlength=probs.shape[1])
    assert [p["total"] for p in manifest["per_class"]] == totals.tolist()


def test_missing_run_is_one_error_line(tmp_path):
    proc = _report(f"--runs=x={tmp_path}/nope")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --runs:")


def test_the_loop_writes_a_robustness_report_of_every_model(smoke_workdir):
    with open(os.path.join(smoke_workdir, "results.json")) as f:
        results = json.load(f)
    robustness = results["robustness"]
    assert list(robustness) == ["teacher", "student 1"]
    # The teacher is the baseline: its mCE is 100 by definition.
    assert robustness["teacher"]["mce"] == 100.0
    for name, row in robustness.items():
        assert set(row["fgsm"]) == {"2"}, name  # digits.py:smoke's eps
    with open(os.path.join(smoke_workdir, "robustness", "report.json")) as f:
        report = json.load(f)
    assert [m["name"] for m in report["models"]] == ["teacher", "student 1"]
    assert set(report["models"][0]["corruption"]) == {"gaussian_noise", "fog"}
