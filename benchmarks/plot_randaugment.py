r"""Draws docs/img/randaugment.png: every RandAugment op at M = 9, 18, 27.

With --variants it draws docs/img/randaugment_variants.png instead: the
three ops where the variants differ (Posterize, Solarize, Contrast), each
as "corrected" and "official", at M = 9, 10, 18, 22.5, 27.

Rows are the ops of noisy_student_tf.augment.OPS; for each sample image the
columns are the original and the op at each magnitude (positive sign for
the symmetric ops, Cutout centered). The samples are the first records of
the shared CIFAR-10 test split, at their native 32x32, so translate and
cutout use the small-image constants (size // 8 = 4 px at level 10).

Usage, from the repository root:
  python benchmarks/plot_randaugment.py [--data_dir=../shared/data/cifar10] \
      [--output=docs/img/randaugment.png]
  python benchmarks/plot_randaugment.py --variants
"""

import glob
import os
import sys

import matplotlib
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import tensorflow as tf

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
from noisy_student_tf import augment  # pylint: disable=g-import-not-at-top

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.path.join(_ROOT, "..", "shared", "data", "cifar10"),
    "Folder with test-*.tfrecord files (image/encoded JPEG).",
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Where to write the PNG (default docs/img/randaugment[_variants].png)."
)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 3, "Sample images.")
_VARIANTS = flags.DEFINE_bool(
    "variants", False, "Draw the corrected and official variants of the ops that differ."
)

MAGNITUDES = (9, 18, 27)
# Where the variants differ: solarize wraps to 0 at 10, posterize at 22.5.
VARIANT_MAGNITUDES = (9, 10, 18, 22.5, 27)
VARIANT_OPS = ("Posterize", "Solarize", "Contrast")


def _samples(count):
    files = sorted(glob.glob(os.path.join(_DATA_DIR.value, "test-*.tfrecord")))
    if not files:
        raise app.UsageError(f"No test-*.tfrecord files in {_DATA_DIR.value!r}.")
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    ds = (
        tf.data.TFRecordDataset(files[:1])
        .take(count)
        .map(
            lambda r: tf.io.decode_jpeg(
                tf.io.parse_single_example(r, features)["image/encoded"], channels=3
            )
        )
    )
    return list(ds.as_numpy_iterator())


def main(argv):
    del argv
    images = _samples(_NUM_IMAGES.value)
    if _VARIANTS.value:
        rows = [(f"{name}\n{v}", name, v) for name in VARIANT_OPS for v in augment.VARIANTS]
        magnitudes = VARIANT_MAGNITUDES
        heading = "Posterize, Solarize, Contrast: corrected vs official variant (M on 0-30)"
        default_output = "randaugment_variants.png"
    else:
        rows = [(name, name, "corrected") for name in augment.OPS]
        magnitudes = MAGNITUDES
        heading = "RandAugment ops (official levels; M on the 0-30 scale)"
        default_output = "randaugment.png"
    output = _OUTPUT.value or os.path.join(_ROOT, "docs", "img", default_output)
    columns = len(images) * (1 + len(magnitudes))
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9, len(rows) * 0.95))
    for row, (label, name, variant) in enumerate(rows):
        for i, image in enumerate(images):
            panels = [("original", image)] + [
                (f"M={m:g}", augment.apply_op(image, name, m, variant=variant).numpy())
                for m in magnitudes
            ]
            for j, (title, panel) in enumerate(panels):
                ax = axes[row, i * (1 + len(magnitudes)) + j]
                ax.imshow(panel, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=7)
                if i == 0 and j == 0:
                    ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98 if len(rows) > 6 else 0.94), h_pad=0.1, w_pad=0.1)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    fig.savefig(output, dpi=90)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
