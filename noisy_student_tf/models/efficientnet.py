"""EfficientNet B0-B7 and L2 (Tan & Le 2019; Xie et al. 2019), built by name.

The architecture is one table of stages (`BLOCKS`), decoded and scaled in one
place (`_block_specs`), which also assigns every block its stochastic-depth
survival probability. Layer names and weight shapes follow
`keras.applications.efficientnet` so weights move between the two
(`noisy_student_tf.models.weights`); numerics (padding, initializers,
batch-norm settings, stochastic-depth rule) follow the official TF code
(github.com/tensorflow/tpu models/official/efficientnet and
github.com/google-research/noisystudent, `efficientnet_builder.py` and
`efficientnet_model.py`).
"""

import math
from typing import NamedTuple

import keras

from noisy_student_tf.models.layers import (
    OFFICIAL_GROUP_RULE,
    GroupedBatchNormalization,
    StochasticDepth,
)

# name -> (width_coefficient, depth_coefficient, resolution, dropout_rate).
# Official `efficientnet_builder.efficientnet_params` (tensorflow/tpu and
# google-research/noisystudent). L2 is trained at 475 px and evaluated at
# 800 px in the Noisy Student paper (section 3.1); the official table lists 800.
VARIANTS = {
    "efficientnet-b0": (1.0, 1.0, 224, 0.2),
    "efficientnet-b1": (1.0, 1.1, 240, 0.2),
    "efficientnet-b2": (1.1, 1.2, 260, 0.3),
    "efficientnet-b3": (1.2, 1.4, 300, 0.3),
    "efficientnet-b4": (1.4, 1.8, 380, 0.4),
    "efficientnet-b5": (1.6, 2.2, 456, 0.4),
    "efficientnet-b6": (1.8, 2.6, 528, 0.5),
    "efficientnet-b7": (2.0, 3.1, 600, 0.5),
    "efficientnet-l2": (4.3, 5.3, 800, 0.5),
}


class Stage(NamedTuple):
    """One row of the B0 block table (official block string in comments)."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float


# Official `efficientnet_builder.efficientnet()` block strings, B0 scale.
BLOCKS = (
    Stage(3, 1, 32, 16, 1, 1, 0.25),  # r1_k3_s11_e1_i32_o16_se0.25
    Stage(3, 2, 16, 24, 6, 2, 0.25),  # r2_k3_s22_e6_i16_o24_se0.25
    Stage(5, 2, 24, 40, 6, 2, 0.25),  # r2_k5_s22_e6_i24_o40_se0.25
    Stage(3, 3, 40, 80, 6, 2, 0.25),  # r3_k3_s22_e6_i40_o80_se0.25
    Stage(5, 3, 80, 112, 6, 1, 0.25),  # r3_k5_s11_e6_i80_o112_se0.25
    Stage(5, 4, 112, 192, 6, 2, 0.25),  # r4_k5_s22_e6_i112_o192_se0.25
    Stage(3, 1, 192, 320, 6, 1, 0.25),  # r1_k3_s11_e6_i192_o320_se0.25
)
# noisystudent `efficientnet_builder.py`, FLAGS.small_image_model: stages 2
# and 3 use stride 1, so a 32 px image ends at 4x4 instead of 1x1.
SMALL_IMAGE_STRIDE_ONE_STAGES = (1, 2)
SMALL_IMAGE_RESOLUTION = 32

STEM_FILTERS = 32
HEAD_FILTERS = 1280
# Official GlobalParams: batch_norm_momentum=0.99, batch_norm_epsilon=1e-3,
# depth_divisor=8, stochastic_depth_rate=0.2 (paper: survival 1.0 -> 0.8).
DEFAULT_OVERRIDES = {
    "width_coefficient": None,
    "depth_coefficient": None,
    "resolution": None,
    "small_image": False,
    "batch_norm_momentum": 0.99,
    "batch_norm_epsilon": 1e-3,
    "depth_divisor": 8,
    # Batch-norm statistics over the global batch instead of each replica's
    # share: official noisystudent utils.py `TpuBatchNormalization` averages
    # the moments across groups of `--num_shards_per_group` TPU cores (main.py),
    # for large slices where each core's batch gets small.
    "sync_batch_norm": False,
    # Batch-norm moments over groups of this many consecutive replicas
    # (GroupedBatchNormalization): 1 = each replica's own batch; -1 = the
    # official rule, groups of max(8, replicas // 8) beyond 8 replicas
    # (noisystudent utils.TpuBatchNormalization, main.py
    # --num_shards_per_group=-1).
    "batch_norm_group_size": 1,
    # The input statistics (a NORMALIZATIONS key): the official code
    # normalised each task with its own (noisystudent task_info.get_mean_std).
    "normalization": "imagenet",
}
DEFAULT_FINAL_SURVIVAL_PROB = 0.8

# Initializers are made per layer: a Keras initializer created without a seed
# fixes one at creation, so a shared module-level instance gave every
# same-shaped kernel identical values, drawn at import time (before
# keras.utils.set_random_seed), i.e. different in every process.


def conv_initializer() -> keras.initializers.Initializer:
    """Official `conv_kernel_initializer`: N(0, sqrt(2 / fan_out)), not truncated.

    (keras.applications uses a truncated normal of the same variance.)
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def dense_initializer() -> keras.initializers.Initializer:
    """Official `dense_kernel_initializer`: U(-1/sqrt(units), 1/sqrt(units))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_out", distribution="uniform"
    )


# ImageNet RGB statistics, as keras.applications.efficientnet applies them
# (tensorflow/tpu efficientnet_builder MEAN_RGB/STDDEV_RGB, / 255).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# SVHN RGB statistics of the official SVHN runs: noisystudent task_info.py
# get_mean_std('svhn') (mean 0.4376821, 0.4437697, 0.47280442 and stddev
# 0.19803012, 0.20101562, 0.19703614, each times 255 there).
SVHN_MEAN_RGB = (0.4376821, 0.4437697, 0.47280442)
SVHN_STDDEV_RGB = (0.19803012, 0.20101562, 0.19703614)
# name -> (mean, variance) of pixels scaled to [0, 1]: what the model's
# Normalization layer holds (the `normalization` setting). advprop: x * 2 /
# 255 - 1, i.e. mean 0.5, stddev 0.5 (tensorflow/tpu eval_ckpt_main.py,
# --advprop_preprocessing), for AdvProp checkpoints.
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN_RGB, tuple(s * s for s in IMAGENET_STDDEV_RGB)),
    "svhn": (SVHN_MEAN_RGB, tuple(s * s for s in SVHN_STDDEV_RGB)),
    "advprop": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def round_filters(filters, width_coefficient, divisor=8):
    """Scales a channel count by width, to a multiple of `divisor` (official)."""
    scaled = filters * width_coefficient
    new_filters = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new_filters < 0.9 * scaled:  # Never round down by more than 10%.
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats, depth_coefficient):
    """Scales a stage's block count by depth, rounding up (official)."""
    return int(math.ceil(depth_coefficient * repeats))


class BlockSpec(NamedTuple):
    """One decoded, scaled MBConv block."""

    name: str
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float
    survival_prob: float


def _block_suffix(index):
    """a, b, ..., z, aa, ab, ...: keras.applications names for index < 26."""
    suffix = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        suffix = chr(ord("a") + rem) + suffix
    return suffix


def _block_specs(width, depth, small_image, divisor, final_survival_prob):
    """Decodes `BLOCKS` into scaled blocks with their survival probabilities.

    Stochastic depth, in one place: block i of N (counted across all stages,
    from 0) gets drop rate `(1 - final_survival_prob) * i / N`, the rule of the
    official `efficientnet_model.Model.call` (`stochastic_depth_rate *
    float(idx) / len(self._blocks)`) and of keras.applications
    (`drop_connect_rate * b / blocks`).
    """
    num_blocks = sum(round_repeats(s.repeats, depth) for s in BLOCKS)
    drop_rate = 1.0 - final_survival_prob
    specs = []
    for stage_index, stage in enumerate(BLOCKS):
        strides = stage.strides
        if small_image and stage_index in SMALL_IMAGE_STRIDE_ONE_STAGES:
            strides = 1
        filters_in = round_filters(stage.filters_in, width, divisor)
        filters_out = round_filters(stage.filters_out, width, divisor)
        for j in range(round_repeats(stage.repeats, depth)):
            specs.append(
                BlockSpec(
                    name=f"block{stage_index + 1}{_block_suffix(j)}_",
                    kernel_size=stage.kernel_size,
                    filters_in=filters_in if j == 0 else filters_out,
                    filters_out=filters_out,
                    expand_ratio=stage.expand_ratio,
                    strides=strides if j == 0 else 1,
                    se_ratio=stage.se_ratio,
                    survival_prob=1.0 - drop_rate * len(specs) / num_blocks,
                )
            )
    return specs


def _conv(filters, kernel_size, name, strides=1, use_bias=False, **kwargs):
    # 'same' padding is the official TF padding; for static even/odd sizes it
    # equals keras.applications' explicit ZeroPadding2D + 'valid'.
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=conv_initializer(),
        name=name,
        **kwargs,
    )


def _mbconv_block(x, spec, bn):
    """Mobile inverted bottleneck with squeeze-excitation (official MBConv).

    Args:
        x: float tensor [B, H, W, spec.filters_in].
        spec: the block's `BlockSpec`.
        bn: callable(name) -> BatchNormalization layer.

    Returns:
        Float tensor [B, H / strides, W / strides, spec.filters_out].
    """
    name = spec.name
    inputs = x
    filters = spec.filters_in * spec.expand_ratio
    if spec.expand_ratio != 1:
        x = _conv(filters, 1, f"{name}expand_conv")(x)
        x = bn(f"{name}expand_bn")(x)
        x = keras.layers.Activation("swish", name=f"{name}expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(
        spec.kernel_size,
        strides=spec.strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=conv_initializer(),
        name=f"{name}dwconv",
    )(x)
    x = bn(f"{name}bn")(x)
    x = keras.layers.Activation("swish", name=f"{name}activation")(x)

    # Squeeze-excitation, reduced relative to the block's *input* filters.
    filters_se = max(1, int(spec.filters_in * spec.se_ratio))
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}se_squeeze")(x)
    se = _conv(filters_se, 1, f"{name}se_reduce", use_bias=True, activation="swish")(se)
    se = _conv(filters, 1, f"{name}se_expand", use_bias=True, activation="sigmoid")(se)
    x = keras.layers.Multiply(name=f"{name}se_excite")([x, se])

    x = _conv(spec.filters_out, 1, f"{name}project_conv")(x)
    x = bn(f"{name}project_bn")(x)
    if spec.strides == 1 and spec.filters_in == spec.filters_out:
        if spec.survival_prob < 1.0:
            x = StochasticDepth(spec.survival_prob, name=f"{name}drop")(x)
        x = keras.layers.Add(name=f"{name}add")([x, inputs])
    return x


def _check_positive(name, value, types=(int, float)):
    if isinstance(value, bool) or not isinstance(value, types) or not value > 0:
        kind = "int" if types is int else "number"
        raise ValueError(f"{name} must be a positive {kind}, got {value!r}.")


def _resolve(name, num_classes, input_shape, dropout_rate, final_survival_prob, overrides):
    """Merges the variant's defaults with the set arguments; validates all."""
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet variant {name!r}; valid names: {', '.join(VARIANTS)}."
        )
    unknown = sorted(set(overrides) - set(DEFAULT_OVERRIDES))
    if unknown:
        raise ValueError(
            f"Unknown override(s) {', '.join(map(repr, unknown))}; valid "
            f"overrides: {', '.join(DEFAULT_OVERRIDES)}."
        )
    width, depth, resolution, default_dropout = VARIANTS[name]
    config = dict(DEFAULT_OVERRIDES)
    config.update({k: v for k, v in overrides.items() if v is not None})
    if config["resolution"] is None:
        config["resolution"] = SMALL_IMAGE_RESOLUTION if config["small_image"] else resolution
    for key, default in (("width_coefficient", width), ("depth_coefficient", depth)):
        if config[key] is None:
            config[key] = default
    for key in ("width_coefficient", "depth_coefficient", "batch_norm_epsilon"):
        _check_positive(key, config[key])
    for key in ("resolution", "depth_divisor"):
        _check_positive(key, config[key], int)
    if not 0.0 <= config["batch_norm_momentum"] < 1.0:
        raise ValueError(
            f"batch_norm_momentum must be in [0, 1), got {config['batch_norm_momentum']!r}."
        )
    group = config["batch_norm_group_size"]
    if (
        isinstance(group, bool)
        or not isinstance(group, int)
        or not (group >= 1 or group == OFFICIAL_GROUP_RULE)
    ):
        raise ValueError(
            f"batch_norm_group_size must be an int >= 1, or -1 (the official rule), got {group!r}."
        )
    if group != 1 and config["sync_batch_norm"]:
        raise ValueError(
            f"sync_batch_norm (all replicas) and batch_norm_group_size={group} (groups) "
            "both set; choose one."
        )
    if config["normalization"] not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {config['normalization']!r}; valid names: "
            f"{', '.join(NORMALIZATIONS)}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if input_shape is None:
        input_shape = (config["resolution"], config["resolution"], 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}.")
    config["input_shape"] = tuple(input_shape)
    config["dropout_rate"] = default_dropout if dropout_rate is None else dropout_rate
    if not 0.0 <= config["dropout_rate"] < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {config['dropout_rate']!r}.")
    config["final_survival_prob"] = (
        DEFAULT_FINAL_SURVIVAL_PROB if final_survival_prob is None else final_survival_prob
    )
    if not 0.0 < config["final_survival_prob"] <= 1.0:
        raise ValueError(
            "final_survival_prob must be in (0, 1] (1.0 disables stochastic "
            f"depth), got {config['final_survival_prob']!r}."
        )
    return config


def build_efficientnet(
    name, num_classes, input_shape=None, dropout_rate=None, final_survival_prob=None, **overrides
):
    """Builds an EfficientNet that maps pixels to logits.

    Args:
        name: one of `VARIANTS`, e.g. "efficientnet-b0" or "efficientnet-l2".
        num_classes: int, size of the classifier.
        input_shape: (height, width, 3); spatial sizes may be None. Defaults to
            (resolution, resolution, 3).
        dropout_rate: dropout before the classifier, in [0, 1); None keeps the
            variant's default (0.2 for B0 ... 0.5 for B6, B7, L2).
        final_survival_prob: stochastic-depth survival probability reached at
            the end of the network, in (0, 1]; None keeps 0.8 (paper and
            official code). 1.0 disables stochastic depth.
        **overrides: width_coefficient, depth_coefficient (positive floats),
            resolution (used when input_shape is None; 32 by default when
            small_image), small_image (bool: the official 32 px variant with
            stride 1 in stages 2 and 3), batch_norm_momentum,
            batch_norm_epsilon, depth_divisor, sync_batch_norm (bool: batch-norm
            statistics all-reduced across replicas), batch_norm_group_size
            (int: moments over groups of this many replicas; -1 the official
            rule; 1, the default, per replica), normalization (a
            `NORMALIZATIONS` key: the input mean/std, "imagenet" by default,
            "svhn" for the official SVHN runs). None keeps the default.

    Returns:
        A functional `keras.Model` named `name`: float32 (uint8 is cast) pixels
        in [0, 255], shape [B, H, W, 3] -> float32 logits [B, num_classes]
        (no softmax). Rescaling and the mean/std normalization are inside the model.

    Raises:
        ValueError: unknown variant or override, or an out-of-range value.
    """
    cfg = _resolve(name, num_classes, input_shape, dropout_rate, final_survival_prob, overrides)
    width, divisor = cfg["width_coefficient"], cfg["depth_divisor"]

    def bn(layer_name):
        settings = dict(
            momentum=cfg["batch_norm_momentum"], epsilon=cfg["batch_norm_epsilon"], name=layer_name
        )
        if cfg["batch_norm_group_size"] != 1:
            return GroupedBatchNormalization(group_size=cfg["batch_norm_group_size"], **settings)
        return keras.layers.BatchNormalization(
            synchronized=bool(cfg["sync_batch_norm"]), **settings
        )

    inputs = keras.Input(shape=cfg["input_shape"], name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(inputs)
    # An adaptable Normalization (mean, variance, count weights), as in
    # keras.applications, set to the `normalization` statistics below.
    normalization = keras.layers.Normalization(axis=-1, name="normalization")
    x = normalization(x)

    x = _conv(round_filters(STEM_FILTERS, width, divisor), 3, "stem_conv", strides=2)(x)
    x = bn("stem_bn")(x)
    x = keras.layers.Activation("swish", name="stem_activation")(x)
    for spec in _block_specs(
        width, cfg["depth_coefficient"], cfg["small_image"], divisor, cfg["final_survival_prob"]
    ):
        x = _mbconv_block(x, spec, bn)
    x = _conv(round_filters(HEAD_FILTERS, width, divisor), 1, "top_conv")(x)
    x = bn("top_bn")(x)
    x = keras.layers.Activation("swish", name="top_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if cfg["dropout_rate"] > 0:
        x = keras.layers.Dropout(cfg["dropout_rate"], name="top_dropout")(x)
    # float32 logits also under a mixed-precision policy.
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=dense_initializer(), dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, logits, name=name)
    set_normalization(normalization, *NORMALIZATIONS[cfg["normalization"]])
    return model


def set_normalization(layer, mean, variance):
    """Sets a built `keras.layers.Normalization`'s statistics.

    Normalization snapshots its variables into tensors; `finalize_state` makes
    it use the new values (plain `set_weights` would not).
    """
    layer.set_weights(
        [
            keras.ops.convert_to_numpy(keras.ops.cast(mean, "float32")),
            keras.ops.convert_to_numpy(keras.ops.cast(variance, "float32")),
            keras.ops.convert_to_numpy(layer.count),
        ]
    )
    layer.finalize_state()
