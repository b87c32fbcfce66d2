"""Top-1 accuracy of a model and pseudo-label accuracy, for arrays and for streams of batches.

One count each (`_top1_counts`, `_agreement_counts`), used by the in-memory
loop (arrays) and the streamed one (batches read from records), so both
report the same quantity the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np

from noisy_student_tf.errors import ConfigError


def _top1_counts(logits, labels) -> tuple[int, int]:
    """(correct, total) of argmax `logits` [B, C] against `labels` [B]."""
    labels = np.asarray(labels)
    return int(np.sum(np.argmax(logits, -1) == labels)), int(labels.shape[0])


def _agreement_counts(predicted, labels) -> tuple[int, int]:
    """(agreeing, known) of predicted classes [B] against true labels [B] (-1: unknown)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    known = labels >= 0
    return int(np.sum(predicted[known] == labels[known])), int(known.sum())


def top1_accuracy(
    model: keras.Model, images, labels: np.ndarray | None = None, batch_size: int = 256
) -> float:
    """Fraction of images whose argmax logit equals their label, inference mode.

    Args:
      images: uint8 [N, H, W, 3] with `labels` [N], or a stream of
        (images, labels) batches (`labels` None), e.g. a test set read from
        records (RecordSource.eval_batches), never held in memory.
    """
    if labels is not None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        correct, total = _top1_counts(
            model.predict(images, batch_size=batch_size, verbose=0), labels
        )
        return correct / total
    correct = total = 0
    for batch_images, batch_labels in images:
        c, n = _top1_counts(model.predict_on_batch(batch_images), batch_labels.numpy())
        correct, total = correct + c, total + n
    if not total:
        raise ConfigError("the test set is empty")
    return correct / total


def agreement(probs: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of predictions `probs` [N, C] against known labels (-1 ignored).

    Used for pseudo-label accuracy on an unlabeled pool whose true labels are
    known (digits, CIFAR); NaN when no label is known.
    """
    return agreement_over_batches([(np.asarray(probs).argmax(axis=-1), labels)])


def agreement_over_batches(batches: Iterable) -> float:
    """Pseudo-label accuracy over (teacher labels [B], true labels [B]) batches; NaN if none known."""
    agreeing = known = 0
    for predicted, labels in batches:
        a, k = _agreement_counts(predicted, labels)
        agreeing, known = agreeing + a, known + k
    return agreeing / known if known else float("nan")
