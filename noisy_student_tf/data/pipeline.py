"""tf.data pipelines that feed `NoisyStudent.fit`.

Every training step sees one labeled batch of `batch_size` images and, for a
student, one unlabeled batch `unlabeled_ratio` times larger (the official
code's `unlabel_ratio`: 14, then 28 for the paper's L2 runs). The two streams
are shuffled, repeated and batched separately and zipped, so the ratio holds
exactly at every step. RandAugment (the student's input noise) is applied to
the student's copies only; in the online-teacher mode the un-augmented
unlabeled images travel alongside for the teacher.

Elements are dicts (all images uint8 [B, H, W, 3]):
  images [B], labels int64 [B]                           always
  unlabeled_images [rB]                                  student only
  unlabeled_targets float32 [rB, C]                      offline pseudo labels
  unlabeled_teacher_images [rB]                          online teacher
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from noisy_student_tf.data import schema

Augment = Callable[[tf.Tensor], tf.Tensor]


def _stream(ds: tf.data.Dataset, batch_size: int, seed: int) -> tf.data.Dataset:
    size = ds.cardinality()
    buffer = 10_000 if size < 0 else int(min(size, 10_000))
    ds = ds.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.repeat().batch(batch_size, drop_remainder=True)


def training_dataset(labeled: tf.data.Dataset, batch_size: int,
                     unlabeled: tf.data.Dataset | None = None,
                     unlabeled_ratio: int = 0, augment: Augment | None = None,
                     online_teacher: bool = False, seed: int = 0) -> tf.data.Dataset:
    """An infinite dataset of per-step dicts (see the module docstring).

    Args:
      labeled: unbatched (uint8 image [H, W, 3], int64 label).
      batch_size: labeled images per step (global, across replicas).
      unlabeled: unbatched (image, float32 target [C]) for offline pseudo
        labels, or images alone when `online_teacher` is set.
      unlabeled_ratio: unlabeled images per labeled image in each step.
      augment: the student's input noise, applied to a uint8 batch; None
        trains on clean images.
      online_teacher: keep an un-augmented copy of the unlabeled batch for a
        teacher inside the train step.
      seed: shuffle seed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    noise = augment or (lambda x: x)
    lab = _stream(labeled, batch_size, seed).map(
        lambda x, y: {"images": noise(x), "labels": tf.cast(y, tf.int64)},
        num_parallel_calls=tf.data.AUTOTUNE)
    if unlabeled is None:
        return lab.prefetch(tf.data.AUTOTUNE)
    if unlabeled_ratio < 1 or int(unlabeled_ratio) != unlabeled_ratio:
        raise ValueError(f"unlabeled_ratio must be an integer >= 1, got {unlabeled_ratio}")
    unl_batch = batch_size * int(unlabeled_ratio)
    if online_teacher:
        unl = _stream(unlabeled, unl_batch, seed + 1).map(
            lambda x: {"unlabeled_images": noise(x), "unlabeled_teacher_images": x},
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        unl = _stream(unlabeled, unl_batch, seed + 1).map(
            lambda x, t: {"unlabeled_images": noise(x),
                          "unlabeled_targets": tf.cast(t, tf.float32)},
            num_parallel_calls=tf.data.AUTOTUNE)
    both = tf.data.Dataset.zip(lab, unl).map(lambda a, b: {**a, **b})
    return both.prefetch(tf.data.AUTOTUNE)


def pseudo_labeled_records(files: list[str], num_classes: int,
                           image_size: int) -> tf.data.Dataset:
    """Unbatched (uint8 image, float32 probs [C]) from pseudo-labeled shards.

    This is the offline mode: the pseudo labels were written by the labeling
    stage (tools/label.py, tools/filter_balance.py), so no teacher runs while
    the student trains.
    """
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)

    def parse(serialized):
        record = schema.parse_pseudo(serialized, num_classes)
        return (schema.decode_image(record[schema.IMAGE], image_size),
                record[schema.TEACHER_PROBS])

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
