"""The 15 ImageNet-C corruptions at 5 severities, as TF ops for tf.data.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019, arXiv 1903.12261), the benchmark
behind the paper's mCE (Noisy Student, section 3.3: 45.7 -> 28.3). The
parameters are those of their CIFAR-10-C generator
(hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py), which were set
for 32 px images: the digits and CIFAR models here see 32 px. Lengths in
pixels (blur radii, shuffle distance, motion length, elastic displacement)
are scaled by side / 32 for other sizes, so a corruption covers the same
fraction of the image at any resolution; factors (zoom, pixelate, noise
levels, jpeg quality) are used as they are.

Every op takes one uint8 image [H, W, 3] and a stateless seed [2] (int32)
and returns uint8 [H, W, 3], so the corrupted set depends only on (seed,
corruption, severity, example index), not on batch size or worker count.
The severities of one image share their random draws (`example_seed`).
Severity 0 returns the image unchanged. Where the reference relied on a
library we do not have in TF, the op is a close equivalent, noted at it:
ImageMagick's motion blur is rebuilt from its kernel (one-sided Gaussian taps
at integer offsets); glass blur's sequential pixel swaps become one gather of
random neighbours per iteration; fog's diamond-square plasma becomes octaves
of value noise with the same per-octave decay; frost, which blends in
photographs of frost that are not distributed with the code, blends in a
generated ice texture at the reference's weights. tfds `cifar10_corrupted`
(evaluation.datasets) holds the original images when exact numbers matter.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from noisy_student_tf.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 32  # make_cifar_c.py's IMSIZE: the side its pixel lengths are for

# Parameters per severity 1..5, make_cifar_c.py.
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # std on [0, 1]
SHOT_NOISE = (500, 250, 100, 75, 50)  # Poisson photons per unit intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # salt-and-pepper fraction
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # disk radius, alias
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma, d, it
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # radius, sigma
ZOOM_BLUR = tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26))
SNOW = (  # loc, scale, zoom, threshold, blur radius, blur sigma, blend
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image, frost weights
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # strength, wibble decay
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor around the channel means
ELASTIC = (  # displacement scale, its smoothing sigma, affine jitter: fractions of the side
    (0, 0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # side fraction of the low-resolution copy
JPEG_QUALITY = (80, 65, 58, 50, 40)


def _keys(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _reflect(index, size):
    """Index mirrored into [0, size) without repeating the edge (cv2 REFLECT_101)."""
    period = 2 * (size - 1)
    index = tf.math.floormod(index, tf.maximum(period, 1))
    return tf.where(index >= size, period - index, index)


def _sample(image, rows, cols):
    """Bilinear samples of image [H, W, C] at float coordinates rows, cols [H, W], mirrored."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    r0, c0 = tf.floor(rows), tf.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = tf.cast(r0, tf.int32), tf.cast(c0, tf.int32)

    def at(r, c):
        return tf.gather_nd(image, tf.stack([_reflect(r, h), _reflect(c, w)], axis=-1))

    top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
    bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


def _grid(image):
    shape = tf.shape(image)
    rows, cols = tf.meshgrid(tf.range(shape[0]), tf.range(shape[1]), indexing="ij")
    return tf.cast(rows, tf.float32), tf.cast(cols, tf.float32)


def _filter(image, kernel):
    """Same-size 2-D filtering of [H, W, C] with a numpy kernel, mirrored border."""
    kh, kw = kernel.shape
    pad = [[kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]]
    padded = tf.pad(image, pad, mode="REFLECT")
    channels = image.shape[-1]
    filters = tf.constant(np.tile(kernel[:, :, None, None], [1, 1, channels, 1]), tf.float32)
    out = tf.nn.depthwise_conv2d(padded[None], filters, [1, 1, 1, 1], "VALID")
    return out[0]


def _gaussian_kernel(sigma):
    """Normalised 1-D Gaussian, truncated at 4 sigma like skimage's `gaussian`."""
    radius = max(int(4 * sigma + 0.5), 1)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(image, sigma):
    k = _gaussian_kernel(sigma)
    return _filter(_filter(image, k[None, :]), k[:, None])


def _disk(radius, alias_blur, scale):
    """A pill-box of `radius` px smoothed by a small Gaussian, as make_cifar_c.py's `disk`."""
    half = int(math.ceil(radius)) + 2
    x = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(x, x)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(
        -0.5 * (np.arange(-1 * max(1, round(scale)), max(1, round(scale)) + 1) / alias_blur) ** 2
    )
    g /= g.sum()
    smoothed = np.apply_along_axis(lambda v: np.convolve(v, g, "same"), 0, disk)
    smoothed = np.apply_along_axis(lambda v: np.convolve(v, g, "same"), 1, smoothed)
    return (smoothed / smoothed.sum()).astype(np.float32)


def _transform(images, transforms, fill_mode="NEAREST"):
    """Bilinear projective warps of images [N, H, W, C] in one op; transforms [N, 8].

    Each row (a0, a1, a2, b0, b1, b2, 0, 0) maps an output pixel (x, y) to the
    input point (a0 x + a1 y + a2, b0 x + b1 y + b2). One op for all taps
    keeps the traced graph small: the per-(corruption, severity) tracing, not
    the pixels, dominates the time on small images.
    """
    shape = tf.shape(images)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.cast(transforms, tf.float32),
        output_shape=shape[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode,
    )


def _motion(image, radius, sigma, angle_degrees):
    """ImageMagick MotionBlurImage: Gaussian taps exp(-i^2/2s^2) at round(i*(cos, sin)).

    One-sided (the blur trails the image in direction `angle`), edge pixels
    repeated outside the image; taps below 1e-4 of the first are dropped.
    """
    taps = min(2 * int(math.ceil(radius)) + 1, int(math.ceil(4.3 * sigma)) + 1)
    weights = np.exp(-(np.arange(taps) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    theta = angle_degrees * math.pi / 180
    steps = tf.range(taps, dtype=tf.float32)
    dx, dy = tf.round(steps * tf.cos(theta)), tf.round(steps * tf.sin(theta))
    ones, zeros = tf.ones_like(steps), tf.zeros_like(steps)
    transforms = tf.stack([ones, zeros, dx, zeros, ones, dy, zeros, zeros], axis=1)
    shifted = _transform(tf.repeat(image[None], taps, axis=0), transforms)
    return tf.tensordot(tf.constant(weights, tf.float32), shifted, axes=1)


def _zooms(image, factors):
    """[len(factors), H, W, C]: the center 1/z of the image stretched back to full size."""
    h, w = image.shape[0], image.shape[1]
    inverse = 1.0 / np.asarray(factors, np.float64)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    zeros = np.zeros_like(inverse)
    transforms = np.stack(
        [inverse, zeros, cx * (1 - inverse), zeros, inverse, cy * (1 - inverse), zeros, zeros],
        axis=1,
    )
    return _transform(tf.repeat(image[None], len(factors), axis=0), transforms)


def _fractal(seed, size, decay):
    """Plasma-like noise in [0, 1], [size, size]: octaves of bilinear value noise.

    Octave k is a 2^(k+1)-cell grid of uniform noise whose amplitude falls by
    `decay` per octave, as the diamond-square `wibble` does in make_cifar_c.py.
    """
    octaves = max(int(math.ceil(math.log2(max(size, 2)))), 1)
    out = tf.zeros([size, size, 1])
    for k, key in enumerate(_keys(seed, octaves)):
        cells = 2 ** (k + 1)
        grid = tf.random.stateless_uniform([cells, cells, 1], key, -1.0, 1.0)
        out += tf.image.resize(grid, [size, size], "bilinear") / decay**k
    out -= tf.reduce_min(out)
    return out / tf.maximum(tf.reduce_max(out), 1e-6)


def gaussian_noise(x, severity, seed, scale):
    return x + GAUSSIAN_NOISE[severity - 1] * tf.random.stateless_normal(tf.shape(x), seed)


def shot_noise(x, severity, seed, scale):
    c = SHOT_NOISE[severity - 1]
    return tf.random.stateless_poisson(tf.shape(x), seed, x * c, dtype=tf.float32) / c


def impulse_noise(x, severity, seed, scale):
    # skimage random_noise(mode="s&p"): each value is replaced with probability
    # `amount`, by 1 or 0 with equal odds.
    hit, salt = _keys(seed, 2)
    replace = tf.random.stateless_uniform(tf.shape(x), hit) < IMPULSE_NOISE[severity - 1]
    value = tf.cast(tf.random.stateless_uniform(tf.shape(x), salt) < 0.5, tf.float32)
    return tf.where(replace, value, x)


def defocus_blur(x, severity, seed, scale):
    radius, alias = DEFOCUS_BLUR[severity - 1]
    return _filter(x, _disk(radius * scale, alias * scale, scale))


def glass_blur(x, severity, seed, scale):
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    sigma, delta = sigma * scale, max(1, round(delta * scale))
    x = tf.round(_blur(x, sigma) * 255) / 255  # the reference shuffles uint8 pixels
    rows, cols = _grid(x)
    rows, cols = tf.cast(rows, tf.int32), tf.cast(cols, tf.int32)
    shape = tf.shape(x)
    for key in _keys(seed, iterations):
        # randint(-d, d): offsets in [-d, d - 1], as the reference draws them.
        offsets = tf.random.stateless_uniform(
            [2, shape[0], shape[1]], key, -delta, delta, dtype=tf.int32
        )
        r = tf.clip_by_value(rows + offsets[0], 0, shape[0] - 1)
        c = tf.clip_by_value(cols + offsets[1], 0, shape[1] - 1)
        x = tf.gather_nd(x, tf.stack([r, c], axis=-1))
    return _blur(x, sigma)


def motion_blur(x, severity, seed, scale):
    radius, sigma = MOTION_BLUR[severity - 1]
    angle = tf.random.stateless_uniform([], seed, -45.0, 45.0)
    return _motion(x, radius * scale, sigma * scale, angle)


def zoom_blur(x, severity, seed, scale):
    factors = ZOOM_BLUR[severity - 1]
    return (x + tf.reduce_sum(_zooms(x, factors), axis=0)) / (len(factors) + 1)


def snow(x, severity, seed, scale):
    loc, spread, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    layer_key, angle_key = _keys(seed, 2)
    shape = tf.shape(x)
    layer = tf.random.stateless_normal([shape[0], shape[1], 1], layer_key, loc, spread)
    layer = _zooms(layer, [zoom])[0]
    layer = tf.where(layer < threshold, 0.0, layer)
    layer = tf.round(tf.clip_by_value(layer, 0, 1) * 255) / 255  # stored as an 8-bit PNG
    angle = tf.random.stateless_uniform([], angle_key, -135.0, -45.0)
    layer = _motion(layer, radius * scale, sigma * scale, angle)
    gray = tf.image.rgb_to_grayscale(x)
    x = blend * x + (1 - blend) * tf.maximum(x, gray * 1.5 + 0.5)
    return x + layer + tf.image.rot90(layer, 2)


def frost(x, severity, seed, scale):
    image_weight, frost_weight = FROST[severity - 1]
    # Generated stand-in for the reference's frost photographs: fine-grained
    # fractal noise sharpened into bright crystal ridges, ice-blue tinted.
    h, w = x.shape[0], x.shape[1]
    texture = _fractal(seed, max(h, w), 1.4)[:h, :w]
    texture = (1.0 - tf.abs(2.0 * texture - 1.0)) ** 2  # ridges where the noise crosses 0.5
    tint = tf.constant([0.85, 0.93, 1.0])
    return image_weight * x + frost_weight * texture * tint


def fog(x, severity, seed, scale):
    strength, decay = FOG[severity - 1]
    h, w = x.shape[0], x.shape[1]
    # make_cifar_c.py draws a 32 px plasma map (a power of two) and crops it.
    haze = _fractal(seed, 2 ** int(math.ceil(math.log2(max(h, w)))), decay)[:h, :w]
    peak = tf.reduce_max(x)
    return (x + strength * haze) * peak / (peak + strength)


def brightness(x, severity, seed, scale):
    hsv = tf.image.rgb_to_hsv(x)
    value = tf.clip_by_value(hsv[..., 2:] + BRIGHTNESS[severity - 1], 0, 1)
    return tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], -1))


def contrast(x, severity, seed, scale):
    means = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
    return (x - means) * CONTRAST[severity - 1] + means


def elastic_transform(x, severity, seed, scale):
    amount, smooth, jitter = ELASTIC[severity - 1]
    side = tf.cast(tf.reduce_min(tf.shape(x)[:2]), tf.float32)
    affine_key, row_key, col_key = _keys(seed, 3)
    # A random affine map: three points around the center each moved by up to
    # `jitter` x side (make_cifar_c.py, cv2.getAffineTransform + warpAffine).
    center, half = tf.floor(side / 2), tf.floor(side / 3)
    src = tf.stack(
        [
            [center + half, center + half],
            [center + half, center - half],
            [center - half, center - half],
        ]
    )
    dst = src + tf.random.stateless_uniform([3, 2], affine_key, -1.0, 1.0) * jitter * side
    # Output pixel p samples the input at A^-1 p: solve for the dst -> src map.
    homogeneous = tf.concat([dst, tf.ones([3, 1])], axis=1)
    inverse = tf.transpose(tf.linalg.solve(homogeneous, src))  # [2, 3]: rows give x and y
    transform = tf.concat([tf.reshape(inverse, [6]), tf.zeros([2])], axis=0)
    x = _transform(x[None], transform[None], fill_mode="REFLECT")[0]
    if amount > 0:
        rows, cols = _grid(x)
        sigma = smooth * min(x.shape[0], x.shape[1])
        fields = []
        for key in (row_key, col_key):
            noise = tf.random.stateless_uniform([tf.shape(x)[0], tf.shape(x)[1], 1], key, -1, 1)
            fields.append(_blur(noise, sigma)[..., 0] * amount * side)
        x = _sample(x, rows + fields[0], cols + fields[1])
    return x


def pixelate(x, severity, seed, scale):
    shape = tf.shape(x)
    low = tf.cast(tf.cast(shape[:2], tf.float32) * PIXELATE[severity - 1], tf.int32)
    small = tf.image.resize(x, low, "area")  # PIL BOX down
    return tf.image.resize(small, shape[:2], "nearest")  # and BOX (blocky) up


def jpeg_compression(x, severity, seed, scale):
    pixels = tf.cast(tf.round(tf.clip_by_value(x, 0, 1) * 255), tf.uint8)
    decoded = tf.image.adjust_jpeg_quality(pixels, JPEG_QUALITY[severity - 1])
    return tf.cast(decoded, tf.float32) / 255


# The benchmark's 15 corruptions in its order (noise, blur, weather, digital).
CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def check_names(names) -> list[str]:
    """`names` as a list, each a known corruption; ConfigError otherwise."""
    names = list(names)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(
            f"unknown corruption(s) {unknown}; expected names from {list(CORRUPTIONS)}"
        )
    return names


def corrupt(image, name: str, severity: int, seed) -> tf.Tensor:
    """One corrupted copy of `image`.

    Args:
      image: uint8 [H, W, 3].
      name: a key of CORRUPTIONS.
      severity: 0 (the image itself) to 5.
      seed: int32 [2], a stateless RNG key; the same key gives the same image.

    Returns:
      uint8 [H, W, 3], rounded as the benchmark stores its images.
    """
    check_names([name])
    if severity not in (0, *SEVERITIES):
        raise ConfigError(f"corruption severity must be 0..5, got {severity!r}")
    image = tf.convert_to_tensor(image)
    if severity == 0:
        return image
    if image.shape.rank != 3 or None in image.shape[:2]:
        raise ValueError(f"corrupt needs one image of known size [H, W, 3]; got {image.shape}")
    x = tf.cast(image, tf.float32) / 255.0
    side = min(image.shape[0], image.shape[1])
    out = CORRUPTIONS[name](
        x, severity, tf.convert_to_tensor(seed, tf.int32), side / REFERENCE_SIDE
    )
    out = tf.cast(tf.round(tf.clip_by_value(out, 0.0, 1.0) * 255.0), tf.uint8)
    return tf.ensure_shape(out, image.shape)


def example_seed(seed: int, name: str, index) -> tf.Tensor:
    """The key of example `index` under (seed, corruption).

    The severity is not part of it: the five severities of an image share
    their random draws (noise field, motion angle, snow layer) and differ
    only in strength, so comparisons across severities and models are paired.
    """
    base = tf.constant([seed, list(CORRUPTIONS).index(name)], tf.int32)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int32))


def corrupted_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    name: str,
    severity: int,
    seed: int = 0,
    batch_size: int = 128,
) -> tf.data.Dataset:
    """Batches (corrupted uint8 images, labels) of an in-memory set, in order.

    Applied per image in tf.data with a key from (seed, name, example
    index), so the result is the same for any batch size.
    """
    check_names([name])
    ds = tf.data.Dataset.from_tensor_slices((images, labels, tf.range(len(images))))
    ds = ds.map(
        lambda x, y, i: (corrupt(x, name, severity, example_seed(seed, name, i)), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
