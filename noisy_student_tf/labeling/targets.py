"""The one rule that turns a teacher's output into a student's target.

Paper, section 2 and official main.py: a soft target is the teacher's
distribution at temperature T (softmax(logits / T); from stored temperature-1
probabilities, p ** (1/T) renormalised, which is the same); a hard target is
the one-hot argmax, label-smoothed like real labels (the official code
applies `label_smoothing` to hard pseudo labels too).

Every path goes through `pseudo_targets`: the in-memory offline student
(stored probabilities, `predict.training_targets`), the record path (the
distribution `labeling.shards` stores, and the smoothing of stored one-hot
labels when the student streams them) and the online student (logits inside
the train step, training/noisy_student.py). It computes in the dtype it is
given (float64 for stored numpy values, float32 on the accelerator).
"""

from __future__ import annotations

import tensorflow as tf


def smooth(one_hot: tf.Tensor, label_smoothing: float) -> tf.Tensor:
    """Label smoothing as in tf.losses.softmax_cross_entropy: (1 - eps) * y + eps / C."""
    num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def pseudo_targets(
    values,
    soft: bool,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    from_logits: bool = True,
) -> tf.Tensor:
    """The student's targets [..., C] from the teacher's logits or temperature-1 probabilities.

    Args:
      values: logits (`from_logits`) or probabilities, float [..., C].
      soft: the distribution at `temperature` (T < 1 sharpens, T > 1
        flattens); else the smoothed one-hot argmax.
      label_smoothing: hard targets only (a soft target is not smoothed).
    """
    values = tf.convert_to_tensor(values)
    if not soft:
        hard = tf.one_hot(tf.argmax(values, axis=-1), tf.shape(values)[-1], dtype=values.dtype)
        return smooth(hard, label_smoothing)
    if temperature <= 0:
        raise ValueError(f"pseudo.temperature must be > 0, got {temperature}")
    if from_logits:
        return tf.nn.softmax(values / temperature)
    scaled = tf.pow(tf.maximum(values, 1e-30), 1.0 / temperature)
    return scaled / tf.reduce_sum(scaled, axis=-1, keepdims=True)
