"""Train and eval image preprocessing around RandAugment, as the official code did it.

The official Noisy Student code (google-research/noisystudent
`preprocessing.py`, itself derived from tensorflow/tpu's EfficientNet
`preprocessing.py`) has two training paths, chosen by `--small_image_model`:

  small images (32 px, CIFAR-10 / SVHN, `_cifar10_preprocess_for_train`):
      RandAugment (translate/cutout constants = size // 8)
      -> Cutout of side size / 2 filled with 128, on every image
      -> reflect-pad 4 + random size x size crop (`small_image_crop`)
      -> horizontal flip with p = 1/2, except for SVHN
  large images (ImageNet / JFT, `_preprocess_for_train`):
      Inception crop (`_random_crop`: area 0.08-1, aspect 3/4-4/3, 10
      attempts, center crop when all fail) + bicubic resize to the model size
      -> horizontal flip with p = 1/2
      -> RandAugment

Evaluation and labeling (`_preprocess_for_eval`, also the online teacher's
view in `data_input.py`): a center crop of size / (size + 32) of the shorter
side, bicubic-resized to the model size, for large images; the image as it
is for small ones.

Record streams take the large-image crop per record from the whole encoded
image (`decode_and_random_crop`, the official `_decode_and_random_crop`:
a JPEG's window alone is decoded); images held in memory are already at
the model's size and are cropped in batches.

Every op here takes uint8 [H, W, 3] or [B, H, W, 3] and a stateless int [2]
key, so a pipeline that derives its keys from (seed, stream, batch index) is
reproducible under any tf.data parallelism. All ops are core TF in graph (no
tf.py_function, no tensorflow-addons).

Differences from the official TF1 code, all small:
  * Resizes use TF2 bicubic (Keys a = -0.5, half-pixel centers); TF1's
    `resize_bicubic` used a = -0.75 on the legacy corner grid. Results are
    rounded to uint8 (the official train path truncated, its eval path kept
    floats). The `official` eval resize (`tf1_resize_bicubic`, float output)
    reproduces the official eval view exactly, for official checkpoints.
  * The extra Cutout's center is drawn per image like the official one
    (uniform over all pixels), and like it the square is clipped at the
    border, so a corner center leaves only a quarter of it.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from noisy_student_tf.augment import ops as image_ops
from noisy_student_tf.errors import ConfigError

CROP_PADDING = 32  # official noisystudent preprocessing.py: eval crop = S / (S + 32)
SMALL_CROP_PAD = 4  # official `small_image_crop`: reflect-pad 4 px, crop back
# Official `_random_crop` arguments to `distorted_bounding_box_crop`.
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)  # width / height
MIN_OBJECT_COVERED = 0.1
MAX_ATTEMPTS = 10
LARGE_IMAGE_SIDE = 224  # the official ImageNet path starts at B0's 224 px
# Eval resizes: "tf2" (ours: TF2 bicubic, uint8) or "official" (TF1
# resize_bicubic as the official eval called it, float32).
EVAL_RESIZES = ("tf2", "official")
# A model converted from an official checkpoint carries this attribute set to
# "official" (models/official_checkpoint.py); `eval_resize_of` reads it.
EVAL_RESIZE_ATTR = "eval_resize"
# TF1 ResizeBicubic (tensorflow/core/kernels/image/resize_bicubic_op.cc, the
# legacy path taken when half_pixel_centers=False): cubic convolution with
# a = -0.75 whose weights come from a table of 1024 steps per pixel.
TF1_BICUBIC_A = -0.75
TF1_BICUBIC_TABLE_SIZE = 1024
MODES = ("official", "randaugment_only", "none")
# Traced TrainPreprocess graphs kept per process (see `TrainPreprocess.__call__`).
TRACED_PREPROCESS_LIMIT = 32

Augment = Callable[..., tf.Tensor]


def _as_batch(images):
    """uint8 [H, W, 3] or [B, H, W, 3] -> ([B, H, W, 3], was_single)."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise ValueError(f"preprocessing expects uint8 images; got {images.dtype}.")
    if images.shape.rank not in (3, 4):
        raise ValueError(
            f"preprocessing expects [H, W, 3] or [B, H, W, 3]; got shape {images.shape}."
        )
    single = images.shape.rank == 3
    return (images[None] if single else images), single


def _key(seed):
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


def _to_uint8(images):
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def flip(images, seed):
    """Mirrors each image left-right with probability 1/2 (official `_flip`).

    Args:
      images: uint8 [H, W, 3] or [B, H, W, 3].
      seed: int [2] stateless key.
    """
    batch, single = _as_batch(images)
    draw = tf.random.stateless_uniform(tf.shape(batch)[:1], _key(seed)) < 0.5
    # An arithmetic mask: cheaper than tf.where over whole images (see augment/ops.py).
    mask = tf.cast(draw, tf.uint8)[:, None, None, None]
    out = mask * tf.reverse(batch, axis=[2]) + (1 - mask) * batch
    return out[0] if single else out


def _reflect(index, size):
    """Maps indices in [-(size - 1), 2 (size - 1)] into [0, size) by mirroring
    about the first and last pixel (tf.pad REFLECT, which repeats neither)."""
    return (size - 1) - tf.abs((size - 1) - tf.abs(index))


def pad_and_crop(images, seed, pad=SMALL_CROP_PAD, flip_seed=None):
    """Reflect-pads by `pad` and takes a random window of the original size.

    Official `small_image_crop` (tf.pad REFLECT + tf.random_crop): the
    window's offset is uniform in [0, 2 * pad] on each axis, per image.
    `pad` must be smaller than the image side (as for tf.pad REFLECT).

    Args:
      images: uint8 [H, W, 3] or [B, H, W, 3].
      seed: int [2] stateless key.
      pad: pixels of reflection on each side.
      flip_seed: optional key; then the crops are also mirrored exactly as
        `flip(crops, flip_seed)` would, within the same gather (the flip then
        costs nothing).
    """
    batch, single = _as_batch(images)
    shape = tf.shape(batch)
    offsets = tf.random.stateless_uniform(
        tf.stack([shape[0], 2]), _key(seed), minval=-pad, maxval=pad + 1, dtype=tf.int32
    )
    # The window is gathered from the image with mirrored indices instead of
    # padding first: on CPU, tf.pad REFLECT alone took ~9 ms per 128 x 32 px
    # uint8 batch, this whole op ~2 ms (measured, 2 shared cores).
    rows = _reflect(offsets[:, :1] + tf.range(shape[1])[None], shape[1])
    cols = _reflect(offsets[:, 1:] + tf.range(shape[2])[None], shape[2])
    if flip_seed is not None:
        mirror = tf.random.stateless_uniform(shape[:1], _key(flip_seed)) < 0.5  # as in `flip`
        cols = tf.where(mirror[:, None], tf.reverse(cols, axis=[1]), cols)
    pixels = rows[:, :, None] * shape[2] + cols[:, None, :]  # [B, H, W]
    flat = tf.reshape(batch, tf.stack([shape[0], shape[1] * shape[2], 3]))
    out = tf.reshape(tf.gather(flat, pixels, batch_dims=1), shape)
    out = tf.ensure_shape(out, batch.shape)
    return out[0] if single else out


def extra_cutout(images, seed, pad_size=None):
    """Grays (128) a square of side 2 * pad_size around a random pixel, per image.

    The Cutout the official small-image path applies after RandAugment to
    every image (`randaugment.cutout(image, pad_size=image_size // 4,
    replace=128)`): 16 px at 32 px. The center is uniform over the image and
    the square is clipped at the border.

    Args:
      images: uint8 [H, W, 3] or [B, H, W, 3].
      seed: int [2] stateless key.
      pad_size: half the side; default min(H, W) // 4 (official).
    """
    batch, single = _as_batch(images)
    shape = tf.shape(batch)
    if pad_size is None:
        pad_size = tf.minimum(shape[1], shape[2]) // 4
    key_y, key_x = tf.unstack(tf.random.experimental.stateless_split(_key(seed), 2))
    center_y = tf.random.stateless_uniform(shape[:1], key_y, 0, shape[1], dtype=tf.int32)
    center_x = tf.random.stateless_uniform(shape[:1], key_x, 0, shape[2], dtype=tf.int32)
    out = image_ops.cutout(batch, pad_size, center_y, center_x)
    return out[0] if single else out


def center_crop_box(height, width, image_size):
    """The official eval crop: a centered square of image_size / (image_size + 32)
    of the shorter side (offsets rounded up, as the official `center_crop`).

    Returns:
      int32 [4]: offset_y, offset_x, crop_height, crop_width.
    """
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    fraction = image_size / (image_size + CROP_PADDING)
    side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def inception_crop_box(height, width, image_size, seed):
    """The official training crop box (`_random_crop`), drawn from a stateless key.

    tf.image's distorted bounding box sampler with the official arguments
    (area 0.08-1 of the image, aspect 3/4-4/3, at least 10% of the image
    covered, 10 attempts). When every attempt fails the sampler returns the
    whole image, and the official code then takes the eval center crop.

    Returns:
      int32 [4]: offset_y, offset_x, crop_height, crop_width.
    """
    shape = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32), 3])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=_key(seed),
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    whole = tf.reduce_all(size[:2] == shape[:2])
    return tf.cond(
        whole,
        lambda: center_crop_box(height, width, image_size),
        lambda: tf.concat([begin[:2], size[:2]], axis=0),
    )


def crop_and_resize(images, box, image_size):
    """Crops uint8 [H, W, 3] (or a batch [B, H, W, 3]) to `box`, resizes (bicubic) to a square."""
    crop = images[..., box[0] : box[0] + box[2], box[1] : box[1] + box[3], :]
    resized = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size], "bicubic")
    return _to_uint8(resized)


def decode_and_random_crop(encoded, image_size, seed):
    """The training crop taken from the whole encoded image, then one resize.

    The official large-image parser (tensorflow/tpu efficientnet
    preprocessing.py `_decode_and_random_crop`, which noisystudent's
    preprocessing.py keeps) samples the Inception crop box from the JPEG's
    header shape and decodes only that window (`decode_and_crop_jpeg`).
    JPEGs take that path here; other formats (PNG: the in-memory pool's
    shards) are decoded whole and cropped, which gives the same box from
    the same key. The box is `inception_crop_box` (area 0.08-1 of the whole
    image, aspect 3/4-4/3, the eval center crop when every attempt fails).

    Args:
      encoded: scalar string, one JPEG or PNG.
      image_size: output side S.
      seed: int [2] stateless key.

    Returns:
      uint8 [S, S, 3], bicubic-resized as `crop_and_resize`.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)

    def box_of(shape):
        return inception_crop_box(shape[0], shape[1], image_size, seed)

    def jpeg():
        box = box_of(tf.io.extract_jpeg_shape(encoded))
        return tf.image.decode_and_crop_jpeg(encoded, box, channels=3)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        box = box_of(tf.shape(image))
        return image[box[0] : box[0] + box[2], box[1] : box[1] + box[3], :]

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    crop.set_shape([None, None, 3])
    resized = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size], "bicubic")
    return tf.ensure_shape(_to_uint8(resized), [image_size, image_size, 3])


def random_resized_crop(images, image_size, seed):
    """Inception crop + bicubic resize to image_size (official `_random_crop`).

    Args:
      images: uint8 [H, W, 3] of any size, or [B, H, W, 3].
      image_size: output side.
      seed: int [2] stateless key (split per image for a batch).

    Returns:
      uint8 [image_size, image_size, 3] or [B, image_size, image_size, 3].
    """
    batch, single = _as_batch(images)
    keys = tf.random.experimental.stateless_split(_key(seed), tf.shape(batch)[0])

    def one(args):
        image, key = args
        shape = tf.shape(image)
        box = inception_crop_box(shape[0], shape[1], image_size, key)
        return tf.ensure_shape(crop_and_resize(image, box, image_size), [image_size, image_size, 3])

    out = tf.map_fn(
        one,
        (batch, keys),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
    )
    return out[0] if single else out


def _tf1_cubic(x, a=TF1_BICUBIC_A):
    """Keys' cubic kernel at distance x in [0, 2), in float64 (as TF1 built its table)."""
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return tf.where(x < 1, near, far)


def _tf1_bicubic_taps(in_size, out_size):
    """TF1 legacy bicubic taps of one axis: 4 x int32 [out] indices, 4 x float32 [out] weights.

    Output pixel o reads input position o * in / out (corner grid, float32
    arithmetic as the kernel), taps at floor - 1 ... floor + 2 clamped to the
    image (a clamped tap repeats the edge pixel), weights from the kernel at
    the fraction rounded to 1/1024 (the op's table lookup).
    """
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = tf.cast(tf.range(out_size), tf.float32) * scale
    base = tf.floor(position)
    # lrintf: round half to even, as tf.round.
    offset = tf.round((position - base) * TF1_BICUBIC_TABLE_SIZE)
    fraction = tf.cast(offset, tf.float64) / TF1_BICUBIC_TABLE_SIZE
    distances = (1.0 + fraction, fraction, 1.0 - fraction, 2.0 - fraction)
    weights = [tf.cast(_tf1_cubic(d), tf.float32) for d in distances]
    base = tf.cast(base, tf.int32)
    indices = [tf.clip_by_value(base + tap, 0, in_size - 1) for tap in (-1, 0, 1, 2)]
    return indices, weights


def _weighted_taps(images, axis, indices, weights):
    """sum_k images[index_k] * weight_k along `axis`, summed left to right as the kernel."""
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    total = None
    for index, weight in zip(indices, weights):
        term = tf.gather(images, index, axis=axis) * tf.reshape(weight, shape)
        total = term if total is None else total + term
    return total


def tf1_resize_bicubic(images, image_size):
    """TF1 `tf.image.resize_bicubic(images, [S, S])` with its defaults, in float32.

    The official evaluation view's resize (noisystudent preprocessing.py
    `center_crop`, tensorflow/tpu's of the same era): align_corners=False and
    the legacy (not half-pixel) grid, Keys a = -0.75, float output neither
    rounded nor clipped. Built from gathers and multiply-adds in the kernel's
    order (rows first, then columns), so it runs wherever those do.

    Args:
      images: uint8 [H, W, 3] or [B, H, W, 3].
      image_size: output side S.

    Returns:
      float32 [S, S, 3] or [B, S, S, 3].
    """
    batch, single = _as_batch(images)
    batch = tf.cast(batch, tf.float32)
    shape = tf.shape(batch)
    rows = _weighted_taps(batch, 1, *_tf1_bicubic_taps(shape[1], image_size))
    out = _weighted_taps(rows, 2, *_tf1_bicubic_taps(shape[2], image_size))
    return out[0] if single else out


def eval_resize_of(model) -> str:
    """The eval resize a model needs: "official" for a converted official checkpoint."""
    return getattr(model, EVAL_RESIZE_ATTR, "tf2")


def _resize_small(image, image_size):
    resized = tf.image.resize(image, [image_size, image_size], antialias=True)
    return _to_uint8(resized)


def eval_preprocess(images, image_size, small_image=None, resize="tf2"):
    """The clean view for evaluation, labeling and the online teacher.

    Large images: the official center crop (`center_crop_box`) + bicubic
    resize. Small images: the image as it is, as the official code does for
    CIFAR/SVHN; an image of another size is resized (bilinear, antialiased).
    resize="official" takes the official eval's TF1 bicubic resize
    (`tf1_resize_bicubic`) and returns float32, as the official eval fed
    its models: use it with official checkpoints (`eval_resize_of`) to
    reproduce their published accuracy.

    An image already image_size x image_size is returned as it is on both
    paths: in-memory sources and the loop's pool shards store images at the
    model's size, already in this view, and cropping them again would zoom.

    Args:
      images: encoded JPEG/PNG bytes (scalar string), a uint8 [H, W, 3] image
        of any size, or a uint8 batch [B, H, W, 3].
      image_size: the model's input side.
      small_image: which path; None picks small below LARGE_IMAGE_SIDE.
      resize: one of EVAL_RESIZES.

    Returns:
      uint8 [image_size, image_size, 3] (or [B, ...] for a batch); float32
      with resize="official".

    Raises:
      ValueError: an unknown resize.
    """
    if resize not in EVAL_RESIZES:
        raise ValueError(f"resize={resize!r}; expected one of {', '.join(EVAL_RESIZES)}")
    if small_image is None:
        small_image = image_size < LARGE_IMAGE_SIDE
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.string:
        images = tf.io.decode_image(images, channels=3, expand_animations=False)
        images.set_shape([None, None, 3])
    batch, single = _as_batch(images)
    shape = tf.shape(batch)

    box = center_crop_box(shape[1], shape[2], image_size)
    official = resize == "official"

    def view():
        if small_image:
            resized = _resize_small(batch, image_size)
            return tf.cast(resized, tf.float32) if official else resized
        if official:
            crop = batch[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3], :]
            return tf1_resize_bicubic(crop, image_size)
        return crop_and_resize(batch, box, image_size)

    same = tf.reduce_all(shape[1:3] == image_size)
    as_is = tf.cast(batch, tf.float32) if official else batch
    out = tf.cond(same, lambda: as_is, view)
    out = tf.ensure_shape(out, [None, image_size, image_size, 3])
    return out[0] if single else out


class TrainPreprocess:
    """One model's training preprocessing, applied to a uint8 batch with a key.

    Order (official, see the module docstring):
      small_image: randaugment -> cutout -> crop (pad 4 + random crop) -> flip
      large:       crop (Inception crop + resize) -> flip -> randaugment

    Args:
      image_size: the model's input side; outputs have this size.
      randaugment: a callable `(images, seed=key) -> images` (e.g.
        `augment.RandAugment`), or None.
      small_image: the 32 px path instead of the ImageNet one.
      flip: random horizontal flip (off for digits: SVHN in the official code).
      cutout: the extra side-size/2 Cutout (small-image path only).
      crop: pad + random crop (small) or Inception crop (large).
    """

    def __init__(
        self,
        image_size: int,
        randaugment: Augment | None = None,
        small_image: bool = True,
        flip: bool = True,
        cutout: bool = True,
        crop: bool = True,
    ):
        if cutout and not small_image:
            raise ConfigError(
                "the extra Cutout belongs to the official small-image path only; "
                "set cutout=False (config: extra_cutout=False) for large images"
            )
        self.image_size = int(image_size)
        self.randaugment = randaugment
        self.small_image = bool(small_image)
        self.flip = bool(flip)
        self.cutout = bool(cutout)
        self.crop = bool(crop)

    @staticmethod
    def keys(seed):
        """The sub-keys of one call: randaugment, cutout, crop, flip (int64 [2] each)."""
        split = tf.random.experimental.stateless_split(_key(seed), 4)
        return dict(zip(("randaugment", "cutout", "crop", "flip"), tf.unstack(split)))

    @property
    def crops_records(self) -> bool:
        """Whether a record stream takes this crop per record from the whole
        encoded image (`record_crop`) rather than from the batch: the
        large-image Inception crop does, as the official parser."""
        return self.crop and not self.small_image

    def record_crop(self, encoded, seed, slot):
        """The crop of image `slot` of the batch whose `__call__` key is `seed`.

        Its key is the batch's crop key folded with `slot`, so it is a
        function of (seed, stream, batch, slot), as the batch's other draws.

        Args:
          encoded: scalar string, one JPEG or PNG.
          seed: the int [2] key `__call__` gets for the whole batch.
          slot: the image's int position in its batch.

        Returns:
          uint8 [image_size, image_size, 3] (`decode_and_random_crop`).
        """
        key = tf.random.experimental.stateless_fold_in(self.keys(seed)["crop"], slot)
        return decode_and_random_crop(encoded, self.image_size, key)

    def after_record_crop(self) -> TrainPreprocess:
        """The batch's rest once `record_crop` made its crops: flip, RandAugment."""
        return TrainPreprocess(
            self.image_size, self.randaugment, self.small_image, self.flip, self.cutout, False
        )

    def cache_key(self) -> tuple | None:
        """What decides this preprocessing's graph; None when it cannot be told
        (a RandAugment stand-in without `get_config`)."""
        augment = self.randaugment
        if augment is not None and not hasattr(augment, "get_config"):
            return None
        settings = None if augment is None else sorted(augment.get_config().items())
        return (
            self.image_size,
            type(augment).__qualname__,
            repr(settings),
            self.small_image,
            self.flip,
            self.cutout,
            self.crop,
        )

    def __call__(self, images, seed):
        """Preprocesses uint8 [B, H, W, 3] (or one [H, W, 3]) with an int [2] key.

        For small images the input must already be image_size; for large
        ones any size (the crop resizes), or image_size without crop.

        The graph is traced once per process for each setting and image
        shape, whatever the batch size, and reused by every later pipeline
        (each model of a loop builds new ones, and a student's labeled and
        pseudo-labeled batches differ in size): tracing RandAugment's sixteen
        ops took 2-3 s per pipeline on two CPU cores, more than a smoke
        model's steps. Traced without AutoGraph: the ops branch with tf.cond
        / switch_case only.
        """
        images = tf.convert_to_tensor(images)
        seed = _key(seed)
        settings = self.cache_key()
        if settings is None or images.shape.rank is None:
            return self._apply(images, seed)
        shape = images.shape.as_list()
        spec = tf.TensorSpec([None, *shape[1:]] if len(shape) == 4 else shape, images.dtype)
        key = (settings, tuple(spec.shape.as_list()), spec.dtype.name)
        traced = _TRACED.get(key)
        if traced is None:
            if len(_TRACED) >= TRACED_PREPROCESS_LIMIT:
                _TRACED.clear()
            signature = [spec, tf.TensorSpec([2], tf.int64)]
            traced = tf.function(self._apply, input_signature=signature, autograph=False)
            _TRACED[key] = traced
        out = traced(images, seed)
        if len(shape) == 4:  # the batch size the caller's graph knows
            out = tf.ensure_shape(out, [shape[0], *out.shape[1:]])
        return out

    def _apply(self, images, seed):
        keys = self.keys(seed)
        if self.small_image:
            if self.randaugment is not None:
                images = self.randaugment(images, seed=keys["randaugment"])
            if self.cutout:
                images = extra_cutout(images, keys["cutout"])
            if self.crop:  # crop, then flip (fused: one gather)
                return pad_and_crop(
                    images, keys["crop"], flip_seed=keys["flip"] if self.flip else None
                )
            return flip(images, keys["flip"]) if self.flip else images
        if self.crop:
            images = random_resized_crop(images, self.image_size, keys["crop"])
        if self.flip:
            images = flip(images, keys["flip"])
        if self.randaugment is not None:
            images = self.randaugment(images, seed=keys["randaugment"])
        return images


_TRACED: dict[tuple, Callable] = {}


def train_preprocess(
    mode: str,
    image_size: int,
    randaugment: Augment | None,
    small_image: bool,
    flip: bool = True,
    extra_cutout: bool = True,
) -> TrainPreprocess | None:
    """The training preprocessing a model block selects (config `preprocess`).

    Args:
      mode: "official" (the official path for the image size, see module
        docstring), "randaugment_only" (RandAugment alone, no crop, flip or
        extra Cutout), or "none" (clean images; returns None).
      image_size: the model's input side.
      randaugment: the model's RandAugment, or None when N or M is 0.
      small_image: the 32 px path (config `small_image`).
      flip: random horizontal flip in the official mode (config `flip`).
      extra_cutout: the small-image extra Cutout in the official mode (config
        `extra_cutout`). As in the official code it is only applied together
        with RandAugment, and never on the large-image path.
    """
    if mode == "none":
        return None
    if mode == "randaugment_only":
        if randaugment is None:
            return None
        return TrainPreprocess(image_size, randaugment, small_image, False, False, False)
    if mode == "official":
        cutout = bool(extra_cutout) and small_image and randaugment is not None
        return TrainPreprocess(image_size, randaugment, small_image, flip, cutout, True)
    raise ConfigError(f"preprocess must be one of {list(MODES)}; got {mode!r}.")
