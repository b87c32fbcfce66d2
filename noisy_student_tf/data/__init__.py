"""Record schema, sources (digits, TFRecord shards, tfds) and tf.data pipelines."""

from noisy_student_tf.data.pipeline import pseudo_labeled_records, training_dataset
from noisy_student_tf.data.sources import SemiSupervisedData, load_source

__all__ = ["pseudo_labeled_records", "training_dataset",
           "SemiSupervisedData", "load_source"]
