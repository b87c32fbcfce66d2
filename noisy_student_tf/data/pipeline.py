"""tf.data pipelines that feed `NoisyStudent.fit`.

Every training step sees one labeled batch of `batch_size` images and, for a
student, one unlabeled batch `unlabeled_ratio` times larger (the official
code's `unlabel_ratio`: 14, then 28 for the paper's L2 runs). The two streams
are shuffled, repeated and batched separately and zipped, so the ratio holds
exactly at every step. The training preprocessing (`preprocess.TrainPreprocess`:
crop, flip, RandAugment, Cutout) is applied to the student's copies only; in
the online-teacher mode the un-augmented unlabeled images travel alongside
for the teacher (the official `data_input.py` gives the teacher the eval
view of the image, never the student's augmented one).

Mixing. A selection from `filter_and_balance` is grouped by class, so a
shuffle buffer smaller than the set would give batches of two or three
classes for many steps. In-memory streams (arrays) are therefore shuffled
completely: each epoch is a fresh permutation of the indices (8 bytes per
image) from which batches are gathered. Record streams (`RecordStream`:
`source_stream`, `pseudo_labeled_stream`) shuffle the file list, read all
files (up to 64) interleaved record by record, and shuffle the serialized
records.

Determinism. Given `seed`, the batches are the same run after run: index
permutations and augmentation keys are stateless functions of (seed, stream,
epoch or batch index), maps run in parallel with deterministic ordering, and
record streams use seeded shuffles (which, as all tf.data shuffles, also
depend on the global seed that `keras.utils.set_random_seed` sets).

Resume. `training_dataset(..., start_batch=k)` is the stream a resumed fit
continues with at step k: in-memory streams skip k batches of indices (cheap:
nothing is gathered or augmented) and so continue exactly where the killed
run was; record streams are not replayed (that would decode every record
seen since the start) but start a fresh shuffle seeded with k. On both, the
augmentation keys (those of per-record crops too) continue at batch index k.

Hosts. Under a multi-host strategy every host builds its own input pipeline
(`distributed_training_dataset`: `distribute_datasets_from_function`, as the
official TPU input functions shard by host) and reads only its share before
anything is decoded: record streams (`RecordStream`) every count-th shard
file, or every count-th record when there are fewer files than hosts; arrays
the host's slice of each global batch of indices, so the hosts together see
the batch one host would. Each host folds its pipeline index into its
augmentation keys, so two hosts never draw the same noise; with one pipeline
(one host, or no strategy) nothing changes. A host's batch is cut into one
part per local replica.

Record views. Records stay encoded until each is decoded on its own, before
batching. With the large-image training crop (`TrainPreprocess.crops_records`)
a training record is cropped from the whole encoded image and resized once,
as the official parser did (`preprocess.decode_and_random_crop`; only the
window of a JPEG is decoded), with a key from (seed, stream, batch index,
position in the batch); flip and RandAugment then run on the batch. Otherwise
(small images, no crop) a record is decoded with the eval view
(`preprocess.eval_preprocess`: the image as it is for small images, the
official center crop for large ones) and preprocessed in batches, as arrays.
The teacher, labeling and evaluation always see the eval view.

Elements are dicts (all images uint8 [B, H, W, 3]):
  images [B], labels int64 [B]                           always
  unlabeled_images [rB]                                  student only
  unlabeled_targets float32 [rB, C]                      offline pseudo labels
  unlabeled_teacher_images [rB]                          online teacher
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from noisy_student_tf.data import preprocess as preprocessing
from noisy_student_tf.data import schema

# (uint8 images [B, H, W, 3], seed=int [2] key) -> uint8 images [B, S, S, 3].
Preprocess = Callable[..., tf.Tensor]

LABELED, UNLABELED = 0, 1  # stream ids in the keys
DATASET_SHUFFLE_BUFFER = 1024  # official data_input.py: shuffle(1024) after interleave
RECORD_SHUFFLE_BUFFER = 10_000  # serialized records (a few KB each) shuffled before decoding
MAX_OPEN_FILES = 64  # official data_input.py: parallel_interleave cycle_length 64


@dataclasses.dataclass(frozen=True)
class RecordStream:
    """A streamed training set, still encoded, that each input pipeline (host)
    reads its own share of.

    Attributes:
      read: (pipeline index, pipeline count) -> that pipeline's unbatched
        (encoded image bytes, label or target) elements, one shuffled pass.
        The shard files are divided between the pipelines before any is read
        (the records, when there are fewer files than pipelines), so no host
        decodes another's images.
      image_size: the model's input side.
      small_image: the eval view's path (see `preprocess.eval_preprocess`).
      resize: the eval view's resize (`preprocess.EVAL_RESIZES`).
    """

    read: Callable[[int, int], tf.data.Dataset]
    image_size: int
    small_image: bool | None = None
    resize: str = "tf2"

    def map(self, fn: Callable) -> RecordStream:
        """The stream with `fn(encoded, y)` applied to every element (e.g. to its target)."""

        def read(index, count):
            return self.read(index, count).map(
                fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )

        return dataclasses.replace(self, read=read)

    def decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """The eval view of one encoded image: [S, S, 3], uint8 (float32 with resize="official")."""
        return preprocessing.eval_preprocess(
            encoded, self.image_size, self.small_image, self.resize
        )

    def eval_view(self, shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
        """Pipeline `shard[0]` of `shard[1]`'s elements as (eval view, y); by default all."""
        return self.read(*shard).map(
            lambda encoded, y: (self.decode(encoded), y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


def _stream_key(seed: int, stream: int) -> tf.Tensor:
    return tf.constant([seed, stream], tf.int64)


def _in_memory(
    arrays, batch_size: int, seed: int, stream: int, start_batch: int = 0, shard=(0, 1)
) -> tf.data.Dataset:
    """Batches gathered from arrays along a fresh full permutation per epoch.

    `start_batch` skips that many batches of indices, so a resumed stream
    continues with the batch the killed one would have produced next.
    `shard` = (index, count): pipeline `index` of `count` gathers only its
    slice of each global batch of indices, so the pipelines together see
    the global batch one pipeline would, and none gathers another's images.
    """
    tensors = tf.nest.map_structure(tf.convert_to_tensor, arrays)
    n = int(tf.nest.flatten(tensors)[0].shape[0])
    if n == 0:
        raise ValueError("an in-memory training stream is empty")
    base = _stream_key(seed, stream)

    def epoch(index):
        key = tf.random.experimental.stateless_fold_in(base, index)
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), key)
        return tf.data.Dataset.from_tensor_slices(order)

    order = tf.data.Dataset.counter().flat_map(epoch).batch(batch_size, drop_remainder=True)
    if start_batch:
        order = order.skip(start_batch)
    shard_index, count = shard
    if count > 1:
        size = batch_size // count
        order = order.map(lambda idx: idx[shard_index * size : (shard_index + 1) * size])
    return order.map(
        lambda idx: tf.nest.map_structure(lambda t: tf.gather(t, idx), tensors),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _shuffled(ds: tf.data.Dataset, seed: int, stream: int, buffer: int, start_batch: int = 0):
    size = int(ds.cardinality())
    if size >= 0:
        buffer = min(buffer, size)
    if buffer > 1:
        # A resumed stream (start_batch > 0) gets a shuffle of its own.
        shuffle_seed = 2 * seed + stream + 7919 * start_batch
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.repeat()


def _record_batches(source, size, seed, stream, buffer, start_batch, shard, base, cropper, clean):
    """Batches of `size` records of `source` (a RecordStream), each decoded on its own.

    With `cropper` (a TrainPreprocess that `crops_records`) a record's image
    is its training crop from the whole encoded image, keyed by its batch
    index (under `base`, as the batch's other draws) and its slot in the
    batch, followed by its eval view when `clean` (the online teacher's);
    otherwise the eval view alone. Elements: (images, [eval views,] *rest).
    """
    ds = _shuffled(source.read(*shard), seed, stream, buffer, start_batch)

    def view(position, element):
        encoded, rest = element[0], element[1:]
        if cropper is None:
            return (source.decode(encoded), *rest)
        key = tf.random.experimental.stateless_fold_in(base, position // size)
        image = cropper.record_crop(encoded, key, position % size)
        return (image, source.decode(encoded), *rest) if clean else (image, *rest)

    ds = ds.enumerate(start_batch * size).map(
        view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return ds.batch(size, drop_remainder=True)


def _stream(
    source, batch_size, seed, stream, buffer, preprocess, build, start_batch, shard, clean=False
):
    """Shuffled, repeated batches of `source` mapped to dicts by `build`.

    `build(student_images, clean_images, *rest)` gets the batch after and
    before preprocessing (for a record stream cropped per record, its eval
    views when `clean`), with a key that depends on (seed, stream, batch);
    batch indices start at `start_batch`. `batch_size` is global: pipeline
    `shard[0]` of `shard[1]` makes batches of its share, from its own part
    of the data, with keys that also depend on its index (one pipeline
    keeps the keys it always had).
    """
    shard_index, count = shard
    size = batch_size // count
    base = _stream_key(seed, stream + 2)
    if count > 1:
        base = tf.random.experimental.stateless_fold_in(base, shard_index)
    trains = isinstance(preprocess, preprocessing.TrainPreprocess)
    crops = isinstance(source, RecordStream) and trains and preprocess.crops_records
    if isinstance(source, RecordStream):
        cropper = preprocess if crops else None
        ds = _record_batches(
            source, size, seed, stream, buffer, start_batch, shard, base, cropper, clean
        )
        preprocess = preprocess.after_record_crop() if crops else preprocess
    elif isinstance(source, tf.data.Dataset):
        source = source.shard(count, shard_index) if count > 1 else source
        ds = _shuffled(source, seed, stream, buffer, start_batch)
        ds = ds.batch(size, drop_remainder=True)
    else:
        ds = _in_memory(source, batch_size, seed, stream, start_batch, shard)

    def apply(index, element):
        parts = element if isinstance(element, tuple) else (element,)
        images, rest = parts[0], parts[1:]
        unaugmented = images
        if crops and clean:
            unaugmented, rest = rest[0], rest[1:]
        if preprocess is not None:
            key = tf.random.experimental.stateless_fold_in(base, index)
            student = preprocess(images, seed=key)
        else:
            student = images
        return build(student, unaugmented, *rest)

    return ds.enumerate(start_batch).map(
        apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _per_replica(ds: tf.data.Dataset, replicas: int) -> tf.data.Dataset:
    """Each batch cut into `replicas` consecutive parts, one element each.

    A strategy hands a pipeline's consecutive elements to its local replicas
    in turn, so replica r trains on part r of every step's batch (as
    `experimental_distribute_dataset` splits a global batch).
    """
    if replicas == 1:
        return ds

    def split(tensor):
        size = tensor.shape[0] // replicas
        parts = tf.reshape(tensor, tf.concat([[replicas, size], tf.shape(tensor)[1:]], 0))
        return tf.ensure_shape(parts, [replicas, size, *tensor.shape[1:]])

    return ds.flat_map(
        lambda element: tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(split, element))
    )


def _as_source(value):
    if isinstance(value, (tf.data.Dataset, RecordStream)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(np.asarray(v) if not tf.is_tensor(v) else v for v in value)
    return value if tf.is_tensor(value) else np.asarray(value)


def training_dataset(
    labeled,
    batch_size: int,
    unlabeled=None,
    unlabeled_ratio: int = 0,
    preprocess: Preprocess | None = None,
    online_teacher: bool = False,
    seed: int = 0,
    shuffle_buffer: int = DATASET_SHUFFLE_BUFFER,
    start_batch: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """An infinite dataset of per-step dicts (see the module docstring).

    Args:
      labeled: (uint8 images [N, H, W, 3], int labels [N]) arrays, shuffled
        completely; a `RecordStream` (`source_stream`) or an unbatched
        tf.data.Dataset of (image, label), shuffled with `shuffle_buffer`.
      batch_size: labeled images per step (global, across replicas).
      unlabeled: for offline pseudo labels (images, float32 targets [N, C]),
        for the online teacher images alone; as arrays, a `RecordStream`
        (`pseudo_labeled_stream`) or an unbatched Dataset.
      unlabeled_ratio: unlabeled images per labeled image in each step.
      preprocess: the student's training preprocessing,
        `preprocess(uint8 batch, seed=int [2] key) -> uint8 batch` (e.g.
        `preprocess.TrainPreprocess`); None trains on the images as given.
      online_teacher: keep the un-preprocessed unlabeled batch for a teacher
        inside the train step.
      seed: the seed of every shuffle and augmentation key.
      shuffle_buffer: buffer for streams given as Datasets (decoded images;
        record streams are shuffled before decoding as well).
      start_batch: the step a resumed fit continues from (see "Resume" in
        the module docstring); 0 for a fresh fit.
      input_context: which input pipeline (host) of a strategy this is
        (see "Hosts" in the module docstring); None: the only one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    context = input_context or tf.distribute.InputContext()
    shard = (context.input_pipeline_id, context.num_input_pipelines)
    replicas = context.num_replicas_in_sync // shard[1]
    if batch_size % context.num_replicas_in_sync:
        raise ValueError(
            f"batch_size={batch_size} does not split over {context.num_replicas_in_sync} replicas"
        )
    lab = _stream(
        _as_source(labeled),
        batch_size,
        seed,
        LABELED,
        shuffle_buffer,
        preprocess,
        lambda x, clean, y: {"images": x, "labels": tf.cast(y, tf.int64)},
        start_batch,
        shard,
    )
    if unlabeled is None:
        return _per_replica(lab, replicas).prefetch(tf.data.AUTOTUNE)
    if unlabeled_ratio < 1 or int(unlabeled_ratio) != unlabeled_ratio:
        raise ValueError(f"unlabeled_ratio must be an integer >= 1, got {unlabeled_ratio}")
    unl_batch = batch_size * int(unlabeled_ratio)
    if online_teacher:

        def build(x, clean, *_):
            return {"unlabeled_images": x, "unlabeled_teacher_images": clean}

    else:

        def build(x, clean, t):
            return {"unlabeled_images": x, "unlabeled_targets": tf.cast(t, tf.float32)}

    unl = _stream(
        _as_source(unlabeled),
        unl_batch,
        seed,
        UNLABELED,
        shuffle_buffer,
        preprocess,
        build,
        start_batch,
        shard,
        clean=online_teacher,
    )
    both = tf.data.Dataset.zip(lab, unl).map(lambda a, b: {**a, **b})
    return _per_replica(both, replicas).prefetch(tf.data.AUTOTUNE)


def distributed_training_dataset(strategy: tf.distribute.Strategy, *args, **kwargs):
    """`training_dataset(*args, **kwargs)` built on every host for its own input pipeline.

    `strategy.distribute_datasets_from_function`, as the official TPU input
    pipelines shard by host: each pipeline reads its share of the data and
    draws its own augmentation keys (see "Hosts" in the module docstring).
    Under the default strategy this is `training_dataset` itself.
    """
    return strategy.distribute_datasets_from_function(
        lambda context: training_dataset(*args, input_context=context, **kwargs)
    )


def _interleaved(
    files: Sequence[str],
    seed: int,
    shuffle_buffer: int,
    caller: str,
    shuffle_files: bool = True,
    named: bool = False,
    shard: tuple[int, int] = (0, 1),
):
    """Serialized records of `files`: file order shuffled (`shuffle_files`), up to 64
    read interleaved, records shuffled over `shuffle_buffer` (0 or 1: in order).

    With `named`, each element is (file path, index in the file, record), so
    an error about a record can name where it is; the order is the same.
    `shard` = (index, count): only pipeline `index`'s files (every count-th,
    as the official TPU input shards its file list by host), or its records
    when there are fewer files than pipelines; one pipeline reads all.
    """
    files = [str(f) for f in files]
    if not files:
        raise FileNotFoundError(f"{caller} got no files")
    shard_index, count = shard
    by_file = len(files) >= count
    names = tf.data.Dataset.from_tensor_slices(files)
    if count > 1 and by_file:
        names = names.shard(count, shard_index)
    if shuffle_files:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(path):
        records = tf.data.TFRecordDataset(path)
        if not named:
            return records
        return records.enumerate().map(lambda index, record: (path, index, record))

    ds = names.interleave(
        read,
        cycle_length=min(len(files), MAX_OPEN_FILES),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if count > 1 and not by_file:
        ds = ds.shard(count, shard_index)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    return ds


def _pseudo_elements(files, num_classes: int, seed: int, shuffle_buffer: int, shard):
    """(encoded image, float32 probs [C]) of pseudo-labeled shards, one shuffled pass."""
    ds = _interleaved(files, seed, shuffle_buffer, "pseudo_labeled_records", shard=shard)

    def parse(serialized):
        record = schema.parse_pseudo(serialized, num_classes)
        return record[schema.IMAGE], record[schema.TEACHER_PROBS]

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pseudo_labeled_stream(
    files: Sequence[str],
    num_classes: int,
    image_size: int,
    seed: int = 0,
    small_image: bool | None = None,
    shuffle_buffer: int = RECORD_SHUFFLE_BUFFER,
) -> RecordStream:
    """The student's pseudo-labeled shards as a `RecordStream` of (encoded image, probs [C]).

    This is the offline mode: the pseudo labels were written by the labeling
    stage (tools/label.py, tools/filter_balance.py), so no teacher runs while
    the student trains. One pass over the records (finite; the training
    pipeline repeats it), mixed as the official `data_input.py` read its
    unlabeled shards: the file order is shuffled, up to 64 files are read
    interleaved record by record, and the serialized records are shuffled
    before decoding (cheap: encoded images). `training_dataset` decodes each
    record (see "Record views" in the module docstring).

    Args:
      files: TFRecord shards (docs/data_format.md).
      num_classes: length of the stored distributions.
      image_size: the model's input side.
      seed: file-order and record shuffle seed.
      small_image: eval view for 32 px models (see eval_preprocess).
      shuffle_buffer: serialized records to shuffle over; 0 keeps the order.
    """
    return RecordStream(
        lambda index, count: _pseudo_elements(
            files, num_classes, seed, shuffle_buffer, (index, count)
        ),
        image_size,
        small_image,
    )


def pseudo_labeled_records(
    files: Sequence[str],
    num_classes: int,
    image_size: int,
    seed: int = 0,
    small_image: bool | None = None,
    shuffle_buffer: int = RECORD_SHUFFLE_BUFFER,
) -> tf.data.Dataset:
    """Unbatched (uint8 image [S, S, 3], float32 probs [C]): `pseudo_labeled_stream`
    decoded with the eval view (tools and reports read it so)."""
    stream = pseudo_labeled_stream(
        files, num_classes, image_size, seed, small_image, shuffle_buffer
    )
    return stream.eval_view()


def _parse_source(num_classes: int | None):
    """(path, index, serialized) -> (encoded image, label); with num_classes the label is checked."""

    def parse(path, index, serialized):
        record = schema.parse_source(serialized)
        label = record[schema.LABEL]
        if num_classes:
            label = schema.checked_label(label, num_classes, path, index, unlabeled=False)
        return record[schema.IMAGE], label

    return parse


def _source_elements(files, seed, shuffle_buffer, cache, num_classes, shard):
    """(encoded image, int64 label) of source shards, one pass (see `source_stream`)."""
    ds = _interleaved(
        files,
        seed,
        0 if cache else shuffle_buffer,
        "source_records",
        shuffle_files=not cache,
        named=True,
        shard=shard,
    )
    ds = ds.map(_parse_source(num_classes), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.cache() if cache else ds


def source_stream(
    files: Sequence[str],
    image_size: int,
    seed: int = 0,
    small_image: bool | None = None,
    shuffle_buffer: int = RECORD_SHUFFLE_BUFFER,
    cache: bool = False,
    num_classes: int | None = None,
) -> RecordStream:
    """Source shards as a `RecordStream` of (encoded image, int64 label), one pass.

    The labeled stream of a streamed run (`training_dataset` shuffles,
    repeats, decodes and batches it). Read like `pseudo_labeled_stream`;
    with `cache` (a small set, see sources.cacheable) each pipeline reads
    its files once in order and keeps the records, still encoded, in memory,
    so later epochs only reshuffle them. With `num_classes`, a label
    outside [0, num_classes) stops the stream with an error naming its shard
    and record.
    """
    return RecordStream(
        lambda index, count: _source_elements(
            files, seed, shuffle_buffer, cache, num_classes, (index, count)
        ),
        image_size,
        small_image,
    )


def source_records(
    files: Sequence[str],
    image_size: int,
    seed: int = 0,
    small_image: bool | None = None,
    shuffle_buffer: int = RECORD_SHUFFLE_BUFFER,
    cache: bool = False,
    num_classes: int | None = None,
) -> tf.data.Dataset:
    """Unbatched (uint8 image [S, S, 3], int64 label): `source_stream` decoded with the
    eval view."""
    stream = source_stream(files, image_size, seed, small_image, shuffle_buffer, cache, num_classes)
    return stream.eval_view()


def eval_records(
    files: Sequence[str],
    image_size: int,
    batch_size: int,
    small_image: bool | None = None,
    num_classes: int | None = None,
    resize: str = "tf2",
) -> tf.data.Dataset:
    """Batches of (images [B, S, S, 3], int64 labels [B]) in file order, eval view.

    Images are uint8, or float32 with resize="official" (`eval_preprocess`).

    With `num_classes`, a label outside [0, num_classes) is an error naming
    its shard and record (a test image is never skipped: that would change
    the accuracy's meaning).
    """
    ds = _interleaved(files, 0, 0, "eval_records", shuffle_files=False, named=True)
    parse = _parse_source(num_classes)

    def decode(path, index, serialized):
        encoded, label = parse(path, index, serialized)
        return preprocessing.eval_preprocess(encoded, image_size, small_image, resize), label

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _tfds_elements(name, split, data_dir, shuffle_files, seed, shard):
    """(encoded image, int64 label) of a prepared tfds split (SkipDecoding); `shard`
    keeps pipeline `shard[0]`'s share of `shard[1]`, taken before decoding."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    if shard[1] > 1:
        ds = ds.shard(shard[1], shard[0])
    has_label = "label" in builder.info.features

    def parse(example):
        label = example["label"] if has_label else tf.constant(schema.UNLABELED)
        return example["image"], tf.cast(label, tf.int64)

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def tfds_stream(
    name: str,
    split: str,
    image_size: int,
    data_dir: str | None = None,
    small_image: bool | None = None,
    shuffle_files: bool = False,
    seed: int = 0,
) -> RecordStream:
    """A prepared tfds split as a `RecordStream` of (encoded image, int64 label)."""
    return RecordStream(
        lambda index, count: _tfds_elements(
            name, split, data_dir, shuffle_files, seed, (index, count)
        ),
        image_size,
        small_image,
    )


def tfds_records(
    name: str,
    split: str,
    image_size: int,
    data_dir: str | None = None,
    small_image: bool | None = None,
    shuffle_files: bool = False,
    seed: int = 0,
    resize: str = "tf2",
) -> tf.data.Dataset:
    """Unbatched (image [S, S, 3], int64 label) from a prepared tfds split, eval view.

    Images stay encoded until the map (SkipDecoding), as for record shards;
    uint8, or float32 with resize="official".
    """
    stream = tfds_stream(name, split, image_size, data_dir, small_image, shuffle_files, seed)
    return dataclasses.replace(stream, resize=resize).eval_view()
