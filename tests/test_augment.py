"""Tests for noisy_student_tf.augment: every op against Pillow/numpy, RandAugment.

References are computed independently with Pillow (ImageOps / ImageEnhance,
the operations the AutoAugment policies were defined on) or numpy, from the
official level -> argument formulas written out here again. Tolerances:
  * exact (0 difference) for Invert, Posterize, Solarize, SolarizeAdd,
    Equalize, TranslateX/Y, Cutout and the blends with an exact degenerate
    image (Brightness, Color, Contrast, Sharpness: both sides blend in
    float32, allowed 1 level on at most 1% of values for FMA rounding);
  * AutoContrast: at most 1 level (Pillow scales in float64, we in float32);
  * Rotate, ShearX/Y (nearest sampling): pixels may differ only where the
    source coordinate is within 1e-3 of halfway between two pixels (where
    float32 and Pillow's float64 may round apart), plus at most 0.5% others.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from noisy_student_tf import augment
from noisy_student_tf.augment import RandAugment, apply_op, size_constants

MAGNITUDES = (0, 9, 18, 27)
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _natural(height, width, seed):
    """A smooth, textured test image (gradients + blobs + noise), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [
            120 + 100 * np.sin(x / width * 3 + seed),
            90 + 80 * np.cos(y / height * 4),
            60 + 50 * np.sin((x + y) / (width + height) * 6),
        ],
        -1,
    )
    noise = rng.normal(0, 18, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


IMAGES = {
    "natural": _natural(32, 32, 0),
    "non_square": _natural(24, 40, 1),
    "uniform": np.full((20, 20, 3), 77, np.uint8),
    "black": np.zeros((16, 16, 3), np.uint8),
    "white": np.full((16, 16, 3), 255, np.uint8),
}


# ---------------------------------------------------------------- references


def _official_args(name, m, height, width):
    """Official randaugment.py level -> argument, with the documented clamps."""
    level = m / 10.0
    side = min(height, width)
    translate = 100.0 if side >= 224 else float(side // 8)
    cutout = 40.0 if side >= 224 else float(side // 8)
    return {
        "Rotate": level * 30.0,
        "ShearX": level * 0.3,
        "ShearY": level * 0.3,
        "TranslateX": level * translate,
        "TranslateY": level * translate,
        "Posterize": min(max(int(level * 4), 1), 8),
        "Solarize": min(int(level * 256), 256),
        "SolarizeAdd": int(level * 110),
        "Color": level * 1.8 + 0.1,
        "Contrast": level * 1.8 + 0.1,
        "Brightness": level * 1.8 + 0.1,
        "Sharpness": level * 1.8 + 0.1,
        "Cutout": int(level * cutout),
    }.get(name)


def _affine(pil, center_coeffs):
    """Pillow AFFINE from a matrix in pixel-center coordinates (tf.image's).

    With X = x + 0.5 (Pillow's pixel-edge coordinates), x_in = a x + b y + c
    becomes X_in = a X + b Y + c + 0.5 (1 - a - b).
    """
    a, b, c, d, e, f = center_coeffs
    edge = (a, b, c + 0.5 * (1 - a - b), d, e, f + 0.5 * (1 - d - e))
    return pil.transform(
        pil.size, Image.AFFINE, edge, resample=Image.NEAREST, fillcolor=(128, 128, 128)
    )


def reference(name, image, m, sign=1.0, center=None):
    """The op applied with Pillow/numpy at magnitude m. image: uint8 [H, W, 3]."""
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    arg = _official_args(name, m, h, w)
    if name in SIGNED:
        arg *= sign
    out = {
        "AutoContrast": lambda: ImageOps.autocontrast(pil),
        "Equalize": lambda: ImageOps.equalize(pil),
        "Invert": lambda: ImageOps.invert(pil),
        "Posterize": lambda: ImageOps.posterize(pil, arg),
        "Solarize": lambda: ImageOps.solarize(pil, arg),
        "Color": lambda: ImageEnhance.Color(pil).enhance(arg),
        "Contrast": lambda: ImageEnhance.Contrast(pil).enhance(arg),
        "Brightness": lambda: ImageEnhance.Brightness(pil).enhance(arg),
        "Sharpness": lambda: ImageEnhance.Sharpness(pil).enhance(arg),
        # Pillow's rotate turns counterclockwise about the image center.
        "Rotate": lambda: pil.rotate(arg, resample=Image.NEAREST, fillcolor=(128, 128, 128)),
        "ShearX": lambda: _affine(pil, (1, arg, 0, 0, 1, 0)),
        "ShearY": lambda: _affine(pil, (1, 0, 0, arg, 1, 0)),
        "TranslateX": lambda: _affine(pil, (1, 0, arg, 0, 1, 0)),
        "TranslateY": lambda: _affine(pil, (1, 0, 0, 0, 1, arg)),
    }.get(name)
    if out is not None:
        return np.asarray(out())
    x = image.astype(np.int64)
    if name == "SolarizeAdd":
        return np.where(x < 128, np.minimum(x + arg, 255), x).astype(np.uint8)
    if name == "Cutout":
        cy, cx = center if center is not None else (h // 2, w // 2)
        out = image.copy()
        out[max(cy - arg, 0) : max(cy + arg, 0), max(cx - arg, 0) : max(cx + arg, 0)] = 128
        return out
    raise KeyError(name)


def _near_ties(name, arg, height, width):
    """[H, W] mask of output pixels whose source coordinate is ~halfway."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    if name == "Rotate":  # about the center, as tf.image / Pillow
        t = math.radians(arg)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        xs = math.cos(t) * (x - cx) - math.sin(t) * (y - cy) + cx
        ys = math.sin(t) * (x - cx) + math.cos(t) * (y - cy) + cy
    elif name == "ShearX":
        xs, ys = x + arg * y, y
    else:
        xs, ys = x, y + arg * x

    def tie(v):
        return np.abs(v - np.floor(v) - 0.5) < 1e-3

    return tie(xs) | tie(ys)


def assert_close(name, got, want, context, arg=None):
    got = np.asarray(got).astype(np.int64)
    want = want.astype(np.int64)
    assert got.shape == want.shape, context
    diff = np.abs(got - want)
    if name in ("Rotate", "ShearX", "ShearY"):
        differs = diff.max(-1) > 0
        other = differs & ~_near_ties(name, arg, *got.shape[:2])
        assert np.mean(other) <= 0.005, (
            f"{context}: {np.mean(other):.2%} pixels differ away from ties"
        )
    elif name == "AutoContrast":
        assert diff.max() <= 1, f"{context}: max diff {diff.max()}"
    elif name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert diff.max() <= 1 and np.mean(diff > 0) <= 0.01, (
            f"{context}: max diff {diff.max()}, {np.mean(diff > 0):.2%} differ"
        )
    else:
        assert diff.max() == 0, f"{context}: max diff {diff.max()}"


def _signed_arg(name, m, image, sign):
    arg = _official_args(name, m, *image.shape[:2])
    return None if arg is None else arg * sign


def _cases(name):
    signs = (1.0, -1.0) if name in SIGNED else (1.0,)
    for image_name, image in IMAGES.items():
        for m in MAGNITUDES:
            for sign in signs:
                yield image_name, image, m, sign


# ----------------------------------------------------------------- op tests


def test_op_table_is_the_official_list():
    assert augment.OPS == (
        "AutoContrast",
        "Equalize",
        "Invert",
        "Rotate",
        "Posterize",
        "Solarize",
        "Color",
        "Contrast",
        "Brightness",
        "Sharpness",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "SolarizeAdd",
        "Cutout",
    )
    assert augment.op_names(cutout=False) == augment.OPS[:-1]


@pytest.mark.parametrize("name", augment.OPS)
def test_op_matches_reference_eagerly(name):
    for image_name, image, m, sign in _cases(name):
        got = apply_op(image, name, m, sign=sign)
        assert got.dtype == tf.uint8 and got.shape == image.shape
        assert_close(
            name,
            got,
            reference(name, image, m, sign),
            f"{name} M={m} sign={sign} on {image_name}",
            _signed_arg(name, m, image, sign),
        )


@pytest.mark.parametrize("name", augment.OPS)
def test_op_matches_reference_in_tf_data(name):
    cases = list(_cases(name))
    # Images of different sizes: the map sees unknown static H and W.
    ds = None
    for _, image, m, sign in cases:
        item = tf.data.Dataset.from_tensors((image, np.float32(m), np.float32(sign)))
        ds = item if ds is None else ds.concatenate(item)
    by_magnitude = {}
    for m in MAGNITUDES:
        # The magnitude is a Python number (as in RandAugment), one map per M.
        by_magnitude[m] = list(
            ds.filter(lambda x, mm, s, m=m: tf.equal(mm, m))
            .map(lambda x, mm, s, m=m: apply_op(x, name, m, sign=s))
            .as_numpy_iterator()
        )
    counters = {m: 0 for m in MAGNITUDES}
    for image_name, image, m, sign in cases:
        got = by_magnitude[m][counters[m]]
        counters[m] += 1
        assert_close(
            name,
            got,
            reference(name, image, m, sign),
            f"{name} M={m} sign={sign} on {image_name} in tf.data",
            _signed_arg(name, m, image, sign),
        )


def test_ops_on_a_batch_with_per_image_arguments():
    images = np.stack([IMAGES["natural"], 255 - IMAGES["natural"]])
    for name, args in (
        ("Rotate", [20.0, -35.0]),
        ("ShearX", [0.3, -0.81]),
        ("TranslateY", [3.0, -10.8]),
    ):
        op = {
            "Rotate": augment.ops.rotate,
            "ShearX": augment.ops.shear_x,
            "TranslateY": augment.ops.translate_y,
        }[name]
        got = op(tf.constant(images), tf.constant(args)).numpy()
        for i in range(2):
            m = abs(args[i]) / _official_args(name, 10, 32, 32) * 10
            want = reference(name, images[i], m, sign=math.copysign(1, args[i]))
            assert_close(name, got[i], want, f"{name} image {i} of a batch", args[i])


def test_transform_agrees_with_the_official_kernel():
    # The official ops call ImageProjectiveTransformV3 (nearest, gray fill);
    # ours gathers whole pixels and rounds like Pillow: same away from ties.
    image = IMAGES["non_square"]
    for name, arg in (("Rotate", 27.0), ("Rotate", -81.0), ("ShearX", 0.81), ("ShearY", -0.27)):
        h, w = image.shape[:2]
        make = {
            "Rotate": lambda a, h=h, w=w: augment.ops.rotate_transforms([a], h, w),
            "ShearX": lambda a: augment.ops.shear_x_transforms([a]),
            "ShearY": lambda a: augment.ops.shear_y_transforms([a]),
        }[name]
        official = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[None],
            transforms=make(arg),
            output_shape=[h, w],
            fill_value=128.0,
            interpolation="NEAREST",
            fill_mode="CONSTANT",
        )[0]
        ours = augment.ops.transform(image[None], make(arg))[0]
        assert_close(name, ours, official.numpy(), f"{name} {arg} vs TF kernel", arg)


def test_cutout_position_and_clipping():
    image = IMAGES["non_square"]
    for center in ((0, 0), (23, 39), (5, 30)):
        got = apply_op(image, "Cutout", 27, center=center)
        assert_close(
            "Cutout", got, reference("Cutout", image, 27, center=center), f"Cutout at {center}"
        )


def test_level_mapping_at_official_magnitudes():
    # Posterize and Solarize are degenerate at M=27: clamped, both identity.
    image = IMAGES["natural"]
    for name in ("Posterize", "Solarize"):
        np.testing.assert_array_equal(apply_op(image, name, 27), image)
    assert _official_args("Posterize", 27, 32, 32) == 8  # official: 10 bits
    assert _official_args("Solarize", 27, 32, 32) == 256  # official: 691
    # Posterize at M=0 asks for 0 bits; clamped to 1 bit (Pillow's minimum).
    np.testing.assert_array_equal(apply_op(image, "Posterize", 0), image & 0x80)
    # Enhance factor 0.1 + 1.8 * 2.7 = 4.96; rotation 81 degrees at M=27.
    np.testing.assert_array_equal(
        apply_op(image, "Brightness", 27),
        np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(4.96)),
    )


# ------------------------------------------------------- official variant

VARIANT_OPS = ("Posterize", "Solarize", "Contrast")
# 10: solarize threshold wraps to 0; 22.5 / 23: posterize asks for 9 bits.
VARIANT_MAGNITUDES = (0, 5, 9, 10, 18, 20, 22.5, 23, 27, 30)
VARIANT_IMAGES = {
    **IMAGES,
    "imagenet": _natural(224, 224, 2),  # official contrast gray: 196
    "wide": _natural(16, 4104, 3),  # 65664 / 256 = 256.5: clipped to 255
}


def official_reference(name, image, m):
    """The official TF op as it ran, in numpy: uint8 wrapping, shift clamp.

    From tensorflow/tpu models/official/efficientnet/autoaugment.py
    (`level_to_arg`, `posterize`, `solarize`, `contrast`): Python ints are
    converted to uint8 (modulo 256), TF's shift kernels clamp a uint8 shift
    to [0, 7], and Contrast's "mean" is sum(256-bin histogram) / 256.
    """
    level = m / 10.0
    if name == "Posterize":
        shift = np.array([8 - int(level * 4)]).astype(np.uint8)[0]  # wraps
        shift = min(int(shift), 7)
        return (image >> shift) << shift
    if name == "Solarize":
        threshold = np.array([int(level * 256)]).astype(np.uint8)[0]  # wraps
        return np.where(image < threshold, image, 255 - image)
    if name == "Contrast":
        gray = np.asarray(Image.fromarray(image).convert("L"))
        hist, _ = np.histogram(gray, bins=256, range=(0, 255))
        mean = np.float32(hist.sum()) / np.float32(256.0)
        degenerate = np.float32(np.clip(mean, 0.0, 255.0).astype(np.uint8))
        factor = np.float32(level * 1.8 + 0.1)
        blended = degenerate + factor * (image.astype(np.float32) - degenerate)
        return np.clip(blended, 0.0, 255.0).astype(np.uint8)
    raise KeyError(name)


def _variant_reference(variant, name, image, m):
    if variant == "official":
        return official_reference(name, image, m)
    return reference(name, image, m)


@pytest.mark.parametrize("variant", augment.VARIANTS)
@pytest.mark.parametrize("name", VARIANT_OPS)
def test_variant_matches_reference_eagerly(name, variant):
    for image_name, image in VARIANT_IMAGES.items():
        for m in VARIANT_MAGNITUDES:
            got = apply_op(image, name, m, variant=variant)
            assert_close(
                name,
                got,
                _variant_reference(variant, name, image, m),
                f"{variant} {name} M={m} on {image_name}",
            )


@pytest.mark.parametrize("variant", augment.VARIANTS)
@pytest.mark.parametrize("name", VARIANT_OPS)
def test_variant_matches_reference_in_tf_data(name, variant):
    images = list(VARIANT_IMAGES.items())
    # Images of different sizes: the map sees unknown static H and W.
    ds = tf.data.Dataset.from_generator(
        lambda: (image for _, image in images),
        output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
    )
    for m in VARIANT_MAGNITUDES:
        outputs = ds.map(lambda x, m=m: apply_op(x, name, m, variant=variant))
        for (image_name, image), got in zip(images, outputs.as_numpy_iterator(), strict=True):
            assert_close(
                name,
                got,
                _variant_reference(variant, name, image, m),
                f"{variant} {name} M={m} on {image_name} in tf.data",
            )


def test_official_variant_differs_where_the_official_code_wrapped():
    image = IMAGES["natural"]

    def both(name, m):
        return (
            apply_op(image, name, m, variant="official").numpy(),
            apply_op(image, name, m, variant="corrected").numpy(),
        )

    # Posterize: 9+ bits wrapped to a 1-bit posterize for M >= 22.5.
    for m in (22.5, 23, 27, 30):
        official, corrected = both("Posterize", m)
        np.testing.assert_array_equal(official, image & 0x80)
        np.testing.assert_array_equal(corrected, image)
    for m in (9, 18, 20, 22.4):  # below the wrap both keep int(4 M / 10) bits
        official, corrected = both("Posterize", m)
        np.testing.assert_array_equal(official, corrected)
    # Solarize: threshold 179 at M = 27, 204 at M = 18, 0 (invert) at M = 10.
    for m, threshold in ((27, 179), (18, 204), (10, 0), (30, 0)):
        official, corrected = both("Solarize", m)
        np.testing.assert_array_equal(official, np.where(image < threshold, image, 255 - image))
        np.testing.assert_array_equal(corrected, image)
    official, corrected = both("Solarize", 9)  # threshold 230 in both
    np.testing.assert_array_equal(official, corrected)
    # Contrast: the gray level is pixels / 256 (1 for 20x20), not the mean
    # (77 for a uniform 77 image, which Pillow's contrast leaves unchanged).
    uniform = IMAGES["uniform"]
    np.testing.assert_array_equal(apply_op(uniform, "Contrast", 27), uniform)
    official = apply_op(uniform, "Contrast", 27, variant="official").numpy()
    np.testing.assert_array_equal(official, np.full_like(uniform, 255))  # 1 + 4.96 * 76
    official = apply_op(uniform, "Contrast", 0, variant="official").numpy()
    np.testing.assert_array_equal(official, np.full_like(uniform, 8))  # 1 + 0.1 * 76
    big = VARIANT_IMAGES["imagenet"]
    at_zero = apply_op(big, "Contrast", 0, variant="official").numpy().astype(np.float32)
    np.testing.assert_array_equal(at_zero, np.floor(196 + 0.1 * (big - np.float32(196))))


@pytest.mark.parametrize("mode", ["batch", "tf_data_batch", "tf_data_per_image"])
def test_randaugment_official_variant(mode):
    image = IMAGES["natural"]
    batch = np.stack([image] * 6)
    aug = RandAugment(num_layers=1, magnitude=27, ops=["Solarize"], seed=0, variant="official")
    if mode == "batch":
        outputs = aug(batch).numpy()
    elif mode == "tf_data_batch":
        outputs = next(tf.data.Dataset.from_tensors(batch).map(aug).as_numpy_iterator())
    else:
        ds = tf.data.Dataset.from_tensor_slices(batch).map(aug)
        outputs = np.stack(list(ds.as_numpy_iterator()))
    want = np.where(image < 179, image, 255 - image)
    for out in outputs:
        np.testing.assert_array_equal(out, want)
    # The corrected variant (default) leaves Solarize at M = 27 the identity.
    corrected = RandAugment(num_layers=1, magnitude=27, ops=["Solarize"], seed=0)
    np.testing.assert_array_equal(corrected(batch), batch)
    # All three ops through the batch path, per-image draws included.
    aug = RandAugment(num_layers=1, magnitude=23, ops=list(VARIANT_OPS), seed=1, variant="official")
    candidates = [official_reference(n, image, 23) for n in VARIANT_OPS]
    found = _which(aug(np.stack([image] * 24)).numpy(), candidates)
    assert None not in found and set(found) == {0, 1, 2}


def test_get_config_round_trip_keeps_the_variant():
    aug = RandAugment(2, 27, seed=4, variant="official")
    config = aug.get_config()
    assert config["variant"] == "official"
    assert RandAugment(seed=4).get_config()["variant"] == "corrected"
    batch = np.stack([IMAGES["natural"]] * 8)
    key = tf.constant([3, 9], tf.int64)
    np.testing.assert_array_equal(aug(batch, seed=key), RandAugment(**config)(batch, seed=key))


def test_explicit_key_decides_the_draws():
    batch = np.stack([IMAGES["natural"]] * 8)
    # A few ops keep the test fast; the draws do not depend on the op list.
    ops = ["Invert", "Posterize", "Solarize", "Rotate", "Cutout"]
    a = RandAugment(magnitude=18, ops=ops, seed=1)
    b = RandAugment(magnitude=18, ops=ops, seed=2)  # another generator
    key = tf.constant([5, 0], tf.int64)
    first = a(batch, seed=key).numpy()
    # Same key: identical, whatever the instance and its generator state.
    np.testing.assert_array_equal(first, a(batch, seed=key))
    np.testing.assert_array_equal(first, b(batch, seed=[5, 0]))
    # Per-image draws: identical inputs give different outputs in the batch.
    assert len({out.tobytes() for out in first}) >= 4
    # Different keys (either half): different outputs.
    for other in ([5, 1], [6, 0]):
        assert not np.array_equal(first, a(batch, seed=other))
    # Keys derived from the batch index, as the data pipeline does.
    ds = tf.data.Dataset.from_tensors(batch).repeat(3).enumerate()
    ds = ds.map(lambda i, x: a(x, seed=tf.stack([tf.constant(5, tf.int64), i])))
    outputs = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(outputs[0], first)
    assert not np.array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[2], b(batch, seed=[5, 2]))


def test_size_rule_for_translate_and_cutout():
    def consts(h, w):
        return tuple(float(v) for v in size_constants(h, w))

    assert consts(32, 32) == (4.0, 4.0)  # official small-image: size // 8
    assert consts(24, 40) == (3.0, 3.0)  # shorter side
    assert consts(100, 100) == (12.0, 12.0)
    assert consts(224, 224) == (100.0, 40.0)  # official ImageNet constants
    assert consts(600, 600) == (100.0, 40.0)
    # Explicit constants override the rule.
    image = IMAGES["natural"]
    got = apply_op(image, "TranslateX", 10, translate_const=7)
    np.testing.assert_array_equal(got[:, :25], image[:, 7:])
    assert (np.asarray(got)[:, 25:] == 128).all()


# ----------------------------------------------------------- RandAugment


def _candidates(image, magnitude, names):
    """All outputs one layer of RandAugment may give (cutout excluded)."""
    return [
        apply_op(image, n, magnitude, sign=s).numpy()
        for n in names
        for s in ((1.0, -1.0) if n in SIGNED else (1.0,))
    ]


def _which(outputs, candidates):
    return [
        next((i for i, c in enumerate(candidates) if np.array_equal(o, c)), None) for o in outputs
    ]


@pytest.mark.parametrize("mode", ["batch", "tf_data_batch", "tf_data_per_image"])
def test_each_image_draws_its_own_op(mode):
    image = IMAGES["natural"]
    names = augment.op_names(cutout=False)
    aug = RandAugment(num_layers=1, magnitude=18, cutout=False, seed=3)
    batch = np.stack([image] * 96)
    if mode == "batch":
        outputs = aug(batch).numpy()
    elif mode == "tf_data_batch":
        ds = tf.data.Dataset.from_tensor_slices(batch).batch(40).map(aug)
        outputs = np.concatenate(list(ds.as_numpy_iterator()))
    else:
        ds = tf.data.Dataset.from_tensor_slices(batch).map(aug)
        outputs = np.stack(list(ds.as_numpy_iterator()))
    candidates = _candidates(image, 18, names)
    found = _which(outputs, candidates)
    # Every output is exactly one op's output (ops always applied, none mixed;
    # Solarize/Posterize at M=18 and Invert are told apart by candidates).
    assert None not in found
    assert len(set(found)) >= 12  # many different ops within one batch


def test_cutout_is_drawn_with_gray_square():
    aug = RandAugment(num_layers=1, magnitude=27, ops=["Cutout"], seed=0)
    image = IMAGES["natural"]
    outputs = aug(np.stack([image] * 16)).numpy()
    for out in outputs:
        changed = np.any(out != image, -1)
        assert (out[changed] == 128).all() and changed.any()
    # Different positions for different images.
    assert len({out.tobytes() for out in outputs}) > 8


def test_shapes_and_dtypes():
    aug = RandAugment(seed=0)
    for image in IMAGES.values():
        out = aug(image)
        assert out.shape == image.shape and out.dtype == tf.uint8
        out = aug(np.stack([image] * 3))
        assert out.shape == (3,) + image.shape and out.dtype == tf.uint8
    empty = aug(np.zeros((0, 8, 8, 3), np.uint8))
    assert empty.shape == (0, 8, 8, 3)
    floats = aug(IMAGES["natural"].astype(np.float32))
    assert floats.dtype == tf.float32
    assert np.all(np.asarray(floats) == np.round(np.asarray(floats)))


def test_zero_layers_is_identity():
    image = IMAGES["natural"]
    np.testing.assert_array_equal(RandAugment(num_layers=0)(image), image)


def test_reproducible_under_a_seed():
    batch = np.stack([IMAGES["natural"]] * 8)
    a, b = RandAugment(seed=11), RandAugment(seed=11)
    for _ in range(2):
        np.testing.assert_array_equal(a(batch), b(batch))
        np.testing.assert_array_equal(a(batch[0]), b(batch[0]))
    assert not np.array_equal(RandAugment(seed=12)(batch), RandAugment(seed=11)(batch))

    def run(parallel):
        aug = RandAugment(seed=5)
        ds = (
            tf.data.Dataset.from_tensor_slices(batch)
            .enumerate()
            .map(
                lambda i, x: aug(x, seed=tf.stack([i, tf.constant(7, tf.int64)])),
                num_parallel_calls=parallel,
            )
        )
        return np.stack(list(ds.as_numpy_iterator()))

    # Per-element keys: identical whatever the parallelism.
    np.testing.assert_array_equal(run(None), run(4))

    def sequential():
        ds = tf.data.Dataset.from_tensor_slices(batch).map(RandAugment(seed=9))
        return np.stack(list(ds.as_numpy_iterator()))

    np.testing.assert_array_equal(sequential(), sequential())


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_layers": -1}, "num_layers"),
        ({"num_layers": 1.5}, "num_layers"),
        ({"magnitude": 31}, "magnitude"),
        ({"magnitude": -0.5}, "magnitude"),
        ({"magnitude": "27"}, "magnitude"),
        ({"ops": ["Rotate", "Blur"]}, "Blur"),
        ({"ops": []}, "ops"),
        ({"variant": "pillow"}, r"variant 'pillow'.*\['corrected', 'official'\]"),
        ({"variant": None}, "variant None"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandAugment(**kwargs)


def test_bad_images_raise():
    aug = RandAugment(seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        aug(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="rank 5"):
        aug(np.zeros((1, 1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        aug(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="int32"):
        aug(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 255\]"):
        aug(np.full((8, 8, 3), 300.0, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 255\]"):
        aug(np.full((8, 8, 3), -0.5, np.float32))
    with pytest.raises(ValueError, match="Unknown RandAugment op 'Blur'"):
        apply_op(IMAGES["natural"], "Blur", 9)
    with pytest.raises(ValueError, match="magnitude"):
        apply_op(IMAGES["natural"], "Rotate", 30.5)
    with pytest.raises(ValueError, match="variant 'tf'"):
        apply_op(IMAGES["natural"], "Solarize", 27, variant="tf")
    # Inside tf.data the range check fails when the element is produced.
    ds = tf.data.Dataset.from_tensors(np.full((8, 8, 3), 256.0, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 255\]"):
        list(ds.map(aug))
