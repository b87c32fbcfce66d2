"""Label sharded source records with a teacher: the JFT-scale labeling stage.

Each input shard `i` becomes one output shard `PREFIX-0000i-of-N.tfrecord`
(N = number of input shards) holding every decodable source record, in
input order, with the teacher's view added (docs/data_format.md). A job
takes the shards with `i % num_shards == shard_index`, so a job array of
`num_shards` machines covers the pool; inside a job a tf.distribute strategy
spreads each batch over the local accelerators.

Restartable: an output shard is written to a temporary name, renamed when
complete, and only then its `.manifest.json` (records in, labeled, skipped by
reason, and the labeling settings) is written. A shard whose manifest exists
is skipped on rerun, so a killed job resumes where it stopped with no
duplicated or missing records. A complete shard labeled with other settings
(another teacher by content, soft/hard, temperature, top-k, the view's
resize or path) is never reused silently: the rerun stops with a
ConfigError naming the setting, or, with `overwrite=True`, relabels that
shard. The comparison and its error are noisy_student_tf/manifests.py's, as
for the loop's stage manifests.

Bad records vs faults: a record that fails to parse or whose image fails to
decode is skipped and counted by reason. A read fault (a corrupted or
truncated file, a storage error) fails the shard: no manifest is written, so
the rerun labels it again.

As in predict.py, the teacher runs un-noised (inference mode). It sees each
pool image in the evaluation view (`TeacherView`, i.e.
`data.preprocess.eval_preprocess`: the center crop of S / (S + 32) of the
shorter side, bicubic-resized, for large images), as the official
`predict_label.py` did with `preprocess_image(is_training=False)`; so a pool
image is labeled on exactly the view the test accuracy and the exported
SavedModel use. An official checkpoint's view takes the official resize
(TF1 bicubic, float32), as its published accuracy did.
`teacher/confidence` is always the temperature-1 max probability, so the
filter threshold (0.3 in the paper) means the same whatever the temperature.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from noisy_student_tf import kill_points, manifests
from noisy_student_tf.data import records, schema
from noisy_student_tf.data.preprocess import EVAL_RESIZES, eval_preprocess
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.labeling.predict import softmax
from noisy_student_tf.labeling.targets import pseudo_targets
from noisy_student_tf.models.artifact import (
    ModelArtifact,
    artifact_eval_resize,
    fingerprint,
    open_model,
)

MANIFEST_SUFFIX = ".manifest.json"
# Settings that change the stored labels; a complete shard is reused only if
# its manifest has the same values. The teacher is compared by content, so a
# moved or copied checkpoint still matches. `teacher_image_size` is the
# requested input side (None: the teacher's own), which changes the labels of
# a teacher built at a chosen size (official or keras.applications weights).
# `teacher_resize` and `teacher_small_image` choose the view the teacher
# labels (`TeacherView`). A manifest written before they were recorded lacks
# them, which manifests.differences reads as a difference ("teacher_resize:
# (absent) -> 'tf2'"): its labels came from the former squash of the whole
# image, so the rerun refuses the shard and `overwrite` relabels it.
COMPARED_SETTINGS = (
    "teacher_fingerprint",
    "soft",
    "temperature",
    "topk",
    "teacher_image_size",
    "teacher_resize",
    "teacher_small_image",
)
# Batches decoded at once. Measured on 8,000 32-px PNGs (2 busy CPU cores, best
# of 3): one (flat_map) 4.4k images/s, four 7.9k, the former single
# ignore_errors stream (which hid read faults) 8.3k.
DECODE_BATCHES_IN_FLIGHT = 4


@dataclasses.dataclass(frozen=True)
class TeacherView:
    """The image a teacher labels: `eval_preprocess`'s view of one encoded image.

    Shared by both engines (only these three values travel to Beam's
    workers) and by `skip_reason`, so a record is classified by the same op
    that dropped it.

    Attributes:
      image_size: the teacher's input side S.
      small_image: eval_preprocess's path; None picks by size (small below
        224 px), as eval_preprocess does.
      resize: one of EVAL_RESIZES; "official" (an official checkpoint's TF1
        bicubic) gives float32 pixels, "tf2" uint8.
    """

    image_size: int
    small_image: bool | None = None
    resize: str = "tf2"

    @property
    def dtype(self) -> tf.DType:
        return view_dtype(self.resize)

    def __call__(self, encoded: tf.Tensor) -> tf.Tensor:
        """Scalar string (JPEG/PNG) -> [S, S, 3] pixels of `dtype`."""
        return eval_preprocess(encoded, self.image_size, self.small_image, self.resize)


def view_dtype(resize: str) -> tf.DType:
    """The pixels' dtype of `eval_preprocess(..., resize=resize)`."""
    return tf.float32 if resize == "official" else tf.uint8


def load_teacher(path: str, image_size: int | None = None) -> ModelArtifact:
    """Opens `--teacher` (any artifact `models.open_model` takes) for labeling.

    Call it inside `strategy.scope()` to place the variables on the replicas.

    Args:
      image_size: input side for a teacher built from weights (official or
        keras.applications); None keeps the variant's default resolution. A
        `.keras` file or SavedModel has its own, which must then equal it.
    """
    teacher = open_model(path, image_size, setting="--teacher")
    teacher.check_fits(image_size, size_from="--image_size; leave it unset")
    if teacher.image_size is None:  # a SavedModel signature of any size: ours to choose
        if not image_size:
            raise ConfigError(f"{teacher.where} takes images of any size; set --image_size")
        teacher.image_size = image_size
    return teacher


def make_predict(
    teacher: ModelArtifact, strategy: tf.distribute.Strategy, dtype: tf.DType | None = None
):
    """Returns numpy [B, S, S, 3] pixels of `dtype` -> numpy float32 logits [B, C].

    `dtype` is the view's (`TeacherView.dtype`); None: the teacher's own
    view's (float32 for an official checkpoint, else uint8). With several
    replicas the batch is padded to a multiple of their count (repeating the
    last image), split in order over them, and the logits are concatenated
    back in the same order and trimmed.
    """
    size = teacher.image_size
    dtype = dtype or view_dtype(teacher.eval_resize)
    step = tf.function(
        teacher.logits,
        input_signature=[tf.TensorSpec([None, size, size, 3], dtype)],
    )
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return lambda images: step(images).numpy()

    @tf.function(reduce_retracing=True)
    def distributed_step(values):
        return strategy.run(teacher.logits, args=(values,))

    def predict(images):
        count = len(images)
        pad = -count % replicas  # every replica gets an equal, non-empty share
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        chunks = np.split(images, replicas)
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(chunks[ctx.replica_id_in_sync_group])
        )
        out = distributed_step(values)
        local = strategy.experimental_local_results(out)
        return np.concatenate([t.numpy() for t in local])[:count]

    return predict


def teacher_outputs(logits: np.ndarray, soft: bool, temperature: float):
    """(stored distribution [B, C], temperature-1 confidence [B]) from logits.

    The stored distribution is `targets.pseudo_targets` without smoothing
    (soft: softmax(logits / T); hard: the one-hot argmax); the student's
    stream smooths a stored one-hot label with the same rule.
    """
    logits = np.asarray(logits, np.float64)
    confidence = softmax(logits).max(axis=-1)
    stored = pseudo_targets(logits, soft, temperature, 0.0, from_logits=True).numpy()
    return stored.astype(np.float32), confidence.astype(np.float32)


def decoded_batch(indices, serialized, view: TeacherView, batch_size: int) -> tf.data.Dataset:
    """Records already in memory -> (index, serialized, view) batches, in order.

    Records that fail to parse or decode are left out (their indices are
    missing); `skip_reason` classifies them afterwards. Shared by both engines
    (the job array's file reader below, the Beam model handler), so both
    label an image on the same view (`view`: the eval view, not a squash of
    the whole image).
    """
    image_only = {schema.IMAGE: tf.io.FixedLenFeature([], tf.string)}

    def decode(index, record):
        encoded = tf.io.parse_single_example(record, image_only)[schema.IMAGE]
        return index, record, view(encoded)

    ds = tf.data.Dataset.from_tensor_slices((indices, serialized))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors().batch(batch_size)


def _decoded_dataset(path: str, view: TeacherView, batch_size: int) -> tf.data.Dataset:
    """(index, serialized, view) batches of one file, in file order.

    `ignore_errors` wraps only the decoding of records already read into
    memory, one batch at a time (`decoded_batch`), so a read fault of the file
    (tf.errors.DataLossError for a corrupted record, a storage error) is
    raised to the caller instead of silently dropping records.
    """
    raw = tf.data.TFRecordDataset(path).enumerate().batch(batch_size)
    # A few batches decode at once; each yields one batch (or none), so the
    # deterministic round robin keeps file order.
    return raw.interleave(
        lambda indices, serialized: decoded_batch(indices, serialized, view, batch_size),
        cycle_length=DECODE_BATCHES_IN_FLIGHT,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(2)


def _batches(path: str, view: TeacherView, batch_size: int):
    """`_decoded_dataset` as numpy, with read faults raised as OSError naming the file."""
    iterator = iter(_decoded_dataset(path, view, batch_size))
    last = -1
    while True:
        try:
            index, serialized, images = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise OSError(
                f"reading TFRecord file {path!r} failed after record {last}: {e.message}"
            ) from e
        index = index.numpy()
        last = int(index[-1])
        yield index, serialized.numpy(), images.numpy()


def skip_reason(serialized: bytes, view: TeacherView) -> str:
    """Why a record was left out by `_decoded_dataset`, checked again eagerly.

    The image is put through the same `view`, so whatever dropped it (in
    practice a failed decode) drops it here too.

    Raises:
      OSError: the record parses and decodes now, so it was dropped by a fault
        (memory, a transient error) rather than for being bad.
    """
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except Exception:  # noqa: BLE001 - any parse failure is the same bad record
        return "unparseable"
    values = feature[schema.IMAGE].bytes_list.value if schema.IMAGE in feature else []
    if len(values) != 1:  # as schema.check_pseudo: exactly one image
        return "missing_image"
    try:
        view(tf.constant(values[0]))
    except (tf.errors.InvalidArgumentError, ValueError):
        return "undecodable_image"
    raise OSError("a record that decodes was dropped while labeling; rerun to label it")


def with_teacher_view(
    raw: bytes, probs: np.ndarray, confidence: float, topk: int | None, default_key: bytes
) -> bytes:
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


def label_file(
    predict,
    in_path: str,
    out_path: str,
    view: TeacherView,
    batch_size: int,
    soft: bool = True,
    temperature: float = 1.0,
    topk: int | None = None,
    progbar: keras.utils.Progbar | None = None,
) -> dict:
    """Labels one shard into `out_path` (atomically) on `view`; returns its manifest."""
    timer = records.Timer()
    num_in = records.count_records(in_path)  # fails early, naming a truncated file
    source = os.path.basename(in_path)
    labeled, seen = 0, []
    records.remove_stale_temporaries(out_path)
    with records.AtomicWriter(out_path) as writer:
        for index, serialized, images in _batches(in_path, view, batch_size):
            stored, confidence = teacher_outputs(predict(images), soft, temperature)
            for j, (i, raw) in enumerate(zip(index, serialized)):
                writer.write(
                    with_teacher_view(raw, stored[j], confidence[j], topk, f"{source}:{i}".encode())
                )
            seen.append(index)
            labeled += len(index)
            if progbar is not None:
                progbar.add(len(index))
        # Classified inside the writer's scope: a fault found here discards the shard.
        skipped = {}
        if labeled < num_in:
            missing = np.setdiff1d(np.arange(num_in), np.concatenate(seen) if seen else [])
            missing = set(missing.tolist())
            for i, raw in enumerate(records.read_records(in_path)):
                if i in missing:
                    try:
                        reason = skip_reason(raw, view)
                    except OSError as e:
                        raise OSError(f"{in_path!r} record {i}: {e}") from e
                    skipped[reason] = skipped.get(reason, 0) + 1
            if progbar is not None:
                progbar.add(num_in - labeled)
        if labeled + sum(skipped.values()) != num_in:
            raise RuntimeError(
                f"{in_path}: {num_in} records in but {labeled} labeled and "
                f"{sum(skipped.values())} skipped"
            )
    return {
        "input": in_path,
        "output": out_path,
        "records_in": num_in,
        "labeled": labeled,
        "skipped": skipped,
        "elapsed_s": timer.elapsed(),
    }


def check_options(
    soft: bool,
    temperature: float,
    topk: int | None,
    batch_size: int,
    image_size: int | None,
    resize: str | None = None,
) -> int | None:
    """Validates the labeling flags shared by both engines; returns topk (None: all)."""
    if soft and temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    if topk is not None and topk < 0:
        raise ConfigError(f"--topk must be >= 0, got {topk}")
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
    if image_size is not None and image_size < 0:
        raise ConfigError(f"--image_size must be >= 1 (or 0: the teacher's own), got {image_size}")
    if resize is not None and resize not in EVAL_RESIZES:
        raise ConfigError(f"resize={resize!r}; expected one of {', '.join(EVAL_RESIZES)}")
    return int(topk) if topk else None


def labeling_settings(
    teacher_path: str,
    soft: bool,
    temperature: float,
    topk: int | None,
    image_size: int | None,
    resize: str | None = None,
    small_image: bool | None = None,
) -> dict:
    """The settings recorded in every shard manifest (COMPARED_SETTINGS and the path).

    Args:
      resize: the view's resize; None: the teacher's own (`ModelArtifact.eval_resize`,
        read from the artifact's kind without loading it).
      small_image: the view's path (None: by size).
    """
    teacher_fingerprint = fingerprint(teacher_path, "--teacher")  # names a missing file first
    return {
        "teacher": teacher_path,
        "teacher_fingerprint": teacher_fingerprint,
        "soft": bool(soft),
        # Hard labels do not depend on the temperature, so it is not recorded.
        "temperature": float(temperature) if soft else None,
        "topk": topk,
        "teacher_image_size": image_size or None,
        "teacher_resize": resize or artifact_eval_resize(teacher_path, "--teacher"),
        "teacher_small_image": small_image,
    }


def output_paths(output_dir: str, output_prefix: str, total: int) -> list[str]:
    """Output shard i of `total` input shards: `output_dir/PREFIX-0000i-of-N.tfrecord`."""
    return [
        os.path.join(output_dir, records.shard_name(output_prefix, i, total)) for i in range(total)
    ]


def plan(outputs: list[str], mine: list[int], settings: dict, overwrite: bool) -> list[int]:
    """The shards among `mine` still to label: incomplete, or stale with `overwrite`.

    The manifest of a stale shard is removed here, so a run killed while
    relabeling it leaves it incomplete rather than complete with old labels.

    Raises:
      ConfigError: complete shards labeled with other settings and not `overwrite`.
    """
    complete = [i for i in mine if _is_complete(outputs[i])]
    stale = _check_settings([outputs[i] for i in complete], settings, overwrite)
    todo = [i for i in mine if i not in complete or outputs[i] in stale]
    for i in todo:
        if tf.io.gfile.exists(outputs[i] + MANIFEST_SUFFIX):
            tf.io.gfile.remove(outputs[i] + MANIFEST_SUFFIX)
    logging.info(
        "labeling %d of %d shards (%d already complete, %d relabeled) into %s",
        len(todo),
        len(mine),
        len(mine) - len(todo),
        len(stale),
        os.path.dirname(outputs[0]) if outputs else "",
    )
    return todo


def derived_settings(teacher: ModelArtifact, predict, view: TeacherView) -> dict:
    """What the manifests record about the loaded teacher (not compared on rerun)."""
    size = teacher.image_size
    num_classes = int(predict(np.zeros((1, size, size, 3), view.dtype.as_numpy_dtype)).shape[-1])
    return {
        "teacher_description": teacher.description,
        "image_size": size,
        "num_classes": num_classes,
    }


def prepared_teacher(
    teacher_path: str,
    image_size: int | None,
    small_image: bool | None,
    resize: str,
    strategy: tf.distribute.Strategy,
):
    """(its `TeacherView`, `make_predict` on it, `derived_settings`) of a teacher,
    loaded in `strategy`'s scope; both engines start so."""
    with strategy.scope():
        teacher = load_teacher(teacher_path, image_size or None)
    view = TeacherView(teacher.image_size, small_image, resize)
    predict = make_predict(teacher, strategy, view.dtype)
    return view, predict, derived_settings(teacher, predict, view)


def label_shards(
    teacher_path: str,
    input_files: list[str],
    output_dir: str,
    soft: bool = True,
    temperature: float = 1.0,
    topk: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    batch_size: int = 256,
    strategy: tf.distribute.Strategy | None = None,
    output_prefix: str = "labeled",
    verbose: int = 1,
    overwrite: bool = False,
    image_size: int | None = None,
    small_image: bool | None = None,
    resize: str | None = None,
) -> dict:
    """Labels this job's share of `input_files` into `output_dir`.

    Args:
      teacher_path: a `.keras` checkpoint, an exported SavedModel folder, an
        official TF1 checkpoint or a keras.applications EfficientNet weights file.
      input_files: all source shards of the pool (sorted); shard i goes to
        `output_dir/PREFIX-0000i-of-N.tfrecord`.
      soft: store the soft distribution (else the one-hot argmax).
      temperature: soft labels are softmax(logits / temperature).
      topk: store the k most probable classes (sparse form); None or 0 stores
        the full distribution.
      shard_index, num_shards: this job takes input shards with
        `i % num_shards == shard_index`.
      strategy: tf.distribute strategy for the teacher (default: none).
      overwrite: relabel this job's complete shards that were labeled with
        other settings (else that is a ConfigError). Shards already labeled
        with these settings are kept, so a killed overwrite run resumes.
      image_size: input side of a teacher built from weights (official or
        keras.applications); None or 0 keeps the teacher's own.
      small_image, resize: the eval view (`TeacherView`); None: by size, and
        the teacher's own `eval_resize` (the loop passes its in-memory model's).

    Returns:
      The aggregate manifest (also written to `output_dir/manifest.json`).

    Raises:
      ConfigError: a bad setting, or complete shards labeled with other
        settings and `overwrite` is False (naming the setting, old and new).
    """
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard_index={shard_index} must be in [0, --num_shards={num_shards})")
    topk = check_options(soft, temperature, topk, batch_size, image_size, resize)
    timer = records.Timer()
    strategy = strategy or tf.distribute.get_strategy()
    settings = labeling_settings(
        teacher_path, soft, temperature, topk, image_size, resize, small_image
    )
    tf.io.gfile.makedirs(output_dir)
    outputs = output_paths(output_dir, output_prefix, len(input_files))
    mine = [i for i in range(len(input_files)) if i % num_shards == shard_index]
    todo = plan(outputs, mine, settings, overwrite)  # raises unless overwrite
    if todo:
        sizes = [records.count_records(input_files[i]) for i in todo]
        view, predict, derived = prepared_teacher(
            teacher_path, image_size, small_image, settings["teacher_resize"], strategy
        )
        progbar = keras.utils.Progbar(sum(sizes), unit_name="image", verbose=verbose)
        for i in todo:
            manifest = label_file(
                predict,
                input_files[i],
                outputs[i],
                view,
                batch_size,
                soft,
                temperature,
                topk,
                progbar,
            )
            manifests.write_json(outputs[i] + MANIFEST_SUFFIX, {**manifest, **settings, **derived})
            kill_points.kill_point("label_shard", shard=os.path.basename(outputs[i]))
    return write_summary(output_dir, outputs, timer.elapsed())


def _is_complete(output: str) -> bool:
    return tf.io.gfile.exists(output + MANIFEST_SUFFIX) and tf.io.gfile.exists(output)


def _differences(old: dict, new: dict) -> list[str]:
    """'name: old -> new' for every compared setting that differs (the teacher by content)."""
    return manifests.differences(old, new, COMPARED_SETTINGS, {"teacher_fingerprint": "teacher"})


def _check_settings(outputs: list[str], settings: dict, overwrite: bool) -> set[str]:
    """The complete shards among `outputs` labeled with other settings.

    Raises:
      OtherSettingsError: there are some and `overwrite` is False.
    """
    stale = {}
    for output in outputs:
        diffs = _differences(manifests.read_json(output + MANIFEST_SUFFIX), settings)
        if diffs:
            stale[output] = diffs
    if stale and not overwrite:
        first, diffs = next(iter(stale.items()))
        others = f" and {len(stale) - 1} more complete shard(s)" if len(stale) > 1 else ""
        raise manifests.OtherSettingsError(
            os.path.basename(first) + others,
            os.path.dirname(first),
            "were labeled" if others else "was labeled",
            diffs,
            f"Pass --overwrite to relabel {'them' if others else 'it'}, or choose another "
            "--output_dir",
        )
    for output, diffs in stale.items():
        logging.info("relabeling %s: %s", output, "; ".join(diffs))
    return set(stale)


def write_summary(output_dir: str, outputs: list[str], elapsed_s: float) -> dict:
    """Aggregates the per-shard manifests present into `output_dir/manifest.json`.

    `complete` is True only when every shard is labeled and all with the same
    settings (a job array whose jobs disagree is caught here).
    """
    done = [
        manifests.read_json(p + MANIFEST_SUFFIX)
        for p in outputs
        if tf.io.gfile.exists(p + MANIFEST_SUFFIX)
    ]
    skipped = {}
    for m in done:
        for reason, n in m["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    mixed = any(_differences(m, done[0]) for m in done[1:])
    if mixed:
        logging.warning("%s holds shards labeled with different settings", output_dir)
    keys = ("teacher", *COMPARED_SETTINGS, "teacher_description", "image_size", "num_classes")
    summary = {
        "stage": "label",
        "num_shards": len(outputs),
        "shards_complete": len(done),
        "complete": len(done) == len(outputs) and not mixed,
        "mixed_settings": mixed,
        "records_in": sum(m["records_in"] for m in done),
        "labeled": sum(m["labeled"] for m in done),
        "skipped": skipped,
        "num_classes": done[0].get("num_classes") if done and not mixed else None,
        "settings": {k: done[0].get(k) for k in keys} if done and not mixed else {},
        "elapsed_s_this_job": elapsed_s,
    }
    manifests.write_json(os.path.join(output_dir, "manifest.json"), summary)
    return summary
