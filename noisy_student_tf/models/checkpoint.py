"""The one way to load a `.keras` model checkpoint written by this project.

A checkpoint of the training loop is a whole `.keras` file (architecture and
EMA weights), and its EfficientNet holds `StochasticDepth` layers. Keras
finds a custom class at load time only through its serialization registry,
which the `register_keras_serializable` decorator fills when
`noisy_student_tf.models.layers` is imported. A tool that loaded the file
without importing the models package first failed with "Could not locate
class 'StochasticDepth'", so every loader (labeling/shards.py, the loop)
goes through `load_checkpoint`, whose module imports the layers
(models/weights.py, which this module imports, loads its `.keras` sources
with the layers registered by its own efficientnet import).

The same entry point takes the official TF1 EfficientNet / Noisy Student
checkpoints (`models/official_checkpoint.py`), so `tools/label.py --teacher`
and the loop's `teacher_checkpoint` accept them without a conversion step,
and so are keras.applications EfficientNetB0-B7 weights files (`.h5`,
`.weights.h5`; `models/weights.py` infers the variant and moves the weights).
"""

from __future__ import annotations

import os
import uuid

import keras
import tensorflow as tf

from noisy_student_tf import kill_points
from noisy_student_tf.data.records import TMP_MARK
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models import (
    layers,  # noqa: F401 - registers StochasticDepth
    official_checkpoint,
    weights,
)

CHECKPOINT_SUFFIX = ".keras"
# keras.applications weights files: the downloaded `efficientnetb0.h5` and
# Keras 3 `save_weights` output (`.weights.h5`) both end so.
KERAS_APPLICATIONS_SUFFIX = ".h5"


def save_keras(model: keras.Model, path: str, weights_only: bool = False) -> str:
    """Saves `model` to the `.keras` file `path` atomically: a temporary name, then rename.

    Keras writes a local `.keras` zip in place, so a kill in the middle of a
    save left a truncated file under the final name (the loop's manifests
    kept it from being reused, but tools/label.py would read it). The
    temporary name ends as Keras requires (`.keras`, or `.weights.h5` with
    `weights_only`) and carries `records.TMP_MARK`, so the loop's sweep of
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


def load_checkpoint(
    path: str | os.PathLike,
    compile: bool = False,
    image_size: int | None = None,
    variant: str | None = None,
) -> keras.Model:
    """Loads a `.keras` file, an official TF1 or a keras.applications EfficientNet checkpoint.

    Args:
      path: a `.keras` file written by the training loop (or any Keras 3
        model), local or on any `tf.io.gfile` file system; or an official
        checkpoint: its prefix (`.../model.ckpt`, next to `model.ckpt.index`)
        or a folder holding its `checkpoint` state file (the unpacked
        `noisy_student_efficientnet-b0.tar.gz`). An official checkpoint is
        converted with `official_checkpoint.convert_official_checkpoint`
        (moving-average weights, ImageNet input statistics). Or a
        keras.applications EfficientNetB0-B7 weights file with its classifier
        (`.h5`, `.weights.h5`), built with `weights.build_from_keras_applications_file`.
      compile: restore the training configuration of a `.keras` file too. The
        tools only run the model, so the default skips the optimizer (faster,
        and a checkpoint whose optimizer cannot be rebuilt still loads).
      image_size: input size to build an official or keras.applications
        checkpoint's model at; None keeps the variant's default resolution. A
        `.keras` model keeps its own input shape (callers compare
        `model.input_shape`).
      variant: the EfficientNet of a keras.applications file
        ("efficientnet-b0" ...); None infers it from the weight shapes.

    Raises:
      FileNotFoundError: the file does not exist.
      ConfigError: the path is neither a `.keras` file nor an official
        checkpoint, or the official checkpoint does not fit its variant.
    """
    path = os.fspath(path)
    if official_checkpoint.is_official_checkpoint(path):
        return official_checkpoint.convert_official_checkpoint(path, image_size=image_size)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"model checkpoint {path!r} does not exist")
    if is_keras_applications_weights(path):
        return weights.build_from_keras_applications_file(path, image_size, variant)
    if not path.endswith(CHECKPOINT_SUFFIX):
        raise ConfigError(
            f"model checkpoint {path!r} is neither a {CHECKPOINT_SUFFIX} file (the training "
            "loop writes iteration_<i>_<role>.keras), a keras.applications EfficientNet "
            f"weights file ({KERAS_APPLICATIONS_SUFFIX}) nor an official TF1 checkpoint (a "
            "prefix with a .index file, or a folder holding a 'checkpoint' state file)"
        )
    return keras.models.load_model(path, compile=compile)
