"""The iterative loop and the main job: bad input fails before training,
and a smoke run writes every promised output."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DIGITS_SMOKE, copy_workdir, one_error_line, run_script
from conftest import tiny_loop_config as _tiny_config
from conftest import tiny_loop_data as _tiny_data

from noisy_student_tf import loop
from noisy_student_tf.loop import config_checks
from noisy_student_tf.training import trainer


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("pseudo.unlabeled_ratio", 0, "unlabeled_ratio"),
        ("pseudo.threshold", 1.2, "threshold"),
        ("pseudo.threshold", -0.1, "threshold"),
        ("student.randaugment_magnitude", 31, "randaugment_magnitude"),
    ],
)
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


def test_smaller_student_is_an_error_unless_allowed(tmp_path, rng, tiny_teacher_workdir):
    config = _tiny_config()
    config.student.width_coefficient = 0.05
    with pytest.raises(ValueError, match="smaller than its teacher"):
        loop.run(config, str(tmp_path), _tiny_data(rng))
    assert not os.path.exists(tmp_path / "iteration_0_teacher.keras")
    # Allowed, the run goes through (its teacher, trained once, is reused).
    config.allow_smaller_student = True
    config.num_iterations = 0
    workdir = copy_workdir(tiny_teacher_workdir, tmp_path / "allowed")
    results = loop.run(config, workdir, _tiny_data(np.random.default_rng(0)))
    assert [r["role"] for r in results["models"]] == ["teacher"]


def test_loop_runs_teacher_and_students_and_writes_outputs(tmp_path, rng, tiny_teacher_workdir):
    config = _tiny_config()
    config.num_iterations = 2
    # The session's teacher (same config and data) is reused; two students train.
    copy_workdir(tiny_teacher_workdir, tmp_path)
    results = loop.run(config, str(tmp_path), _tiny_data(np.random.default_rng(0)))
    rows = results["models"]
    assert [(r["role"], r["iteration"]) for r in rows] == [
        ("teacher", 0),
        ("student", 1),
        ("student", 2),
    ]
    data = _tiny_data(np.random.default_rng(0))
    import keras

    for r in rows:
        # The reported figures are those of the saved model on the test split
        # and on the pool (whose true labels are known here).
        saved = keras.models.load_model(tmp_path / f"iteration_{r['iteration']}_{r['role']}.keras")
        logits = saved.predict(data.test_images, verbose=0)
        assert r["test_top1"] == pytest.approx(np.mean(logits.argmax(1) == data.test_labels))
        pool = saved.predict(data.unlabeled_images, verbose=0).argmax(1)
        assert r["pseudo_label_accuracy"] == pytest.approx(np.mean(pool == data.unlabeled_labels))
        assert r["dropped"] >= r["dropped_below_threshold"]
    manifest = json.loads((tmp_path / "iteration_0_selection.json").read_text())
    assert (
        manifest["kept_unique"]
        + manifest["dropped_below_threshold"]
        + manifest["dropped_over_quota"]
        == manifest["in"]
        == 30
    )
    for name in (
        "results.json",
        "accuracy.png",
        "config.json",
        "iteration_2_student.keras",
        "iteration_0_selection.json",
        "saved_model/saved_model.pb",
    ):
        assert os.path.exists(tmp_path / name), name
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["models"] == rows and on_disk["config"]["seed"] == config.seed
    # The SavedModel gives the same logits as the final model file.
    import keras

    from noisy_student_tf.evaluation import load_saved_model

    final = keras.models.load_model(tmp_path / "iteration_2_student.keras")
    x = rng.integers(0, 256, (5, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(
        load_saved_model(str(tmp_path / "saved_model"))(x), final.predict(x, verbose=0), atol=1e-5
    )


def _main(*args):
    return run_script("experiments/noisy_student.py", *args)


def _event_tags(folder):
    """Scalar tags written by keras.callbacks.TensorBoard under `folder`."""
    import tensorflow as tf

    tags = set()
    for path in tf.io.gfile.glob(os.path.join(folder, "*", "events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_main_job_smoke_prints_table_progress_and_writes_results(smoke_run, tmp_path):
    # The session's smoke run of the main job (conftest: verbose, 10 teacher steps).
    workdir, stdout = smoke_run
    workdir = Path(workdir)
    assert "test top-1" in stdout and "student 1" in stdout
    results = json.loads((workdir / "results.json").read_text())
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
    # A few progress lines per model over its whole schedule, ending at 100%.
    teacher_lines = [line for line in stdout.splitlines() if "teacher step" in line]
    assert 2 <= len(teacher_lines) <= 20
    assert "teacher step 10/10 (100%)" in teacher_lines[-1]
    assert "labeled_loss" in teacher_lines[-1] and " lr " in teacher_lines[-1]
    assert any("student 1 step 4/4 (100%)" in line for line in stdout.splitlines())
    # TensorBoard: one run per model, with the loss terms, accuracy and LR.
    for run in ("iteration_0_teacher", "iteration_1_student"):
        tags = _event_tags(str(workdir / "tensorboard" / run))
        assert {"epoch_loss", "epoch_labeled_loss", "epoch_accuracy"} <= tags, tags
        assert "epoch_learning_rate" in tags, tags
    assert "epoch_unlabeled_loss" in _event_tags(
        str(workdir / "tensorboard" / "iteration_1_student")
    )
    # The README's --config.teacher_checkpoint, on the teacher this run wrote (no
    # student: its training is the run above's; the loaded teacher is what is checked).
    proc = _main(
        DIGITS_SMOKE,
        f"--config.teacher_checkpoint={workdir / 'iteration_0_teacher.keras'}",
        "--config.num_iterations=0",
        f"--workdir={tmp_path / 'from_teacher'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reused = json.loads((tmp_path / "from_teacher" / "results.json").read_text())["models"][0]
    assert reused["architecture"] == "loaded iteration_0_teacher.keras"
    assert reused["test_top1"] == results["models"][0]["test_top1"]


_one_error_line = one_error_line


def test_main_job_reports_bad_input_in_one_line_with_status_2(tmp_path):
    line = _one_error_line(_main("--config.pseudo.threshold=1.5", f"--workdir={tmp_path}"))
    assert line == "error: pseudo.threshold must be in [0, 1], got 1.5"
    assert "no_such_key" in _one_error_line(
        _main("--config.train.no_such_key=1", f"--workdir={tmp_path}")
    )
    line = _one_error_line(
        _main(
            "--config.data.source=tfrecord",
            "--config.data.path=/nonexistent/cifar",
            f"--workdir={tmp_path}",
        )
    )
    assert "/nonexistent/cifar" in line
    # A folder given without its source would otherwise train on the digits.
    line = _one_error_line(_main("--config.data.path=/data/mine", f"--workdir={tmp_path}"))
    assert "data.path='/data/mine'" in line and "data.source=tfrecord" in line
    # Keras would otherwise drop XLA quietly under op determinism.
    line = _one_error_line(
        _main("--config.deterministic=True", "--config.jit_compile=True", f"--workdir={tmp_path}")
    )
    assert "deterministic=True cannot run XLA-compiled steps" in line
    assert not os.path.exists(tmp_path / "iteration_0_teacher.keras")


def test_batch_must_divide_over_the_replicas():
    config = _tiny_config()
    config.train.batch_size = 25
    config_checks.validate_config(config, num_replicas=1)
    config_checks.validate_config(config, num_replicas=5)
    with pytest.raises(ValueError, match="train.batch_size=25 .* 2 replicas.* 24 or 26"):
        config_checks.validate_config(config, num_replicas=2)
    with pytest.raises(ValueError, match="multiple of 8"):
        config_checks.validate_config(config, num_replicas=8)


def _check_selection(images, teacher, config):
    """The student's pool images are the exact-balance selection, recomputed here in
    numpy from the teacher's softmax: per predicted class, the K most confident pool
    images at or above the threshold, each class K times (the pool's random pixels
    are unique, so an image names its pool index)."""
    pool = _tiny_data(np.random.default_rng(0)).unlabeled_images
    logits = teacher.predict(pool.astype(np.float32), verbose=0)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    k, expected = config.pseudo.images_per_class, set()
    for c in np.unique(probs.argmax(1)):
        candidates = [i for i in np.argsort(-probs.max(1)) if probs[i].argmax() == c]
        expected |= {i for i in candidates[:k] if probs[i].max() >= config.pseudo.threshold}
    index = {image.tobytes(): i for i, image in enumerate(pool)}
    picked = [index[np.asarray(image, np.uint8).tobytes()] for image in images]
    assert set(picked) == expected
    assert set(np.bincount(probs[picked].argmax(1))) - {0} == {k}


def test_online_student_is_taught_by_the_previous_model(
    tmp_path, monkeypatch, tiny_teacher_workdir
):
    built, streams, sources = [], [], []

    class Recording(trainer.NoisyStudent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    real_dataset = trainer.pipeline.training_dataset

    def recording_dataset(*args, **kwargs):
        ds = real_dataset(*args, **kwargs)
        streams.append(ds)
        sources.append(args[2] if len(args) > 2 else kwargs.get("unlabeled"))
        return ds

    monkeypatch.setattr(trainer, "NoisyStudent", Recording)
    monkeypatch.setattr(trainer.pipeline, "training_dataset", recording_dataset)
    config = _tiny_config()
    config.pseudo.online = True
    config.pseudo.temperature = 2.0
    # The session's teacher is reused: pseudo.* is not one of its settings.
    copy_workdir(tiny_teacher_workdir, tmp_path)
    results = loop.run(config, str(tmp_path), _tiny_data(np.random.default_rng(0)))
    # The online mode trains a student from the teacher's selection.
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
    (student_run,) = built  # the teacher was reused, not trained again
    assert student_run.teacher is not None and student_run.temperature == 2.0
    # The frozen teacher inside the student's step is the saved iteration-0 model.
    import keras

    saved = keras.models.load_model(tmp_path / "iteration_0_teacher.keras")
    _check_selection(sources[0], saved, config)  # online: the selected images alone
    x = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(
        student_run.teacher.predict(x, verbose=0), saved.predict(x, verbose=0), atol=1e-5
    )
    # Its batches carry clean copies for the teacher and no stored targets.
    batch = next(iter(streams[0]))
    assert "unlabeled_teacher_images" in batch and "unlabeled_targets" not in batch


@pytest.mark.parametrize("kind,via_records", [("keras", False), ("saved_model", True)])
def test_a_loaded_teacher_gives_hard_pseudo_labels_smoothed(
    tmp_path, monkeypatch, tiny_teacher_workdir, kind, via_records
):
    """A teacher checkpoint (`.keras`, or the SavedModel with `via_records`)
    labels the pool; hard labels are its argmax with label smoothing.

    The checkpoint is the session's teacher-only run (conftest), on the same
    data: the loaded teacher must reproduce its figures untouched. One loop
    per mode also covers the via_records stages (the online mode's are
    checked with the online student).
    """
    unlabeled_streams = []
    real_dataset = trainer.pipeline.training_dataset

    def recording_dataset(labeled, batch_size, unlabeled=None, *args, **kwargs):
        if unlabeled is not None:
            unlabeled_streams.append(unlabeled)
        return real_dataset(labeled, batch_size, unlabeled, *args, **kwargs)

    monkeypatch.setattr(trainer.pipeline, "training_dataset", recording_dataset)
    first = Path(tiny_teacher_workdir)
    config = _tiny_config()
    config.teacher_checkpoint = str(
        first / ("iteration_0_teacher.keras" if kind == "keras" else "saved_model")
    )
    config.train.teacher_epochs = 10_000  # would take minutes if the teacher were trained
    config.pseudo.soft = False
    config.pseudo.via_records = via_records
    config.train.label_smoothing = 0.1
    results = loop.run(config, str(tmp_path), _tiny_data(np.random.default_rng(0)))
    teacher, student = results["models"]
    before = json.loads((first / "results.json").read_text())["models"][0]
    assert teacher["architecture"].startswith("loaded ") and student["role"] == "student"
    assert teacher["test_top1"] == before["test_top1"]
    assert teacher["pseudo_label_accuracy"] == before["pseudo_label_accuracy"]
    assert teacher["kept"] == before["kept"]
    if via_records:
        # The tools' library code wrote each stage with its manifest, and the
        # Beam output holds exactly what the in-memory rule selects.
        manifest = json.loads((tmp_path / "iteration_0_pseudo" / "manifest.json").read_text())
        selection = json.loads((tmp_path / "iteration_0_selection.json").read_text())
        assert manifest["out_records"] == selection["out_records"]
        assert (tmp_path / "pool" / "manifest.json").exists()
        assert (tmp_path / "iteration_0_labeled" / "manifest.json").exists()
    (stream,) = unlabeled_streams
    if via_records:
        records = stream.eval_view().as_numpy_iterator()  # a RecordStream, read by one host
        images, targets = (np.stack(part) for part in zip(*records))
    else:
        images, targets = stream
    classes, eps = 3, 0.1
    selection = json.loads((tmp_path / "iteration_0_selection.json").read_text())
    assert len(targets) == selection["out_records"] > 0
    # Smoothed one-hot, exactly like real labels (official main.py).
    np.testing.assert_allclose(np.sort(targets, 1)[:, -1], 1 - eps + eps / classes, atol=1e-6)
    np.testing.assert_allclose(np.sort(targets, 1)[:, :-1], eps / classes, atol=1e-6)
    import keras

    loaded = keras.models.load_model(first / "iteration_0_teacher.keras")
    predicted = loaded.predict(images.astype(np.float32), verbose=0).argmax(1)
    np.testing.assert_array_equal(targets.argmax(1), predicted)
    _check_selection(images, loaded, config)


def test_missing_teacher_checkpoint_fails_before_training(tmp_path):
    config = _tiny_config()
    config.teacher_checkpoint = str(tmp_path / "nope.keras")
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        loop.run(config, str(tmp_path), _tiny_data(np.random.default_rng(0)))
    assert not os.path.exists(tmp_path / "iteration_0_teacher.keras")
