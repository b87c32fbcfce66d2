"""The training pipeline: batch ratio, and noise on the student's copies only."""

import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.data import load_source, pipeline
from noisy_student_tf.data.sources import load_digits, load_tfrecord_dir


def _invert(images):
    return 255 - images


def _labeled(n=20):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(n) % 3))


@pytest.mark.parametrize("ratio", [1, 3, 7])
def test_unlabeled_batch_is_ratio_times_labeled(ratio):
    unl = tf.data.Dataset.from_tensor_slices(
        (np.zeros((50, 4, 4, 3), np.uint8), np.full((50, 3), 1 / 3, np.float32)))
    ds = pipeline.training_dataset(_labeled(), 4, unl, unlabeled_ratio=ratio)
    for batch in ds.take(3):
        assert batch["images"].shape[0] == 4
        assert batch["unlabeled_images"].shape[0] == 4 * ratio
        assert batch["unlabeled_targets"].shape == (4 * ratio, 3)


def test_augment_hits_student_inputs_but_not_teacher_inputs():
    pool = np.random.default_rng(0).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    unl = tf.data.Dataset.from_tensor_slices(pool)
    ds = pipeline.training_dataset(_labeled(), 2, unl, unlabeled_ratio=2, augment=_invert,
                                   online_teacher=True)
    batch = next(iter(ds))
    clean = batch["unlabeled_teacher_images"].numpy()
    np.testing.assert_array_equal(batch["unlabeled_images"].numpy(), 255 - clean)
    assert all(any((c == p).all() for p in pool) for c in clean)  # teacher: pool as-is
    assert (batch["images"].numpy() >= 255 - 19).all()  # labeled copies inverted too


@pytest.mark.parametrize("ratio", [0, 2.5])
def test_bad_ratio_is_rejected(ratio):
    unl = tf.data.Dataset.from_tensor_slices(np.zeros((5, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="unlabeled_ratio"):
        pipeline.training_dataset(_labeled(), 2, unl, unlabeled_ratio=ratio, online_teacher=True)


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_digits(split_seed=0), load_digits(split_seed=0)
    np.testing.assert_array_equal(a.labeled_images, b.labeled_images)
    assert a.labeled_images.shape == (50, 32, 32, 3) and a.labeled_images.dtype == np.uint8
    assert np.bincount(a.labeled_labels).tolist() == [5] * 10
    assert len(a.labeled_labels) + len(a.unlabeled_labels) + len(a.test_labels) == 1797
    assert a.test_images.max() == 255


def test_missing_tfrecord_path_names_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tfrecord_dir(missing, 10, 4)


def test_unknown_source_is_rejected():
    import ml_collections

    with pytest.raises(ValueError, match="data.source"):
        load_source(ml_collections.ConfigDict({"source": "imagenet"}))
