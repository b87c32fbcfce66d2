"""The one record schema shared by every reader and writer (docs/data_format.md).

Records are `tf.train.Example` protos in sharded TFRecord files
(`PREFIX-00000-of-00128.tfrecord`). Source records carry an encoded image, an
optional class label (-1 or absent for unlabeled images) and a unique key.
Pseudo-labeled records add the teacher's view of the image: the full soft
distribution (`teacher/probs`) for small class counts, or a sparse top-k
(`teacher/topk_classes`, `teacher/topk_probs`) for 1000+ classes, plus the
argmax and its probability. Keys follow ../shared/DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IMAGE = "image/encoded"
FORMAT = "image/format"
LABEL = "image/class/label"
KEY = "image/key"
TEACHER_PROBS = "teacher/probs"
TEACHER_TOPK_CLASSES = "teacher/topk_classes"
TEACHER_TOPK_PROBS = "teacher/topk_probs"
TEACHER_LABEL = "teacher/label"
TEACHER_CONFIDENCE = "teacher/confidence"

UNLABELED = -1  # value of image/class/label for unlabeled images

SOURCE_FEATURES = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
}

PSEUDO_FEATURES = {
    **SOURCE_FEATURES,
    TEACHER_PROBS: tf.io.VarLenFeature(tf.float32),
    TEACHER_TOPK_CLASSES: tf.io.VarLenFeature(tf.int64),
    TEACHER_TOPK_PROBS: tf.io.VarLenFeature(tf.float32),
    TEACHER_LABEL: tf.io.FixedLenFeature([], tf.int64),
    TEACHER_CONFIDENCE: tf.io.FixedLenFeature([], tf.float32),
}


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def encode_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 [H, W, 3] array as PNG bytes (lossless)."""
    return tf.io.encode_png(tf.convert_to_tensor(image, tf.uint8)).numpy()


def source_example(encoded: bytes, label: int = UNLABELED, key: bytes = b"",
                   image_format: bytes = b"png") -> tf.train.Example:
    """Builds a source record: an encoded image, its label (or -1) and key."""
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE: _bytes([encoded]),
        FORMAT: _bytes([image_format]),
        LABEL: _ints([int(label)]),
        KEY: _bytes([key]),
    }))


def add_teacher_view(example: tf.train.Example, probs: np.ndarray,
                     topk: int | None = None) -> tf.train.Example:
    """Returns a copy of `example` with the teacher's prediction added.

    Args:
      example: a source record.
      probs: float [num_classes], the teacher's softmax distribution.
      topk: store only the k most probable classes (sparse form for 1000+
        classes); None stores the full distribution.
    """
    probs = np.asarray(probs, np.float32)
    out = tf.train.Example()
    out.CopyFrom(example)
    feature = out.features.feature
    label = int(np.argmax(probs))
    feature[TEACHER_LABEL].CopyFrom(_ints([label]))
    feature[TEACHER_CONFIDENCE].CopyFrom(_floats([float(probs[label])]))
    if topk is None:
        feature[TEACHER_PROBS].CopyFrom(_floats(probs.tolist()))
    else:
        order = np.argsort(-probs, kind="stable")[:topk]
        feature[TEACHER_TOPK_CLASSES].CopyFrom(_ints(order.tolist()))
        feature[TEACHER_TOPK_PROBS].CopyFrom(_floats(probs[order].tolist()))
    return out


def decode_image(encoded: tf.Tensor, image_size: int | None = None) -> tf.Tensor:
    """Decodes JPEG/PNG bytes to uint8 [H, W, 3]; gray and RGBA become RGB.

    With `image_size`, the image is resized (bilinear) to a square of that side,
    which is the center-input view the teacher labels and tests are run on.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if image_size is not None:
        image = tf.image.resize(image, [image_size, image_size], antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    image.set_shape([image_size, image_size, 3] if image_size else [None, None, 3])
    return image


def parse_source(serialized: tf.Tensor) -> dict:
    """Parses a source record into {IMAGE, LABEL, KEY} tensors."""
    return tf.io.parse_single_example(serialized, SOURCE_FEATURES)


def parse_pseudo(serialized: tf.Tensor, num_classes: int) -> dict:
    """Parses a pseudo-labeled record; adds a dense `teacher/probs` [C].

    The sparse top-k form is densified: the probability mass outside the top k
    is spread uniformly over the remaining classes so the target sums to one.
    """
    parsed = tf.io.parse_single_example(serialized, PSEUDO_FEATURES)
    dense = tf.sparse.to_dense(parsed[TEACHER_PROBS])
    classes = tf.sparse.to_dense(parsed[TEACHER_TOPK_CLASSES])
    topk_probs = tf.sparse.to_dense(parsed[TEACHER_TOPK_PROBS])

    def from_topk():
        scattered = tf.scatter_nd(classes[:, None], topk_probs, [num_classes])
        rest = tf.maximum(1.0 - tf.reduce_sum(topk_probs), 0.0)
        others = tf.cast(num_classes - tf.size(classes), tf.float32)
        fill = tf.where(scattered > 0, 0.0, rest / tf.maximum(others, 1.0))
        return scattered + fill

    probs = tf.cond(tf.size(dense) > 0, lambda: dense, from_topk)
    tf.debugging.assert_equal(
        tf.size(probs), num_classes,
        message=f"teacher/probs has the wrong length; expected {num_classes}")
    parsed[TEACHER_PROBS] = tf.ensure_shape(probs, [num_classes])
    del parsed[TEACHER_TOPK_CLASSES], parsed[TEACHER_TOPK_PROBS]
    return parsed
