"""Pseudo labels: predict with the un-noised teacher, filter, balance."""

from noisy_student_tf.labeling.predict import predict_probabilities, training_targets
from noisy_student_tf.labeling.select import Selection, filter_and_balance

__all__ = ["predict_probabilities", "training_targets", "Selection", "filter_and_balance"]
