"""Top-1 accuracy of a model on clean (un-augmented) images, inference mode."""

from __future__ import annotations

import keras
import numpy as np


def top1_accuracy(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> float:
    """Fraction of `images` whose argmax logit equals `labels`."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(logits.argmax(axis=-1) == np.asarray(labels)))


def agreement(probs: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of predictions `probs` [N, C] against known labels (-1 ignored).

    Used for pseudo-label accuracy on an unlabeled pool whose true labels are
    known (digits, CIFAR); NaN when no label is known.
    """
    known = np.asarray(labels) >= 0
    if not known.any():
        return float("nan")
    return float(np.mean(probs[known].argmax(axis=-1) == labels[known]))
