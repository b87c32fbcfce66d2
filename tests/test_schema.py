"""The record schema: source and pseudo-labeled records round-trip."""

import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.data import schema


def _image(rng, h=8, w=6):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_source_record_round_trip(rng):
    image = _image(rng)
    ex = schema.source_example(schema.encode_png(image), label=7, key=b"a/1")
    parsed = schema.parse_source(ex.SerializeToString())
    np.testing.assert_array_equal(schema.decode_image(parsed[schema.IMAGE]).numpy(), image)
    assert int(parsed[schema.LABEL]) == 7 and parsed[schema.KEY].numpy() == b"a/1"


def test_unlabeled_record_has_label_minus_one(rng):
    ex = schema.source_example(schema.encode_png(_image(rng)))
    assert int(schema.parse_source(ex.SerializeToString())[schema.LABEL]) == schema.UNLABELED


def test_pseudo_record_full_and_topk(rng):
    probs = np.array([0.1, 0.6, 0.05, 0.25], np.float32)
    base = schema.source_example(schema.encode_png(_image(rng)), key=b"k")
    full = schema.parse_pseudo(schema.add_teacher_view(base, probs).SerializeToString(), 4)
    np.testing.assert_allclose(full[schema.TEACHER_PROBS].numpy(), probs)
    assert int(full[schema.TEACHER_LABEL]) == 1
    assert float(full[schema.TEACHER_CONFIDENCE]) == pytest.approx(0.6)
    sparse = schema.parse_pseudo(
        schema.add_teacher_view(base, probs, topk=2).SerializeToString(), 4
    )
    dense = sparse[schema.TEACHER_PROBS].numpy()
    # top-2 kept exactly; the remaining 0.15 spread over the other two classes
    np.testing.assert_allclose(dense, [0.075, 0.6, 0.075, 0.25], atol=1e-6)


def test_pseudo_record_with_wrong_length_fails(rng):
    base = schema.source_example(schema.encode_png(_image(rng)))
    ex = schema.add_teacher_view(base, np.full(3, 1 / 3)).SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong length"):
        schema.parse_pseudo(ex, 5)


def test_gray_png_decodes_to_rgb_and_resizes(rng):
    gray = rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)
    encoded = tf.io.encode_png(gray).numpy()
    image = schema.decode_image(tf.constant(encoded), image_size=4)
    assert image.shape == (4, 4, 3) and image.dtype == tf.uint8
