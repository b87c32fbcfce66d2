"""Where images come from: in memory (digits, a shard folder, tfds) or as streams.

In memory (`load_source`, config `data.source`): the bundled digits, a
folder of `train-*`/`test-*` shards or a tfds dataset, cut into the same
`SemiSupervisedData`: a labeled set, an unlabeled pool (whose true labels,
where known, are used only to report pseudo-label accuracy, never for
training) and a test split, all as uint8 [N, S, S, 3] arrays. That covers
everything up to CIFAR scale.

Streams (`load_streams`, config `data.labeled`, `data.unlabeled`,
`data.test`): each set is named on its own, as a folder or glob of shards in
the record schema or as `tfds:NAME:SPLIT` (tfds split slicing allowed), so
the unlabeled set can be another, larger dataset (the paper's ImageNet +
JFT). Nothing is read here beyond the files' record headers (to count them):
`StreamingData` only names the sources, and tf.data reads them
(data/pipeline.py), so host memory does not grow with the unlabeled set.
"""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf

from noisy_student_tf.data import records, schema
from noisy_student_tf.errors import ConfigError


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


# Why an undecodable train image stops the run instead of being skipped.
SPLIT_KEPT = (
    "a train image is never skipped, as that would shift which images are labeled "
    "(the first num_labeled_per_class of each class) and which are the pool"
)


def load_tfrecord_dir(
    path: str, num_classes: int, num_labeled_per_class: int, image_size: int | None = None
) -> SemiSupervisedData:
    """Source-schema shards `PATH/train-*` and `PATH/test-*` (e.g. shared CIFAR-10)."""
    train_files, test_files = shard_files(path, "train"), shard_files(path, "test")
    try:
        images, labels = _read_split(train_files, image_size)
    except tf.errors.InvalidArgumentError as e:  # e.g. an image that does not decode
        raise schema.name_bad_image(train_files, "data.path train-*", e, SPLIT_KEPT) from e
    try:
        test_images, test_labels = _read_split(test_files, image_size)
    except tf.errors.InvalidArgumentError as e:
        raise schema.name_bad_image(test_files, "data.path test-*", e) from e
    records.check_labels(labels, train_files, num_classes, "data.path train-*", unlabeled=True)
    records.check_labels(test_labels, test_files, num_classes, "data.path test-*", unlabeled=False)
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
    """Loads the source a config's `data` block names (see noisy_student_tf/configs)."""
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


# --- streams -----------------------------------------------------------------

TFDS_PREFIX = "tfds:"
STREAM_KEYS = ("labeled", "unlabeled", "test")


@dataclasses.dataclass(frozen=True)
class RecordSource:
    """One streamed set: shards in the record schema, or a tfds split.

    Attributes:
      spec: the config value it came from (for messages and manifests).
      files: the sorted shards (empty for tfds).
      tfds_name, tfds_split, data_dir: the tfds split, for `tfds:NAME:SPLIT`.
      num_records: records in the set (counted from the shards' headers or
        read from the tfds metadata).
    """

    spec: str
    files: tuple = ()
    tfds_name: str = ""
    tfds_split: str = ""
    data_dir: str | None = None
    num_records: int = 0

    def training_stream(
        self,
        image_size: int,
        seed: int,
        small_image: bool | None,
        cache: bool = False,
        num_classes: int | None = None,
    ):
        """A labeled set's training stream (`pipeline.RecordStream`): unbatched
        (encoded image, int64 label), one shuffled pass, read per input pipeline.

        `cache`: keep the records (encoded) in memory after the first pass (see
        `cacheable`); a tfds split is read with its own shuffled file order.
        `num_classes`: a record label outside [0, num_classes) stops the
        stream naming its shard and record.
        """
        from noisy_student_tf.data import pipeline

        if self.tfds_name:
            return pipeline.tfds_stream(
                self.tfds_name,
                self.tfds_split,
                image_size,
                self.data_dir,
                small_image,
                shuffle_files=True,
                seed=seed,
            )
        return pipeline.source_stream(
            self.files,
            image_size,
            seed=seed,
            small_image=small_image,
            cache=cache,
            num_classes=num_classes,
        )

    def eval_batches(
        self,
        image_size: int,
        batch_size: int,
        small_image: bool | None,
        num_classes: int | None = None,
        resize: str = "tf2",
    ) -> tf.data.Dataset:
        """Batches of (images, int64 labels), eval view, in order (a test set).

        Images are uint8, or float32 with resize="official" (`eval_preprocess`).
        """
        from noisy_student_tf.data import pipeline

        if self.tfds_name:
            ds = pipeline.tfds_records(
                self.tfds_name,
                self.tfds_split,
                image_size,
                self.data_dir,
                small_image,
                resize=resize,
            )
            return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return pipeline.eval_records(
            self.files, image_size, batch_size, small_image, num_classes, resize
        )

    def source_items(self):
        """The set's records as (encoded image, label, key) for `ingest.write_source_shards`,
        or None when it already is shards (record files are labeled as they are)."""
        if not self.tfds_name:
            return None

        def items():  # nothing is read until the first item is asked for
            from noisy_student_tf.data import ingest

            yield from ingest.tfds_items(self.tfds_name, self.tfds_split, self.data_dir)[1]

        return items()


def split_tfds_spec(spec: str, where: str) -> tuple[str, str]:
    """(name, split) of a `tfds:NAME:SPLIT` spec; the split may be sliced (train[:10%]).

    Args:
      where: the flag or key the spec came from, for the error message.
    """
    parts = spec[len(TFDS_PREFIX) :].split(":", 1)  # the split may hold ":" (train[:10%])
    if not spec.startswith(TFDS_PREFIX) or len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"{where}={spec!r} is not a tfds split; expected tfds:NAME:SPLIT, "
            "e.g. tfds:cifar10:train or tfds:imagenet2012:train[:10%]"
        )
    return parts[0], parts[1]


def _tfds_source(key: str, spec: str, data_dir: str | None) -> RecordSource:
    name, split = split_tfds_spec(spec, f"data.{key}")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ConfigError(f"data.{key}={spec!r}: tfds has no dataset {name!r}") from e
    try:
        try:
            num = builder.info.splits[split].num_examples
        except KeyError:  # no split metadata (e.g. tfds mock data): ask the dataset
            num = int(builder.as_dataset(split=split).cardinality())
            if num < 0:
                raise
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"data.{key}={spec!r}: split {split!r} is not available in {builder.data_dir!r} "
            f"(prepared splits: {sorted(builder.info.splits.keys()) or 'none'}; prepare the "
            f"dataset with tfds first, data_dir from data.path): {e}"
        ) from e
    return RecordSource(spec, (), name, split, data_dir, int(num))


def record_source(key: str, spec: str, data_dir: str | None = None) -> RecordSource:
    """Resolves one `data.<key>` value: a folder or glob of shards, or tfds:NAME:SPLIT.

    Raises:
      ConfigError: a malformed tfds spec, an unknown dataset or split, or a
        folder/glob that matches no shard (the message names the key).
    """
    if spec.startswith(TFDS_PREFIX):
        return _tfds_source(key, spec, data_dir)
    try:
        files = records.list_files(spec)
    except FileNotFoundError as e:
        raise ConfigError(
            f"data.{key}={spec!r} matches no TFRecord shard; expected a folder of "
            "*.tfrecord shards, a glob such as /data/train-*, or tfds:NAME:SPLIT"
        ) from e
    return RecordSource(spec, tuple(files), num_records=sum(map(records.count_records, files)))


@dataclasses.dataclass(frozen=True)
class StreamingData:
    """The streamed sets of a run; `unlabeled` is None when not given.

    `pseudo_labeled` is a tools/filter_balance.py output folder the first
    student trains from instead of a teacher's labels (config
    `data.pseudo_labeled`), or "".
    """

    labeled: RecordSource
    unlabeled: RecordSource | None
    test: RecordSource
    num_classes: int
    image_size: int
    pseudo_labeled: str = ""

    @property
    def num_labeled(self) -> int:
        return self.labeled.num_records

    def summary(self) -> str:
        unlabeled = self.unlabeled.num_records if self.unlabeled else 0
        return (
            f"{self.labeled.num_records} labeled, {unlabeled} unlabeled, "
            f"{self.test.num_records} test records (streamed at {self.image_size} px), "
            f"{self.num_classes} classes"
        )


def is_stream_mode(data_config) -> bool:
    """True when `data.labeled` names the labeled set (the streamed protocol)."""
    return bool(data_config.get("labeled", ""))


def validate_stream_config(data_config) -> None:
    """Rejects mixed or incomplete data settings before anything is read.

    Raises:
      ConfigError: naming the key; e.g. `data.unlabeled` without
        `data.labeled`, or `data.labeled` together with an in-memory
        `data.source` other than the default.
    """
    given = [k for k in (*STREAM_KEYS, "pseudo_labeled") if data_config.get(k, "")]
    if not is_stream_mode(data_config):
        if given:
            raise ConfigError(
                f"data.{given[0]} is set but data.labeled is not; the streamed protocol "
                "names its labeled set with data.labeled (a folder, glob or tfds:NAME:SPLIT)"
            )
        return
    if data_config.source not in ("digits", "stream"):
        raise ConfigError(
            f"data.source={data_config.source!r} and data.labeled both name the data; "
            "use data.labeled/unlabeled/test alone (streams) or data.source alone (in memory)"
        )
    if not data_config.get("test", ""):
        raise ConfigError("data.test is empty; the streamed protocol needs a test set")
    if data_config.num_classes < 2:
        raise ConfigError(f"data.num_classes must be >= 2, got {data_config.num_classes}")
    if data_config.image_size < 8:
        raise ConfigError(
            f"data.image_size must be the model's input side (>= 8), got {data_config.image_size}"
        )


def load_streams(data_config) -> StreamingData:
    """Resolves `data.labeled`, `data.unlabeled`, `data.test` (see `record_source`).

    Only shard headers are read (to count records); images are read later,
    by tf.data. `data.path` is the tfds data_dir.
    """
    validate_stream_config(data_config)
    data_dir = data_config.get("path") or None
    sources = {
        key: record_source(key, data_config[key], data_dir) if data_config.get(key, "") else None
        for key in STREAM_KEYS
    }
    for key in ("labeled", "test"):
        if sources[key].num_records == 0:
            raise ConfigError(f"data.{key}={data_config[key]!r} holds no records")
    pseudo = data_config.get("pseudo_labeled", "")
    if pseudo and not tf.io.gfile.isdir(pseudo):
        raise ConfigError(
            f"data.pseudo_labeled={pseudo!r} is not a folder (expected the --output_dir "
            "of tools/filter_balance.py)"
        )
    return StreamingData(
        sources["labeled"],
        sources["unlabeled"],
        sources["test"],
        int(data_config.num_classes),
        int(data_config.image_size),
        pseudo,
    )


def load(data_config) -> SemiSupervisedData | StreamingData:
    """In-memory data or streams, whichever the config names (see module docstring)."""
    if is_stream_mode(data_config):
        return load_streams(data_config)
    validate_stream_config(data_config)
    return load_source(data_config)


def cacheable(source: RecordSource, limit_bytes: int) -> bool:
    """Whether a set's shards fit in `limit_bytes` of host memory.

    The training stream caches records still encoded (each is decoded, and
    cropped, anew every epoch), so what it holds is about the files' size.
    A tfds split is never cached.
    """
    if source.tfds_name:
        return False
    return sum(tf.io.gfile.stat(f).length for f in source.files) <= limit_bytes
