"""Noisy Student Training (Xie et al., arXiv 1911.04252) in Keras 3 / TensorFlow 2.

Importing the package registers its custom Keras layers (StochasticDepth),
so `keras.models.load_model` opens a checkpoint of the training loop after
`import noisy_student_tf` alone, as keras-hub's layers are after
`import keras_hub`. The cost is Keras's own import (which loads TensorFlow):
the models package adds a handful of our modules to it.
"""

# The one place the version is written: setup.cfg reads it (`attr:`), and
# `importlib.metadata.version("noisy_student_tf")` gives it once installed.
# Set before the import below, which imports this package's submodules.
__version__ = "0.1.0"

from noisy_student_tf import models  # noqa: E402, F401 - registers the custom layers
