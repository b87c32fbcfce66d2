"""The streamed protocol end to end, through the commands a user runs.

Tiny record folders: a labeled set (3 classes), a separate unlabeled set
(images of those classes mixed with images of two other classes, no labels
except where a test says so) and a test set, all 16 px PNGs in the record
schema. The loop runs on them in a fresh process (experiments/noisy_student.py),
then the at-scale recipe's other commands run on what it wrote.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import DIGITS_SMOKE, record_keys, run_script, tiny_loop_config

from noisy_student_tf import loop
from noisy_student_tf.data import ingest, records, schema, sources
from noisy_student_tf.loop import config_checks

SIZE, CLASSES = 16, 3


def _image(rng, cls):
    """A 16 px image whose mean brightness per channel says its class (learnable)."""
    base = np.zeros((SIZE, SIZE, 3), np.uint8)
    base[..., cls % 3] = 120 + 40 * (cls // 3)
    return np.clip(base + rng.integers(0, 60, base.shape), 0, 255).astype(np.uint8)


def write_set(folder, prefix, classes, labels_known, num_shards, rng, per_class):
    items = []
    for cls in classes:
        for i in range(per_class):
            label = cls if labels_known else schema.UNLABELED
            items.append(
                (schema.encode_png(_image(rng, cls)), label, f"{prefix}/{cls}/{i}".encode())
            )
    rng.shuffle(items)
    ingest.write_source_shards(items, str(folder), num_shards, prefix=prefix)
    return str(folder)


@pytest.fixture(scope="module")
def record_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    return {
        "labeled": write_set(root / "labeled", "train", range(CLASSES), True, 2, rng, 6),
        # Two classes the labeled set does not have, mixed in, no labels.
        "unlabeled": write_set(root / "unlabeled", "pool", range(5), False, 6, rng, 6),
        "test": write_set(root / "test", "test", range(CLASSES), True, 1, rng, 4),
    }


def stream_flags(sets, workdir, *extra):
    return [
        DIGITS_SMOKE,
        f"--config.data.labeled={sets['labeled']}",
        f"--config.data.unlabeled={sets['unlabeled']}",
        f"--config.data.test={sets['test']}",
        f"--config.data.num_classes={CLASSES}",
        f"--config.data.image_size={SIZE}",
        "--config.teacher.width_coefficient=0.1",
        "--config.teacher.depth_coefficient=0.1",
        "--config.student.width_coefficient=0.1",
        "--config.student.depth_coefficient=0.1",
        "--config.train.batch_size=4",
        "--config.pseudo.unlabeled_ratio=2",
        "--config.pseudo.images_per_class=4",
        "--config.pseudo.num_output_shards=2",
        f"--workdir={workdir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def stream_run(record_sets, tmp_path_factory):
    """One streamed loop (teacher + 1 student) through the main script; its workdir."""
    workdir = tmp_path_factory.mktemp("stream_run")
    proc = run_script("experiments/noisy_student.py", *stream_flags(record_sets, workdir))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return str(workdir), proc.stdout


_keys = record_keys


def _teacher_probs(labeled_dir):
    """{record key: teacher/probs} of a folder of labeled shards."""
    out = {}
    for path in records.list_files(os.path.join(labeled_dir, "labeled-*")):
        for raw in records.read_records(path):
            feature = tf.train.Example.FromString(raw).features.feature
            out[feature[schema.KEY].bytes_list.value[0]] = list(
                feature[schema.TEACHER_PROBS].float_list.value
            )
    return out


def _source_keys(folder):
    return sorted(_keys(records.list_files(folder)))


def test_streamed_loop_labels_filters_and_trains_from_record_folders(record_sets, stream_run):
    workdir, stdout = stream_run
    results = json.loads(open(os.path.join(workdir, "results.json")).read())
    teacher, student = results["models"]
    assert (teacher["role"], student["role"]) == ("teacher", "student")
    # The same row keys as the in-memory path.
    assert set(teacher) == {
        "role", "iteration", "architecture", "parameters", "test_top1",
        "pseudo_label_accuracy", "kept", "dropped", "dropped_below_threshold", "wall_s",
        "image_size",
    }  # fmt: skip
    # Every unlabeled record was labeled exactly once, by each model.
    for i in (0, 1):
        labeled = records.list_files(os.path.join(workdir, f"iteration_{i}_labeled", "labeled-*"))
        assert len(labeled) == 6
        assert sorted(_keys(labeled)) == _source_keys(record_sets["unlabeled"])
    # The selection report is the Beam manifest's, and the balanced shards hold it.
    beam = json.loads(open(os.path.join(workdir, "iteration_0_pseudo", "manifest.json")).read())
    selection = json.loads(open(os.path.join(workdir, "iteration_0_selection.json")).read())
    # The kept records, recomputed here from the stored probabilities: the top K = 4
    # of each predicted class (smoke threshold 0), not a copy of a manifest.
    by_class = {}
    for key, probs in _teacher_probs(os.path.join(workdir, "iteration_0_labeled")).items():
        by_class.setdefault(int(np.argmax(probs)), []).append((-max(probs), key))
    expected = {key for rows in by_class.values() for _, key in sorted(rows)[:4]}
    pseudo_dir = os.path.join(workdir, "iteration_0_pseudo", "pseudo-*")
    assert set(_keys(records.list_files(pseudo_dir))) == expected
    assert teacher["kept"] == len(expected) == beam["kept_unique"] == selection["kept_unique"]
    assert teacher["dropped"] == beam["in"] - beam["kept_unique"] and beam["in"] == 30
    # Balanced: K = 4 copies of every class the teacher predicted at all.
    assert {c["copies"] for c in selection["per_class"] if c["candidates"]} == {4}
    pseudo = records.list_files(os.path.join(workdir, "iteration_0_pseudo", "pseudo-*"))
    assert sum(map(records.count_records, pseudo)) == beam["out_records"] >= 4
    # No true labels in the unlabeled set: no pseudo-label accuracy to report.
    assert np.isnan(teacher["pseudo_label_accuracy"])
    # The student trained on exactly those records.
    assert f"+ {beam['out_records']} pseudo-labeled" in stdout
    assert os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb"))


def test_pseudo_label_accuracy_counts_records_with_true_labels(record_sets, stream_run, tmp_path):
    from noisy_student_tf.loop import record_stages

    workdir, _ = stream_run
    labeled_dir = os.path.join(workdir, "iteration_0_labeled")
    assert np.isnan(record_stages.pseudo_label_accuracy(labeled_dir))
    # Give half the records true labels and compare with a count by hand.
    out = tmp_path / "labeled"
    out.mkdir()
    truth, agree = 0, 0
    for path in records.list_files(os.path.join(labeled_dir, "labeled-*")):
        with tf.io.TFRecordWriter(str(out / os.path.basename(path))) as writer:
            for i, raw in enumerate(records.read_records(path)):
                example = tf.train.Example.FromString(raw)
                if i % 2 == 0:
                    example.features.feature[schema.LABEL].int64_list.value[:] = [i % CLASSES]
                    truth += 1
                    teacher = example.features.feature[schema.TEACHER_LABEL].int64_list.value[0]
                    agree += teacher == i % CLASSES
                writer.write(example.SerializeToString())
    assert record_stages.pseudo_label_accuracy(str(out)) == pytest.approx(agree / truth)


def test_streamed_loop_from_a_teacher_checkpoint(record_sets, stream_run, tmp_path):
    workdir, _ = stream_run
    config = loop_config(record_sets)
    config.teacher_checkpoint = os.path.join(workdir, "iteration_0_teacher.keras")
    config.train.teacher_epochs = 10_000  # would take minutes if the teacher were trained
    results = loop.run(config, str(tmp_path), sources.load(config.data))
    before = json.loads(open(os.path.join(workdir, "results.json")).read())["models"][0]
    teacher, student = results["models"]
    assert teacher["architecture"] == "loaded iteration_0_teacher.keras"
    assert teacher["test_top1"] == before["test_top1"] and teacher["kept"] == before["kept"]
    # The loaded teacher's labels are the first run's, record for record.
    ours = _teacher_probs(str(tmp_path / "iteration_0_labeled"))
    theirs = _teacher_probs(os.path.join(workdir, "iteration_0_labeled"))
    assert sorted(ours) == sorted(theirs) and len(ours) == 30
    for key, probs in ours.items():
        np.testing.assert_allclose(probs, theirs[key], atol=1e-6)
    assert student["role"] == "student"


def loop_config(sets):
    """`stream_flags` as a config object, for `loop.run` in this process."""
    config = tiny_loop_config()
    config.data.labeled, config.data.unlabeled = sets["labeled"], sets["unlabeled"]
    config.data.test, config.data.num_classes, config.data.image_size = sets["test"], 3, SIZE
    config.pseudo.images_per_class = 4
    config.pseudo.num_output_shards = 2
    return config


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("labeled", "/nonexistent/train-*", "data.labeled='/nonexistent/train-\\*' matches no"),
        ("test", "tfds:cifar10", "expected tfds:NAME:SPLIT"),
        ("unlabeled", "tfds:no_such_dataset_xyz:train", "tfds has no dataset"),
    ],
)
def test_bad_stream_specs_are_config_errors(record_sets, key, value, match):
    config = loop_config(record_sets)
    config.data[key] = value
    with pytest.raises(sources.ConfigError, match=match):
        sources.load(config.data)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"data.source": "tfrecord"}, "data.source='tfrecord' and data.labeled both"),
        ({"data.labeled": "", "data.source": "digits"}, "data.unlabeled is set but data.labeled"),
        ({"pseudo.via_records": True}, "pseudo.via_records is for in-memory data"),
        ({"data.unlabeled": ""}, "a student needs an unlabeled set"),
    ],
)
def test_mixed_modes_are_config_errors(record_sets, overrides, match):
    config = loop_config(record_sets)
    for key, value in overrides.items():
        block, name = key.split(".")
        config[block][name] = value
    with pytest.raises(sources.ConfigError, match=match):
        config_checks.validate_config(config)
