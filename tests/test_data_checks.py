"""Data: counted or named, never silent (issue 20).

A label outside [0, num_classes) in a record is an error naming the shard
and the record (it would otherwise be a one-hot of zeros that trains
silently, or a test image always counted wrong); teacher probabilities that
are NaN are dropped and counted by reason; filter_balance.py refuses source
shards. The in-process cases cover the library; one batch of fresh processes
covers the command lines.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from noisy_student_tf import cli
from noisy_student_tf.data import ingest, pipeline, records, schema, sources
from noisy_student_tf.errors import ConfigError


def _write(path, labels, size=8, probs=None):
    """One shard of source records (or pseudo-labeled ones with `probs`), keys r0, r1, ..."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, label in enumerate(labels):
            image = schema.encode_png(np.full((size, size, 3), 10 * i, np.uint8))
            example = schema.source_example(image, label=label, key=f"r{i}".encode())
            if probs is not None:
                example = schema.add_teacher_view(example, np.asarray(probs[i], np.float32))
            writer.write(example.SerializeToString())
    return str(path)


def test_a_streamed_label_out_of_range_names_the_shard_and_record(tmp_path):
    good = _write(tmp_path / "train-00000-of-00002.tfrecord", [0, 1, 2])
    bad = _write(tmp_path / "train-00001-of-00002.tfrecord", [1, 3, 0])
    stream = pipeline.source_records([good, bad], 8, shuffle_buffer=0, num_classes=3)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(stream)
    line = cli._bad_record(error.value)  # what cli.run prints after `error: `
    assert line == (
        f"{bad}: record 1 has image/class/label 3, outside [0, 3) (data.num_classes)"
    ), str(error.value)[:2000]
    # In range, the stream is unchanged: every record, every label.
    labels = [int(y) for _, y in pipeline.source_records([good], 8, num_classes=3)]
    assert sorted(labels) == [0, 1, 2]


def test_a_test_label_out_of_range_is_an_error_not_a_skipped_image(tmp_path):
    test = _write(tmp_path / "test-00000-of-00001.tfrecord", [0, 1, -1])
    batches = pipeline.eval_records([test], 8, batch_size=2, num_classes=3)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(batches)
    assert cli._bad_record(error.value) == (
        f"{test}: record 2 has image/class/label -1, outside [0, 3) (data.num_classes)"
    )
    # Without num_classes (callers that do not know it) nothing is checked.
    assert sum(len(y) for _, y in pipeline.eval_records([test], 8, batch_size=2)) == 3


def test_in_memory_record_labels_are_checked_against_num_classes(tmp_path):
    for split, shards in (("train", ([0, 1, -1], [2, 1])), ("test", ([0, 1, 2],))):
        for i, labels in enumerate(shards):
            _write(tmp_path / f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord", labels)
    data = sources.load_tfrecord_dir(str(tmp_path), 3, 1)  # -1 in train: an unlabeled image
    assert len(data.unlabeled_labels) == 2
    with pytest.raises(ConfigError) as error:
        sources.load_tfrecord_dir(str(tmp_path), 2, 1)
    shard = tmp_path / "train-00001-of-00002.tfrecord"
    assert str(error.value).startswith(
        f"{shard}: record 0 has image/class/label 2, outside [-1, 2) (data.num_classes); "
        "1 such record(s) in data.path train-*"
    )


@pytest.mark.parametrize(
    "probs, confidence, reason",
    [
        ([0.5, np.nan, 0.5], None, "confidence_out_of_range"),  # NaN is the argmax
        ([0.8, np.nan, 0.1], 0.8, "probs_out_of_range"),  # a NaN beside a finite confidence
        ([0.8, -0.1, 0.3], None, "probs_out_of_range"),
        ([0.2, 0.3, 0.5], None, None),
    ],
)
def test_nan_teacher_probabilities_are_dropped_with_a_counted_reason(probs, confidence, reason):
    example = schema.source_example(schema.encode_png(np.zeros((4, 4, 3), np.uint8)), key=b"k")
    example = schema.add_teacher_view(example, np.asarray(probs, np.float32), confidence=confidence)
    fields, why = schema.check_pseudo(example.SerializeToString(), 3)
    assert why == reason and (fields is None) == (reason is not None)
    assert reason is None or reason in schema.REJECT_REASONS


# Fresh processes, started together: the command lines' side of the checks.
def _start(*args):
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_bad_data_stops_the_command_lines_with_one_named_error(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    unlabeled = _write(source / "train-00000-of-00001.tfrecord", [-1, -1], size=32)
    labeled = tmp_path / "labeled"
    labeled.mkdir()
    _write(labeled / "train-00000-of-00001.tfrecord", [0, 1, 12, 3] * 3, size=32)
    test = tmp_path / "test"
    test.mkdir()
    _write(test / "test-00000-of-00001.tfrecord", list(range(10)), size=32)
    empty = tmp_path / "no_manifest"
    empty.mkdir()
    good = tmp_path / "good_labeled"
    good.mkdir()
    _write(good / "train-00000-of-00001.tfrecord", list(range(10)) * 2, size=32)
    bad_test = tmp_path / "bad_test"
    bad_test.mkdir()
    corrupt = str(bad_test / "test-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(corrupt) as writer:
        for i in range(10):
            encoded = b"junk" if i == 3 else schema.encode_png(np.zeros((32, 32, 3), np.uint8))
            writer.write(schema.source_example(encoded, label=i).SerializeToString())
    shards = tmp_path / "shards"  # holds the map of an earlier make_records run
    shards.mkdir()
    ingest.write_class_map(str(shards), {"cat": 0, "dog": 1})
    emu = _image_tree(tmp_path / "emu", ["cat", "emu"])
    loop = [
        os.path.join(REPO, "experiments", "noisy_student.py"),
        "--config=experiments/configs/digits.py:smoke",
        f"--config.data.labeled={labeled}",
        f"--config.data.test={test}",
    ]
    cases = {
        "unlabeled shards to filter_balance": (
            _start(
                os.path.join(REPO, "tools", "filter_balance.py"),
                f"--input={source}",
                f"--output_dir={tmp_path / 'pseudo'}",
                "--num_classes=10",
            ),
            f"error: {unlabeled}: record 0 has no teacher/label; --input must be pseudo-labeled",
            tmp_path / "pseudo",
        ),
        "a class the class map lacks": (
            _start(
                os.path.join(REPO, "tools", "make_records.py"),
                f"--input={emu}",
                f"--output_dir={shards}",
                "--prefix=test",
            ),
            f"error: --input {emu!r} has classes ['emu'] that the class map does not hold",
            shards / "test-00000-of-00001.tfrecord",
        ),
        "a corrupt test image": (
            _start(
                *loop[:2],
                f"--config.data.labeled={good}",
                f"--config.data.test={bad_test}",
                "--config.num_iterations=0",
                f"--workdir={tmp_path / 'run_corrupt'}",
            ),
            f"error: {corrupt}: record 3 of data.test is not a decodable image (",
            None,
        ),
        "label 12 in the labeled set": (
            _start(*loop, "--config.num_iterations=0", f"--workdir={tmp_path / 'run'}"),
            f"error: {labeled}/train-00000-of-00001.tfrecord: record 2 has image/class/label "
            "12, outside [0, 10)",
            None,
        ),
        "pseudo_labeled folder without manifest": (
            _start(
                *loop,
                f"--config.data.pseudo_labeled={empty}",
                "--config.num_iterations=1",
                f"--workdir={tmp_path / 'run_pseudo'}",
            ),
            f"error: data.pseudo_labeled='{empty}' has no manifest.json",
            None,
        ),
    }
    failures = []
    for name, (proc, expected, unwritten) in cases.items():
        _, stderr = proc.communicate(timeout=900)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        if proc.returncode != 2 or len(errors) != 1 or "Traceback" in stderr:
            failures.append((name, proc.returncode, stderr[-2000:]))
        elif not errors[0].startswith(expected):
            failures.append((name, errors[0], expected))
        if unwritten is not None and unwritten.exists():
            failures.append((name, "wrote", sorted(os.listdir(unwritten))))
    assert not failures, failures
    assert not list((tmp_path / "run").glob("*.keras"))  # the error stopped the teacher's fit


def _image_tree(root, classes, per_class=2):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(
                schema.encode_png(np.full((4, 4, 3), i, np.uint8))
            )
    return str(root)


def test_a_second_folder_gets_its_class_ids_by_name_or_is_refused(tmp_path):
    train = _image_tree(tmp_path / "train", ["cat", "dog", "fox"])
    classes, items = ingest.folder_items(train)
    class_map = {name: i for i, name in enumerate(classes)}
    assert class_map == {"cat": 0, "dog": 1, "fox": 2}
    ingest.write_class_map(str(tmp_path), class_map)
    assert ingest.read_class_map(str(tmp_path / ingest.CLASS_MAP)) == class_map
    # A validation folder without "dog": "fox" keeps id 2 (it was 1 before the map).
    val = _image_tree(tmp_path / "val", ["cat", "fox"])
    classes, items = ingest.folder_items(val, class_map)
    assert classes == ["cat", "dog", "fox"]
    assert sorted({label for _, label, _ in items}) == [0, 2]
    # A class the map does not hold is refused, named.
    other = _image_tree(tmp_path / "other", ["cat", "emu"])
    with pytest.raises(ConfigError, match=r"has classes \['emu'\] that the class map"):
        ingest.folder_items(other, class_map)


def test_labeled_and_test_sets_must_name_the_same_classes(tmp_path):
    folders = {}
    for name, class_map in (
        ("labeled", {"cat": 0, "dog": 1, "fox": 2}),
        ("test", {"cat": 0, "dog": 1, "fox": 2}),
        ("shifted", {"cat": 0, "fox": 1, "dog": 2}),
        ("unnamed", None),
    ):
        (tmp_path / name).mkdir()
        folders[name] = [_write(tmp_path / name / "train-00000-of-00001.tfrecord", [0])]
        if class_map:
            ingest.write_class_map(str(tmp_path / name), class_map)
    sets = {"data.labeled": folders["labeled"], "data.test": folders["test"]}
    assert records.check_class_names(sets, 3) == ["cat", "dog", "fox"]
    assert records.check_class_names({"data.test": folders["unnamed"]}, 3) is None
    with pytest.raises(
        ConfigError, match=r"data.labeled: its shards name 3 classes .* data.num_classes=4"
    ):
        records.check_class_names(sets, 4)
    with pytest.raises(ConfigError, match="data.labeled, data.test name their classes differently"):
        records.check_class_names({**sets, "data.test": folders["shifted"]}, 3)


def test_a_pseudo_labeled_folder_needs_a_manifest_and_records(tmp_path):
    with pytest.raises(ConfigError, match="has no manifest.json; expected the --output_dir"):
        records.filter_balance_manifest(str(tmp_path))
    # No pool image reached the threshold: the folder is finished but empty.
    records.write_json(
        str(tmp_path / "manifest.json"), {"in": 40, "out_records": 0, "threshold": 0.9}
    )
    with pytest.raises(ConfigError, match=r"holds no pseudo-labeled record \(40 in, none at or"):
        records.filter_balance_manifest(str(tmp_path))
    records.write_json(str(tmp_path / "manifest.json"), {"in": 40, "out_records": 3})
    assert records.filter_balance_manifest(str(tmp_path)) == str(tmp_path / "manifest.json")


def test_a_corrupt_test_image_is_named_by_a_second_pass(tmp_path):
    path = _write(tmp_path / "test-00000-of-00001.tfrecord", [0, 1, 2])
    with tf.io.TFRecordWriter(str(tmp_path / "test-00001-of-00002.tfrecord")) as writer:
        for i, encoded in enumerate((schema.encode_png(np.zeros((8, 8, 3), np.uint8)), b"junk")):
            example = schema.source_example(encoded, label=i, key=f"c{i}".encode())
            writer.write(example.SerializeToString())
    corrupt = str(tmp_path / "test-00001-of-00002.tfrecord")
    with pytest.raises(tf.errors.InvalidArgumentError) as failure:
        list(pipeline.eval_records([path, corrupt], 8, batch_size=2, num_classes=3))
    error = schema.name_bad_image([path, corrupt], "data.test", failure.value)
    assert isinstance(error, ConfigError)
    assert str(error).startswith(f"{corrupt}: record 1 of data.test is not a decodable image (")
    # A failure that is not an image's is returned as it was.
    other = ValueError("something else")
    assert schema.name_bad_image([path], "data.test", other) is other
