"""Official TF1 EfficientNet / Noisy Student checkpoints -> project models.

The released checkpoints (tensorflow/tpu `models/official/efficientnet`
README, "Using Pretrained EfficientNet Checkpoints"; google-research/noisystudent
README points there for ImageNet) are TF1 name-based checkpoints. Nothing in
them says which Keras layer a variable belongs to, so the names are rebuilt
from the official code's rules:

- Scopes. `efficientnet_builder.build_model` wraps the model in
  `tf.variable_scope(model_name)` (noisystudent `main.py` `build_model`:
  `scope + model_name`, with scope `teacher_model/` for the frozen teacher of
  a student run); `efficientnet_model.Model.call` calls the stem under `stem`,
  block `idx` (counted across all stages from 0) under `blocks_<idx>` and the
  head under `head`; `MBConvBlock.call` calls squeeze-excitation under `se`.
- Layer names. Every layer is a TF1 `tf.layers` layer (`utils.Conv2D`,
  `utils.DepthwiseConv2D` "wraps keras DepthwiseConv2D to tf.layers",
  `tf.layers.Dense`, `utils.TpuBatchNormalization`, and the eval-time
  `utils.BatchNormalization` whose default name is fixed to
  `tpu_batch_normalization`). Such a layer picks its variable scope when it is
  first *called*, as `variable_scope(default_name=<snake-case class name>)`,
  which is made unique within the enclosing scope: `conv2d`, `conv2d_1`, ...
  So the suffixes follow the call order of `MBConvBlock.call`, not the order
  of `_build` (tensorflow/tpu builds an expansion conv and bn0 for every block
  but calls them only when expand_ratio != 1):
  expansion conv + bn0 (only if expand_ratio != 1), depthwise conv + bn1,
  `se/conv2d` (reduce) + `se/conv2d_1` (expand), project conv + bn2. A block
  with expand_ratio 1 therefore has `depthwise_conv2d`,
  `tpu_batch_normalization`, `se/conv2d`, `se/conv2d_1`, `conv2d` (project),
  `tpu_batch_normalization_1`; every other block has `conv2d` (expand),
  `tpu_batch_normalization`, `depthwise_conv2d`, `tpu_batch_normalization_1`,
  `se/...`, `conv2d_1` (project), `tpu_batch_normalization_2`. Stem and head
  hold `conv2d` + `tpu_batch_normalization`; the head also `dense`.
- Weights. `conv2d/kernel` [k, k, in, out] (+ `bias` in SE),
  `depthwise_conv2d/depthwise_kernel` [k, k, C, 1], batch norm `gamma`,
  `beta`, `moving_mean`, `moving_variance`, `dense/kernel` [in, classes] +
  `bias`: the same layouts as Keras 3, copied as they are.
- Moving averages. `main.py` keeps `tf.train.ExponentialMovingAverage` of
  `utils.get_ema_vars()` (trainable variables plus the batch-norm moving mean
  and variance); each shadow is saved as `<variable>/ExponentialMovingAverage`
  and evaluation restores the shadows in place of the variables
  (`ema.variables_to_restore`; `utils.EvalCkptDriver.restore_model`). The
  converter does the same by default. Optimizer slots (`<variable>/RMSProp`,
  ...) and `global_step` are ignored.
- Input normalization (tensorflow/tpu `main.py` `normalize_features` with
  `efficientnet_builder.MEAN_RGB/STDDEV_RGB`; noisystudent
  `task_info.get_mean_std`; AdvProp: `eval_ckpt_main.py` `x * 2 / 255 - 1`) is
  set on the model's Normalization layer (`NORMALIZATIONS`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from noisy_student_tf.data.preprocess import EVAL_RESIZE_ATTR
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models import efficientnet as en

EMA_SUFFIX = "ExponentialMovingAverage"  # tf.train.ExponentialMovingAverage's default name
# tensorflow/tpu utils.TpuBatchNormalization / utils.BatchNormalization (fixed
# name); a plain tf.layers.BatchNormalization would be `batch_normalization`.
BATCH_NORM_NAMES = ("tpu_batch_normalization", "batch_normalization")
STATE_FILE = "checkpoint"  # tf.train.Saver's state file, names the latest prefix
# The input statistics a checkpoint was trained with: the model's own table
# (imagenet, svhn, advprop; sources cited in efficientnet.py).
NORMALIZATIONS = en.NORMALIZATIONS
_SCOPE = re.compile(r"^((?:.+/)?efficientnet-[^/]+)/(?:stem|blocks_\d+|head)/")


@dataclasses.dataclass
class ConversionReport:
    """What `load_official_weights` read.

    Attributes:
        prefix: the checkpoint prefix read (a folder resolves to its latest).
        scope: the model's variable scope, e.g. "efficientnet-b0".
        from_ema: official names whose `/ExponentialMovingAverage` shadow was used.
        from_raw: official names whose raw value was used.
        ignored: entries outside the model (optimizer slots, global_step, a
            student run's `teacher_model/...`).
    """

    prefix: str
    scope: str
    from_ema: list[str]
    from_raw: list[str]
    ignored: int


def is_official_checkpoint(path: str | os.PathLike) -> bool:
    """True for a TF1 checkpoint prefix (`<path>.index` exists) or a folder with a state file."""
    path = os.fspath(path)
    if tf.io.gfile.isdir(path):
        return tf.io.gfile.exists(os.path.join(path, STATE_FILE))
    return tf.io.gfile.exists(path + ".index")


def checkpoint_prefix(path: str | os.PathLike) -> str:
    """Resolves a checkpoint prefix or a folder (its latest checkpoint) to a prefix.

    Raises:
        FileNotFoundError: no `<path>.index`, or a folder without a usable state file.
    """
    path = os.fspath(path)
    if not tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(path + ".index"):
            return path
        raise FileNotFoundError(
            f"official checkpoint {path!r} does not exist (expected {path}.index and its "
            "data files, or a folder holding a 'checkpoint' state file)"
        )
    if not tf.io.gfile.exists(os.path.join(path, STATE_FILE)):
        raise FileNotFoundError(
            f"official checkpoint folder {path!r} has no '{STATE_FILE}' state file; "
            "pass the checkpoint prefix instead (e.g. .../model.ckpt)"
        )
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
        # The state file may name the prefix by a path of the machine that wrote
        # it; the files themselves travel next to it.
        state = tf.train.get_checkpoint_state(path)
        name = os.path.basename(state.model_checkpoint_path) if state else ""
        prefix = os.path.join(path, name)
        if not name or not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(
                f"official checkpoint folder {path!r}: its '{STATE_FILE}' file names no "
                "checkpoint whose .index file is in the folder"
            )
    return prefix


class _Scope:
    """TF1 `variable_scope(default_name=...)`: base, base_1, base_2, ... per scope."""

    def __init__(self, name):
        self.name = name
        self.counts = {}

    def __call__(self, base):
        count = self.counts.get(base, 0)
        self.counts[base] = count + 1
        return f"{self.name}/{base}" + (f"_{count}" if count else "")


def official_layer_names(model: keras.Model, scope: str, bn: str = BATCH_NORM_NAMES[0]):
    """Project layer name -> official layer scope, in the official call order.

    Args:
        model: a model from `build_efficientnet` (any variant or overrides).
        scope: the model's variable scope, e.g. "efficientnet-b0".
        bn: the batch-norm layers' base name.

    Returns:
        dict, e.g. {"stem_conv": "efficientnet-b0/stem/conv2d", ...,
        "predictions": "efficientnet-b0/head/dense"}.
    """
    layer_names = {layer.name for layer in model.layers}
    names = {}
    stem = _Scope(f"{scope}/stem")
    names["stem_conv"], names["stem_bn"] = stem("conv2d"), stem(bn)
    blocks = [n[: -len("dwconv")] for n in layer_names if n.endswith("_dwconv")]
    # Functional models list layers in creation order = block order.
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    for index, block in enumerate(sorted(blocks, key=lambda b: order[b + "dwconv"])):
        main, se = _Scope(f"{scope}/blocks_{index}"), _Scope(f"{scope}/blocks_{index}/se")
        if block + "expand_conv" in layer_names:  # expand_ratio != 1
            names[block + "expand_conv"], names[block + "expand_bn"] = main("conv2d"), main(bn)
        names[block + "dwconv"], names[block + "bn"] = main("depthwise_conv2d"), main(bn)
        names[block + "se_reduce"], names[block + "se_expand"] = se("conv2d"), se("conv2d")
        names[block + "project_conv"], names[block + "project_bn"] = main("conv2d"), main(bn)
    head = _Scope(f"{scope}/head")
    names["top_conv"], names["top_bn"], names["predictions"] = (
        head("conv2d"),
        head(bn),
        head("dense"),
    )
    return names


def _weight_names(model, scope, bn):
    """[(keras variable, official variable name)] for every weight but the input normalization."""
    layer_scopes = official_layer_names(model, scope, bn)
    pairs = []
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.Normalization):
            continue
        if layer.name not in layer_scopes:
            raise ConfigError(
                f"model {model.name!r} has a layer {layer.name!r} that no official "
                "EfficientNet variable maps to"
            )
        for weight in layer.weights:
            leaf = weight.name
            if isinstance(layer, keras.layers.DepthwiseConv2D) and leaf == "kernel":
                leaf = "depthwise_kernel"
            pairs.append((weight, f"{layer_scopes[layer.name]}/{leaf}"))
    return pairs


def find_scope(names, scope: str | None = None) -> str:
    """The model scope among checkpoint names: the only top-level one unless `scope` is given."""
    scopes = sorted({m.group(1) for m in map(_SCOPE.match, names) if m})
    if scope is not None:
        if scope not in scopes:
            raise ConfigError(
                f"scope={scope!r} is not in the checkpoint; it holds EfficientNet scopes {scopes}"
            )
        return scope
    top = [s for s in scopes if "/" not in s] or scopes
    if len(top) != 1:
        raise ConfigError(
            f"the checkpoint holds {'no' if not top else 'several'} EfficientNet model scopes "
            f"({scopes}); expected names like efficientnet-b0/stem/conv2d/kernel"
            + ("; pass scope= naming one of them" if top else "")
        )
    return top[0]


def describe_checkpoint(ckpt_path, scope=None):
    """(prefix, scope, variant, num_classes) of an official checkpoint, without reading tensors."""
    prefix = checkpoint_prefix(ckpt_path)
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    scope = find_scope(shapes, scope)
    variant = scope.rsplit("/", 1)[-1]
    if variant not in en.VARIANTS:
        raise ConfigError(
            f"checkpoint {prefix!r} holds {variant!r}; supported: {', '.join(en.VARIANTS)}"
        )
    dense = f"{scope}/head/dense/kernel"
    if dense not in shapes:
        raise ConfigError(
            f"checkpoint {prefix!r} has no classifier {dense!r} (a features-only model); "
            "a teacher needs one"
        )
    return prefix, scope, variant, int(shapes[dense][-1])


def _listing(names, limit=5):
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_official_weights(model, ckpt_path, prefer_ema=True, scope=None) -> ConversionReport:
    """Copies an official checkpoint's weights into a `build_efficientnet` model.

    Everything is checked (every model weight found, no unknown model
    variable, all shapes) before anything is written.

    Args:
        model: a model from `build_efficientnet` of the checkpoint's variant.
        ckpt_path: a checkpoint prefix (`.../model.ckpt-123`) or a folder
            holding a `checkpoint` state file (its latest checkpoint).
        prefer_ema: read `<variable>/ExponentialMovingAverage` where present,
            as the official evaluation does; False reads the raw variables.
        scope: the model's variable scope; None picks the only top-level
            `efficientnet-*` scope (a student run's `teacher_model/...` is
            skipped).

    Returns:
        A `ConversionReport`.

    Raises:
        FileNotFoundError: no such checkpoint.
        ConfigError: a missing or unknown variable, or a shape mismatch (the
            message names the variable).
    """
    prefix = checkpoint_prefix(ckpt_path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    scope = find_scope(shapes, scope)
    bn = next((b for b in BATCH_NORM_NAMES if f"{scope}/stem/{b}/gamma" in shapes), None)
    if bn is None:
        raise ConfigError(
            f"checkpoint {prefix!r} has no stem batch norm ({scope}/stem/"
            f"{{{'|'.join(BATCH_NORM_NAMES)}}}/gamma)"
        )
    pairs = _weight_names(model, scope, bn)
    known = {name for _, name in pairs}
    plan, missing, mismatched = [], [], []
    for weight, name in pairs:
        shadow = f"{name}/{EMA_SUFFIX}"
        source = shadow if prefer_ema and shadow in shapes else name
        if source not in shapes:
            hint = (
                f" (only its {EMA_SUFFIX} shadow; use prefer_ema=True)" if shadow in shapes else ""
            )
            missing.append(name + hint)
        elif tuple(shapes[source]) != tuple(weight.shape):
            mismatched.append(f"{source} {tuple(shapes[source])} vs model {tuple(weight.shape)}")
        else:
            plan.append((weight, name, source))
    unknown, ignored = set(), 0
    for key in shapes:
        if key in known or (key.endswith("/" + EMA_SUFFIX) and key.rsplit("/", 1)[0] in known):
            continue
        parts = key.split("/")
        if any("/".join(parts[:i]) in known for i in range(1, len(parts))):
            ignored += 1  # an optimizer slot (RMSProp, Momentum) of a model variable
        elif key.startswith(scope + "/"):
            unknown.add(key.removesuffix("/" + EMA_SUFFIX))
        else:
            ignored += 1  # global_step, another model's scope
    variant = model.name
    for problem, found in (
        ("lacks variables the model needs", missing),
        (f"has variables that {variant} has no layer for (another variant?)", unknown),
        ("has shapes that differ from the model's", mismatched),
    ):
        if found:
            raise ConfigError(f"official checkpoint {prefix!r} {problem}: {_listing(found)}")
    for weight, _, source in plan:
        weight.assign(np.asarray(reader.get_tensor(source), dtype=weight.dtype))
    return ConversionReport(
        prefix=prefix,
        scope=scope,
        from_ema=[name for _, name, source in plan if source != name],
        from_raw=[name for _, name, source in plan if source == name],
        ignored=ignored,
    )


def convert_official_checkpoint(
    ckpt_path,
    num_classes=None,
    image_size=None,
    prefer_ema=True,
    scope=None,
    normalization="imagenet",
    **build_kwargs,
) -> keras.Model:
    """Builds the checkpoint's EfficientNet and fills it from an official TF1 checkpoint.

    Args:
        ckpt_path: a checkpoint prefix (`.../model.ckpt`) or a folder holding
            a `checkpoint` state file, e.g. the unpacked
            `noisy_student_efficientnet-b0.tar.gz`.
        num_classes: expected classifier size; None takes the checkpoint's
            (1000, or 1001 for checkpoints with a background class 0).
        image_size: square input size; None keeps the variant's default
            resolution (224 for B0 ... 800 for L2; 475 for the L2-475 release).
        prefer_ema: use the moving-average shadows where present (official
            evaluation); False reads the raw variables.
        scope: the model's variable scope; None finds it.
        normalization: a `NORMALIZATIONS` key: the input statistics the
            checkpoint was trained with ("advprop" for AdvProp releases,
            "svhn" for noisystudent's SVHN teacher, with small_image=True).
        **build_kwargs: passed to `build_efficientnet` (e.g. small_image,
            dropout_rate).

    Returns:
        A `keras.Model` named after the variant (pixels in [0, 255] -> logits),
        whose `eval_resize` attribute is "official" (see
        `data.preprocess.eval_resize_of`).

    Raises:
        FileNotFoundError: no such checkpoint.
        ConfigError: an unsupported variant, a bad argument, a missing or
            unknown variable, a shape mismatch.
    """
    prefix, scope, variant, classes = describe_checkpoint(ckpt_path, scope)
    if num_classes is not None and num_classes != classes:
        raise ConfigError(
            f"num_classes={num_classes!r} but checkpoint {prefix!r} classifies {classes} classes"
        )
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"normalization={normalization!r}; expected one of {', '.join(NORMALIZATIONS)}"
        )
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size must be a positive int, got {image_size!r}")
        if "input_shape" in build_kwargs:
            raise ConfigError("pass image_size or input_shape, not both")
        build_kwargs["input_shape"] = (image_size, image_size, 3)
    model = en.build_efficientnet(variant, classes, **build_kwargs)
    report = load_official_weights(model, prefix, prefer_ema=prefer_ema, scope=scope)
    en.set_normalization(model.get_layer("normalization"), *NORMALIZATIONS[normalization])
    # Its published accuracy was measured on the official eval view (TF1
    # bicubic, float): eval_preprocess(resize=eval_resize_of(model)) gives it.
    # A plain attribute: a `.keras` file saved from this model drops it.
    setattr(model, EVAL_RESIZE_ATTR, "official")
    logging.info(
        "%s from %s (scope %s): %d weights from %s shadows, %d raw, %d entries ignored",
        variant,
        prefix,
        scope,
        len(report.from_ema),
        EMA_SUFFIX,
        len(report.from_raw),
        report.ignored,
    )
    return model
