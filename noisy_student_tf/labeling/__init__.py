"""Pseudo labels: predict with the un-noised teacher, filter, balance."""

# Importing the models package registers StochasticDepth with Keras, so a
# training-loop checkpoint loads after `import noisy_student_tf.labeling` alone.
from noisy_student_tf.labeling.predict import predict_probabilities, training_targets
from noisy_student_tf.labeling.select import Selection, filter_and_balance
from noisy_student_tf.models import load_checkpoint

__all__ = [
    "predict_probabilities",
    "training_targets",
    "Selection",
    "filter_and_balance",
    "load_checkpoint",
]
