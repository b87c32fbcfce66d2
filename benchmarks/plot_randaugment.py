r"""Draws docs/img/randaugment.png: every RandAugment op at M = 9, 18, 27.

Rows are the ops of noisy_student_tf.augment.OPS; for each sample image the
columns are the original and the op at each magnitude (positive sign for
the symmetric ops, Cutout centered). The samples are the first records of
the shared CIFAR-10 test split, at their native 32x32, so translate and
cutout use the small-image constants (size // 8 = 4 px at level 10).

Usage, from the repository root:
  python benchmarks/plot_randaugment.py [--data_dir=../shared/data/cifar10] \
      [--output=docs/img/randaugment.png]
"""

import glob
import os
import sys

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from noisy_student_tf import augment  # pylint: disable=g-import-not-at-top

_DATA_DIR = flags.DEFINE_string(
    "data_dir", os.path.join(_ROOT, "..", "shared", "data", "cifar10"),
    "Folder with test-*.tfrecord files (image/encoded JPEG).")
_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(_ROOT, "docs", "img", "randaugment.png"),
    "Where to write the PNG.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 3, "Sample images.")

MAGNITUDES = (9, 18, 27)


def _samples(count):
  files = sorted(glob.glob(os.path.join(_DATA_DIR.value, "test-*.tfrecord")))
  if not files:
    raise app.UsageError(f"No test-*.tfrecord files in {_DATA_DIR.value!r}.")
  features = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
  ds = tf.data.TFRecordDataset(files[:1]).take(count).map(
      lambda r: tf.io.decode_jpeg(
          tf.io.parse_single_example(r, features)["image/encoded"],
          channels=3))
  return list(ds.as_numpy_iterator())


def main(argv):
  del argv
  images = _samples(_NUM_IMAGES.value)
  names = augment.OPS
  columns = len(images) * (1 + len(MAGNITUDES))
  fig, axes = plt.subplots(len(names), columns,
                           figsize=(columns * 0.9, len(names) * 0.95))
  for row, name in enumerate(names):
    for i, image in enumerate(images):
      panels = [("original", image)] + [
          (f"M={m}", augment.apply_op(image, name, m).numpy())
          for m in MAGNITUDES]
      for j, (title, panel) in enumerate(panels):
        ax = axes[row, i * (1 + len(MAGNITUDES)) + j]
        ax.imshow(panel, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
          ax.set_title(title, fontsize=7)
        if i == 0 and j == 0:
          ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
  fig.suptitle("RandAugment ops (official levels; M on the 0-30 scale)",
               fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.98), h_pad=0.1, w_pad=0.1)
  os.makedirs(os.path.dirname(_OUTPUT.value), exist_ok=True)
  fig.savefig(_OUTPUT.value, dpi=90)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
