r"""Throughput of RandAugment in a real tf.data pipeline, against alternatives.

Pipeline per method: TFRecord -> parse -> decode JPEG (-> resize to 224,
uint8) -> augment (per-image map, AUTOTUNE) -> batch -> prefetch, over the
shared CIFAR-10 records, at 32x32 and 224x224. Methods:
  decode         no augmentation (the ceiling),
  project        noisy_student_tf.augment.RandAugment per image, keys from
                 its tf.random.Generator,
  project_batch  the same, applied after batching (per-image draws kept),
  project_key, project_batch_key
                 the same two with an explicit stateless key per element or
                 batch, `aug(x, seed=[seed, index])` after
                 `Dataset.enumerate()` (how the data pipeline calls it),
  keras_cv       keras_cv.layers.RandAugment per image (if installed),
  keras          keras.layers.RandAugment per image.
All use N=2 ops and the same strength (M=27 of 30; 0.9 on the 0-1 scales).

In --rounds interleaved rounds (so that load from other processes hits
every method alike), each method's pipeline is built, warmed up for two
batches and timed until --min_seconds have passed or --max_images were
produced, and its best round is reported. The whole run takes about 3
minutes on 2 CPU cores. On a loaded machine, compare two methods with
--paired --in_memory=N instead: the decoded images come from memory and
the methods' sequential, unprefetched pipelines are timed batch by batch
in alternation (median per batch), so load falls on both alike.

The last line printed is one JSON object with images/s per method and
size (`<method>_<size>`, wall clock), images per CPU-second of this process
(`<method>_<size>_per_cpu_s`, less sensitive to other work on a shared
machine) and the ratios
ratio_vs_keras_cv_224, ratio_vs_keras_224 (project over the other),
overhead_vs_decode_224 (decode-only over project) and
key_vs_generator_<size> / key_vs_generator_batch_<size> (explicit-key path
over generator path; below 1 means the explicit key is slower).

Usage, from the repository root:
  python benchmarks/randaugment.py [--data_dir=../shared/data/cifar10]
  # explicit key vs generator, augmentation only, paired, under 2 minutes:
  python benchmarks/randaugment.py --methods=project_batch,project_batch_key \
      --sizes=32,224 --rounds=1 --min_seconds=10 --in_memory=256 --paired
"""

import glob
import json
import os
import platform
import statistics
import sys
import time

import tensorflow as tf
from absl import app, flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from noisy_student_tf.augment import RandAugment  # pylint: disable=g-import-not-at-top

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.path.join(_ROOT, "..", "shared", "data", "cifar10"),
    "Folder with *.tfrecord files (image/encoded JPEG).",
)
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 4.0, "Timed seconds per method, size and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds; best kept.")
_MAX_IMAGES = flags.DEFINE_integer(
    "max_images", 60000, "Stop timing a method after this many images."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_MAGNITUDE = flags.DEFINE_integer("magnitude", 27, "RandAugment M (0-30).")
_SIZES = flags.DEFINE_list("sizes", ["32", "224"], "Image sides to test.")
_METHODS = flags.DEFINE_list("methods", None, "Methods to time (default: all available).")
_IN_MEMORY = flags.DEFINE_integer(
    "in_memory",
    0,
    "If > 0, decode this many images once and feed them from memory, so that "
    "only the augmentation is timed (less noise when comparing two augmenters).",
)
_PAIRED = flags.DEFINE_bool(
    "paired",
    False,
    "Time the methods batch by batch in alternation, on sequential pipelines "
    "without prefetch, and report the median time per batch: for A/B "
    "comparisons on a loaded machine (use with --in_memory).",
)
_KEY_SEED = 0  # first half of every explicit key, as a run seed would be

_FEATURES = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}


def _decoder(size):
    def decode(record):
        image = tf.io.decode_jpeg(
            tf.io.parse_single_example(record, _FEATURES)["image/encoded"], channels=3
        )
        if size != 32:
            image = tf.image.resize(image, [size, size])
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image

    return decode


def _keyed(augment):
    """(index, x) -> augment(x, seed=[_KEY_SEED, index]), a stateless key."""
    return lambda i, x: augment(x, seed=tf.stack([tf.constant(_KEY_SEED, tf.int64), i]))


def _augmenters(magnitude, wanted=None):
    """method name -> (augment function, applied before or after batching).

    An explicit-key method's function takes (index, x) from Dataset.enumerate.
    keras-cv and Keras are only imported when `wanted` (None: all) names them.
    """
    strength = magnitude / 30.0
    methods = {
        "decode": (None, "image"),
        "project": (RandAugment(2, magnitude, seed=0), "image"),
        "project_batch": (RandAugment(2, magnitude, seed=0), "batch"),
        "project_key": (_keyed(RandAugment(2, magnitude, seed=0)), "image_key"),
        "project_batch_key": (_keyed(RandAugment(2, magnitude, seed=0)), "batch_key"),
    }
    if wanted is not None and not {"keras_cv", "keras"} & set(wanted):
        return methods
    try:
        import keras_cv  # pylint: disable=g-import-not-at-top

        methods["keras_cv"] = (
            keras_cv.layers.RandAugment(
                value_range=(0, 255), augmentations_per_image=2, magnitude=strength, seed=0
            ),
            "image",
        )
    except ImportError as e:
        print(f"keras_cv unavailable, skipped: {e}", file=sys.stderr)
    import keras  # pylint: disable=g-import-not-at-top

    methods["keras"] = (
        keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=strength, seed=0),
        "image",
    )
    return methods


def _decoded(files, size, count):
    """The first `count` images of `files`, decoded: uint8 [count, size, size, 3]."""
    ds = tf.data.TFRecordDataset(files).map(_decoder(size)).take(count).batch(count)
    return next(iter(ds))


def _pipeline(files, size, augment, where, images=None, parallel=True):
    """An iterator over batches of the benchmark pipeline, warmed up.

    `images`: optional decoded images to cycle through instead of the files.
    `parallel`: AUTOTUNE maps and prefetch; False computes each batch in the
    `next()` call that asks for it (for `_paired`).
    """
    calls = tf.data.AUTOTUNE if parallel else None
    if images is None:
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=len(files)).repeat()
        ds = ds.map(_decoder(size), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices(images).repeat()
    if augment is not None and where.startswith("image"):
        ds = ds.enumerate() if where.endswith("_key") else ds
        ds = ds.map(augment, num_parallel_calls=calls)
    ds = ds.batch(_BATCH_SIZE.value, drop_remainder=True)
    if augment is not None and where.startswith("batch"):
        ds = ds.enumerate() if where.endswith("_key") else ds
        ds = ds.map(augment, num_parallel_calls=calls)
    if parallel:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    else:
        # tf.data's default rewrites would parallelize a stateless map and
        # inject a prefetch: the batch would be computed ahead, off the clock.
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        options.experimental_optimization.map_parallelization = False
        options.experimental_optimization.inject_prefetch = False
        options.autotune.enabled = False
        ds = ds.with_options(options)
    it = iter(ds)
    for _ in range(2):  # warm-up: tracing and filling the buffers
        next(it)
    return it


def _throughput(it):
    """(images/s, images per CPU-second, images) over one timed round."""
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < _MIN_SECONDS.value and count < _MAX_IMAGES.value:
        count += int(tf.shape(next(it))[0])
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return count / wall, count / cpu, count


def _paired(iterators, seconds):
    """name -> (images/s, images per CPU-second) from median per-batch times.

    Each step pulls one batch from every iterator, in an order rotated per
    step, so that load from other processes falls on all methods alike.
    """
    names = list(iterators)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for name in names[step % len(names) :] + names[: step % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            next(iterators[name])
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        step += 1
    batch = _BATCH_SIZE.value
    return {
        name: (batch / statistics.median(wall[name]), batch / statistics.median(cpu[name]), step)
        for name in names
    }


def main(argv):
    del argv
    files = sorted(glob.glob(os.path.join(_DATA_DIR.value, "*.tfrecord")))
    if not files:
        raise app.UsageError(f"No *.tfrecord files in {_DATA_DIR.value!r}.")
    methods = _augmenters(_MAGNITUDE.value, _METHODS.value)
    if _METHODS.value:
        unknown = sorted(set(_METHODS.value) - set(methods))
        if unknown:
            raise app.UsageError(f"--methods: unknown {unknown}; available: {list(methods)}.")
        methods = {name: methods[name] for name in _METHODS.value}
    result = {
        "magnitude": _MAGNITUDE.value,
        "num_layers": 2,
        "batch_size": _BATCH_SIZE.value,
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }
    result["rounds"] = _ROUNDS.value
    result["in_memory"] = _IN_MEMORY.value
    result["paired"] = _PAIRED.value
    for size in (int(s) for s in _SIZES.value):
        images = _decoded(files, size, _IN_MEMORY.value) if _IN_MEMORY.value > 0 else None
        if _PAIRED.value:
            iterators = {
                name: _pipeline(files, size, augment, where, images, parallel=False)
                for name, (augment, where) in methods.items()
            }
            seconds = _MIN_SECONDS.value * _ROUNDS.value * len(methods)
            for name, (rate, per_cpu, steps) in _paired(iterators, seconds).items():
                result[f"{name}_{size}"] = round(rate, 1)
                result[f"{name}_{size}_per_cpu_s"] = round(per_cpu, 1)
                print(
                    f"paired {name:>17} {size:>3}px: {rate:9.1f} images/s, {per_cpu:9.1f} "
                    f"per CPU-second (median of {steps} batches)",
                    flush=True,
                )
            continue
        for round_index in range(_ROUNDS.value):
            for name, (augment, where) in methods.items():
                # A fresh, warmed-up pipeline per round: an idle one would fill its
                # buffers and start the next round with free batches.
                rate, per_cpu, count = _throughput(_pipeline(files, size, augment, where, images))
                key = f"{name}_{size}"
                result[key] = round(max(rate, result.get(key, 0.0)), 1)
                result[key + "_per_cpu_s"] = round(
                    max(per_cpu, result.get(key + "_per_cpu_s", 0.0)), 1
                )
                print(
                    f"round {round_index} {name:>14} {size:>3}px: {rate:9.1f} "
                    f"images/s, {per_cpu:9.1f} per CPU-second ({count} images)",
                    flush=True,
                )
    for size in (int(s) for s in _SIZES.value):

        def ratio(key, numerator, denominator, suffix="", size=size):
            top, bottom = f"{numerator}_{size}{suffix}", f"{denominator}_{size}{suffix}"
            if top in result and bottom in result:
                result[f"{key}_{size}{suffix}"] = round(result[top] / result[bottom], 3)

        for other in ("keras_cv", "keras"):
            ratio(f"ratio_vs_{other}", "project", other)
        ratio("overhead_vs_decode", "decode", "project")
        for suffix in ("", "_per_cpu_s"):
            ratio("key_vs_generator", "project_key", "project", suffix)
            ratio("key_vs_generator_batch", "project_batch_key", "project_batch", suffix)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
