"""Accuracy on clean test images; SavedModel export with serving signatures (docs/serving.md);
robustness reports of any model artifact (docs/evaluation.md)."""

from noisy_student_tf.evaluation.accuracy import agreement, agreement_over_batches, top1_accuracy
from noisy_student_tf.evaluation.export import export_saved_model, load_saved_model
from noisy_student_tf.evaluation.report import evaluate_models, robustness_report, sample_images

__all__ = [
    "agreement",
    "agreement_over_batches",
    "top1_accuracy",
    "export_saved_model",
    "load_saved_model",
    "evaluate_models",
    "robustness_report",
    "sample_images",
]
