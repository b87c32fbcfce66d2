"""The one way to load a `.keras` model checkpoint written by this project.

A checkpoint of the training loop is a whole `.keras` file (architecture and
EMA weights), and its EfficientNet holds `StochasticDepth` layers. Keras
finds a custom class at load time only through its serialization registry,
which the `register_keras_serializable` decorator fills when
`noisy_student_tf.models.layers` is imported. A tool that loaded the file
without importing the models package first failed with "Could not locate
class 'StochasticDepth'", so every loader (labeling/shards.py,
models/weights.py) goes through `load_checkpoint`, whose module imports the
layers.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.models import layers  # noqa: F401 - registers StochasticDepth

CHECKPOINT_SUFFIX = ".keras"


def load_checkpoint(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Loads a `.keras` file written by the training loop (or any Keras 3 model).

    Args:
      path: the `.keras` file, local or on any `tf.io.gfile` file system.
      compile: restore the training configuration too. The tools only run
        the model, so the default skips the optimizer (faster, and a
        checkpoint whose optimizer cannot be rebuilt still loads).

    Raises:
      FileNotFoundError: the file does not exist.
      ConfigError: the path does not end in `.keras`.
    """
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"model checkpoint {path!r} does not exist")
    if not path.endswith(CHECKPOINT_SUFFIX):
        raise ConfigError(
            f"model checkpoint {path!r} is not a {CHECKPOINT_SUFFIX} file "
            "(the training loop writes iteration_<i>_<role>.keras)"
        )
    return keras.models.load_model(path, compile=compile)
