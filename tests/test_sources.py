"""Data sources: the digits split, TFRecord folders (cifar10-4k protocol), tfds."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.data import schema
from noisy_student_tf.data.sources import (
    first_per_class,
    load_digits,
    load_source,
    load_tfds,
    load_tfrecord_dir,
)


def _image_bytes(images):
    return collections.Counter(image.tobytes() for image in images)


def test_digits_split_is_a_deterministic_partition_of_all_digits():
    from sklearn.datasets import load_digits as sk_load_digits

    a, b = load_digits(split_seed=0), load_digits(split_seed=0)
    np.testing.assert_array_equal(a.labeled_images, b.labeled_images)
    np.testing.assert_array_equal(a.unlabeled_images, b.unlabeled_images)
    assert a.labeled_images.shape == (50, 32, 32, 3) and a.labeled_images.dtype == np.uint8
    assert np.bincount(a.labeled_labels).tolist() == [5] * 10
    assert np.bincount(a.test_labels).tolist() == [36] * 10
    # Every digit lands in exactly one split: the multiset union of the
    # splits is the multiset of all 1,797 images (no overlap, none lost).
    everything = load_digits(num_labeled_per_class=0, num_test_per_class=0)
    assert len(everything.unlabeled_labels) == len(sk_load_digits().target) == 1797
    union = (
        _image_bytes(a.labeled_images)
        + _image_bytes(a.unlabeled_images)
        + _image_bytes(a.test_images)
    )
    assert union == _image_bytes(everything.unlabeled_images)
    # Another seed gives another labeled set.
    c = load_digits(split_seed=1)
    assert _image_bytes(c.labeled_images) != _image_bytes(a.labeled_images)


def _write_split(folder, split, labels, num_shards, size=4):
    """Shards whose record i holds an image filled with i (so order is visible)."""
    os.makedirs(folder, exist_ok=True)
    per = -(-len(labels) // num_shards)
    for shard in range(num_shards):
        path = os.path.join(folder, f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard * per, min((shard + 1) * per, len(labels))):
                image = np.full((size, size, 3), i, np.uint8)
                example = schema.source_example(schema.encode_png(image), labels[i], b"%d" % i)
                writer.write(example.SerializeToString())


def test_tfrecord_folder_follows_the_first_per_class_protocol(tmp_path):
    labels = [0, 1, 1, 2, 0, 2, 1, 0, 2, 0, 1, 2]  # record i has label labels[i]
    _write_split(tmp_path, "train", labels, num_shards=3)
    _write_split(tmp_path, "test", [2, 1, 0], num_shards=1)
    data = load_tfrecord_dir(str(tmp_path), num_classes=3, num_labeled_per_class=2)
    index = lambda images: images[:, 0, 0, 0].tolist()  # noqa: E731
    # The first two records of each class in shard order are labeled.
    assert index(data.labeled_images) == [0, 1, 2, 3, 4, 5]
    assert data.labeled_labels.tolist() == [0, 1, 1, 2, 0, 2]
    assert index(data.unlabeled_images) == [6, 7, 8, 9, 10, 11]
    assert data.unlabeled_labels.tolist() == labels[6:]
    assert index(data.test_images) == [0, 1, 2] and data.test_labels.tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="class 0 has only 4 records"):
        load_tfrecord_dir(str(tmp_path), num_classes=3, num_labeled_per_class=5)


def test_first_per_class_marks_the_first_records_of_each_class():
    mask = first_per_class(np.array([2, 0, 0, 1, 2, 0, 1, 2]), 2, 3)
    assert mask.tolist() == [True, True, True, True, True, False, True, False]


def test_tfds_source_under_mock_data():
    import ml_collections
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=60):
        data = load_tfds("cifar10", num_labeled_per_class=2)
        via_config = load_source(
            ml_collections.ConfigDict(
                dict(source="tfds", name="cifar10", num_labeled_per_class=2, image_size=16, path="")
            )
        )
    assert data.num_classes == 10
    assert data.labeled_images.dtype == np.uint8 and data.labeled_images.shape[1:] == (32, 32, 3)
    assert np.bincount(data.labeled_labels, minlength=10).tolist() == [2] * 10
    assert len(data.labeled_labels) + len(data.unlabeled_labels) == 60
    assert len(data.test_labels) == 60
    assert via_config.test_images.shape[1:] == (16, 16, 3)


def test_stream_specs_resolve_folders_globs_and_tfds_splits(tmp_path):
    from noisy_student_tf.data import ingest, pipeline, sources

    rng = np.random.default_rng(0)
    items = [
        (schema.encode_png(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)), i % 2, b"k%d" % i)
        for i in range(7)
    ]
    ingest.write_source_shards(items, str(tmp_path), 3, prefix="train")
    folder = sources.record_source("labeled", str(tmp_path))
    glob_spec = sources.record_source("labeled", str(tmp_path / "train-*"))
    assert folder.files == glob_spec.files and len(folder.files) == 3
    assert folder.num_records == 7 and not folder.tfds_name
    # Streamed at the model's resolution, the labels intact, nothing gathered on the host.
    images, labels = zip(*pipeline.source_records(folder.files, 16).as_numpy_iterator())
    assert {x.shape for x in images} == {(16, 16, 3)} and sorted(labels) == [0, 0, 0, 0, 1, 1, 1]
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        split = sources.record_source("test", "tfds:cifar10:test[:50%]")
        assert (split.tfds_name, split.tfds_split, split.num_records) == (
            "cifar10",
            "test[:50%]",
            12,  # mock data ignores the slice
        )
        batch = next(iter(pipeline.tfds_records("cifar10", "test", 16).batch(12)))
    assert batch[0].shape == (12, 16, 16, 3) and batch[0].dtype == tf.uint8
