"""Labeled evaluation images from TFRecord shards or a tfds split, as arrays.

`--data` is a folder or glob of shards in the record schema
(docs/data_format.md: `image/encoded`, `image/class/label`), or
`tfds:NAME:SPLIT`. Images get the evaluation view at the model's side
(`data.preprocess.eval_preprocess`, the function the exported SavedModel
applies in its graph), so every model and every corruption sees the image
the model would see when served; an official checkpoint's with the official
resize (`resize="official"`, float32 pixels, as its published accuracy).
Unlabeled records (label -1) are skipped.

With `max_examples` set, a seeded shuffle (buffer up to 100k records) picks
the sample before decoding, so the sample is the same on every run and
across models, and a large split is not decoded in full.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from noisy_student_tf.data import records, schema
from noisy_student_tf.data.preprocess import eval_preprocess
from noisy_student_tf.data.sources import TFDS_PREFIX, split_tfds_spec
from noisy_student_tf.errors import ConfigError

SHUFFLE_BUFFER = 100_000


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tfds_builder(name: str, data_dir: str | None, prepare: bool, spec: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises several kinds for a bad name
        raise ConfigError(f"--data={spec!r}: tfds has no such dataset ({_first_line(e)})") from e
    if not builder.is_prepared():
        if not prepare:
            return None
        try:
            builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 - no network, no manual files, ...
            raise FileNotFoundError(
                f"--data={spec!r}: not prepared in --tfds_data_dir={data_dir!r} and could not "
                f"be downloaded ({_first_line(e)})"
            ) from e
    return builder


def _from_tfds(name: str, split: str, data_dir: str | None, prepare: bool = True):
    builder = _tfds_builder(name, data_dir, prepare, f"tfds:{name}:{split}")
    if builder is None:
        return None, None
    if split not in builder.info.splits:
        raise ConfigError(
            f"--data=tfds:{name}:{split}: no split {split!r}; it has {sorted(builder.info.splits)}"
        )
    label = builder.info.features["label"] if "label" in builder.info.features else None
    names = list(label.names) if label is not None and hasattr(label, "names") else None
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    return ds, names


def _from_records(spec: str):
    files = records.list_files(spec)
    folder = spec if tf.io.gfile.isdir(spec) else os.path.dirname(files[0])
    names = None
    manifest = os.path.join(folder, "manifest.json")
    if tf.io.gfile.exists(manifest):
        with tf.io.gfile.GFile(manifest) as f:
            names = json.load(f).get("classes") or None
    ds = tf.data.TFRecordDataset(files).map(schema.parse_source)
    ds = ds.map(lambda r: (r[schema.IMAGE], r[schema.LABEL]))
    return ds, names


def _to_arrays(ds, image_size, small_image, max_examples, seed, spec, resize="tf2"):
    ds = ds.filter(lambda x, y: y >= 0)
    if max_examples and max_examples > 0:
        ds = ds.shuffle(min(SHUFFLE_BUFFER, 10 * max_examples), seed=seed).take(max_examples)

    def view(image, label):
        if image.dtype == tf.string:
            image = schema.decode_image(image)
        if image_size is not None:
            image = eval_preprocess(image, image_size, small_image, resize)
        return image, tf.cast(label, tf.int64)

    ds = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images, labels = [], []
    for image, label in ds:
        images.append(image.numpy())
        labels.append(int(label))
    if not images:
        raise ConfigError(f"--data={spec!r} holds no labeled example (label >= 0)")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ConfigError(
            f"--data={spec!r}: images have several sizes {sorted(shapes)[:4]}; give the "
            f"model's side with --image_size (a SavedModel taking any size does not fix it)"
        )
    return np.stack(images), np.asarray(labels, np.int64)


def check_spec(spec: str) -> None:
    """Fails fast on a malformed `--data` (before any model is loaded).

    Raises:
      ConfigError: a `tfds:` spec that is not tfds:NAME:SPLIT.
      FileNotFoundError: a path or glob that matches no shard.
    """
    if spec.startswith(TFDS_PREFIX):
        split_tfds_spec(spec, "--data")
        return
    try:
        records.list_files(spec)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--data={spec!r}: {e}") from e


def load_eval_data(
    spec: str,
    image_size: int | None = None,
    max_examples: int = 0,
    seed: int = 0,
    tfds_data_dir: str | None = None,
    small_image: bool | None = None,
    resize: str = "tf2",
):
    """(images [N, S, S, 3], labels int64 [N], class names or None).

    Args:
      spec: a folder or glob of source shards, or `tfds:NAME:SPLIT`.
      image_size: the model's side S; None keeps the images' own size (they
        must then all be the same size).
      max_examples: a seeded sample of at most this many; 0 takes all.
      seed: the sample's shuffle seed.
      tfds_data_dir: tfds data_dir for `tfds:` specs.
      small_image: `eval_preprocess`'s path; None picks by size.
      resize: `eval_preprocess`'s resize, the model's own
        (`ModelArtifact.eval_resize`): "tf2" gives uint8 images, "official"
        (an official checkpoint) float32. The sample is the same for both.
    """
    check_spec(spec)
    if spec.startswith(TFDS_PREFIX):
        ds, names = _from_tfds(*split_tfds_spec(spec, "--data"), tfds_data_dir)
    else:
        ds, names = _from_records(spec)
    try:
        images, labels = _to_arrays(ds, image_size, small_image, max_examples, seed, spec, resize)
    except tf.errors.InvalidArgumentError as e:  # e.g. an image that does not decode
        if spec.startswith(TFDS_PREFIX):
            raise
        raise schema.name_bad_image(records.list_files(spec), "--data", e) from e
    return images, labels, names


def tfds_corrupted_loader(name: str, data_dir: str | None, image_size, max_examples, seed):
    """A `(corruption, severity) -> (images, labels) or None` reader of e.g. cifar10_corrupted.

    tfds stores each pair as config `NAME/CORRUPTION_SEVERITY` (test split);
    pairs not prepared in `data_dir` give None, so the caller falls back to
    the TF ops (nothing is downloaded). The same seeded sample is taken as
    from the clean split, so the same clean images are compared when the
    corrupted split keeps the clean test order (cifar10_corrupted does).
    """

    def load(corruption: str, severity: int):
        ds, _ = _from_tfds(f"{name}/{corruption}_{severity}", "test", data_dir, prepare=False)
        if ds is None:
            return None
        spec = f"tfds:{name}/{corruption}_{severity}:test"
        return _to_arrays(ds, image_size, None, max_examples, seed, spec)

    return load
