"""The README's CIFAR-10 commands: the :cpu config, then report.py on its workdir.

The epochs are cut to a few steps (the real recipe takes over an hour); the
data, the model, the preprocessing and every stage are the recipe's own.
Skipped where the shared CIFAR-10 records are absent.
"""

import json
import os

import pytest
from conftest import REPO, run_script

DATA = os.path.join(REPO, "..", "shared", "data", "cifar10")

pytestmark = pytest.mark.skipif(
    not os.path.isdir(DATA), reason="../shared/data/cifar10 (the shared records) is absent"
)


def _experiment(script: str, *args: str, timeout: int):
    """Runs experiments/SCRIPT with ARGS in a fresh process from the repository root."""
    return run_script(f"experiments/{script}", *args, timeout=timeout)


def test_cifar10_cpu_recipe_and_its_report(tmp_path):
    workdir = tmp_path / "cifar10_4k_cpu"
    proc = _experiment(
        "noisy_student.py",
        "--config=experiments/configs/cifar10_4k.py:cpu",
        f"--workdir={workdir}",
        "--config.num_iterations=1",
        "--config.train.teacher_epochs=1",
        "--config.train.student_epochs=1",
        "--config.train.steps_per_epoch=2",
        "--config.pseudo.threshold=0.0",  # a 2-step teacher is not confident yet
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
    teacher = results["models"][0]
    # The cifar10-4k protocol: 46,000 unlabeled records, 4,000 kept per class at most.
    assert teacher["kept"] + teacher["dropped"] == 46000
    assert results["config"]["teacher"]["width_coefficient"] == 0.5
    assert "4000 labeled" in proc.stdout

    out = tmp_path / "img"
    report = _experiment("report.py", f"--runs=cpu={workdir}", f"--output_dir={out}", timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"| cpu | teacher | {100 * teacher['test_top1']:.2f}% |" in report.stdout
    for name in ("accuracy.png", "confidence_histogram.png", "images_per_class.png"):
        assert (out / name).exists(), name
