"""Where images come from: the bundled digits, TFRecord shards, or tfds.

Each source returns the same in-memory `SemiSupervisedData`: a labeled set,
an unlabeled pool (whose true labels, where known, are used only to report
pseudo-label accuracy, never for training) and a test split, all as uint8
[N, S, S, 3] images. That covers everything up to CIFAR scale; the JFT-scale
path streams records instead (noisy_student_tf.data.records and tools/).
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import schema


@dataclasses.dataclass
class SemiSupervisedData:
    """A labeled set, an unlabeled pool and a test split (uint8 images)."""

    labeled_images: np.ndarray
    labeled_labels: np.ndarray
    unlabeled_images: np.ndarray
    unlabeled_labels: np.ndarray  # true labels where known, else -1; never trained on
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    def summary(self) -> str:
        return (
            f"{len(self.labeled_labels)} labeled, {len(self.unlabeled_labels)} "
            f"unlabeled, {len(self.test_labels)} test images of shape "
            f"{self.test_images.shape[1:]}, {self.num_classes} classes"
        )


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
    """Boolean mask of the first `per_class` records of each class, in order.

    This is the "cifar10-4k" protocol of ../shared/data/cifar10/README.md: the
    labeled set is the first 400 records of each class in shard order.
    """
    mask = np.zeros(len(labels), bool)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ConfigError(
                f"class {c} has only {len(idx)} records; "
                f"data.num_labeled_per_class={per_class} asks for more"
            )
        mask[idx[:per_class]] = True
    return mask


def _first_per_class_split(
    images, labels, test_images, test_labels, per_class: int, num_classes: int
) -> SemiSupervisedData:
    """The train split cut by `first_per_class` into labeled and unlabeled."""
    labeled = first_per_class(labels, per_class, num_classes)
    return SemiSupervisedData(
        images[labeled],
        labels[labeled],
        images[~labeled],
        labels[~labeled],
        test_images,
        test_labels,
        num_classes,
    )


def _upscale(images: np.ndarray, image_size: int) -> np.ndarray:
    resized = tf.image.resize(
        images.astype(np.float32), [image_size, image_size], method="bilinear"
    )
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def load_digits(
    num_labeled_per_class: int = 5,
    num_test_per_class: int = 36,
    image_size: int = 32,
    split_seed: int = 0,
) -> SemiSupervisedData:
    """scikit-learn's bundled digits (1,797 8x8 images), upscaled to RGB.

    The split is deterministic given `split_seed`: per class, a seeded shuffle
    puts `num_labeled_per_class` images in the labeled set, the next
    `num_test_per_class` in the test split and the rest in the unlabeled pool.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    gray = digits.images * (255.0 / 16.0)  # pixel values are 0..16
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    images = _upscale(rgb, image_size)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    parts = {"labeled": [], "test": [], "unlabeled": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= num_labeled_per_class + num_test_per_class:
            raise ConfigError(
                f"digits class {c} has {len(idx)} images; cannot take "
                f"{num_labeled_per_class} labeled + {num_test_per_class} test"
            )
        parts["labeled"].append(idx[:num_labeled_per_class])
        parts["test"].append(
            idx[num_labeled_per_class : num_labeled_per_class + num_test_per_class]
        )
        parts["unlabeled"].append(idx[num_labeled_per_class + num_test_per_class :])
    idx = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    return SemiSupervisedData(
        images[idx["labeled"]],
        labels[idx["labeled"]],
        images[idx["unlabeled"]],
        labels[idx["unlabeled"]],
        images[idx["test"]],
        labels[idx["test"]],
        num_classes=10,
    )


def _read_split(files: list[str], image_size: int | None):
    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(schema.parse_source, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(
        lambda r: (schema.decode_image(r[schema.IMAGE], image_size), r[schema.LABEL]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    images, labels = [], []
    for x, y in ds.batch(4096):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def shard_files(path: str, split: str) -> list[str]:
    """The sorted shards `PATH/SPLIT-*.tfrecord`; a clear error if there are none."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data.path={path!r} is not a directory of TFRecord shards")
    files = sorted(glob.glob(os.path.join(path, f"{split}-*.tfrecord")))
    if not files:
        raise FileNotFoundError(f"no '{split}-*.tfrecord' shards in data.path={path!r}")
    return files


def load_tfrecord_dir(
    path: str, num_classes: int, num_labeled_per_class: int, image_size: int | None = None
) -> SemiSupervisedData:
    """Source-schema shards `PATH/train-*` and `PATH/test-*` (e.g. shared CIFAR-10)."""
    train_files, test_files = shard_files(path, "train"), shard_files(path, "test")
    images, labels = _read_split(train_files, image_size)
    test_images, test_labels = _read_split(test_files, image_size)
    return _first_per_class_split(
        images, labels, test_images, test_labels, num_labeled_per_class, num_classes
    )


def load_tfds(
    name: str,
    num_labeled_per_class: int,
    image_size: int | None = None,
    data_dir: str | None = None,
) -> SemiSupervisedData:
    """A tfds image classification dataset with 'train' and 'test' splits."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()
    num_classes = builder.info.features["label"].num_classes

    def arrays(split):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        if image_size is not None:
            ds = ds.map(
                lambda x, y: (
                    tf.cast(tf.round(tf.image.resize(x, [image_size, image_size])), tf.uint8),
                    y,
                )
            )
        xs, ys = zip(*[(x, y) for x, y in tfds.as_numpy(ds.batch(4096))])
        return np.concatenate(xs), np.concatenate(ys).astype(np.int64)

    images, labels = arrays("train")
    test_images, test_labels = arrays("test")
    return _first_per_class_split(
        images, labels, test_images, test_labels, num_labeled_per_class, num_classes
    )


SOURCES = ("digits", "tfrecord", "tfds")


def load_source(data_config) -> SemiSupervisedData:
    """Loads the source a config's `data` block names (see experiments/configs)."""
    source = data_config.source
    if source == "digits":
        return load_digits(
            data_config.num_labeled_per_class,
            data_config.num_test_per_class,
            data_config.image_size,
            data_config.split_seed,
        )
    if source == "tfrecord":
        return load_tfrecord_dir(
            data_config.path,
            data_config.num_classes,
            data_config.num_labeled_per_class,
            data_config.image_size,
        )
    if source == "tfds":
        return load_tfds(
            data_config.name,
            data_config.num_labeled_per_class,
            data_config.image_size,
            data_config.get("path") or None,
        )
    raise ConfigError(f"data.source={source!r} is not one of {SOURCES}")
