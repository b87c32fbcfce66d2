"""Record schema, sources (digits, TFRecord shards, tfds), preprocessing and tf.data pipelines."""

from noisy_student_tf.data.pipeline import pseudo_labeled_records, training_dataset
from noisy_student_tf.data.preprocess import TrainPreprocess, eval_preprocess, train_preprocess
from noisy_student_tf.data.sources import SemiSupervisedData, load_source

__all__ = [
    "pseudo_labeled_records",
    "training_dataset",
    "TrainPreprocess",
    "eval_preprocess",
    "train_preprocess",
    "SemiSupervisedData",
    "load_source",
]
