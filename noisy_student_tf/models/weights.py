"""Copy weights from keras.applications EfficientNetB0-B7 into project models.

The project's layers carry the keras.applications names (stem_conv,
block2a_expand_conv, ..., top_conv, predictions) and weight shapes, so the
transfer is by layer name. Two things need care:

- The input normalization is copied as the source *applies* it.
  keras.applications' ImageNet files store the RGB standard deviation in the
  Normalization layer's `variance`; `EfficientNetBx(weights="imagenet")`
  corrects this with an extra `Rescaling(1 / sqrt(stddev))` after it (keras
  source comment, tensorflow/tensorflow#49930). A source model with that layer
  has it folded in; a weights file whose variance equals the stored ImageNet
  stddev is read the same way. Either way the project's model ends with
  variance = stddev ** 2.
- A file is read into a keras.applications model of the matching variant
  first (keras' own loader handles legacy `.h5` and `.weights.h5`).

`build_from_keras_applications_file` builds the project model for a weights
file alone (the `.h5` that `EfficientNetBx(weights="imagenet")` downloads, or
one `save_weights` wrote), which is how `artifact.open_model`, and through it
`tools/label.py --teacher` and the loop's `teacher_checkpoint`, take such a
file. Keras 3's `.weights.h5` names its groups by layer class
(`layers/conv2d_12/vars/0`), not by layer name, so the variant is read from
the weight *shapes*, which every format keeps.
"""

import os

import h5py
import keras
import numpy as np

from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models import efficientnet as en

# keras.applications constructor per variant.
KERAS_BUILDERS = {
    name: getattr(keras.applications, "EfficientNetB" + name[-1])
    for name in en.VARIANTS
    if name[-2] == "b"
}
CLASSIFIER = "predictions"


def _signature(width, depth, divisor=8):
    """(stem filters, head filters, number of blocks) of a width/depth pair."""
    blocks = sum(en.round_repeats(s.repeats, depth) for s in en.BLOCKS)
    return (
        en.round_filters(en.STEM_FILTERS, width, divisor),
        en.round_filters(en.HEAD_FILTERS, width, divisor),
        blocks,
    )


def _model_signature(model):
    try:
        stem = model.get_layer("stem_conv").kernel.shape[-1]
        head = model.get_layer("top_conv").kernel.shape[-1]
    except ValueError as error:
        raise ValueError(
            f"Model {model.name!r} lacks EfficientNet layer names (stem_conv, top_conv)."
        ) from error
    blocks = sum(1 for layer in model.layers if layer.name.endswith("_project_conv"))
    return (stem, head, blocks)


def keras_variant_of(model):
    """Name of the B0-B7 variant whose layer structure `model` has."""
    signature = _model_signature(model)
    for name in KERAS_BUILDERS:
        width, depth = en.VARIANTS[name][:2]
        if _signature(width, depth) == signature:
            return name
    raise ValueError(
        f"Model {model.name!r} (stem, head filters and blocks {signature}) "
        f"matches none of the keras.applications variants "
        f"{', '.join(KERAS_BUILDERS)}."
    )


def _find_normalization(model):
    """Returns (Normalization layer, scale of a Rescaling right after it)."""
    layers = model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, keras.layers.Normalization):
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(following, keras.layers.Rescaling):
                return layer, np.asarray(following.scale, dtype="float32")
            return layer, None
    raise ValueError(f"Model {model.name!r} has no Normalization layer.")


def _effective_statistics(model, stddev_stored_as_variance):
    """(mean, variance) of the source's input normalization as applied."""
    layer, scale = _find_normalization(model)
    mean, variance = (keras.ops.convert_to_numpy(w) for w in layer.weights[:2])
    if scale is not None:
        # (x - m) / sqrt(v) * s == (x - m) / sqrt(v / s**2).
        variance = variance / np.square(scale)
    elif stddev_stored_as_variance and np.allclose(variance, en.IMAGENET_STDDEV_RGB, atol=1e-6):
        variance = np.square(variance)
    return mean, variance


def _file_head(path):
    """(has classifier, classes) of a weights file, without loading it.

    The classifier kernel is the only rank-2 weight of an EfficientNet.
    """
    kernels = []
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        root.visititems(
            lambda _, obj: (
                kernels.append(obj.shape)
                if (isinstance(obj, h5py.Dataset) and len(obj.shape) == 2)
                else None
            )
        )
    if len(kernels) > 1:
        raise ValueError(
            f"{path} holds {len(kernels)} dense kernels; an "
            "EfficientNet weights file has at most one."
        )
    return (True, kernels[0][1]) if kernels else (False, None)


def _source_model(model, source):
    """Returns (keras.applications model, whether it was read from a file)."""
    if isinstance(source, keras.Model):
        return source, False
    path = os.fspath(source)
    if not os.path.exists(path):
        raise ValueError(f"Weights file {path!r} does not exist.")
    if path.endswith(".keras"):
        # Not artifact.open_model, which imports this module; the custom
        # layers are registered by the efficientnet import above.
        return keras.models.load_model(path, compile=False), True
    has_top, classes = _file_head(path)
    source_model = KERAS_BUILDERS[keras_variant_of(model)](
        include_top=has_top,
        weights=None,
        classes=classes or 1000,
        classifier_activation=None,
        input_shape=(32, 32, 3),
    )
    source_model.load_weights(path)
    return source_model, True


def load_keras_applications_weights(model, source, include_top=True):
    """Copies keras.applications EfficientNet weights into a project model.

    Args:
        model: a model from `build_efficientnet` with the same width and depth
            as the source (B0-B7; `small_image` and the input size are free).
        source: a `keras.applications.EfficientNetB0..B7` model, or the path
            of its weights (`.h5`, `.weights.h5`) or saved model (`.keras`).
        include_top: copy the classifier too. False keeps the project's
            classifier (e.g. 10 classes on top of 1000-class ImageNet weights).

    Returns:
        Names of the project layers whose weights were copied.

    Raises:
        ValueError: a missing file, a layer missing from the source, a shape
            mismatch (the message names the layer and both shapes).
    """
    source_model, from_file = _source_model(model, source)
    pairs = []
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.Normalization):
            continue
        if layer.name == CLASSIFIER and not include_top:
            continue
        hint = (
            " Pass include_top=False to keep the project's classifier."
            if layer.name == CLASSIFIER
            else ""
        )
        try:
            src = source_model.get_layer(layer.name)
        except ValueError as error:
            raise ValueError(
                f"Source {source_model.name!r} has no layer {layer.name!r}.{hint}"
            ) from error
        values = src.get_weights()
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(
                f"Layer {layer.name!r}: source weight shapes "
                f"{[tuple(v.shape) for v in values]} != model's {shapes}.{hint}"
            )
        pairs.append((layer, values))
    names = {layer.name for layer, _ in pairs}
    extra = sorted(
        layer.name
        for layer in source_model.layers
        if layer.weights
        and layer.name not in names
        and not isinstance(layer, keras.layers.Normalization)
        and (include_top or layer.name != CLASSIFIER)
    )
    if extra:
        raise ValueError(
            f"Source {source_model.name!r} has weighted layers the model lacks "
            f"({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''}); "
            f"the model is {keras_variant_of(model)}; nothing was copied."
        )
    # Validated in full before anything is written: no half-loaded models.
    for layer, values in pairs:
        layer.set_weights(values)
    mean, variance = _effective_statistics(source_model, from_file)
    normalization, _ = _find_normalization(model)
    en.set_normalization(normalization, mean, variance)
    return [layer.name for layer, _ in pairs] + [normalization.name]


def _file_shapes(path):
    """Shapes of every weight in an HDF5 weights file (model weights only)."""
    shapes = []
    with h5py.File(path, "r") as f:
        # A legacy whole-model file may also hold optimizer slots of the same shapes.
        root = f["model_weights"] if "model_weights" in f else f
        root.visititems(
            lambda _, obj: (
                shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return shapes


def keras_applications_file_variant(path):
    """(variant name, classes) of a keras.applications EfficientNetB0-B7 weights file.

    Read from the weight shapes alone: the stem is the only 3x3 kernel on 3
    input channels, every MBConv block has exactly one depthwise kernel
    (last dimension 1), and the classifier is the only rank-2 kernel, whose
    input is the head's width. (Stem and block count alone do not tell B1
    from B2.)

    Raises:
        ConfigError: the file is not such a weights file, or it has no
            classifier (a `_notop` file cannot label).
    """
    path = os.fspath(path)
    try:
        shapes = _file_shapes(path)
    except OSError as error:
        raise ConfigError(f"{path!r} is not a readable HDF5 weights file: {error}") from error
    stems = [s for s in shapes if len(s) == 4 and s[:3] == (3, 3, 3)]
    blocks = sum(1 for s in shapes if len(s) == 4 and s[3] == 1)
    dense = [s for s in shapes if len(s) == 2]
    if len(stems) != 1 or not blocks:
        raise ConfigError(
            f"{path!r} does not look like a keras.applications EfficientNet weights file "
            f"({len(stems)} stem kernels of shape (3, 3, 3, F), {blocks} depthwise kernels)"
        )
    if len(dense) != 1:
        raise ConfigError(
            f"{path!r} has {len(dense)} classifier kernels; a teacher needs the one of a "
            "keras.applications EfficientNet saved with include_top=True (not a _notop file)"
        )
    signature = (stems[0][3], dense[0][0], blocks)
    for name in KERAS_BUILDERS:
        width, depth = en.VARIANTS[name][:2]
        if _signature(width, depth) == signature:
            return name, int(dense[0][1])
    raise ConfigError(
        f"{path!r} (stem, head filters and blocks {signature}) matches none of the "
        f"keras.applications variants {', '.join(KERAS_BUILDERS)}"
    )


def build_from_keras_applications_file(path, image_size=None, variant=None):
    """The project model holding a keras.applications EfficientNet weights file.

    Args:
        path: `.h5` or `.weights.h5` written by keras.applications'
            EfficientNetB0..B7 (downloaded ImageNet weights, `save_weights`,
            or a legacy whole-model `save`), with its classifier.
        image_size: input side to build at; None keeps the variant's default
            resolution (224 for B0 ... 600 for B7).
        variant: "efficientnet-b0" ... "efficientnet-b7"; None infers it from
            the file's weight shapes. Stated, it must agree with the file.

    Returns:
        A `build_efficientnet` model (standard strides, as keras.applications)
        with the file's weights and input normalization; its logits equal the
        keras.applications model's on the same pixels.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: not such a file, or `variant` disagrees with it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"keras.applications weights file {path!r} does not exist")
    inferred, classes = keras_applications_file_variant(path)
    if variant is not None and variant != inferred:
        raise ConfigError(f"{path!r} holds {inferred} weights, not the stated {variant!r}")
    input_shape = None if image_size is None else (image_size, image_size, 3)
    model = en.build_efficientnet(inferred, classes, input_shape=input_shape)
    load_keras_applications_weights(model, path)
    return model
