"""Image operations of RandAugment, on uint8 batches, in core TensorFlow.

Every op takes `images`, a uint8 tensor [B, H, W, 3] (B may be 0), plus
per-image arguments as tensors of shape [B] (a scalar broadcasts), and
returns uint8 [B, H, W, 3]. Only plain core TF tensor ops are used (no
tensorflow-addons, no py_function), so every op runs inside tf.data graphs
on images of any size.

Speed notes (CPU, measured in tf.data maps): element-wise float/uint8
arithmetic is cheap, while tf.where over whole images and tf.gather lookups
are several times slower, so masks are applied arithmetically,
translations are pad + slice copies, and rotations and shears gather whole
RGB pixels once per output pixel.

Source of each op: the official `autoaugment.py` of tensorflow/tpu's
EfficientNet code, copied as `randaugment.py` into google-research/noisystudent
(called "official" below). Where the official TF op was written as the
"equivalent of PIL X" and differs from Pillow, the Pillow behaviour wins,
because Pillow's ImageOps/ImageEnhance are what the policies were searched
on; each such case is stated in the op's docstring.
"""

import math

import tensorflow as tf

# Pixels that geometric ops and Cutout uncover are set to this gray
# (official: `replace_value = [128] * 3`).
FILL_VALUE = 128


def _per_image(value, images, dtype=tf.float32):
    """Broadcasts a scalar or [B] argument to shape [B]."""
    value = tf.cast(tf.convert_to_tensor(value), dtype)
    return tf.broadcast_to(tf.reshape(value, [-1]), tf.shape(images)[:1])


def _column(value):
    """[B] -> [B, 1, 1, 1] so that an argument broadcasts over pixels."""
    return tf.reshape(value, [-1, 1, 1, 1])


def blend(degenerate, images, factor, float_images=None):
    """Pillow `Image.blend(degenerate, images, factor)`, as ImageEnhance uses it.

    degenerate + factor * (images - degenerate) in float32, clipped to
    [0, 255] and truncated, as Pillow's Blend.c and the official `blend`.

    Args:
      degenerate: float32, broadcastable to images (e.g. [B, H, W, 1], a
        scalar), the factor-0 image of the enhancement.
      images: uint8 [B, H, W, 3], the factor-1 image.
      factor: [B] or scalar >= 0; above 1 extrapolates.
      float_images: optional `images` already cast to float32.

    Returns:
      uint8 [B, H, W, 3].
    """
    factor = _column(_per_image(factor, images))
    if float_images is None:
        float_images = tf.cast(images, tf.float32)
    blended = degenerate + factor * (float_images - degenerate)
    return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def grayscale(images, channels=1, float_images=None):
    """Pillow's RGB -> L conversion: (19595 R + 38470 G + 7471 B + 2^15) >> 16.

    The official code uses tf.image.rgb_to_grayscale (float weights), which
    differs from Pillow by up to one level; the fixed-point form is exact.
    It is one float32 matmul, where every product and partial sum is an
    integer below 2^24 and therefore exact.

    Args:
      images: uint8 [B, H, W, 3].
      channels: 1, or 3 to repeat the gray value (as L -> RGB does).

    Returns:
      float32 [B, H, W, channels] holding integers in [0, 255].
    """
    shape = tf.shape(images)
    weights = tf.constant([[19595.0], [38470.0], [7471.0]]) * tf.ones([1, channels])
    if float_images is None:
        float_images = tf.cast(images, tf.float32)
    weighted = tf.matmul(tf.reshape(float_images, [-1, 3]), weights)
    gray = tf.floor((weighted + 32768.0) * (1.0 / 65536.0))
    return tf.reshape(gray, tf.concat([shape[:3], [channels]], 0))


def _channel_min_max(images):
    """Per image and channel min and max, float32 [B, 1, 1, 3] each.

    Reduced over rows first on an int32 [B, H, W * 3] view: reductions over an
    outer axis vectorize, uint8 reductions over [1, 2] do not.
    """
    shape = tf.shape(images)
    rows = tf.reshape(tf.cast(images, tf.int32), [shape[0], shape[1], -1])

    def reduce(fn):
        per_column = tf.reshape(fn(rows, axis=1), [shape[0], shape[2], 3])
        return tf.cast(fn(per_column, axis=1), tf.float32)[:, None, None, :]

    return reduce(tf.reduce_min), reduce(tf.reduce_max)


def autocontrast(images):
    """Pillow `ImageOps.autocontrast` (cutoff 0): stretch each channel to 0..255.

    Per image and channel, lo..hi maps linearly onto 0..255 (truncated);
    channels with hi == lo are left unchanged. Source: official
    `autocontrast`. Argument: none.
    """
    lo, hi = _channel_min_max(images)
    # Pillow: scale = 255 / (hi - lo), offset = -lo * scale, int(x * scale +
    # offset), clipped; flat channels (hi == lo) get scale 1, offset 0.
    flat = hi <= lo
    scale = tf.where(flat, 1.0, 255.0 / tf.maximum(hi - lo, 1.0))
    offset = tf.where(flat, 0.0, -lo * scale)
    # Within float error of [0, 255]: truncation alone lands in range.
    return tf.cast(tf.cast(images, tf.float32) * scale + offset, tf.uint8)


def equalize(images):
    """Pillow `ImageOps.equalize`: per-channel histogram equalization.

    Per image and channel: step = (pixels - count of the brightest value) //
    255; lut[i] = (step // 2 + sum(hist[:i])) // step, clipped to 255; step 0
    leaves the channel unchanged. Source: official `equalize`, which copies
    Pillow's integer algorithm. Argument: none.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    # One histogram per (image, channel): offset the values into disjoint bins.
    # The offsets are tiled to full size: inner-axis broadcasting is slow.
    offsets = tf.tile(tf.range(0, 3 * 256, 256), [height * width])
    offsets = tf.reshape(offsets, [1, -1]) + 3 * 256 * tf.range(batch)[:, None]
    flat = tf.reshape(tf.cast(images, tf.int32), [batch, -1]) + offsets
    hist = tf.math.bincount(
        tf.reshape(flat, [-1]), minlength=batch * 3 * 256, maxlength=batch * 3 * 256, dtype=tf.int32
    )
    hist = tf.reshape(hist, [batch * 3, 256])
    # Count of the brightest value present: the last nonzero bin.
    last = 255 - tf.argmax(tf.reverse(hist, [1]) > 0, axis=1, output_type=tf.int32)
    count_brightest = tf.gather(hist, last, batch_dims=1)
    step = (height * width - count_brightest) // 255  # [B*3]
    safe_step = tf.maximum(step, 1)[:, None]
    cumulative = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.minimum((cumulative + safe_step // 2) // safe_step, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    out = tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.uint8), flat)
    return tf.reshape(out, shape)


def invert(images):
    """Pillow `ImageOps.invert`: 255 - x. Source: official `invert`."""
    return 255 - images


def posterize(images, bits):
    """Pillow `ImageOps.posterize`: keep the `bits` high bits of each value.

    Args:
      images: uint8 [B, H, W, 3].
      bits: [B] or scalar in [1, 8] (Pillow's documented range). The official
        mapping asks for up to int(3 * 4) = 12 bits; callers clamp (see
        randaugment.py), 8 being the identity.
    """
    bits = tf.clip_by_value(_per_image(bits, images, tf.int32), 1, 8)
    mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, 8 - bits), 255)
    return tf.bitwise.bitwise_and(images, tf.cast(_column(mask), tf.uint8))


def solarize(images, threshold):
    """Pillow `ImageOps.solarize`: x if x < threshold else 255 - x.

    Args:
      images: uint8 [B, H, W, 3].
      threshold: [B] or scalar in [0, 256]; 256 is the identity.
    """
    threshold = _column(_per_image(threshold, images, tf.int32))
    above = tf.cast(tf.cast(images, tf.int32) >= threshold, tf.uint8)
    return tf.bitwise.bitwise_xor(images, above * 255)  # 255 - x == x ^ 255


def solarize_add(images, addition, threshold=128):
    """Official `solarize_add`: x + addition (clipped) where x < threshold.

    Not a Pillow op; the PIL AutoAugment code applies
    `img.point(lambda i: min(255, i + addition) if i < threshold else i)`.

    Args:
      images: uint8 [B, H, W, 3].
      addition: [B] or scalar, any integer (the result saturates at 0 / 255).
      threshold: [B] or scalar, 128 in the official code.
    """
    x = tf.cast(images, tf.float32)
    addition = _column(tf.round(_per_image(addition, images)))
    threshold = _column(_per_image(threshold, images))
    below = tf.cast(x < threshold, tf.float32)
    added = tf.clip_by_value(x + addition, 0.0, 255.0)
    return tf.cast(x + below * (added - x), tf.uint8)


def color(images, factor):
    """Pillow `ImageEnhance.Color`: blend the image with its grayscale.

    Args:
      images: uint8 [B, H, W, 3].
      factor: [B] or scalar >= 0; 0 is gray, 1 the identity.
    """
    x = tf.cast(images, tf.float32)
    return blend(grayscale(images, 3, x), images, factor, x)


def contrast(images, factor):
    """Pillow `ImageEnhance.Contrast`: blend with the mean gray level.

    The degenerate image is int(mean(L) + 0.5), the rounded mean of the
    grayscale image, as in Pillow. The official TF `contrast` divides the
    pixel count by 256 instead of averaging the histogram (a known bug that
    makes the op depend on image size; see `contrast_official`); this
    follows Pillow.

    Args:
      images: uint8 [B, H, W, 3].
      factor: [B] or scalar >= 0; 0 is uniform gray, 1 the identity.
    """
    gray = tf.cast(grayscale(images), tf.int32)
    # Row sums fit int32 for any width below 8M pixels; the total may not.
    row_sums = tf.cast(tf.reduce_sum(gray, axis=[2, 3]), tf.int64)
    total = tf.reduce_sum(row_sums, axis=1)
    count = tf.cast(tf.shape(images)[1] * tf.shape(images)[2], tf.int64)
    mean = (2 * total + count) // (2 * count)  # exact int(mean + 0.5)
    return blend(_column(tf.cast(mean, tf.float32)), images, factor)


def contrast_official(images, factor):
    """The official TF `contrast` as it ran: blend with pixel count / 256.

    tensorflow/tpu models/official/efficientnet/autoaugment.py, `contrast`:
    `hist = tf.histogram_fixed_width(gray, [0, 255], nbins=256)`, then
    `mean = reduce_sum(hist) / 256`. The histogram's sum is the number of
    pixels, so this "mean" is H * W / 256 whatever the content; it is
    clipped to [0, 255] and truncated by the uint8 cast. The degenerate gray
    level thus depends only on the image size: 4 at 32x32, 3 at 24x40, 196
    at 224x224, 225 at 240x240, 255 from 256x256 up. Used by
    `RandAugment(variant="official")`; `contrast` is the Pillow op.

    Args:
      images: uint8 [B, H, W, 3].
      factor: [B] or scalar >= 0; 0 is the uniform size-dependent gray.
    """
    shape = tf.shape(images)
    # Exact in float32 below 2^24 pixels; larger images clip to 255 anyway.
    pixels = tf.cast(shape[1] * shape[2], tf.float32)
    level = tf.floor(tf.minimum(pixels * (1.0 / 256.0), 255.0))
    return blend(level, images, factor)


def brightness(images, factor):
    """Pillow `ImageEnhance.Brightness`: blend with black. Factor >= 0."""
    return blend(tf.zeros([], tf.float32), images, factor)


def sharpness(images, factor):
    """Pillow `ImageEnhance.Sharpness`: blend with the SMOOTH-filtered image.

    SMOOTH is the 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13; like
    Pillow, the result is rounded (the official TF op truncates) and the
    one-pixel border keeps the original values, so it is unchanged by the
    blend. The filter is a sum of shifted slices of a [B, H, W * 3] view,
    faster on CPU than a depthwise convolution.

    Args:
      images: uint8 [B, H, W, 3].
      factor: [B] or scalar >= 0; 0 is smoothed, 1 the identity, >1 sharpens.
    """
    shape = tf.shape(images)

    def sharpen():
        x = tf.reshape(tf.cast(images, tf.float32), [shape[0], shape[1], -1])
        columns = x[:, :-2] + x[:, 1:-1] + x[:, 2:]  # vertical 3-sums
        box = columns[:, :, :-6] + columns[:, :, 3:-3] + columns[:, :, 6:]
        center = x[:, 1:-1, 3:-3]
        # Sums of at most 13 * 255 are exact; round half up like Pillow.
        smooth = tf.floor((box + 4.0 * center) * (1.0 / 13.0) + 0.5)
        f = tf.reshape(_per_image(factor, images), [-1, 1, 1])
        inner = tf.cast(tf.clip_by_value(smooth + f * (center - smooth), 0.0, 255.0), tf.uint8)
        rows = tf.reshape(images, [shape[0], shape[1], -1])
        middle = tf.concat([rows[:, 1:-1, :3], inner, rows[:, 1:-1, -3:]], 2)
        out = tf.concat([rows[:, :1], middle, rows[:, -1:]], 1)
        return tf.reshape(out, shape)

    big_enough = tf.logical_and(shape[1] >= 3, shape[2] >= 3)
    return tf.cond(big_enough, sharpen, lambda: tf.identity(images))


def transform(images, transforms):
    """Affine/projective warp with nearest sampling and gray fill.

    Args:
      images: uint8 [B, H, W, 3].
      transforms: float32 [B, 8], rows [a0, a1, a2, b0, b1, b2, c0, c1]
        mapping each output pixel (x, y) to the input pixel
        ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1,
        with pixel centers at integer coordinates, the convention of
        tf.raw_ops.ImageProjectiveTransformV3 (which the official code calls
        through tf.contrib.image).

    Returns:
      uint8 [B, H, W, 3]; the source pixel is floor(coordinate + 0.5), as
      Pillow's NEAREST filter picks it, and pixels mapped from outside the
      input are FILL_VALUE, as the official wrap/unwrap trick does.
      Computing the source index on the [H, W] grid and gathering whole RGB
      pixels is about twice as fast on CPU as ImageProjectiveTransformV3,
      which resamples every channel separately; the two agree except where a
      coordinate falls exactly halfway between pixels.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    t = tf.reshape(tf.cast(transforms, tf.float32), [-1, 8, 1, 1])
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :]
    k = t[:, 6] * xs + t[:, 7] * ys + 1.0
    x_in = tf.floor((t[:, 0] * xs + t[:, 1] * ys + t[:, 2]) / k + 0.5)
    y_in = tf.floor((t[:, 3] * xs + t[:, 4] * ys + t[:, 5]) / k + 0.5)
    w = tf.cast(width, tf.float32)
    h = tf.cast(height, tf.float32)
    x_in = tf.clip_by_value(x_in, -1.0, w)  # -1 and w are outside: gray
    y_in = tf.clip_by_value(y_in, -1.0, h)
    valid = tf.cast((x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h), tf.int32)
    index = (
        tf.cast(y_in, tf.int32) * width
        + tf.cast(x_in, tf.int32)
        + tf.range(batch)[:, None, None] * (height * width)
    )
    # Invalid positions read one extra gray pixel appended after the batch.
    source = valid * index + (1 - valid) * (batch * height * width)
    flat = tf.concat(
        [tf.reshape(images, [-1, 3]), tf.fill([1, 3], tf.constant(FILL_VALUE, tf.uint8))], 0
    )
    return tf.reshape(tf.gather(flat, tf.reshape(source, [-1])), shape)


def rotate_transforms(degrees, height, width):
    """[B] degrees -> [B, 8] transforms rotating about the image center.

    Positive degrees turn the content counterclockwise, as Pillow's
    `Image.rotate` and tf.image's `angles_to_projective_transforms`
    (which the official `rotate` calls through tf.contrib).
    """
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    w = tf.cast(width, tf.float32) - 1.0
    h = tf.cast(height, tf.float32) - 1.0
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    zeros = tf.zeros_like(cos)
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zeros, zeros], 1)


def shear_x_transforms(level):
    """[B] shear -> [B, 8]: input x = x + level * y (official `shear_x`)."""
    level = tf.cast(level, tf.float32)
    zeros, ones = tf.zeros_like(level), tf.ones_like(level)
    return tf.stack([ones, level, zeros, zeros, ones, zeros, zeros, zeros], 1)


def shear_y_transforms(level):
    """[B] shear -> [B, 8]: input y = level * x + y (official `shear_y`)."""
    level = tf.cast(level, tf.float32)
    zeros, ones = tf.zeros_like(level), tf.ones_like(level)
    return tf.stack([ones, zeros, zeros, level, ones, zeros, zeros, zeros], 1)


def translate_x_transforms(pixels):
    """[B] pixels -> [B, 8]: input x = x + round(pixels), content moves left.

    Rounding is Pillow's, floor(pixels + 0.5); see `translate_x`.
    """
    pixels = tf.floor(tf.cast(pixels, tf.float32) + 0.5)
    zeros, ones = tf.zeros_like(pixels), tf.ones_like(pixels)
    return tf.stack([ones, zeros, pixels, zeros, ones, zeros, zeros, zeros], 1)


def translate_y_transforms(pixels):
    """[B] pixels -> [B, 8]: input y = y + round(pixels), content moves up.

    Rounding is Pillow's, floor(pixels + 0.5); see `translate_x`.
    """
    pixels = tf.floor(tf.cast(pixels, tf.float32) + 0.5)
    zeros, ones = tf.zeros_like(pixels), tf.ones_like(pixels)
    return tf.stack([ones, zeros, zeros, zeros, ones, pixels, zeros, zeros], 1)


def rotate(images, degrees):
    """Official `rotate`: rotate by `degrees` about the center, gray fill."""
    shape = tf.shape(images)
    return transform(images, rotate_transforms(_per_image(degrees, images), shape[1], shape[2]))


def shear_x(images, level):
    """Official `shear_x` (PIL affine (1, level, 0, 0, 1, 0)), gray fill."""
    return transform(images, shear_x_transforms(_per_image(level, images)))


def shear_y(images, level):
    """Official `shear_y` (PIL affine (1, 0, 0, level, 1, 0)), gray fill."""
    return transform(images, shear_y_transforms(_per_image(level, images)))


def _shift(images, pixels, axis):
    """out[i] = images[i + s] along `axis` (1 rows, 2 cols), gray outside.

    s = floor(pixels + 0.5), Pillow's nearest rounding of a translation. A
    single image is shifted by pad + slice of its [H, W * 3] view (a memory
    copy, several times faster than resampling); a batch with per-image
    shifts uses `transform` with the same whole-pixel shift, which gives
    identical pixels.
    """
    if images.shape[0] != 1:
        make = translate_x_transforms if axis == 2 else translate_y_transforms
        return transform(images, make(_per_image(pixels, images)))
    shape = tf.shape(images)
    size = shape[axis]
    shift = tf.floor(_per_image(pixels, images) + 0.5)[0]
    shift = tf.cast(tf.clip_by_value(shift, -1e6, 1e6), tf.int32)
    shift = tf.clip_by_value(shift, -size, size)
    step = 3 if axis == 2 else 1  # values per column / rows per row
    view = tf.reshape(images, [shape[1], -1] if axis == 2 else shape[1:])
    pad = tf.abs(shift) * step
    paddings = [[0, 0], [pad, pad]] if axis == 2 else [[pad, pad], [0, 0], [0, 0]]
    padded = tf.pad(view, paddings, constant_values=FILL_VALUE)
    start = shift * step + pad
    begin = [0, start] if axis == 2 else [start, 0, 0]
    return tf.reshape(tf.slice(padded, begin, tf.shape(view)), shape)


def translate_x(images, pixels):
    """Official `translate_x` (PIL affine (1, 0, pixels, 0, 1, 0)), gray fill.

    The content moves left by `pixels`, rounded to a whole pixel as Pillow's
    nearest sampling does (the official TF op agrees except at exact
    half-pixel negative shifts, where it leaves one more column gray).
    """
    return _shift(images, pixels, 2)


def translate_y(images, pixels):
    """Official `translate_y` (PIL affine (1, 0, 0, 0, 1, pixels)), gray fill.

    The content moves up by `pixels`, rounded as in `translate_x`.
    """
    return _shift(images, pixels, 1)


def cutout(images, pad_size, center_y, center_x):
    """Official `cutout`: gray out rows [cy - pad, cy + pad) x cols [cx - pad, cx + pad).

    The square is clipped at the image border; pad_size 0 is the identity.

    Args:
      images: uint8 [B, H, W, 3].
      pad_size: [B] or scalar, half the side of the square, in pixels.
      center_y, center_x: [B] or scalar integer centers (official: uniform in
        [0, H) and [0, W)).
    """
    pad = _per_image(pad_size, images, tf.int32)[:, None]
    cy = _per_image(center_y, images, tf.int32)[:, None]
    cx = _per_image(center_x, images, tf.int32)[:, None]
    shape = tf.shape(images)
    rows = tf.range(shape[1])[None, :]
    cols = tf.range(shape[2])[None, :]
    in_rows = tf.cast((rows >= cy - pad) & (rows < cy + pad), tf.uint8)
    in_cols = tf.cast((cols >= cx - pad) & (cols < cx + pad), tf.uint8)
    # A full [B, H, W, 3] mask: broadcasting a size-1 channel axis is slow.
    in_cols = tf.tile(in_cols[:, :, None], [1, 1, 3])
    mask = in_rows[:, :, None, None] * in_cols[:, None, :, :]
    return images * (1 - mask) + FILL_VALUE * mask
