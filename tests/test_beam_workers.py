"""The Beam stages on parallel workers, as Dataflow would run them (labeling/beam_runner.py).

Labeling (beam_label.py) and filter/balance (beam_filter.py) under Beam's
DirectRunner with two workers in separate processes (`multi_processing`:
every DoFn, the model handler and the pipeline's lambdas are pickled to the
workers) and in threads (`multi_threading`) give what one worker gives.
"""

import logging
import os
import re

import apache_beam as beam
import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from noisy_student_tf.data import records, schema
from noisy_student_tf.labeling import beam_filter, beam_label, beam_runner, shards
from noisy_student_tf.models import build_efficientnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, C, TOPK = 32, 10, 3
SHARDS, PER_SHARD = 4, 12
TWO_PROCESSES = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
TWO_THREADS = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]


@pytest.fixture(autouse=True)
def _workers_import_this_tree(monkeypatch):
    """multi_processing workers are new interpreters started with this process's
    environment: this tree first on their path, not another installed copy."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)


def _teacher(path):
    """The project's EfficientNet-B0 (small-image path), tiny, with logits spread
    to std ~2 so that top-k classes and confidences differ between records."""
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    model = build_efficientnet(
        "efficientnet-b0",
        C,
        input_shape=(SIZE, SIZE, 3),
        width_coefficient=0.1,
        depth_coefficient=0.1,
        small_image=True,
    )
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    kernel = rng.normal(size=kernel.shape).astype(np.float32)
    probe = rng.integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.float32)
    dense.set_weights([kernel, bias])
    spread = float(np.std(model(probe, training=False)))
    dense.set_weights([kernel * (2.0 / spread), bias])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Source shards of random PNGs, a teacher, and the one-worker job array's labels."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    files = []
    for s in range(SHARDS):
        path = str(root / records.shard_name("src", s, SHARDS))
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(PER_SHARD):
                image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                example = schema.source_example(schema.encode_png(image), -1, f"s{s}-{i}".encode())
                writer.write(example.SerializeToString())
        files.append(path)
    teacher = _teacher(str(root / "teacher.keras"))
    array_dir = str(root / "array")
    shards.label_shards(teacher, files, array_dir, topk=TOPK, batch_size=4, verbose=0)
    return {"files": files, "teacher": teacher, "array": array_dir}


def _labels_by_key(folder):
    """key -> (top-k classes, top-k probabilities + confidence, other features' bytes)."""
    out = {}
    for path in records.list_files(os.path.join(folder, "labeled-*")):
        for raw in records.read_records(path):
            feature = tf.train.Example.FromString(raw).features.feature
            numbers = (schema.TEACHER_TOPK_PROBS, schema.TEACHER_CONFIDENCE)
            out[feature[schema.KEY].bytes_list.value[0]] = (
                list(feature[schema.TEACHER_TOPK_CLASSES].int64_list.value),
                np.array([v for name in numbers for v in feature[name].float_list.value]),
                {n: feature[n].SerializeToString() for n in feature if n not in numbers},
            )
    return out


@pytest.mark.parametrize("workers", [TWO_PROCESSES, TWO_THREADS], ids=["processes", "threads"])
def test_two_workers_label_as_the_job_array(pool, tmp_path, caplog, workers):
    caplog.set_level(logging.INFO, logger="absl")
    out = str(tmp_path / "beam")
    summary = beam_label.label_with_beam(
        pool["teacher"], pool["files"], out, topk=TOPK, batch_size=5, pipeline_args=workers
    )
    assert summary["complete"] and summary["labeled"] == SHARDS * PER_SHARD
    want, got = _labels_by_key(pool["array"]), _labels_by_key(out)
    assert sorted(got) == sorted(want) and len(got) == SHARDS * PER_SHARD
    for key, (classes, numbers, rest) in want.items():
        assert got[key][0] == classes, key  # same top-k classes, same order
        np.testing.assert_allclose(got[key][1], numbers, atol=1e-6)
        assert got[key][2] == rest, key  # image, key, teacher/label byte-equal
    assert len({tuple(c) for c, _, _ in want.values()}) > 5  # labels that can differ
    mode = workers[0].split("=")[1]
    assert f"labeling: ran on DirectRunner ({mode}, 2 workers)" in caplog.text
    # Loaded once per worker process (two processes or one shared by threads),
    # not per bundle: ten batches of at most 5 records went through it.
    loads = int(re.search(r"loaded the teacher (\d+) times", caplog.text).group(1))
    assert 1 <= loads <= 2


def _filter(pool, out, workers, balance):
    return beam_filter.run_filter_balance(
        records.list_files(os.path.join(pool["array"], "labeled-*")),
        out,
        threshold=0.2,
        images_per_class=5,
        num_output_shards=3,
        seed=3,
        plots=False,
        balance=balance,
        pipeline_args=workers,
    )


def _output(folder, manifest):
    """Every output file's bytes, and the manifest without its run fields."""
    files = {n: open(os.path.join(folder, n), "rb").read() for n in manifest["shards"]}
    fields = {k: v for k, v in manifest.items() if k not in ("elapsed_s", "pipeline_args")}
    return files, fields


@pytest.mark.parametrize(
    "balance, workers",
    [("exact", TWO_PROCESSES), ("exact", TWO_THREADS), ("official", TWO_PROCESSES)],
    ids=["exact-processes", "exact-threads", "official-processes"],
)
def test_filter_balance_writes_the_same_bytes_with_one_and_two_workers(
    pool, tmp_path, balance, workers
):
    one = _filter(pool, str(tmp_path / "one"), None, balance)
    two = _filter(pool, str(tmp_path / "two"), workers, balance)
    assert _output(str(tmp_path / "two"), two) == _output(str(tmp_path / "one"), one)
    # A selection with something to get wrong: several classes, some cut to K,
    # some duplicated, copies spread over every output shard.
    assert sum(1 for p in one["per_class"] if p["kept"]) >= 3
    assert one["dropped"]["over_quota"] > 0
    assert any(p["duplicated"] for p in one["per_class"])
    assert all(records.count_records(str(tmp_path / "one" / n)) for n in one["shards"])


def test_no_runner_is_this_machine_never_beams_prism_switch(monkeypatch, caplog):
    # Beam's own default (SwitchingDirectRunner) would first try PrismRunner,
    # which downloads a binary at run time.
    def switched(*args, **kwargs):
        raise AssertionError("Beam's switching DirectRunner was used")

    monkeypatch.setattr(
        beam.runners.direct.direct_runner.SwitchingDirectRunner, "run_pipeline", switched
    )
    caplog.set_level(logging.INFO, logger="absl")
    result = beam_runner.run(
        None,
        lambda p: assert_that(
            p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4])
        ),
        "test",
    )
    assert result.state == "DONE"
    assert "test: ran on DirectRunner (in_memory, this process)" in caplog.text
    assert beam_runner.describe(["--runner=DataflowRunner"]) == "DataflowRunner"
    assert beam_runner.describe(TWO_PROCESSES) == "DirectRunner (multi_processing, 2 workers)"
