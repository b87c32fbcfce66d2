"""Any model artifact, opened one way: a Keras model where it allows one, logits always.

Four kinds of files hold a model this project can run (`KINDS`):

  * `keras`: a whole `.keras` file, as the training loop writes each model
    (architecture and EMA weights). Its EfficientNet holds `StochasticDepth`
    layers, which Keras finds at load time only through its serialization
    registry; importing this module imports `models.layers`, which fills it
    (a tool that loaded the file without that import failed with "Could not
    locate class 'StochasticDepth'").
  * `saved_model`: a SavedModel folder, as evaluation/export.py writes it or
    any exporter with a pixels -> logits signature (models/saved_model.py
    picks it and makes its recorded ops differentiable for the attacks).
  * `official`: an official TF1 EfficientNet / Noisy Student checkpoint, a
    prefix or a folder with its `checkpoint` state file
    (models/official_checkpoint.py: name mapping, EMA shadows preferred).
  * `keras_applications`: a keras.applications EfficientNetB0-B7 weights file
    with its classifier (`.h5`, `.weights.h5`; models/weights.py infers the
    variant from the weight shapes and moves the weights).

`open_model` tells them apart, loads them and returns a `ModelArtifact`:
`logits(images)` for every kind, `keras_model` (a SavedModel's is its
signature inside a Keras model, built on first use), its input side, class
count, content fingerprint and eval resize. Labeling (`tools/label.py
--teacher`), the loop's `teacher_checkpoint` and `tools/evaluate.py --model`
all open their models here, so each accepts every kind, and errors name the
flag or config key the path came from (`setting`).
"""

from __future__ import annotations

import copy
import hashlib
import os
import uuid
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from noisy_student_tf import kill_points
from noisy_student_tf.data.preprocess import eval_resize_of
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.manifests import TMP_MARK
from noisy_student_tf.models import (
    layers,  # noqa: F401 - registers StochasticDepth for keras.models.load_model
    official_checkpoint,
    weights,
)
from noisy_student_tf.models.saved_model import find_signature

CHECKPOINT_SUFFIX = ".keras"
# keras.applications weights files: the downloaded `efficientnetb0.h5` and
# Keras 3 `save_weights` output (`.weights.h5`) both end so.
KERAS_APPLICATIONS_SUFFIX = ".h5"
SAVED_MODEL_GRAPH = "saved_model.pb"
KINDS = ("keras", "saved_model", "official", "keras_applications")
_HASH_CHUNK = 8 << 20


def save_keras(model: keras.Model, path: str, weights_only: bool = False) -> str:
    """Saves `model` to the `.keras` file `path` atomically: a temporary name, then rename.

    Keras writes a local `.keras` zip in place, so a kill in the middle of a
    save left a truncated file under the final name (the loop's manifests
    kept it from being reused, but tools/label.py would read it). The
    temporary name ends as Keras requires (`.keras`, or `.weights.h5` with
    `weights_only`) and carries `manifests.TMP_MARK`, so the loop's sweep of
    stale temporaries (`stages.remove_stale_temporaries`) finds it after a kill.

    Returns:
      `path`.
    """
    suffix = ".weights.h5" if weights_only else CHECKPOINT_SUFFIX
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}{suffix}"
    (model.save_weights if weights_only else model.save)(tmp)
    kill_points.kill_point("keras_saved", path=path)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def is_keras_applications_weights(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(KERAS_APPLICATIONS_SUFFIX)


def is_saved_model(path: str) -> bool:
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_GRAPH))


def artifact_kind(path: str, setting: str = "model") -> str:
    """Which of `KINDS` the file or folder at `path` is.

    Raises:
      FileNotFoundError: nothing is at `path`.
      ConfigError: it is none of the four (the message lists them).
    """
    if official_checkpoint.is_official_checkpoint(path):
        return "official"
    if is_saved_model(path):
        return "saved_model"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{setting}={path!r} does not exist")
    if is_keras_applications_weights(path):
        return "keras_applications"
    if path.endswith(CHECKPOINT_SUFFIX) and not tf.io.gfile.isdir(path):
        return "keras"
    raise ConfigError(
        f"{setting}={path!r} is neither a {CHECKPOINT_SUFFIX} file (the training loop writes "
        f"iteration_<i>_<role>.keras), a SavedModel folder (with {SAVED_MODEL_GRAPH}), a "
        f"keras.applications EfficientNet weights file ({KERAS_APPLICATIONS_SUFFIX}, "
        ".weights.h5) nor an official TF1 checkpoint (a prefix with a .index file, or a "
        "folder holding a 'checkpoint' state file)"
    )


def artifact_eval_resize(path: str, setting: str = "model") -> str:
    """The `ModelArtifact.eval_resize` of the model at `path`, known without loading it.

    Only a converted official checkpoint is marked "official"
    (models/official_checkpoint.py); every other kind reads its images with
    our TF2 resize.
    """
    return "official" if artifact_kind(path, setting) == "official" else "tf2"


def fingerprint(path: str, setting: str = "model") -> str:
    """`sha256:HEX` of a model's (or any file's) content, so a moved copy still matches.

    A file is hashed whole (a few seconds for EfficientNet-L2). For a
    SavedModel folder the graph (`saved_model.pb`) and the variables index
    are hashed, and for an official checkpoint its `.index`: an index holds
    each tensor's checksum, so it changes with the weights without reading
    them.
    """
    if official_checkpoint.is_official_checkpoint(path):
        parts = [official_checkpoint.checkpoint_prefix(path) + ".index"]
    elif tf.io.gfile.isdir(path):
        parts = [
            os.path.join(path, SAVED_MODEL_GRAPH),
            os.path.join(path, "variables", "variables.index"),
        ]
        parts = [p for p in parts if tf.io.gfile.exists(p)]
    else:
        parts = [path]
    if not parts or not all(tf.io.gfile.exists(p) for p in parts):
        raise FileNotFoundError(f"{setting}={path!r} does not exist")
    digest = hashlib.sha256()
    for part in parts:
        with tf.io.gfile.GFile(part, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _square_side(shape) -> int | None:
    """S of an input shape [B, S, S, 3]; None when the side is free or not square."""
    return int(shape[1]) if shape[1] is not None and shape[1] == shape[2] else None


class ModelArtifact:
    """An opened model: float32 pixels [B, S, S, 3] in [0, 255] -> logits [B, C].

    Attributes:
      name: a short label for tables and plots (settable; `renamed` copies).
      source: the path it was opened from, or "keras" / "callable" in memory.
      kind: one of `KINDS`, or "in_memory".
      image_size: the side S its input needs, or None for any size.
      description: what it is and where from, for manifests and logs.
      signature: the SavedModel signature used (None for other kinds).
      why_not_differentiable: None when gradients reach the pixels, else why
        not (a SavedModel signature that rounds to uint8, for one).
    """

    def __init__(
        self,
        fn: Callable[[tf.Tensor], tf.Tensor],
        name: str,
        source: str,
        kind: str,
        image_size: int | None,
        description: str,
        keras_model: keras.Model | None = None,
        signature=None,
        setting: str = "model",
    ):
        self._fn = fn
        self._setting = setting
        self._keras_model = keras_model
        self._signature = signature  # a saved_model.Signature; holds the loaded object
        self._fingerprint = None
        self._eval_resize = None  # set by `with_eval_resize`
        self.name = name
        self.source = source
        self.kind = kind
        self.image_size = image_size
        self.description = description
        self.signature = signature.name if signature is not None else None
        self.why_not_differentiable = signature.why_not_differentiable if signature else None

    @property
    def differentiable(self) -> bool:
        return self.why_not_differentiable is None

    @property
    def where(self) -> str:
        """How errors name it: the flag or key it came from, and its value."""
        return f"{self._setting}={self.source!r}" if self.kind in KINDS else repr(self.name)

    @property
    def keras_model(self) -> keras.Model | None:
        """The model as Keras: itself, or a SavedModel's signature in a TFSMLayer
        (built on first use; it reads the folder again). None for a bare callable."""
        if self._keras_model is None and self.kind == "saved_model":
            layer = keras.layers.TFSMLayer(self.source, call_endpoint=self.signature)
            inputs = keras.Input((self.image_size, self.image_size, 3), name="images")
            outputs = layer(inputs)  # an exported endpoint's tensor, or a signature's dict
            if isinstance(outputs, dict):
                outputs = outputs[self._signature.logits_key]
            self._keras_model = keras.Model(inputs, outputs, name="saved_model_teacher")
        return self._keras_model

    @property
    def num_classes(self) -> int | None:
        """The logits' width, when the artifact states it."""
        if self._signature is not None:
            return self._signature.num_classes
        if self._keras_model is not None:
            return self._keras_model.output_shape[-1]
        return None

    @property
    def fingerprint(self) -> str | None:
        """The content hash of its file (`fingerprint`); None in memory."""
        if self._fingerprint is None and self.kind in KINDS:
            self._fingerprint = fingerprint(self.source, self._setting)
        return self._fingerprint

    @property
    def eval_resize(self) -> str:
        """`data.preprocess.eval_preprocess`'s resize for this model ("official"
        for a converted official checkpoint, as its published accuracy needs)."""
        if self._eval_resize is not None:
            return self._eval_resize
        return eval_resize_of(self._keras_model) if self._keras_model is not None else "tf2"

    def check_fits(
        self,
        image_size: int | None = None,
        num_classes: int | None = None,
        size_from: str = "image_size",
        classes_from: str = "num_classes",
    ) -> None:
        """Raises ConfigError when the data's side or class count is not the model's.

        Checked right after loading: a mismatch otherwise surfaces only when a
        student trains on the labels. `size_from` / `classes_from` name the
        setting the data's values come from.
        """
        if image_size and self.image_size and self.image_size != image_size:
            side = self.image_size
            raise ConfigError(
                f"{self.where} takes {side}x{side} images but the data is "
                f"{image_size}x{image_size} ({size_from})"
            )
        classes = self.num_classes
        if num_classes is not None and classes is not None and classes != num_classes:
            raise ConfigError(
                f"{self.where} predicts {classes} classes but the data has "
                f"{num_classes} ({classes_from})"
            )

    def renamed(self, name: str) -> ModelArtifact:
        """The same model under another name (one load serves several table rows)."""
        other = copy.copy(self)
        other.name = name
        return other

    def with_eval_resize(self, resize: str) -> ModelArtifact:
        """The same model read with `resize` (the loop's `.keras` copy of a converted
        official checkpoint, whose file no longer marks it)."""
        other = copy.copy(self)
        other._eval_resize = resize
        return other

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [B, S, S, 3] pixels in [0, 255] -> float32 logits [B, C]."""
        return tf.cast(self._fn(tf.cast(images, tf.float32)), tf.float32)

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Logits [N, C] of uint8 or float images [N, S, S, 3], in batches."""
        out = [
            self.logits(tf.convert_to_tensor(images[start : start + batch_size])).numpy()
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros([0, 0], np.float32)


def _keras_call(model: keras.Model):
    # One traced graph instead of eager layer calls: PGD calls it dozens of times.
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def _from_keras(model, source, kind, name, description, setting="model") -> ModelArtifact:
    return ModelArtifact(
        _keras_call(model),
        name,
        source,
        kind,
        _square_side(model.input_shape),
        description,
        keras_model=model,
        setting=setting,
    )


def open_model(
    path: str | os.PathLike,
    image_size: int | None = None,
    *,
    signature: str | None = None,
    name: str | None = None,
    variant: str | None = None,
    compile: bool = False,
    setting: str = "model",
) -> ModelArtifact:
    """Opens a `.keras` file, SavedModel folder, official TF1 checkpoint or
    keras.applications weights file (module docstring), local or on any
    `tf.io.gfile` file system.

    Call it inside `strategy.scope()` to place the variables on the replicas.

    Args:
      image_size: the input side to build an official or keras.applications
        checkpoint's model at; None keeps the variant's default resolution. A
        `.keras` file or SavedModel keeps its own (`check_fits` compares).
      signature: a SavedModel's signature to use; None picks one
        (models/saved_model.py).
      name: the label for tables; default: the file or folder name.
      variant: the EfficientNet of a keras.applications file
        ("efficientnet-b0" ...); None infers it from the weight shapes.
      compile: restore the training configuration of a `.keras` file too. The
        tools only run the model, so the default skips the optimizer (faster,
        and a checkpoint whose optimizer cannot be rebuilt still loads).
      setting: the flag or config key the path came from, for error messages
        ("--teacher", "teacher_checkpoint", ...).

    Raises:
      FileNotFoundError: nothing is at `path`.
      ConfigError: it is no model artifact, or it does not fit its kind (an
        official checkpoint of an unknown variant, a SavedModel without a
        pixels -> logits signature, ...).
    """
    path = os.fspath(path)
    kind = artifact_kind(path, setting)
    label = name or os.path.basename(os.path.normpath(path))
    if kind == "saved_model":
        found = find_signature(path, signature, f"{setting}={path!r}")
        return ModelArtifact(
            found.fn,
            label,
            path,
            kind,
            found.image_size,
            f"SavedModel {path}",
            signature=found,
            setting=setting,
        )
    if kind == "official":
        model = official_checkpoint.convert_official_checkpoint(path, image_size=image_size)
    elif kind == "keras_applications":
        model = weights.build_from_keras_applications_file(path, image_size, variant)
    else:
        model = keras.models.load_model(path, compile=compile)
    return _from_keras(model, path, kind, label, f"{model.name} from {path}", setting)


def as_artifact(model, name: str | None = None, signature: str | None = None) -> ModelArtifact:
    """A ModelArtifact from a path (`open_model`), a Keras model, a callable
    pixels -> logits, or a ModelArtifact (returned as it is)."""
    if isinstance(model, ModelArtifact):
        return model
    if isinstance(model, (str, os.PathLike)):
        return open_model(model, signature=signature, name=name)
    if isinstance(model, keras.Model):
        return _from_keras(
            model, "keras", "in_memory", name or model.name, f"{model.name} in memory"
        )
    if callable(model):
        return ModelArtifact(model, name or "model", "callable", "in_memory", None, "a callable")
    raise ConfigError(
        f"cannot evaluate {model!r}: expected a model file or folder, or a Keras model"
    )


def load_checkpoint(
    path: str | os.PathLike,
    compile: bool = False,
    image_size: int | None = None,
    variant: str | None = None,
) -> keras.Model:
    """The Keras model of any artifact `open_model` opens (same arguments).

    The one way to load a model file as Keras: `import noisy_student_tf`
    (or this module) first registers the custom layers a `.keras` file needs.
    """
    return open_model(path, image_size, variant=variant, compile=compile).keras_model
