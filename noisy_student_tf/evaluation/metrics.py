"""Classification metrics from logits: top-k, per class, confusion, calibration, mCE, flip rate.

All functions take numpy arrays and return plain Python numbers or lists, so
their results go straight into report.json.
"""

from __future__ import annotations

import numpy as np

from noisy_student_tf.errors import ConfigError

# Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017), section 2:
# ECE over 15 equal-width confidence bins.
ECE_BINS = 15


def _check(logits, labels):
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits {logits.shape} do not match labels {labels.shape}")
    return logits, labels.astype(np.int64)


def top_k_accuracy(logits, labels, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits (NaN when empty)."""
    logits, labels = _check(logits, labels)
    if not len(labels):
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def confusion_matrix(logits, labels, num_classes: int) -> list[list[int]]:
    """counts[true][predicted], [num_classes, num_classes]."""
    logits, labels = _check(logits, labels)
    counts = np.zeros([num_classes, num_classes], np.int64)
    np.add.at(counts, (labels, logits.argmax(axis=1)), 1)
    return counts.tolist()


def per_class_accuracy(confusion) -> list[float | None]:
    """Recall of each class from a confusion matrix; None for a class with no example."""
    counts = np.asarray(confusion)
    totals = counts.sum(axis=1)
    return [float(counts[i, i] / t) if t else None for i, t in enumerate(totals)]


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration(probabilities, labels, num_bins: int = ECE_BINS) -> dict:
    """Expected calibration error and the reliability diagram's bins.

    ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|, with the
    confidence (max probability) in equal-width bins over [0, 1]; bin b holds
    (b / n, (b + 1) / n], the first one also 0.

    Returns:
      {"ece": float, "bins": [{"lower", "upper", "count", "accuracy",
      "confidence"}]} (accuracy and confidence None for an empty bin).
    """
    probabilities, labels = _check(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    bins, ece = [], 0.0
    for b in range(num_bins):
        member = index == b
        count = int(member.sum())
        accuracy = float(correct[member].mean()) if count else None
        mean_confidence = float(confidence[member].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "accuracy": accuracy,
                "confidence": mean_confidence,
            }
        )
    return {"ece": float(ece) if len(labels) else float("nan"), "bins": bins}


def corruption_errors(corruption: dict, baseline: dict) -> dict:
    """CE_c = sum_s E_{s,c} / sum_s E_{s,c}^baseline per corruption (Hendrycks & Dietterich, 3).

    Args:
      corruption: {name: {severity: accuracy}} of the model.
      baseline: the same for the baseline model, on the same images.

    Returns:
      {name: CE_c}; NaN where the baseline made no error.
    """
    out = {}
    for name, by_severity in corruption.items():
        if name not in baseline:
            raise ConfigError(f"the baseline has no accuracy for corruption {name!r}")
        error = sum(1.0 - a for a in by_severity.values())
        base = sum(1.0 - baseline[name][s] for s in by_severity)
        out[name] = error / base if base > 0 else float("nan")
    return out


def mean_corruption_error(corruption: dict, baseline: dict) -> float:
    """mCE in percent: 100 x the mean of CE_c over corruptions (100 = the baseline).

    Corruptions on which the baseline made no error (CE undefined; small
    samples) are left out of the mean; NaN when that leaves none.
    """
    errors = [e for e in corruption_errors(corruption, baseline).values() if not np.isnan(e)]
    return float(100.0 * np.mean(errors)) if errors else float("nan")


def flip_rate(predictions) -> float:
    """Flip probability of prediction sequences [N, T]: how often frame t != frame t-1.

    ImageNet-P's FP for sequences without a noise reference (Hendrycks &
    Dietterich, section 3): mean over images and consecutive frames.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[1] < 2:
        raise ValueError(f"flip_rate needs predictions [N, T >= 2]; got {predictions.shape}")
    return float(np.mean(predictions[:, 1:] != predictions[:, :-1]))
