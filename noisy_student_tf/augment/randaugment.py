"""RandAugment (Cubuk et al. 2019, arXiv 1909.13719) as Noisy Student used it.

Two tables drive everything: `_OPS` (name -> image function, from ops.py)
and `_LEVEL_TO_ARGS` (name -> function of the magnitude giving the op's
arguments). Both follow the official `randaugment.py` of
google-research/noisystudent (a copy of tensorflow/tpu's EfficientNet
`autoaugment.py`), called "official" below. `_TABLES` gives each variant
(below) its pair of tables.

Official semantics kept here:
  * N layers; each layer picks one op uniformly from the op list and always
    applies it (no identity op; the official `prob` is drawn but unused).
  * Magnitude M is on the 0-30 scale and an op's argument is M / 10 of its
    "level 10" value (official `_MAX_LEVEL = 10.`), so M = 27 gives 2.7x.
  * Rotate, ShearX/Y and TranslateX/Y negate their argument with
    probability 1/2 (official `_randomly_negate_tensor`).
  * Geometric ops and Cutout fill uncovered pixels with gray 128.

Different from keras.layers.RandAugment: every image draws its own ops,
signs and Cutout position, and only the chosen ops are computed.

Two variants (`variant=`), which differ only in Posterize, Solarize and
Contrast (tables in docs/augment.md):
  * "corrected" (default) follows the official formulas with Pillow's
    semantics. Posterize: bits = int(M / 10 * 4) is 10 at M = 27, a negative
    shift; we clamp bits to Pillow's range [1, 8]: 8 bits (identity) for
    M >= 20, 1 bit (not 0, which would blacken) for M < 2.5. Solarize:
    threshold = int(M / 10 * 256) is 691 at M = 27; we clamp it to 256 (no
    pixel reaches it), so Solarize is the identity for M >= 10. Contrast
    blends with the mean gray level, as Pillow.
  * "official" reproduces what the official TF code computed when the
    paper's runs executed it. The out-of-range Python ints above became
    uint8 tensors, wrapping modulo 256, and TF's shift kernels clamp a
    uint8 shift to [0, 7]: Posterize keeps 1 bit for M >= 22.5 (and for
    M < 2.5), Solarize thresholds at int(M / 10 * 256) mod 256 (0, full
    inversion, at M = 10, 20 and 30; 179 at M = 27). Contrast blends with
    pixel count / 256 (`ops.contrast_official`).
  SolarizeAdd (297 at M = 27), the enhance factors (4.96), Rotate (81
  degrees), shears (0.81) and Translate (2.7 x translate_const) are the
  same in both: they are well defined, results saturate or leave the frame.

Size rule for the two pixel constants (official values at both ends):
  side = min(H, W);
  side >= 224 (ImageNet code path): translate_const = 100, cutout_const = 40;
  side <  224 (official small-image path, 32 px CIFAR/SVHN):
      translate_const = cutout_const = side // 8.
Either constant can be set explicitly instead.
"""

import numbers

import tensorflow as tf

from noisy_student_tf.augment import ops as image_ops

try:  # The unlowered Case builder behind tf.switch_case (see _switch_case).
    from tensorflow.python.ops.cond_v2 import indexed_case as _indexed_case  # pylint: disable=g-direct-tensorflow-import
except ImportError:  # pragma: no cover - only if TF moves it
    _indexed_case = None

_MAX_LEVEL = 10.0  # official `_MAX_LEVEL`: M = 10 is the "level 10" value.
MAX_MAGNITUDE = 30.0  # RandAugment's magnitude scale (paper, section 3).
IMAGENET_SIDE = 224  # official ImageNet translate/cutout constants apply here.
IMAGENET_TRANSLATE = 100  # official distort_image_with_randaugment default.
IMAGENET_CUTOUT = 40  # official distort_image_with_randaugment default.


def size_constants(height, width):
    """The translate and cutout constants for an image size (see module doc).

    Args:
      height, width: int or scalar int tensors.

    Returns:
      (translate_const, cutout_const), float32 scalar tensors, in pixels.
    """
    side = tf.minimum(tf.cast(height, tf.int32), tf.cast(width, tf.int32))
    small = tf.cast(side // 8, tf.float32)  # official preprocessing.py, 32 px
    large = side >= IMAGENET_SIDE
    return (
        tf.where(large, float(IMAGENET_TRANSLATE), small),
        tf.where(large, float(IMAGENET_CUTOUT), small),
    )


# name -> function(images [B, H, W, 3] uint8, *args [B]) -> images.
# Geometric ops are listed in _TRANSFORMS too so that a batch can run all its
# geometric draws as one `ops.transform` call with per-image matrices.
_OPS = {
    "AutoContrast": image_ops.autocontrast,
    "Equalize": image_ops.equalize,
    "Invert": image_ops.invert,
    "Rotate": image_ops.rotate,
    "Posterize": image_ops.posterize,
    "Solarize": image_ops.solarize,
    "Color": image_ops.color,
    "Contrast": image_ops.contrast,
    "Brightness": image_ops.brightness,
    "Sharpness": image_ops.sharpness,
    "ShearX": image_ops.shear_x,
    "ShearY": image_ops.shear_y,
    "TranslateX": image_ops.translate_x,
    "TranslateY": image_ops.translate_y,
    "SolarizeAdd": image_ops.solarize_add,
    "Cutout": image_ops.cutout,
}

# name -> function(args, height, width) -> transforms [B, 8].
_TRANSFORMS = {
    "Rotate": lambda args, h, w: image_ops.rotate_transforms(args[0], h, w),
    "ShearX": lambda args, h, w: image_ops.shear_x_transforms(args[0]),
    "ShearY": lambda args, h, w: image_ops.shear_y_transforms(args[0]),
    "TranslateX": lambda args, h, w: image_ops.translate_x_transforms(args[0]),
    "TranslateY": lambda args, h, w: image_ops.translate_y_transforms(args[0]),
}


def _enhance(m, ctx):
    # official `_enhance_level_to_arg`: 0.1 .. 1.9 at level 10 (4.96 at M=27).
    return (tf.fill(ctx["batch"], m / _MAX_LEVEL * 1.8 + 0.1),)


def _constant(value):
    return lambda m, ctx: (tf.fill(ctx["batch"], float(value(m))),)


def _signed(scale):
    return lambda m, ctx: (ctx["sign"] * (m / _MAX_LEVEL * scale),)


# name -> function(magnitude, ctx) -> tuple of [B] float32 arguments.
# ctx: batch [1] shape, sign [B] (+-1), center_y / center_x [B],
# translate_const / cutout_const (float32 scalars, pixels).
_LEVEL_TO_ARGS = {
    "AutoContrast": lambda m, ctx: (),
    "Equalize": lambda m, ctx: (),
    "Invert": lambda m, ctx: (),
    # official `_rotate_level_to_arg`: +-30 degrees at level 10.
    "Rotate": _signed(30.0),
    # official: int(level / 10 * 4) bits; clamped to [1, 8] here (corrected
    # variant, module doc), wrapped in _official_posterize_bits.
    "Posterize": _constant(lambda m: min(max(int(m / _MAX_LEVEL * 4), 1), 8)),
    # official: int(level / 10 * 256); clamped to 256 here (corrected
    # variant, module doc), wrapped in _official_solarize_threshold.
    "Solarize": _constant(lambda m: min(int(m / _MAX_LEVEL * 256), 256)),
    "Color": _enhance,
    "Contrast": _enhance,
    "Brightness": _enhance,
    "Sharpness": _enhance,
    # official `_shear_level_to_arg`: +-0.3 at level 10.
    "ShearX": _signed(0.3),
    "ShearY": _signed(0.3),
    # official `_translate_level_to_arg`: +-translate_const px at level 10.
    "TranslateX": lambda m, ctx: (ctx["sign"] * (m / _MAX_LEVEL * ctx["translate_const"]),),
    "TranslateY": lambda m, ctx: (ctx["sign"] * (m / _MAX_LEVEL * ctx["translate_const"]),),
    # official: int(level / 10 * 110) added below 128.
    "SolarizeAdd": _constant(lambda m: int(m / _MAX_LEVEL * 110)),
    # official: pad_size = int(level / 10 * cutout_const), uniform center.
    "Cutout": lambda m, ctx: (
        tf.fill(ctx["batch"], tf.floor(m / _MAX_LEVEL * ctx["cutout_const"])),
        ctx["center_y"],
        ctx["center_x"],
    ),
}


def _official_posterize_bits(m):
    """Bits the official `posterize` kept at magnitude m (an int in [1, 8]).

    tensorflow/tpu models/official/efficientnet/autoaugment.py: `level_to_arg`
    gives bits = int(level / 10 * 4) and `posterize` shifts the uint8 image
    right then left by 8 - bits, a Python int that becomes a uint8 tensor
    (wrapping modulo 256: -2 -> 254); TF's RightShift/LeftShift kernels clamp
    the shift to [0, 7] for uint8. So bits 0 and 9..12 (M < 2.5, M >= 22.5)
    keep 1 bit; 8 bits (M in [20, 22.5)) is the identity.
    """
    shift = (8 - int(m / _MAX_LEVEL * 4)) % 256
    return 8 - min(shift, 7)


def _official_solarize_threshold(m):
    """Threshold the official `solarize` used at magnitude m (in [0, 255]).

    tensorflow/tpu models/official/efficientnet/autoaugment.py: `level_to_arg`
    gives int(level / 10 * 256); `solarize` compares the uint8 image with it,
    converting it to uint8 (modulo 256): 0 (every pixel inverted) at M = 10,
    20 and 30, 204 at M = 18, 179 at M = 27.
    """
    return int(m / _MAX_LEVEL * 256) % 256


# variant -> (op table, level table). "official" overrides three entries.
VARIANTS = ("corrected", "official")
_TABLES = {
    "corrected": (_OPS, _LEVEL_TO_ARGS),
    "official": (
        {**_OPS, "Contrast": image_ops.contrast_official},
        {
            **_LEVEL_TO_ARGS,
            "Posterize": _constant(_official_posterize_bits),
            "Solarize": _constant(_official_solarize_threshold),
        },
    ),
}


# Official op order (noisystudent randaugment.py; Cutout appended when on).
OPS = tuple(name for name in _OPS if name != "Cutout") + ("Cutout",)


def op_names(cutout=True):
    """The official RandAugment op list, with or without Cutout."""
    return OPS if cutout else OPS[:-1]


def _switch_case(index, branches):
    """tf.switch_case that runs only the chosen branch's graph.

    tf.switch_case marks its Case op for lowering into Switch/Merge nodes; in a
    tf.data map that means every node of all 16 branches is visited (as dead)
    per image and layer, which costs more than most ops. Unlowered, the Case
    kernel calls just the selected branch function.
    """
    if _indexed_case is None or tf.executing_eagerly():
        return tf.switch_case(index, branches)
    return _indexed_case(index, branches, lower_using_switch_merge=False)


def _check_op_name(name):
    if name not in _OPS:
        raise ValueError(f"Unknown RandAugment op {name!r}; expected one of {list(OPS)}.")


def _check_variant(variant):
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(
            f"Unknown RandAugment variant {variant!r}; expected one of {list(VARIANTS)}."
        )
    return variant


def _check_magnitude(magnitude):
    if (
        isinstance(magnitude, bool)
        or not isinstance(magnitude, numbers.Real)
        or not 0 <= magnitude <= MAX_MAGNITUDE
    ):
        raise ValueError(
            f"magnitude must be a number in [0, {MAX_MAGNITUDE:g}] (the "
            f"RandAugment 0-30 scale); got {magnitude!r}."
        )
    return float(magnitude)


def _prepare(images):
    """Validates images; returns (uint8 [B, H, W, 3], was_single, dtype)."""
    images = tf.convert_to_tensor(images)
    dtype = images.dtype
    if images.shape.rank not in (3, 4):
        raise ValueError(
            "RandAugment expects an image [H, W, 3] or a batch [B, H, W, 3]; got "
            f"rank {images.shape.rank} with shape {images.shape}."
        )
    if images.shape[-1] is not None and images.shape[-1] != 3:
        raise ValueError(f"RandAugment expects 3 (RGB) channels; got shape {images.shape}.")
    if dtype.is_floating:
        # As the official preprocessing: float in [0, 255] -> uint8 -> float.
        lo, hi = tf.reduce_min(images), tf.reduce_max(images)
        check = tf.debugging.Assert(
            tf.logical_and(lo >= 0, hi <= 255),
            ["RandAugment expects float images with values in [0, 255]; got min and max:", lo, hi],
        )
        with tf.control_dependencies([check]):
            images = tf.cast(tf.round(images), tf.uint8)
    elif dtype != tf.uint8:
        raise ValueError(f"RandAugment expects uint8 images (or float in [0, 255]); got {dtype}.")
    single = images.shape.rank == 3
    return (images[None] if single else images), single, dtype


def _finish(images, single, dtype, static_shape):
    images = images[0] if single else images
    images = tf.ensure_shape(images, static_shape)
    return images if dtype == tf.uint8 else tf.cast(images, dtype)


def _context(images, sign, center_y, center_x, translate_const, cutout_const):
    shape = tf.shape(images)
    default_translate, default_cutout = size_constants(shape[1], shape[2])
    batch = shape[:1]

    def as_arg(v):
        return tf.broadcast_to(tf.cast(v, tf.float32), batch)

    return {
        "batch": batch,
        "sign": as_arg(sign),
        "center_y": as_arg(center_y),
        "center_x": as_arg(center_x),
        "translate_const": (
            default_translate if translate_const is None else tf.constant(float(translate_const))
        ),
        "cutout_const": (
            default_cutout if cutout_const is None else tf.constant(float(cutout_const))
        ),
    }


def apply_op(
    images,
    name,
    magnitude,
    sign=1.0,
    center=None,
    translate_const=None,
    cutout_const=None,
    variant="corrected",
):
    """Applies one named op at a magnitude, deterministically (tests, plots).

    Args:
      images: uint8 [H, W, 3] or [B, H, W, 3] (or float in [0, 255]).
      name: an entry of OPS.
      magnitude: number in [0, 30].
      sign: +1 or -1 (scalar or [B]) for the symmetric ops.
      center: (row, col) of the Cutout square; default the image center.
      translate_const, cutout_const: pixels at level 10; default size_constants.
      variant: an entry of VARIANTS (see the module doc).

    Returns:
      Same shape and dtype as `images`.
    """
    _check_op_name(name)
    magnitude = _check_magnitude(magnitude)
    op_table, level_table = _TABLES[_check_variant(variant)]
    static_shape = tf.convert_to_tensor(images).shape
    batch, single, dtype = _prepare(images)
    shape = tf.shape(batch)
    if center is None:
        center = (shape[1] // 2, shape[2] // 2)
    ctx = _context(batch, sign, center[0], center[1], translate_const, cutout_const)
    out = op_table[name](batch, *level_table[name](magnitude, ctx))
    return _finish(out, single, dtype, static_shape)


class RandAugment:
    """RandAugment with per-image op draws, on uint8 images or batches.

    Usage in tf.data, per image or per batch:
      aug = RandAugment(num_layers=2, magnitude=27, seed=0)
      ds = ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE)

    Each call draws a fresh stateless key from a `tf.random.Generator`
    seeded with `seed`, so a sequence of calls is reproducible; with a
    parallel map the assignment of keys to elements follows the map's
    scheduling. For per-element reproducibility under any parallelism, pass
    an explicit key: `ds.enumerate().map(lambda i, x: aug(x, seed=[s, i]))`.

    Args:
      num_layers: N >= 0, ops applied in sequence to each image.
      magnitude: M in [0, 30] (official scale; 27 for the largest students).
      cutout: include Cutout in the op list (on in the official RandAugment).
      seed: int or None (non-deterministic).
      ops: optional op names to draw from instead of the official list.
      translate_const, cutout_const: pixels at level 10; None uses the size
        rule of `size_constants`.
      variant: "corrected" (default; Pillow semantics, clamped arguments) or
        "official" (Posterize, Solarize and Contrast as the official TF code
        computed them in the paper's runs); see the module doc.
    """

    def __init__(
        self,
        num_layers=2,
        magnitude=27,
        cutout=True,
        seed=None,
        *,
        ops=None,
        translate_const=None,
        cutout_const=None,
        variant="corrected",
    ):
        self.variant = _check_variant(variant)
        self._op_table, self._level_table = _TABLES[self.variant]
        if (
            isinstance(num_layers, bool)
            or not isinstance(num_layers, numbers.Integral)
            or num_layers < 0
        ):
            raise ValueError(f"num_layers (N) must be an integer >= 0; got {num_layers!r}.")
        self.num_layers = int(num_layers)
        self.magnitude = _check_magnitude(magnitude)
        names = op_names(cutout) if ops is None else tuple(ops)
        if isinstance(ops, str) or not names:
            raise ValueError(f"ops must be a non-empty list of names; got {ops!r}.")
        for name in names:
            _check_op_name(name)
        self.op_names = names
        for const, what in ((translate_const, "translate_const"), (cutout_const, "cutout_const")):
            if const is not None and (not isinstance(const, numbers.Real) or const < 0):
                raise ValueError(f"{what} must be a number >= 0; got {const!r}.")
        self.translate_const = translate_const
        self.cutout_const = cutout_const
        self.seed = seed
        self._rng = (
            tf.random.Generator.from_non_deterministic_state()
            if seed is None
            else tf.random.Generator.from_seed(seed)
        )

    def get_config(self):
        return {
            "num_layers": self.num_layers,
            "magnitude": self.magnitude,
            "ops": list(self.op_names),
            "seed": self.seed,
            "translate_const": self.translate_const,
            "cutout_const": self.cutout_const,
            "variant": self.variant,
        }

    def __call__(self, images, seed=None):
        """Augments `images` ([H, W, 3] or [B, H, W, 3]), same shape and dtype.

        Args:
          images: uint8 (or float in [0, 255]) image or batch.
          seed: optional int [2] stateless key; default draws from the
            instance's generator.
        """
        static_shape = tf.convert_to_tensor(images).shape
        batch, single, dtype = _prepare(images)
        if self.num_layers == 0:
            return _finish(batch, single, dtype, static_shape)
        if seed is None:
            key = self._rng.make_seeds(1)[:, 0]
        else:
            key = tf.cast(tf.reshape(seed, [2]), tf.int64)
        shape = tf.shape(batch)
        # Per layer and image: op choice, sign, cutout row, cutout column.
        draws = tf.random.stateless_uniform(tf.stack([self.num_layers, shape[0], 4]), seed=key)
        num_ops = len(self.op_names)
        choice = tf.minimum(tf.cast(draws[..., 0] * num_ops, tf.int32), num_ops - 1)
        sign = tf.where(draws[..., 1] < 0.5, -1.0, 1.0)  # official: p = 1/2
        center_y = tf.floor(draws[..., 2] * tf.cast(shape[1], tf.float32))
        center_x = tf.floor(draws[..., 3] * tf.cast(shape[2], tf.float32))
        apply_layer = self._apply_single if single else self._apply_batch
        if self.num_layers > 1 and not tf.executing_eagerly():
            apply_layer = self._traced_layer(apply_layer)
        for layer in range(self.num_layers):
            batch = apply_layer(batch, choice[layer], sign[layer], center_y[layer], center_x[layer])
        return _finish(batch, single, dtype, static_shape)

    def _traced_layer(self, apply_layer):
        """`apply_layer` as one function graph that every layer of a call runs.

        Each layer's graph holds all sixteen ops (only the drawn ones run),
        so it is built once per call instead of N times: the digits
        student's 32 px pipeline at N = 2 was built and gave its first batch
        in 0.73x the time (1.30 s against 1.76 s, benchmarks/trace_time.py),
        with the same batches. Not kept on the instance: a RandAugment stays
        a plain copyable object.
        """
        return tf.function(apply_layer, autograph=False, reduce_retracing=True)

    def _branch(self, name, images, sign, center_y, center_x):
        # The context is built inside the branch: only the chosen op pays for it.
        ctx = _context(images, sign, center_y, center_x, self.translate_const, self.cutout_const)
        return self._op_table[name](images, *self._level_table[name](self.magnitude, ctx))

    def _apply_single(self, images, choice, sign, center_y, center_x):
        """One image ([1, H, W, 3]): only the chosen op runs (tf.switch_case)."""
        branches = [
            lambda n=name: self._branch(n, images, sign, center_y, center_x)
            for name in self.op_names
        ]
        return _switch_case(choice[0], branches)

    def _apply_batch(self, images, choice, sign, center_y, center_x):
        """A batch: each op runs once on the images that drew it.

        Images are partitioned by their drawn op; all geometric draws share one
        partition and one `ops.transform` call with per-image matrices;
        results are stitched back in order.
        """
        shape = tf.shape(images)
        geometric = [i for i, n in enumerate(self.op_names) if n in _TRANSFORMS]
        others = [i for i in range(len(self.op_names)) if i not in geometric]
        # Partition id per op: its rank among non-geometric ops; geometric last.
        part_of_op = [0] * len(self.op_names)
        for part, i in enumerate(others):
            part_of_op[i] = part
        num_parts = len(others) + (1 if geometric else 0)
        for i in geometric:
            part_of_op[i] = num_parts - 1
        part = tf.gather(tf.constant(part_of_op, tf.int32), choice)
        positions = tf.dynamic_partition(tf.range(shape[0]), part, num_parts)
        image_parts = tf.dynamic_partition(images, part, num_parts)
        outputs = []
        for p, i in enumerate(others):
            outputs.append(
                self._branch(
                    self.op_names[i],
                    image_parts[p],
                    tf.gather(sign, positions[p]),
                    tf.gather(center_y, positions[p]),
                    tf.gather(center_x, positions[p]),
                )
            )
        if geometric:
            ctx = _context(
                images, sign, center_y, center_x, self.translate_const, self.cutout_const
            )
            candidates = tf.stack(
                [
                    _TRANSFORMS[self.op_names[i]](
                        self._level_table[self.op_names[i]](self.magnitude, ctx), shape[1], shape[2]
                    )
                    for i in geometric
                ],
                axis=1,
            )  # [B, G, 8]
            slot_of_op = [0] * len(self.op_names)
            for slot, i in enumerate(geometric):
                slot_of_op[i] = slot
            slot = tf.gather(tf.constant(slot_of_op, tf.int32), choice)
            chosen = tf.gather(candidates, slot[:, None], batch_dims=1)[:, 0]
            transforms = tf.gather(chosen, positions[-1])
            outputs.append(image_ops.transform(image_parts[-1], transforms))
        return tf.dynamic_stitch(positions, outputs)
