"""The labeling stage as an Apache Beam pipeline (`tools/label.py --engine=beam`).

For a user who runs filter/balance on Dataflow, Flink or Spark and wants to
label a JFT-size pool on the same engine instead of a job array. The output
is the job array's, file for file: input shard i becomes
`PREFIX-0000i-of-N.tfrecord` with its records in input order, the same
teacher's view (shards.with_teacher_view, same default keys), the same
per-shard `.manifest.json` (records in = labeled + skipped by reason, the
teacher's fingerprint and settings) and the same `manifest.json` summary
(shards.write_summary). So the two engines can even finish each other's
runs.

Pipeline: input shards -> records (tf.data's reader, which checks CRCs: a
corrupted file fails the pipeline, as it fails the job) -> `RunInference`
with `TeacherModelHandler` (our own ModelHandler: Beam's TensorFlow handler
imports tensorflow_hub), which decodes a batch as the job array does
(shards.decoded_batch: the teacher's eval view, shards.TeacherView) and
runs the un-noised teacher -> records with the
teacher's view, keyed by shard -> GroupByKey -> one writer per shard sorts
by record index and writes the shard atomically, then its manifest.

Rerun: the launcher plans exactly as the job array (shards.plan): shards
with a manifest and the same settings are skipped, shards labeled with other
settings stop the run with a ConfigError naming the setting unless
`overwrite`, which relabels them. A pipeline killed midway leaves the shards
it finished complete and the rest incomplete (a temporary file at most), so
the rerun labels only those. Beam may retry a writer: its write is atomic
and idempotent.

Workers: only paths and settings travel to the workers (the handler and the
DoFns pickle as such); each worker process loads the teacher once, shared by
its bundles and threads, and the log says how many loads the job made. The
runner is chosen by beam_runner.py (this machine's unless `--runner` names
another); tests/test_beam_workers.py runs two DirectRunner worker processes.

Memory: a shard's labeled records meet in one writer (size input shards so
one fits in a worker's memory). Beam's DirectRunner keeps every PCollection
between stages in this process, so it suits small pools and tests; label a
large pool with a distributed runner or the job array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from absl import logging
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from noisy_student_tf import manifests
from noisy_student_tf.data import records
from noisy_student_tf.labeling import beam_runner, shards


class TeacherModelHandler(ModelHandler):
    """RunInference's model: a batch of (shard, index, serialized record) -> the teacher's view.

    Each PredictionResult's `inference` is (stored distribution [C] float32,
    temperature-1 confidence), or None for a record that did not decode.
    Only paths and numbers are pickled to the workers; each loads the teacher
    once (`load_model`, shared by Beam across the bundles of a process).
    """

    def __init__(
        self,
        teacher_path: str,
        view: shards.TeacherView,
        batch_size: int,
        soft: bool,
        temperature: float,
    ):
        super().__init__()
        self._teacher_path = teacher_path
        self._view = view
        self._batch_size = batch_size
        self._soft = soft
        self._temperature = temperature

    def load_model(self):
        teacher = shards.load_teacher(self._teacher_path, self._view.image_size)
        return shards.make_predict(teacher, tf.distribute.get_strategy(), self._view.dtype)

    def run_inference(self, batch: Sequence[tuple], model, inference_args=None):
        serialized = [element[2] for element in batch]
        decoded = next(
            iter(shards.decoded_batch(np.arange(len(batch)), serialized, self._view, len(batch))),
            None,
        )
        outputs = [None] * len(batch)
        if decoded is not None:
            positions, _, images = (t.numpy() for t in decoded)
            stored, confidence = shards.teacher_outputs(
                model(images), self._soft, self._temperature
            )
            for j, position in enumerate(positions):
                outputs[position] = (stored[j], float(confidence[j]))
        return [PredictionResult(e, o) for e, o in zip(batch, outputs)]

    @property
    def view(self) -> shards.TeacherView:
        return self._view

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "noisy_student_tf_label"


class _ReadShard(beam.DoFn):
    """shard index -> (shard, record index, serialized) for each record; also
    (shard, None) under 'shards', so an empty shard still reaches its writer."""

    def __init__(self, input_files: list[str]):
        self._input_files = input_files

    def process(self, shard: int):
        path = self._input_files[shard]
        yield beam.pvalue.TaggedOutput("shards", (shard, None))
        try:
            for index, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                yield shard, index, raw
        except tf.errors.OpError as e:
            raise OSError(f"reading TFRecord file {path!r} failed: {e.message}") from e


class _WithTeacherView(beam.DoFn):
    """PredictionResult -> (shard, (index, labeled record or None, skip reason or None))."""

    def __init__(self, input_files: list[str], view: shards.TeacherView, topk: int | None):
        self._sources = [os.path.basename(f) for f in input_files]
        self._view, self._topk = view, topk

    def process(self, result: PredictionResult):
        shard, index, raw = result.example
        if result.inference is None:
            try:
                reason = shards.skip_reason(raw, self._view)
            except OSError as e:
                raise OSError(f"{self._sources[shard]!r} record {index}: {e}") from e
            yield shard, (index, None, reason)
            return
        stored, confidence = result.inference
        default_key = f"{self._sources[shard]}:{index}".encode()  # as the job array
        yield (
            shard,
            (
                index,
                shards.with_teacher_view(raw, stored, confidence, self._topk, default_key),
                None,
            ),
        )


class _WriteShard(beam.DoFn):
    """(shard, items) -> the output shard in input order, then its manifest."""

    def __init__(self, input_files: list[str], outputs: list[str], manifest_fields: dict):
        self._input_files, self._outputs = input_files, outputs
        self._fields = manifest_fields

    def process(self, element):
        shard, items = element
        timer = records.Timer()
        in_path, out_path = self._input_files[shard], self._outputs[shard]
        num_in = records.count_records(in_path)
        labeled, skipped = 0, {}
        records.remove_stale_temporaries(out_path)
        with records.AtomicWriter(out_path) as writer:
            for _, record, reason in sorted((i for i in items if i is not None), key=_index):
                if record is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                else:
                    writer.write(record)
                    labeled += 1
            if labeled + sum(skipped.values()) != num_in:  # inside: discards the shard
                raise RuntimeError(
                    f"{in_path}: {num_in} records in but {labeled} labeled and "
                    f"{sum(skipped.values())} skipped"
                )
        manifest = {
            "input": in_path,
            "output": out_path,
            "records_in": num_in,
            "labeled": labeled,
            "skipped": skipped,
            "elapsed_s": timer.elapsed(),  # the write only; labeling time is spread out
            "engine": "beam",
            **self._fields,
        }
        manifests.write_json(out_path + shards.MANIFEST_SUFFIX, manifest)
        yield shard, labeled


def _index(item):
    return item[0]


def build_pipeline(
    pipeline: beam.Pipeline,
    handler: TeacherModelHandler,
    input_files: list[str],
    todo: list[int],
    outputs: list[str],
    manifest_fields: dict,
    topk: int | None,
) -> None:
    """Adds the labeling transforms for the shards `todo` to `pipeline`."""
    read = (
        pipeline
        | "Shards" >> beam.Create(todo)
        | "SpreadShards" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(_ReadShard(input_files)).with_outputs("shards", main="records")
    )
    labeled = (
        read.records
        | "Teacher" >> RunInference(handler)
        | "TeacherView" >> beam.ParDo(_WithTeacherView(input_files, handler.view, topk))
    )
    _ = (
        (read.shards, labeled)
        | "WithEmptyShards" >> beam.Flatten()
        | "ByShard" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(_WriteShard(input_files, outputs, manifest_fields))
    )


def label_with_beam(
    teacher_path: str,
    input_files: list[str],
    output_dir: str,
    soft: bool = True,
    temperature: float = 1.0,
    topk: int | None = None,
    batch_size: int = 256,
    output_prefix: str = "labeled",
    overwrite: bool = False,
    image_size: int | None = None,
    pipeline_args: list[str] | None = None,
    small_image: bool | None = None,
    resize: str | None = None,
) -> dict:
    """Labels every input shard not yet labeled, with Beam; same output as shards.label_shards.

    Args:
      teacher_path, input_files, output_dir, soft, temperature, topk,
        batch_size, output_prefix, overwrite, image_size, small_image,
        resize: as shards.label_shards (batch_size is the largest
        RunInference batch).
      pipeline_args: Beam options, e.g. ["--runner=DataflowRunner", ...] or
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"];
        without a runner, this machine's (beam_runner.py).

    Returns:
      The aggregate manifest (also written to `output_dir/manifest.json`).

    Raises:
      ConfigError: a bad setting, or complete shards labeled with other
        settings and `overwrite` is False.
    """
    topk = shards.check_options(soft, temperature, topk, batch_size, image_size, resize)
    timer = records.Timer()
    settings = shards.labeling_settings(
        teacher_path, soft, temperature, topk, image_size, resize, small_image
    )
    tf.io.gfile.makedirs(output_dir)
    outputs = shards.output_paths(output_dir, output_prefix, len(input_files))
    todo = shards.plan(outputs, list(range(len(input_files))), settings, overwrite)
    if todo:
        # Loaded here too: a bad teacher fails before the pipeline starts, and
        # the manifests record what the workers will load.
        view, _, derived = shards.prepared_teacher(
            teacher_path,
            image_size,
            small_image,
            settings["teacher_resize"],
            tf.distribute.get_strategy(),
        )
        handler = TeacherModelHandler(teacher_path, view, batch_size, soft, temperature)
        logging.info("labeling %d shards with Beam %s", len(todo), pipeline_args or "")
        result = beam_runner.run(
            pipeline_args,
            lambda pipeline: build_pipeline(
                pipeline, handler, input_files, todo, outputs, {**settings, **derived}, topk
            ),
            "labeling",
        )
        logging.info("labeling: the workers loaded the teacher %s times", teacher_loads(result))
    return shards.write_summary(output_dir, outputs, timer.elapsed())


def teacher_loads(result) -> int | None:
    """How many times the workers loaded the teacher (RunInference's load-latency
    count): one per worker process, not per bundle or record. None when the
    runner does not report it (a log line must not fail a finished job)."""
    try:
        metrics = result.metrics()
    except NotImplementedError:  # PipelineResult's default, for runners without metrics
        return None
    query = metrics.query(MetricsFilter().with_name("load_model_latency_milli_secs"))
    counts = [m.committed.count for m in query["distributions"] if m.committed is not None]
    return sum(counts) if counts else None
