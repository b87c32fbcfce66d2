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

from noisy_student_tf.data import records
from noisy_student_tf.errors import ConfigError

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


def source_example(
    encoded: bytes, label: int = UNLABELED, key: bytes = b"", image_format: bytes = b"png"
) -> tf.train.Example:
    """Builds a source record: an encoded image, its label (or -1) and key."""
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE: _bytes([encoded]),
                FORMAT: _bytes([image_format]),
                LABEL: _ints([int(label)]),
                KEY: _bytes([key]),
            }
        )
    )


def add_teacher_view(
    example: tf.train.Example,
    probs: np.ndarray,
    topk: int | None = None,
    confidence: float | None = None,
) -> tf.train.Example:
    """Returns a copy of `example` with the teacher's prediction added.

    Args:
      example: a source record.
      probs: float [num_classes], the teacher's softmax distribution.
      topk: store only the k most probable classes (sparse form for 1000+
        classes); None stores the full distribution.
      confidence: the value stored as `teacher/confidence`; None stores
        max(probs). tools/label.py passes the temperature-1 confidence when
        `probs` is tempered or one-hot, so the filter threshold keeps its
        meaning.
    """
    probs = np.asarray(probs, np.float32)
    out = tf.train.Example()
    out.CopyFrom(example)
    feature = out.features.feature
    label = int(np.argmax(probs))
    feature[TEACHER_LABEL].CopyFrom(_ints([label]))
    if confidence is None:
        confidence = float(probs[label])
    feature[TEACHER_CONFIDENCE].CopyFrom(_floats([float(confidence)]))
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

        def resize():
            resized = tf.image.resize(image, [image_size, image_size], antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

        # Resizing to the same size is the identity; skip its cost when labeling.
        same = tf.reduce_all(tf.shape(image)[:2] == image_size)
        image = tf.cond(same, lambda: image, resize)
    image.set_shape([image_size, image_size, 3] if image_size else [None, None, 3])
    return image


def parse_source(serialized: tf.Tensor) -> dict:
    """Parses a source record into {IMAGE, LABEL, KEY} tensors."""
    return tf.io.parse_single_example(serialized, SOURCE_FEATURES)


# Starts the message of a record whose label is out of range; cli.run turns
# the InvalidArgumentError carrying it into one `error:` line.
BAD_RECORD = "bad record: "


def checked_label(
    label: tf.Tensor, num_classes: int, path: tf.Tensor, index: tf.Tensor, unlabeled: bool
) -> tf.Tensor:
    """`label` once it is in [0, num_classes) (or -1 with `unlabeled`); else an error.

    A label >= num_classes would become a one-hot of zeros and train
    silently, and a test label out of range is counted wrong; the error
    names the shard and the record's index in it instead.
    """
    low = UNLABELED if unlabeled else 0
    message = tf.strings.format(
        BAD_RECORD + "{}: record {} has image/class/label {}, outside [{}, {}) (data.num_classes)",
        (path, index, label, low, num_classes),
    )
    valid = tf.logical_and(label >= low, label < num_classes)
    with tf.control_dependencies([tf.debugging.Assert(valid, [message], summarize=1)]):
        return tf.identity(label)


TEST_IMAGE_KEPT = "a test image is never skipped, as that would change the accuracy"


def name_bad_image(
    files: list[str], key: str, error: Exception, why: str = TEST_IMAGE_KEPT
) -> Exception:
    """The error to raise when reading `files` failed: one naming the undecodable record.

    tf.data reports an image that does not decode without saying where it
    is; this second pass (run only after such a failure) decodes the records
    in order until one fails. Where skipping an image would change a
    result's meaning (a test image; a labeled image, whose class counts the
    split and the schedule are built on), the run stops with this error;
    `why` says which meaning.

    Returns:
      ConfigError naming the shard and the record's index, or `error`
      itself when every image decodes (the failure was something else).
    """
    for path in files:
        for index, serialized in enumerate(records.read_records(path)):
            try:
                encoded = tf.train.Example.FromString(serialized).features.feature[IMAGE]
                tf.io.decode_image(encoded.bytes_list.value[0], channels=3, expand_animations=False)
            except Exception as e:  # noqa: BLE001 - any failure to get pixels is the same fault
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                return ConfigError(
                    f"{path}: record {index} of {key} is not a decodable image ({reason[:200]}); "
                    + why
                )
    return error


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
        in_topk = tf.scatter_nd(classes[:, None], tf.ones_like(topk_probs), [num_classes])
        fill = tf.where(in_topk > 0, 0.0, rest / tf.maximum(others, 1.0))
        return scattered + fill

    probs = tf.cond(tf.size(dense) > 0, lambda: dense, from_topk)
    tf.debugging.assert_equal(
        tf.size(probs),
        num_classes,
        message=f"teacher/probs has the wrong length; expected {num_classes}",
    )
    parsed[TEACHER_PROBS] = tf.ensure_shape(probs, [num_classes])
    del parsed[TEACHER_TOPK_CLASSES], parsed[TEACHER_TOPK_PROBS]
    return parsed


def image_format(encoded: bytes) -> bytes:
    """b"jpeg", b"png", b"gif", b"bmp" from the magic bytes, else b""."""
    if encoded[:3] == b"\xff\xd8\xff":
        return b"jpeg"
    if encoded[:8] == b"\x89PNG\r\n\x1a\n":
        return b"png"
    if encoded[:4] == b"GIF8":
        return b"gif"
    if encoded[:2] == b"BM":
        return b"bmp"
    return b""


def _one(feature, kind):
    values = getattr(feature, kind).value
    return values[0] if len(values) == 1 else None


def check_pseudo(serialized: bytes, num_classes: int):
    """Validates a pseudo-labeled record in plain Python, without raising.

    Returns:
      (fields, None) for a good record, where fields is a dict with `label`
      (teacher argmax, int), `confidence` (float) and `key` (bytes); or
      (None, reason) where reason is one of REJECT_REASONS.
    """
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
    except Exception:  # noqa: BLE001 - any parse failure is the same bad record
        return None, "unparseable"
    if IMAGE not in feature or not _one(feature[IMAGE], "bytes_list"):
        return None, "missing_image"
    if TEACHER_LABEL not in feature or TEACHER_CONFIDENCE not in feature:
        return None, "missing_teacher_view"
    label = _one(feature[TEACHER_LABEL], "int64_list")
    confidence = _one(feature[TEACHER_CONFIDENCE], "float_list")
    if label is None or confidence is None:
        return None, "missing_teacher_view"
    if not 0 <= label < num_classes:
        return None, "teacher_label_out_of_range"
    if not 0.0 <= confidence <= 1.0:  # also rejects NaN
        return None, "confidence_out_of_range"
    if LABEL in feature:
        # The source label may come from another label space (JFT's classes
        # for an ImageNet teacher), so only its form is checked here.
        true_label = _one(feature[LABEL], "int64_list")
        if true_label is None or true_label < UNLABELED:
            return None, "bad_source_label"
    probs = feature[TEACHER_PROBS].float_list.value if TEACHER_PROBS in feature else []
    if len(probs):
        if len(probs) != num_classes:
            return None, "probs_wrong_length"
        if not all(0.0 <= p <= 1.0 for p in probs):  # NaN fails both comparisons
            return None, "probs_out_of_range"
    else:
        classes = (
            feature[TEACHER_TOPK_CLASSES].int64_list.value
            if TEACHER_TOPK_CLASSES in feature
            else []
        )
        topk = feature[TEACHER_TOPK_PROBS].float_list.value if TEACHER_TOPK_PROBS in feature else []
        if not len(classes) or len(classes) != len(topk) or len(classes) > num_classes:
            return None, "probs_wrong_length"
        if min(classes) < 0 or max(classes) >= num_classes:
            return None, "topk_class_out_of_range"
        if not all(0.0 <= p <= 1.0 for p in topk):
            return None, "probs_out_of_range"
    key = _one(feature[KEY], "bytes_list") if KEY in feature else None
    return {"label": int(label), "confidence": float(confidence), "key": key or b""}, None


REJECT_REASONS = (
    "unparseable",
    "missing_image",
    "missing_teacher_view",
    "teacher_label_out_of_range",
    "confidence_out_of_range",
    "bad_source_label",
    "probs_wrong_length",
    "topk_class_out_of_range",
    "probs_out_of_range",  # a NaN, negative or > 1 teacher probability
    "undecodable_image",
)
