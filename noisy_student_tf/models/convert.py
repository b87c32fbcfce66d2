"""Official EfficientNet / Noisy Student checkpoints as files a Keras user opens.

People ask for the released Noisy Student weights in Keras (the EfficientNet
threads of qubvel/efficientnet, segmentation_models, lukemelas/EfficientNet-
PyTorch; EfficientNet weights in keras-hub). `load_checkpoint` already builds
our model from an official TF1 checkpoint folder; `convert_for_keras` writes
it as

- `NAME.keras`: our model (pixels in [0, 255] -> logits), built without
  stochastic-depth layers (the identity at inference, and the only custom
  class), so plain `keras.models.load_model` opens it with no import of this
  package. To train it with the paper's noise, load it with
  `noisy_student_tf.models.load_checkpoint` into `build_efficientnet`'s
  model instead (same weights, same names).
- `NAME.weights.h5` (B0-B7): weights for keras.applications'
  `EfficientNetBx(weights=None, classes=C, classifier_activation=None)`,
  loaded with `model.load_weights`. Its Normalization layer holds the true
  variance (stddev ** 2). keras.applications' own ImageNet files store the
  stddev there instead and `EfficientNetBx(weights="imagenet")` adds a
  `Rescaling(1 / sqrt(stddev))` after the layer to compensate (keras source,
  tensorflow/tensorflow#49930); a model built with weights="imagenet" has
  that extra layer, so loading these weights into it would scale the inputs
  twice. Build it with weights=None. L2 has no keras.applications class.

It also says what the model should reach: the variant, the resolution, the
evaluation preprocessing, and the published ImageNet top-1 of the release
(`PUBLISHED_TOP1`).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models import artifact, official_checkpoint, weights
from noisy_student_tf.models import efficientnet as en

# Published ImageNet top-1 (%), per release and variant: tensorflow/tpu
# models/official/efficientnet/README.md, section 2's table (commit 7dc921f,
# 2026-03-03); the Noisy Student row is also google-research/noisystudent's
# README table. Each release's checkpoints are evaluated at the variant's
# resolution (efficientnet_builder.efficientnet_params; `en.VARIANTS`).
PUBLISHED_TOP1 = {
    "noisy_student": {
        "efficientnet-b0": 78.8,
        "efficientnet-b1": 81.5,
        "efficientnet-b2": 82.4,
        "efficientnet-b3": 84.1,
        "efficientnet-b4": 85.3,
        "efficientnet-b5": 86.1,
        "efficientnet-b6": 86.4,
        "efficientnet-b7": 86.9,
        "efficientnet-l2": 88.4,
    },
    "advprop": {
        "efficientnet-b0": 77.6,
        "efficientnet-b1": 79.6,
        "efficientnet-b2": 80.5,
        "efficientnet-b3": 81.9,
        "efficientnet-b4": 83.3,
        "efficientnet-b5": 84.3,
        "efficientnet-b6": 84.8,
        "efficientnet-b7": 85.2,
    },
    "autoaugment": {
        "efficientnet-b0": 77.1,
        "efficientnet-b1": 79.1,
        "efficientnet-b2": 80.1,
        "efficientnet-b3": 81.6,
        "efficientnet-b4": 82.9,
        "efficientnet-b5": 83.6,
        "efficientnet-b6": 84.0,
        "efficientnet-b7": 84.3,
    },
    "randaugment": {"efficientnet-b5": 83.7, "efficientnet-b7": 84.7},
    "baseline": {
        "efficientnet-b0": 76.7,
        "efficientnet-b1": 78.7,
        "efficientnet-b2": 79.8,
        "efficientnet-b3": 81.1,
        "efficientnet-b4": 82.5,
        "efficientnet-b5": 83.1,
    },
}
# The same README: "L2-475 means the same L2 architecture with input image
# size 475" (noisy_student_efficientnet-l2_475.tar.gz), 88.2%.
L2_475 = 475
L2_475_TOP1 = 88.2
# The input statistics each release was trained with (official_checkpoint.NORMALIZATIONS):
# AdvProp scales to [-1, 1] (README: "--advprop_preprocessing=True").
RELEASE_NORMALIZATION = {"advprop": "advprop"}


@dataclasses.dataclass
class KerasExport:
    """What `convert_for_keras` wrote and what the model should reach.

    Attributes:
        variant: e.g. "efficientnet-b0".
        image_size: the input side both files are built for.
        num_classes: the classifier size (1000; 1001 with a background class).
        release: a `PUBLISHED_TOP1` key.
        published_top1: the release's ImageNet top-1 in %, None if unpublished.
        keras_path: the `.keras` file.
        weights_path: the `.weights.h5` file; None for L2.
        preprocessing: the evaluation preprocessing, in words.
    """

    variant: str
    image_size: int
    num_classes: int
    release: str
    published_top1: float | None
    keras_path: str
    weights_path: str | None
    preprocessing: str

    def lines(self) -> list[str]:
        """What a user needs to reproduce the published figure, one fact a line."""
        top1 = f"{self.published_top1}%"
        if self.published_top1 is None:
            default = en.VARIANTS[self.variant][2]
            other = PUBLISHED_TOP1[self.release].get(self.variant)
            top1 = f"none at {self.image_size} px" + (
                f" ({other}% at {default} px)" if other is not None else ""
            )
        kapp = (
            f"keras.applications.EfficientNetB{self.variant[-1]}(weights=None, "
            f"classes={self.num_classes}, classifier_activation=None, "
            f"input_shape=({self.image_size}, {self.image_size}, 3)).load_weights(...)"
        )
        return [
            f"variant: {self.variant}",
            f"resolution: {self.image_size} x {self.image_size}",
            f"classes: {self.num_classes}",
            f"evaluation preprocessing: {self.preprocessing}",
            f"resize: {RESIZE_NOTE}",
            f"published ImageNet top-1 ({self.release}, tensorflow/tpu EfficientNet README): {top1}",
            f"keras model: {self.keras_path} (keras.models.load_model)",
            f"keras.applications weights: {self.weights_path} into {kapp}"
            if self.weights_path
            else "keras.applications weights: none (keras.applications has no EfficientNet-L2)",
        ]


def published_top1(release: str, variant: str, image_size: int) -> float | None:
    """The release's published top-1 for the variant at `image_size`, or None."""
    if release not in PUBLISHED_TOP1:
        raise ConfigError(f"release={release!r}; expected one of {', '.join(PUBLISHED_TOP1)}")
    if variant == "efficientnet-l2" and image_size == L2_475 and release == "noisy_student":
        return L2_475_TOP1
    if image_size != en.VARIANTS[variant][2]:
        return None  # published at the variant's resolution only
    return PUBLISHED_TOP1[release].get(variant)


# The resize the published figures were measured with, and TF2's.
RESIZE_NOTE = (
    "the published top-1 was measured with TF1's tf.compat.v1.image.resize_bicubic "
    "(Keys a = -0.75, legacy corner grid, float output); "
    "noisy_student_tf.data.preprocess.eval_preprocess(..., resize='official') reproduces "
    "it (the default, TF2's tf.image.resize bicubic, a = -0.5 with half-pixel centers, "
    "gives a slightly different view; the top-1 gap between the two is not measured "
    "here, no ImageNet)"
)


def evaluation_preprocessing(image_size: int, normalization: str) -> str:
    """The official evaluation view in words.

    The crop of the released checkpoints' era: noisystudent preprocessing.py
    `center_crop` and tensorflow/tpu preprocessing.py `_decode_and_center_crop`
    with CROP_PADDING = 32 (tensorflow/tpu has used a padding of round(S / 7),
    CROP_FRACTION = 0.875, since commit 22d5cab of 2021-11-15; the same at
    224 px). Normalization: tensorflow/tpu main.py `normalize_features`.
    """
    return (
        f"decode; center crop of {image_size}/({image_size}+32) of the shorter side; "
        f"bicubic resize to {image_size} x {image_size}; float RGB pixels in [0, 255] "
        f"(both models rescale and normalize inside with the {normalization} mean/std; "
        "keras.applications' preprocess_input is the identity)"
    )


def keras_applications_model(variant: str, num_classes: int, image_size: int) -> keras.Model:
    """keras.applications' EfficientNetBx with no weights, returning logits."""
    if variant not in weights.KERAS_BUILDERS:
        raise ConfigError(
            f"keras.applications has no {variant}; it has {', '.join(weights.KERAS_BUILDERS)}"
        )
    return weights.KERAS_BUILDERS[variant](
        weights=None,
        classes=num_classes,
        classifier_activation=None,
        input_shape=(image_size, image_size, 3),
    )


def _normalization(model: keras.Model) -> keras.layers.Normalization:
    return next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))


def to_keras_applications(model: keras.Model) -> keras.Model:
    """Our standard-stride B0-B7 model's weights in a keras.applications model.

    The layers share names and weight shapes (models/efficientnet.py), so the
    copy is by name; every weighted layer of either model must find its
    twin. The Normalization layer gets our mean and true variance.

    Raises:
        ConfigError: not a B0-B7 structure, a layer without a twin, or other
            strides (the small-image variant).
    """
    try:
        variant = weights.keras_variant_of(model)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    size = model.input_shape[1]
    target = keras_applications_model(variant, model.output_shape[-1], size)
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    theirs = {layer.name: layer for layer in target.layers if layer.weights}
    ours.pop(_normalization(model).name)
    theirs.pop(_normalization(target).name)
    if set(ours) != set(theirs):
        raise ConfigError(
            f"{model.name} and keras.applications' {target.name} differ in weighted layers: "
            f"only ours {sorted(set(ours) - set(theirs))[:4]}, "
            f"only theirs {sorted(set(theirs) - set(ours))[:4]}"
        )
    strided = sorted(
        name
        for name, layer in ours.items()
        if getattr(layer, "strides", None) != getattr(theirs[name], "strides", None)
    )
    if strided:  # e.g. the small-image variant: same weights, other strides
        raise ConfigError(
            f"{model.name} has other strides than keras.applications' {target.name} "
            f"in {strided[:4]}: its weights would load but compute another network"
        )
    for name, layer in ours.items():
        theirs[name].set_weights(layer.get_weights())
    mean, variance = (keras.ops.convert_to_numpy(w) for w in _normalization(model).weights[:2])
    en.set_normalization(_normalization(target), mean, variance)
    return target


def convert_for_keras(
    ckpt_path: str,
    output_dir: str,
    release: str = "noisy_student",
    image_size: int | None = None,
    name: str | None = None,
) -> KerasExport:
    """Writes an official checkpoint as `NAME.keras` and (B0-B7) `NAME.weights.h5`.

    Args:
        ckpt_path: an official checkpoint folder (the unpacked
            `noisy_student_efficientnet-b0.tar.gz`) or prefix.
        output_dir: where the files go (created).
        release: which release the checkpoint is (a `PUBLISHED_TOP1` key):
            sets the input statistics ("advprop": [-1, 1]) and the top-1 it
            should reach.
        image_size: the input side; None is the variant's resolution (pass
            475 for the L2-475 release).
        name: the files' stem; None is the checkpoint folder's name.

    Returns:
        A `KerasExport`.

    Raises:
        FileNotFoundError, ConfigError: as `convert_official_checkpoint`; an
            unknown release.
    """
    prefix, _, variant, _ = official_checkpoint.describe_checkpoint(ckpt_path)
    published_top1(release, variant, en.VARIANTS[variant][2])  # checks the release first
    normalization = RELEASE_NORMALIZATION.get(release, "imagenet")
    # No StochasticDepth layers (final_survival_prob=1): plain Keras opens the file.
    model = official_checkpoint.convert_official_checkpoint(
        prefix, image_size=image_size, normalization=normalization, final_survival_prob=1.0
    )
    size = model.input_shape[1]
    if name is None:
        folder = ckpt_path if tf.io.gfile.isdir(ckpt_path) else os.path.dirname(prefix)
        name = os.path.basename(os.path.normpath(folder)) or variant
    tf.io.gfile.makedirs(output_dir)
    keras_path = os.path.join(output_dir, f"{name}.keras")
    artifact.save_keras(model, keras_path)
    weights_path = None
    if variant in weights.KERAS_BUILDERS:
        weights_path = os.path.join(output_dir, f"{name}.weights.h5")
        artifact.save_keras(to_keras_applications(model), weights_path, weights_only=True)
    return KerasExport(
        variant=variant,
        image_size=size,
        num_classes=int(model.output_shape[-1]),
        release=release,
        published_top1=published_top1(release, variant, size),
        keras_path=keras_path,
        weights_path=weights_path,
        preprocessing=evaluation_preprocessing(size, normalization),
    )
