"""Label sharded source records with a teacher: the JFT-scale labeling stage.

Each input shard `i` becomes one output shard `PREFIX-0000i-of-N.tfrecord`
(N = number of input shards) holding every decodable source record, in
input order, with the teacher's view added (docs/data_format.md). A job
takes the shards with `i % num_shards == shard_index`, so a job array of
`num_shards` machines covers the pool; inside a job a tf.distribute strategy
spreads each batch over the local accelerators.

Restartable: an output shard is written to a temporary name, renamed when
complete, and only then its `.manifest.json` (records in, labeled, skipped by
reason) is written. A shard whose manifest exists is skipped on rerun, so a
killed job resumes where it stopped with no duplicated or missing records.

As in predict.py, the teacher runs un-noised (inference mode, center view).
`teacher/confidence` is always the temperature-1 max probability, so the
filter threshold (0.3 in the paper) means the same whatever the temperature.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from noisy_student_tf.data import records, schema
from noisy_student_tf.labeling.predict import softmax

MANIFEST_SUFFIX = ".manifest.json"


@dataclasses.dataclass
class Teacher:
    """A loaded teacher: float32 pixels [B, S, S, 3] in [0, 255] -> logits [B, C]."""

    logits_fn: Callable[[tf.Tensor], tf.Tensor]
    image_size: int
    description: str


def load_teacher(path: str) -> Teacher:
    """Loads a `.keras` checkpoint (training loop) or an exported SavedModel dir.

    Call it inside `strategy.scope()` to place the variables on the replicas.
    """
    if tf.io.gfile.isdir(path):
        if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"--teacher {path!r} is a folder without saved_model.pb")
        loaded = tf.saved_model.load(path)
        if "serve" not in loaded.signatures:
            raise ValueError(f"SavedModel {path!r} has no 'serve' signature "
                             f"(has {sorted(loaded.signatures)}); export it with "
                             "noisy_student_tf.evaluation.export.export_saved_model")
        serve = loaded.signatures["serve"]
        spec = next(iter(serve.structured_input_signature[1].values()))

        def logits_fn(images):
            return next(iter(serve(images).values()))

        teacher = Teacher(logits_fn, int(spec.shape[1]), f"SavedModel {path}")
        teacher.loaded = loaded  # keeps the variables alive
        return teacher
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--teacher {path!r} does not exist")
    if not path.endswith(".keras"):
        raise ValueError(f"--teacher {path!r} is neither a .keras file nor a SavedModel folder")
    model = keras.models.load_model(path, compile=False)
    return Teacher(lambda images: model(images, training=False), int(model.input_shape[1]),
                   f"{model.name} from {path}")


def make_predict(teacher: Teacher, strategy: tf.distribute.Strategy):
    """Returns numpy uint8 [B, S, S, 3] -> numpy float32 logits [B, C].

    With several replicas the batch is padded to a multiple of their count
    (repeating the last image), split in order over them, and the logits are
    concatenated back in the same order and trimmed.
    """
    size = teacher.image_size
    step = tf.function(lambda x: teacher.logits_fn(tf.cast(x, tf.float32)),
                       input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return lambda images: step(images).numpy()

    @tf.function(reduce_retracing=True)
    def distributed_step(values):
        return strategy.run(lambda x: teacher.logits_fn(tf.cast(x, tf.float32)), args=(values,))

    def predict(images):
        count = len(images)
        pad = -count % replicas  # every replica gets an equal, non-empty share
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        chunks = np.split(images, replicas)
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(chunks[ctx.replica_id_in_sync_group]))
        out = distributed_step(values)
        local = strategy.experimental_local_results(out)
        return np.concatenate([t.numpy() for t in local])[:count]

    return predict


def teacher_outputs(logits: np.ndarray, soft: bool, temperature: float):
    """(stored distribution [B, C], temperature-1 confidence [B]) from logits.

    Soft: softmax(logits / T). Hard: the one-hot argmax (label smoothing, if
    any, is applied by the trainer, not stored).
    """
    logits = np.asarray(logits, np.float64)
    confidence = softmax(logits).max(axis=-1)
    if soft:
        stored = softmax(logits, temperature)
    else:
        stored = np.eye(logits.shape[-1])[logits.argmax(axis=-1)]
    return stored.astype(np.float32), confidence.astype(np.float32)


def _decoded_dataset(path: str, image_size: int, batch_size: int) -> tf.data.Dataset:
    """(index, serialized, uint8 image) batches; records that fail to parse or
    decode are left out (their indices are missing) and classified later."""
    image_only = {schema.IMAGE: tf.io.FixedLenFeature([], tf.string)}

    def decode(index, serialized):
        encoded = tf.io.parse_single_example(serialized, image_only)[schema.IMAGE]
        return index, serialized, schema.decode_image(encoded, image_size)

    ds = tf.data.TFRecordDataset(path).enumerate()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors().batch(batch_size).prefetch(2)


def _skip_reason(serialized: bytes) -> str:
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except Exception:  # noqa: BLE001 - any parse failure is the same bad record
        return "unparseable"
    if schema.IMAGE not in feature or not feature[schema.IMAGE].bytes_list.value:
        return "missing_image"
    return "undecodable_image"


def _with_teacher_view(raw: bytes, probs: np.ndarray, confidence: float, topk: int | None,
                       default_key: bytes) -> bytes:
    """The source record `raw` with the teacher's view added, serialized."""
    example = tf.train.Example.FromString(raw)
    feature = example.features.feature
    if not feature[schema.KEY].bytes_list.value or not feature[schema.KEY].bytes_list.value[0]:
        feature[schema.KEY].bytes_list.value[:] = [default_key]  # needed downstream
    label = int(np.argmax(probs))
    feature[schema.TEACHER_LABEL].int64_list.value[:] = [label]
    feature[schema.TEACHER_CONFIDENCE].float_list.value[:] = [float(confidence)]
    if topk is None:
        feature[schema.TEACHER_PROBS].float_list.value[:] = probs
    else:
        order = np.argsort(-probs, kind="stable")[:topk]  # as schema.add_teacher_view
        feature[schema.TEACHER_TOPK_CLASSES].int64_list.value[:] = order
        feature[schema.TEACHER_TOPK_PROBS].float_list.value[:] = probs[order]
    return example.SerializeToString()


def label_file(predict, in_path: str, out_path: str, image_size: int, batch_size: int,
               soft: bool = True, temperature: float = 1.0, topk: int | None = None,
               progbar: keras.utils.Progbar | None = None) -> dict:
    """Labels one shard into `out_path` (atomically); returns its manifest."""
    timer = records.Timer()
    num_in = records.count_records(in_path)  # fails early, naming a truncated file
    source = os.path.basename(in_path)
    labeled, seen = 0, []
    records.remove_stale_temporaries(out_path)
    with records.AtomicWriter(out_path) as writer:
        for index, serialized, images in _decoded_dataset(in_path, image_size, batch_size):
            stored, confidence = teacher_outputs(predict(images.numpy()), soft, temperature)
            for j, (i, raw) in enumerate(zip(index.numpy(), serialized.numpy())):
                writer.write(_with_teacher_view(raw, stored[j], confidence[j], topk,
                                                f"{source}:{i}".encode()))
            seen.append(index.numpy())
            labeled += len(index)
            if progbar is not None:
                progbar.add(len(index))
    skipped = {}
    if labeled < num_in:
        missing = np.setdiff1d(np.arange(num_in), np.concatenate(seen) if seen else [])
        missing = set(missing.tolist())
        for i, raw in enumerate(records.read_records(in_path)):
            if i in missing:
                reason = _skip_reason(raw)
                skipped[reason] = skipped.get(reason, 0) + 1
        if progbar is not None:
            progbar.add(num_in - labeled)
    if labeled + sum(skipped.values()) != num_in:
        raise RuntimeError(f"{in_path}: {num_in} records in but {labeled} labeled and "
                           f"{sum(skipped.values())} skipped")
    return {"input": in_path, "output": out_path, "records_in": num_in, "labeled": labeled,
            "skipped": skipped, "elapsed_s": timer.elapsed()}


def label_shards(teacher_path: str, input_files: list[str], output_dir: str,
                 soft: bool = True, temperature: float = 1.0, topk: int | None = None,
                 shard_index: int = 0, num_shards: int = 1, batch_size: int = 256,
                 strategy: tf.distribute.Strategy | None = None,
                 output_prefix: str = "labeled", verbose: int = 1) -> dict:
    """Labels this job's share of `input_files` into `output_dir`.

    Args:
      teacher_path: a `.keras` checkpoint or an exported SavedModel folder.
      input_files: all source shards of the pool (sorted); shard i goes to
        `output_dir/PREFIX-0000i-of-N.tfrecord`.
      soft: store the soft distribution (else the one-hot argmax).
      temperature: soft labels are softmax(logits / temperature).
      topk: store the k most probable classes (sparse form); None or 0 stores
        the full distribution.
      shard_index, num_shards: this job takes input shards with
        `i % num_shards == shard_index`.
      strategy: tf.distribute strategy for the teacher (default: none).

    Returns:
      The aggregate manifest (also written to `output_dir/manifest.json`).
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index={shard_index} must be in [0, --num_shards={num_shards})")
    if soft and temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if topk is not None and topk < 0:
        raise ValueError(f"--topk must be >= 0, got {topk}")
    topk = topk or None
    timer = records.Timer()
    strategy = strategy or tf.distribute.get_strategy()
    tf.io.gfile.makedirs(output_dir)
    total = len(input_files)
    outputs = [os.path.join(output_dir, records.shard_name(output_prefix, i, total))
               for i in range(total)]
    mine = [i for i in range(total) if i % num_shards == shard_index]
    todo = [i for i in mine if not (tf.io.gfile.exists(outputs[i] + MANIFEST_SUFFIX)
                                    and tf.io.gfile.exists(outputs[i]))]
    logging.info("labeling %d of %d shards (%d already complete) into %s",
                 len(todo), len(mine), len(mine) - len(todo), output_dir)
    if todo:
        sizes = [records.count_records(input_files[i]) for i in todo]
        with strategy.scope():
            teacher = load_teacher(teacher_path)
        predict = make_predict(teacher, strategy)
        size = teacher.image_size
        num_classes = int(predict(np.zeros((1, size, size, 3), np.uint8)).shape[-1])
        progbar = keras.utils.Progbar(sum(sizes), unit_name="image", verbose=verbose)
        settings = {"teacher": teacher.description, "soft": soft, "temperature": temperature,
                    "topk": topk, "image_size": size, "num_classes": num_classes}
        for i in todo:
            manifest = label_file(predict, input_files[i], outputs[i], teacher.image_size,
                                  batch_size, soft, temperature, topk, progbar)
            records.write_json(outputs[i] + MANIFEST_SUFFIX, {**manifest, **settings})
    return write_summary(output_dir, outputs, timer.elapsed())


def write_summary(output_dir: str, outputs: list[str], elapsed_s: float) -> dict:
    """Aggregates the per-shard manifests present into `output_dir/manifest.json`."""
    done = [records.read_json(p + MANIFEST_SUFFIX) for p in outputs
            if tf.io.gfile.exists(p + MANIFEST_SUFFIX)]
    skipped = {}
    for m in done:
        for reason, n in m["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    summary = {
        "stage": "label", "num_shards": len(outputs), "shards_complete": len(done),
        "complete": len(done) == len(outputs),
        "records_in": sum(m["records_in"] for m in done),
        "labeled": sum(m["labeled"] for m in done), "skipped": skipped,
        "num_classes": done[0]["num_classes"] if done else None,
        "settings": {k: done[0][k] for k in ("teacher", "soft", "temperature", "topk",
                                             "image_size")} if done else {},
        "elapsed_s_this_job": elapsed_s,
    }
    records.write_json(os.path.join(output_dir, "manifest.json"), summary)
    return summary
