"""tools/evaluate.py in a fresh process, on the loop's SavedModel and records we wrote."""

import json
import os

import pytest
from conftest import run_script

from noisy_student_tf.data import ingest, schema
from noisy_student_tf.data.sources import load_digits


@pytest.fixture(scope="module")
def digits_records(tmp_path_factory):
    """The digits test split as source shards, written by the project's writer."""
    folder = str(tmp_path_factory.mktemp("digits_test"))
    data = load_digits(5, 36, 32, 0)
    items = (
        (schema.encode_png(image), int(label), f"test/{i}".encode())
        for i, (image, label) in enumerate(zip(data.test_images, data.test_labels))
    )
    ingest.write_source_shards(items, folder, 2, "test", [str(c) for c in range(10)])
    return folder


def _evaluate(*args):
    return run_script("tools/evaluate.py", *args)


def test_tool_reports_a_loop_saved_model_against_itself(smoke_workdir, digits_records, tmp_path):
    model = os.path.join(smoke_workdir, "saved_model")
    out = tmp_path / "eval"
    proc = _evaluate(
        f"--model={model},{model}",
        "--names=student,again",
        f"--baseline={model}",
        f"--data={digits_records}",
        f"--output_dir={out}",
        "--max_examples=16",
        "--corruptions=gaussian_noise,contrast,motion_blur",
        "--severities=1,5",
        "--frames=3",
        "--eps=2,8",
        "--pgd_steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for key in ("top1", "top5", "ece", "corruption", "mce", "flip_rate", "mfr", "fgsm", "pgd"):
        assert key in report, key
    assert report["settings"]["num_examples"] == 16
    assert report["settings"]["class_names"] == [str(c) for c in range(10)]
    assert set(report["corruption"]) == {"gaussian_noise", "contrast", "motion_blur"}
    assert all(set(v) == {"1", "5"} for v in report["corruption"].values())
    assert set(report["fgsm"]) == set(report["pgd"]) == {"2", "8"}
    assert set(report["flip_rate"]) == {"translate", "brightness"}
    values = [report["top1"], report["top5"], report["ece"], *report["fgsm"].values()]
    values += [a for c in report["corruption"].values() for a in c.values()]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert report["top5"] >= report["top1"]
    assert sum(map(sum, report["confusion_matrix"])) == 16
    assert len(report["per_class_accuracy"]) == 10
    # One model twice and as baseline: identical numbers, mCE exactly 100 (defined:
    # the baseline made errors on the corrupted images).
    first, second = report["models"]
    assert first["corruption"] == second["corruption"] == report["baseline"]["corruption"]
    assert min(a for c in report["baseline"]["corruption"].values() for a in c.values()) < 1.0
    assert report["mce"] == pytest.approx(100.0)
    assert [m["name"] for m in report["models"]] == ["student", "again"]
    assert "student" in proc.stdout and "FGSM@2" in proc.stdout  # the table
    for name in ("robustness.png", "0_student_reliability.png", "1_again_confusion.png"):
        assert (out / name).stat().st_size > 1000, name


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=/nonexistent/saved_model", "--data=DATA"], "--model='/nonexistent/saved_model'"),
        (["--model=MODEL", "--data=/nonexistent/shards"], "--data='/nonexistent/shards'"),
        (["--model=MODEL", "--data=tfds:cifar10"], "expected tfds:NAME:SPLIT"),
        (["--model=MODEL", "--data=DATA", "--corruptions=rain"], "unknown corruption"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(
    smoke_workdir, digits_records, tmp_path, args, expected
):
    model = os.path.join(smoke_workdir, "saved_model")
    args = [a.replace("MODEL", model).replace("DATA", digits_records) for a in args]
    proc = _evaluate(*args, f"--output_dir={tmp_path}", "--max_examples=4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
