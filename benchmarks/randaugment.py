r"""Throughput of RandAugment in a real tf.data pipeline, against alternatives.

Pipeline per method: TFRecord -> parse -> decode JPEG (-> resize to 224,
uint8) -> augment (per-image map, AUTOTUNE) -> batch -> prefetch, over the
shared CIFAR-10 records, at 32x32 and 224x224. Methods:
  decode         no augmentation (the ceiling),
  project        noisy_student_tf.augment.RandAugment per image,
  project_batch  the same, applied after batching (per-image draws kept),
  keras_cv       keras_cv.layers.RandAugment per image (if installed),
  keras          keras.layers.RandAugment per image.
All use N=2 ops and the same strength (M=27 of 30; 0.9 on the 0-1 scales).

In --rounds interleaved rounds (so that load from other processes hits
every method alike), each method's pipeline is built, warmed up for two
batches and timed until --min_seconds have passed or --max_images were
produced, and its best round is reported. The whole run takes about 3
minutes on 2 CPU cores. The last line printed is one JSON
object with images/s per method and size (`<method>_<size>`, wall clock),
images per CPU-second of this process (`<method>_<size>_per_cpu_s`, less
sensitive to other work on a shared machine) and the ratios
ratio_vs_keras_cv_224, ratio_vs_keras_224 (project over the other) and
overhead_vs_decode_224 (decode-only over project).

Usage, from the repository root:
  python benchmarks/randaugment.py [--data_dir=../shared/data/cifar10]
"""

import glob
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from noisy_student_tf.augment import RandAugment  # pylint: disable=g-import-not-at-top

_DATA_DIR = flags.DEFINE_string(
    "data_dir", os.path.join(_ROOT, "..", "shared", "data", "cifar10"),
    "Folder with *.tfrecord files (image/encoded JPEG).")
_MIN_SECONDS = flags.DEFINE_float(
    "min_seconds", 4.0, "Timed seconds per method, size and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds; best kept.")
_MAX_IMAGES = flags.DEFINE_integer(
    "max_images", 60000, "Stop timing a method after this many images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_MAGNITUDE = flags.DEFINE_integer("magnitude", 27, "RandAugment M (0-30).")
_SIZES = flags.DEFINE_list("sizes", ["32", "224"], "Image sides to test.")

_FEATURES = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}


def _decoder(size):
  def decode(record):
    image = tf.io.decode_jpeg(
        tf.io.parse_single_example(record, _FEATURES)["image/encoded"],
        channels=3)
    if size != 32:
      image = tf.image.resize(image, [size, size])
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image
  return decode


def _augmenters(magnitude):
  """method name -> (augment function, applied before or after batching)."""
  strength = magnitude / 30.0
  methods = {
      "decode": (None, "image"),
      "project": (RandAugment(2, magnitude, seed=0), "image"),
      "project_batch": (RandAugment(2, magnitude, seed=0), "batch"),
  }
  try:
    import keras_cv  # pylint: disable=g-import-not-at-top
    methods["keras_cv"] = (keras_cv.layers.RandAugment(
        value_range=(0, 255), augmentations_per_image=2,
        magnitude=strength, seed=0), "image")
  except ImportError as e:
    print(f"keras_cv unavailable, skipped: {e}", file=sys.stderr)
  import keras  # pylint: disable=g-import-not-at-top
  methods["keras"] = (keras.layers.RandAugment(
      value_range=(0, 255), num_ops=2, factor=strength, seed=0), "image")
  return methods


def _pipeline(files, size, augment, where):
  """An iterator over batches of the benchmark pipeline, warmed up."""
  ds = tf.data.TFRecordDataset(files, num_parallel_reads=len(files)).repeat()
  ds = ds.map(_decoder(size), num_parallel_calls=tf.data.AUTOTUNE)
  if augment is not None and where == "image":
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(_BATCH_SIZE.value, drop_remainder=True)
  if augment is not None and where == "batch":
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  it = iter(ds)
  for _ in range(2):  # warm-up: tracing and filling the buffers
    next(it)
  return it


def _throughput(it):
  """(images/s, images per CPU-second, images) over one timed round."""
  count, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while (time.perf_counter() - start < _MIN_SECONDS.value
         and count < _MAX_IMAGES.value):
    count += int(tf.shape(next(it))[0])
  wall = time.perf_counter() - start
  cpu = time.process_time() - cpu_start
  return count / wall, count / cpu, count


def main(argv):
  del argv
  files = sorted(glob.glob(os.path.join(_DATA_DIR.value, "*.tfrecord")))
  if not files:
    raise app.UsageError(f"No *.tfrecord files in {_DATA_DIR.value!r}.")
  methods = _augmenters(_MAGNITUDE.value)
  result = {"magnitude": _MAGNITUDE.value, "num_layers": 2,
            "batch_size": _BATCH_SIZE.value, "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__, "python": platform.python_version()}
  result["rounds"] = _ROUNDS.value
  for size in (int(s) for s in _SIZES.value):
    for round_index in range(_ROUNDS.value):
      for name, (augment, where) in methods.items():
        # A fresh, warmed-up pipeline per round: an idle one would fill its
        # buffers and start the next round with free batches.
        rate, per_cpu, count = _throughput(
            _pipeline(files, size, augment, where))
        key = f"{name}_{size}"
        result[key] = round(max(rate, result.get(key, 0.0)), 1)
        result[key + "_per_cpu_s"] = round(
            max(per_cpu, result.get(key + "_per_cpu_s", 0.0)), 1)
        print(f"round {round_index} {name:>14} {size:>3}px: {rate:9.1f} "
              f"images/s, {per_cpu:9.1f} per CPU-second ({count} images)",
              flush=True)
  for size in (int(s) for s in _SIZES.value):
    ours = result[f"project_{size}"]
    for other in ("keras_cv", "keras"):
      if f"{other}_{size}" in result:
        result[f"ratio_vs_{other}_{size}"] = round(
            ours / result[f"{other}_{size}"], 2)
    result[f"overhead_vs_decode_{size}"] = round(
        result[f"decode_{size}"] / ours, 2)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
