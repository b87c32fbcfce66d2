"""The iterative loop and the main job: bad input fails before training,
and a smoke run writes every promised output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from noisy_student_tf.data.sources import SemiSupervisedData
from noisy_student_tf.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "configs"))
import digits  # noqa: E402


def _tiny_config():
    config = digits.get_config("smoke")
    for block in (config.teacher, config.student):
        block.width_coefficient, block.depth_coefficient = 0.1, 0.1
    config.train.batch_size = 4
    config.pseudo.unlabeled_ratio = 2
    config.pseudo.images_per_class = 3
    return config


def _tiny_data(rng, size=16, classes=3):
    def images(n):
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    return SemiSupervisedData(images(12), np.arange(12) % classes, images(30),
                              np.arange(30) % classes, images(9), np.arange(9) % classes,
                              num_classes=classes)


@pytest.mark.parametrize("key,value,match", [
    ("pseudo.unlabeled_ratio", 0, "unlabeled_ratio"),
    ("pseudo.threshold", 1.2, "threshold"),
    ("pseudo.threshold", -0.1, "threshold"),
    ("student.randaugment_magnitude", 31, "randaugment_magnitude"),
])
def test_bad_settings_fail_before_training(tmp_path, rng, key, value, match):
    config = _tiny_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
        loop.run(config, str(tmp_path), _tiny_data(rng))
    assert not os.path.exists(tmp_path / "iteration_0_teacher.keras")


def test_online_and_via_records_are_exclusive(tmp_path, rng):
    config = _tiny_config()
    config.pseudo.online = config.pseudo.via_records = True
    with pytest.raises(ValueError, match="exclusive"):
        loop.run(config, str(tmp_path), _tiny_data(rng))


def test_smaller_student_is_an_error_unless_allowed(tmp_path, rng):
    config = _tiny_config()
    config.student.width_coefficient = 0.05
    with pytest.raises(ValueError, match="smaller than its teacher"):
        loop.run(config, str(tmp_path), _tiny_data(rng))
    assert not os.path.exists(tmp_path / "iteration_0_teacher.keras")
    config.allow_smaller_student = True
    config.num_iterations = 0
    results = loop.run(config, str(tmp_path), _tiny_data(rng))
    assert [r["role"] for r in results["models"]] == ["teacher"]


def test_loop_runs_teacher_and_students_and_writes_outputs(tmp_path, rng):
    config = _tiny_config()
    config.num_iterations = 2
    results = loop.run(config, str(tmp_path), _tiny_data(rng))
    rows = results["models"]
    assert [(r["role"], r["iteration"]) for r in rows] == [
        ("teacher", 0), ("student", 1), ("student", 2)]
    for r in rows:
        assert 0 <= r["test_top1"] <= 1 and 0 <= r["pseudo_label_accuracy"] <= 1
        assert r["dropped"] >= r["dropped_below_threshold"]
    manifest = json.loads((tmp_path / "iteration_0_selection.json").read_text())
    assert manifest["kept_unique"] + manifest["dropped_below_threshold"] + \
        manifest["dropped_over_quota"] == manifest["in"] == 30
    for name in ("results.json", "accuracy.png", "config.json", "iteration_2_student.keras",
                 "iteration_0_selection.json", "saved_model/saved_model.pb"):
        assert os.path.exists(tmp_path / name), name
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["models"] == rows and on_disk["config"]["seed"] == config.seed
    # The SavedModel gives the same logits as the final model file.
    import keras

    from noisy_student_tf.evaluation import load_saved_model
    final = keras.models.load_model(tmp_path / "iteration_2_student.keras")
    x = rng.integers(0, 256, (5, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(load_saved_model(str(tmp_path / "saved_model"))(x),
                               final.predict(x, verbose=0), atol=1e-5)


def _main(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "noisy_student.py"),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_main_job_smoke_prints_table_and_writes_results(tmp_path):
    proc = _main("--config=experiments/configs/digits.py:smoke", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test top-1" in proc.stdout and "student 1" in proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]


def test_main_job_rejects_unknown_config_key_and_missing_data(tmp_path):
    proc = _main("--config.train.no_such_key=1", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "no_such_key" in proc.stderr
    proc = _main("--config.data.source=tfrecord", "--config.data.path=/nonexistent/cifar",
                 f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "/nonexistent/cifar" in proc.stderr
    assert not os.path.exists(tmp_path / "iteration_0_teacher.keras")


@pytest.mark.parametrize("mode", ["online", "via_records"])
def test_student_modes_train_from_the_same_selection(tmp_path, rng, mode):
    config = _tiny_config()
    config.pseudo[mode] = True
    results = loop.run(config, str(tmp_path), _tiny_data(rng))
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
    if mode == "via_records":
        # The tools' library code wrote each stage with its manifest, and the
        # Beam output holds exactly what the in-memory rule selects.
        import json as _json
        manifest = _json.loads((tmp_path / "iteration_0_pseudo" / "manifest.json").read_text())
        selection = _json.loads((tmp_path / "iteration_0_selection.json").read_text())
        assert manifest["out_records"] == selection["out_records"]
        assert (tmp_path / "pool" / "manifest.json").exists()
        assert (tmp_path / "iteration_0_labeled" / "manifest.json").exists()
