"""EfficientNet B0-B7 and L2 with Noisy Student's noise (dropout, stochastic depth)."""

from noisy_student_tf.models.artifact import (
    ModelArtifact,
    as_artifact,
    load_checkpoint,
    open_model,
)
from noisy_student_tf.models.efficientnet import BLOCKS, VARIANTS, build_efficientnet
from noisy_student_tf.models.layers import StochasticDepth
from noisy_student_tf.models.official_checkpoint import (
    convert_official_checkpoint,
    load_official_weights,
)
from noisy_student_tf.models.weights import load_keras_applications_weights

__all__ = [
    "BLOCKS",
    "ModelArtifact",
    "VARIANTS",
    "StochasticDepth",
    "as_artifact",
    "build_efficientnet",
    "convert_official_checkpoint",
    "load_checkpoint",
    "load_keras_applications_weights",
    "load_official_weights",
    "open_model",
]
