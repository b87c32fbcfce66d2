"""The loop's data seam (loop/data_modes.py): each pool labeled once per model, the
reported selection is the one the student trains on, and a remote workdir resumes."""

import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf import configs, labeling, loop
from noisy_student_tf.data import pipeline, records, schema
from noisy_student_tf.data.sources import SemiSupervisedData
from noisy_student_tf.labeling import shards
from noisy_student_tf.loop import data_modes
from noisy_student_tf.training import trainer

POOL = 30


def _tiny_config():
    config = configs.get("digits:smoke")
    for block in (config.teacher, config.student):
        block.width_coefficient, block.depth_coefficient = 0.1, 0.1
    config.train.batch_size = 4
    config.pseudo.unlabeled_ratio = 2
    config.pseudo.images_per_class = 7  # 3 classes: some kept once, some duplicated
    return config


def _tiny_data(size=16, classes=3):
    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    return SemiSupervisedData(
        images(12),
        np.arange(12) % classes,
        images(POOL),
        np.arange(POOL) % classes,
        images(9),
        np.arange(9) % classes,
        num_classes=classes,
    )


def _keys(files):
    keys = []
    for raw in tf.data.TFRecordDataset(files):
        keys.append(schema.parse_source(raw)[schema.KEY].numpy())
    return keys


def test_via_records_labels_each_pool_once_and_trains_on_the_reported_selection(
    tmp_path, monkeypatch
):
    seen = []  # images through every labeling forward pass (shards and in memory)
    real_make_predict, real_predict = shards.make_predict, labeling.predict_probabilities

    def counting_make_predict(*args, **kwargs):
        predict = real_make_predict(*args, **kwargs)

        def counted(images):
            seen.append(len(images))
            return predict(images)

        return counted

    def counting_predict(model, images, *args, **kwargs):
        seen.append(len(images))
        return real_predict(model, images, *args, **kwargs)

    student_files = []
    real_records = pipeline.pseudo_labeled_stream

    def recording_records(files, *args, **kwargs):
        student_files.append(list(files))
        return real_records(files, *args, **kwargs)

    monkeypatch.setattr(shards, "make_predict", counting_make_predict)
    monkeypatch.setattr(labeling, "predict_probabilities", counting_predict)
    monkeypatch.setattr(pipeline, "pseudo_labeled_stream", recording_records)
    config = _tiny_config()
    config.pseudo.via_records = True
    results = loop.run(config, str(tmp_path), _tiny_data())

    models = len(results["models"])
    assert models == 2
    # derived_settings probes the teacher with one blank image per labeling job.
    assert sum(seen) - models == POOL * models
    # The student streamed exactly what filter_and_balance selects from the
    # stored labels of the teacher's labeling.
    (files,) = student_files
    stored = data_modes.read_pool_labels(data_modes.pool_labels_path(str(tmp_path), 0))
    np.testing.assert_array_equal(stored["label"], np.arange(POOL) % 3)  # true labels carried
    selection = labeling.filter_and_balance(
        stored["probs"],
        config.pseudo.threshold,
        config.pseudo.images_per_class,
        seed=config.seed,
        balance=config.pseudo.balance,
        keys=list(stored["key"]),
    )
    assert len(selection.indices) > 0
    assert sorted(_keys(files)) == sorted(stored["key"][selection.indices].tolist())
    # and the teacher's row describes that selection.
    teacher = results["models"][0]
    assert teacher["kept"] == selection.num_kept_unique
    assert teacher["dropped"] == POOL - selection.num_kept_unique
    predicted = stored["probs"].argmax(1)
    assert teacher["pseudo_label_accuracy"] == pytest.approx(np.mean(predicted == stored["label"]))


def test_a_remote_workdir_resumes_every_stage_and_writes_nothing_locally(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    workdir = f"ram://seam_{uuid.uuid4().hex[:8]}"
    config = _tiny_config()
    first = loop.run(config, workdir, _tiny_data())
    for name in ("config.json", "results.json", "accuracy.png", "iteration_0_selection.json"):
        assert tf.io.gfile.exists(f"{workdir}/{name}"), name
    assert tf.io.gfile.exists(data_modes.pool_labels_path(workdir, 0))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(trainer, "train_one", no_training)
    capsys.readouterr()
    second = loop.run(config, workdir, _tiny_data())
    out = capsys.readouterr().out
    assert "teacher reused" in out and "student 1 reused" in out
    assert [r["test_top1"] for r in second["models"]] == [r["test_top1"] for r in first["models"]]
    assert records.read_json(f"{workdir}/results.json")["models"] == second["models"]
    assert not os.path.exists(tmp_path / "ram:")
    assert os.listdir(tmp_path) == []


def test_a_non_chief_worker_gets_the_same_scratch_folder_on_every_run():
    from types import SimpleNamespace

    from noisy_student_tf.loop import runner

    def worker(task_id):
        resolver = SimpleNamespace(task_type="worker", task_id=task_id)
        return SimpleNamespace(cluster_resolver=resolver)

    first = runner._scratch_dir("gs://bucket/run", worker(1))
    assert runner._scratch_dir("gs://bucket/run", worker(1)) == first  # a rerun resumes there
    assert runner._scratch_dir("gs://bucket/run", worker(2)) != first  # workers never share
    assert runner._scratch_dir("gs://bucket/other", worker(1)) != first
    assert "://" not in first  # a local folder
