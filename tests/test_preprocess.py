"""Official train/eval preprocessing: each op, its key, and the official order."""

import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.augment import RandAugment
from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import preprocess

KEY = tf.constant([3, 7], tf.int64)
OTHER_KEY = tf.constant([3, 8], tf.int64)


def _images(n=16, size=32, seed=0, high=256):
    return np.random.default_rng(seed).integers(0, high, (n, size, size, 3), dtype=np.uint8)


OPS = {
    "flip": preprocess.flip,
    "pad_and_crop": preprocess.pad_and_crop,
    "extra_cutout": preprocess.extra_cutout,
    "random_resized_crop": lambda x, key: preprocess.random_resized_crop(x, 32, key),
    "train_small": preprocess.TrainPreprocess(32, RandAugment(2, 9, seed=0), small_image=True),
    "train_large": preprocess.TrainPreprocess(
        32, RandAugment(2, 9, seed=0), small_image=False, cutout=False
    ),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_deterministic_given_its_key_eagerly_and_in_tf_data(name):
    op, images = OPS[name], _images()
    first = op(images, KEY).numpy()
    assert first.shape == images.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(op(images, KEY).numpy(), first)
    assert not np.array_equal(op(images, OTHER_KEY).numpy(), first)
    mapped = tf.data.Dataset.from_tensors(images).map(lambda x: op(x, KEY))
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), first)
    single = op(images[0], KEY).numpy()  # one image [H, W, 3] works too
    assert single.shape == images.shape[1:] and single.dtype == np.uint8


def test_pad_and_crop_is_a_window_of_the_reflect_padded_image():
    images = _images(32)
    out = preprocess.pad_and_crop(images, KEY).numpy()
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = set()
    for image, window in zip(padded, out):
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(image[dy : dy + 32, dx : dx + 32], window)
        ]
        assert len(found) == 1, "output is not a 32x32 window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 10  # offsets are drawn per image
    assert any(dy in (0, 8) or dx in (0, 8) for dy, dx in offsets)  # the full range is used


def test_fused_crop_and_flip_equals_crop_then_flip():
    images = _images(32)
    fused = preprocess.pad_and_crop(images, KEY, flip_seed=OTHER_KEY).numpy()
    apart = preprocess.flip(preprocess.pad_and_crop(images, KEY), OTHER_KEY).numpy()
    np.testing.assert_array_equal(fused, apart)
    assert not np.array_equal(fused, preprocess.pad_and_crop(images, KEY).numpy())


def test_flip_mirrors_about_half_of_the_images():
    images = _images(64)
    out = preprocess.flip(images, KEY).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image exactly one of the two
    assert 16 <= sum(flipped) <= 48


def test_extra_cutout_fills_a_side_16_square_clipped_at_the_border_with_128():
    images = _images(200, high=128)  # no pixel is 128 before the cutout
    out = preprocess.extra_cutout(images, KEY).numpy()
    sides = set()
    for before, after in zip(images, out):
        gray = (after == 128).all(axis=-1)
        rows, cols = np.flatnonzero(gray.any(axis=1)), np.flatnonzero(gray.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert gray[top:bottom, left:right].all() and gray.sum() == (bottom - top) * (right - left)
        np.testing.assert_array_equal(after[~gray], before[~gray])  # nothing else changes
        for lo, hi in ((top, bottom), (left, right)):
            # Unclipped: exactly 16; clipped: touches the border and keeps >= 8.
            assert hi - lo == 16 or (lo == 0 and 8 <= hi <= 16) or (hi == 32 and 16 <= lo <= 24)
        sides.add((bottom - top, right - left))
    assert (16, 16) in sides and len(sides) > 3  # interior and clipped squares both occur


def test_inception_crop_box_keeps_the_official_area_and_aspect_bounds():
    height, width, fallbacks, areas = 300, 400, 0, []
    center = preprocess.center_crop_box(height, width, 224).numpy().tolist()
    for i in range(200):
        box = preprocess.inception_crop_box(height, width, 224, [i, 1]).numpy()
        y, x, h, w = box.tolist()
        assert 0 <= y and y + h <= height and 0 <= x and x + w <= width
        if box.tolist() == center:
            fallbacks += 1
            continue
        areas.append(h * w / (height * width))
        assert 0.08 <= areas[-1] <= 1.0
        assert 0.75 - 0.02 <= w / h <= 4 / 3 + 0.02  # integer rounding of the box
    assert fallbacks < 20 and min(areas) < 0.3 and max(areas) > 0.7


def test_inception_crop_falls_back_to_the_center_crop():
    # A 10 x 1000 strip has no window of area >= 8% with aspect in [3/4, 4/3].
    box = preprocess.inception_crop_box(10, 1000, 224, [0, 1]).numpy()
    np.testing.assert_array_equal(box, preprocess.center_crop_box(10, 1000, 224).numpy())


def test_random_resized_crop_resizes_the_box_it_draws():
    image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    out = preprocess.random_resized_crop(image, 64, KEY).numpy()
    per_image_key = tf.random.experimental.stateless_split(KEY, 1)[0]
    y, x, h, w = preprocess.inception_crop_box(120, 90, 64, per_image_key).numpy().tolist()
    crop = tf.image.resize(image[y : y + h, x : x + w].astype(np.float32), [64, 64], "bicubic")
    np.testing.assert_array_equal(out, np.clip(np.round(crop.numpy()), 0, 255).astype(np.uint8))


def test_eval_center_crop_matches_a_hand_computed_crop_and_bicubic_resize():
    image = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    # side = int(224 / (224 + 32) * 300) = 262; offsets ((300 - 262) + 1) // 2 = 19,
    # ((400 - 262) + 1) // 2 = 69.
    crop = image[19 : 19 + 262, 69 : 69 + 262].astype(np.float32)
    want = np.clip(np.round(tf.image.resize(crop, [224, 224], "bicubic").numpy()), 0, 255)
    out = preprocess.eval_preprocess(image, 224).numpy()
    np.testing.assert_array_equal(out, want.astype(np.uint8))
    encoded = tf.io.encode_png(image)  # bytes give the same view
    np.testing.assert_array_equal(preprocess.eval_preprocess(encoded, 224).numpy(), out)
    batch = preprocess.eval_preprocess(np.stack([image, image[::-1]]), 224).numpy()
    np.testing.assert_array_equal(batch[0], out)


def test_eval_keeps_images_already_at_the_model_size():
    images = _images(4)
    np.testing.assert_array_equal(preprocess.eval_preprocess(images, 32).numpy(), images)
    # Another size: antialiased bilinear, against a numpy triangle filter (radius 2
    # input pixels at scale 1/2, centred at 2j + 0.5, renormalised at the borders).
    weights = np.maximum(
        0.0, 1 - np.abs(np.arange(32)[None] - (2 * np.arange(16)[:, None] + 0.5)) / 2
    )
    weights /= weights.sum(1, keepdims=True)
    expected = np.round(np.einsum("ji,bikc,lk->bjlc", weights, images.astype(float), weights))
    diff = np.abs(preprocess.eval_preprocess(images, 16).numpy() - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # 1: float32 rounding at .5
    large = _images(2, size=224)  # stored views of in-memory sources are not cropped twice
    np.testing.assert_array_equal(preprocess.eval_preprocess(large, 224).numpy(), large)


class _Recorder:
    """A RandAugment stand-in: records its input, returns a fixed transform."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, seed):
        self.seen.append(tf.convert_to_tensor(images).numpy())
        return 255 - images


def test_small_image_order_is_randaugment_cutout_crop_flip():
    images, stub = _images(16), _Recorder()
    out = preprocess.TrainPreprocess(32, stub, small_image=True)(images, KEY).numpy()
    np.testing.assert_array_equal(stub.seen[0], images)  # RandAugment first, on the input
    keys = preprocess.TrainPreprocess.keys(KEY)
    cut = preprocess.extra_cutout(255 - images, keys["cutout"])
    want = preprocess.flip(preprocess.pad_and_crop(cut, keys["crop"]), keys["flip"])
    np.testing.assert_array_equal(out, want.numpy())
    crop_first = preprocess.extra_cutout(
        preprocess.pad_and_crop(255 - images, keys["crop"]), keys["cutout"]
    )
    assert not np.array_equal(out, preprocess.flip(crop_first, keys["flip"]).numpy())


def test_large_image_order_is_crop_flip_randaugment():
    images, stub = _images(4, size=48), _Recorder()
    out = preprocess.TrainPreprocess(40, stub, small_image=False, cutout=False)(images, KEY)
    keys = preprocess.TrainPreprocess.keys(KEY)
    cropped = preprocess.random_resized_crop(images, 40, keys["crop"])
    flipped = preprocess.flip(cropped, keys["flip"]).numpy()
    np.testing.assert_array_equal(stub.seen[0], flipped)  # RandAugment last
    np.testing.assert_array_equal(out.numpy(), 255 - flipped)
    assert out.shape == (4, 40, 40, 3)


def test_modes_select_the_steps():
    images, key = _images(8), KEY
    assert preprocess.train_preprocess("none", 32, RandAugment(2, 9), True) is None
    only = preprocess.train_preprocess("randaugment_only", 32, _Recorder(), True)
    np.testing.assert_array_equal(only(images, key).numpy(), 255 - images)
    official = preprocess.train_preprocess("official", 32, _Recorder(), True, flip=False)
    assert official.cutout and official.crop and not official.flip
    # As in the official code, the extra Cutout comes with RandAugment only.
    assert not preprocess.train_preprocess("official", 32, None, True).cutout
    assert not preprocess.train_preprocess("official", 224, _Recorder(), False).cutout
    with pytest.raises(ConfigError, match="preprocess must be one of"):
        preprocess.train_preprocess("imagenet", 32, None, True)
    with pytest.raises(ConfigError, match="extra_cutout"):
        preprocess.TrainPreprocess(224, None, small_image=False, cutout=True)
