"""Accuracy on clean test images; SavedModel export with serving signatures (docs/serving.md)."""

from noisy_student_tf.evaluation.accuracy import agreement, top1_accuracy
from noisy_student_tf.evaluation.export import export_saved_model, load_saved_model

__all__ = ["agreement", "top1_accuracy", "export_saved_model", "load_saved_model"]
