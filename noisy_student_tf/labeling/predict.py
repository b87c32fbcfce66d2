"""The teacher's pseudo labels: un-noised predictions on clean images.

The paper (section 2) labels with the teacher *not* noised: inference mode
(no dropout, no stochastic depth, batch-norm moving statistics) on the
un-augmented image. Predictions are stored at temperature 1; a temperature
is applied when they become training targets (targets.py), as in the
official main.py (`pow(probs, 1/T)` renormalised, which equals
softmax(logits / T)).
"""

from __future__ import annotations

import keras
import numpy as np

from noisy_student_tf.labeling.targets import pseudo_targets


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax(logits / temperature) over the last axis."""
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def predict_probabilities(
    teacher: keras.Model, images, batch_size: int = 256, verbose: int | str = "auto"
) -> np.ndarray:
    """Softmax of the teacher's logits in inference mode: float32 [N, C].

    Args:
      teacher: maps uint8/float pixels [B, H, W, 3] to logits.
      images: uint8 [N, H, W, 3] array or a tf.data.Dataset of image batches;
        never augmented here.
    """
    return softmax(teacher.predict(images, batch_size=batch_size, verbose=verbose))


def training_targets(
    probs: np.ndarray, soft: bool = True, temperature: float = 1.0, label_smoothing: float = 0.1
) -> np.ndarray:
    """The in-memory student's targets [N, C] from stored temperature-1 probabilities.

    `targets.pseudo_targets` (soft: probs ** (1/T) renormalised; hard: the
    smoothed one-hot argmax), computed in float64 and stored as float32.
    """
    probs = np.asarray(probs, np.float64)
    targets = pseudo_targets(probs, soft, temperature, label_smoothing, from_logits=False)
    return targets.numpy().astype(np.float32)
