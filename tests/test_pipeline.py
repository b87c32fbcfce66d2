"""The training pipeline: batch ratio, class mixing, determinism, noise on student copies."""

import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.augment import RandAugment
from noisy_student_tf.data import load_source, pipeline, preprocess, schema
from noisy_student_tf.data.sources import load_tfrecord_dir


def _invert(images, seed):
    del seed
    return 255 - images


def _labeled(n=20):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(n) % 3))


@pytest.mark.parametrize("ratio", [1, 3, 7])
def test_unlabeled_batch_is_ratio_times_labeled(ratio):
    unl = tf.data.Dataset.from_tensor_slices(
        (np.zeros((50, 4, 4, 3), np.uint8), np.full((50, 3), 1 / 3, np.float32))
    )
    ds = pipeline.training_dataset(_labeled(), 4, unl, unlabeled_ratio=ratio)
    for batch in ds.take(3):
        assert batch["images"].shape[0] == 4
        assert batch["unlabeled_images"].shape[0] == 4 * ratio
        assert batch["unlabeled_targets"].shape == (4 * ratio, 3)


def test_augment_hits_student_inputs_but_not_teacher_inputs():
    pool = np.random.default_rng(0).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    unl = tf.data.Dataset.from_tensor_slices(pool)
    ds = pipeline.training_dataset(
        _labeled(), 2, unl, unlabeled_ratio=2, preprocess=_invert, online_teacher=True
    )
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


def test_missing_tfrecord_path_names_the_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tfrecord_dir(missing, 10, 4)


def test_unknown_source_is_rejected():
    import ml_collections

    with pytest.raises(ValueError, match="data.source"):
        load_source(ml_collections.ConfigDict({"source": "imagenet"}))


# A balanced selection as filter_and_balance returns it: grouped by class.
CLASSES, PER_CLASS, BATCH = 10, 4000, 128


def _sorted_selection():
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = labels  # the class, readable back from the image
    return images, labels


def _assert_mixed(label_batches):
    chi2 = []
    for labels in label_batches:
        counts = np.bincount(labels, minlength=CLASSES)
        assert counts.min() >= 2 and counts.max() <= 35, counts  # expected 12.8 each
        chi2.append(((counts - len(labels) / CLASSES) ** 2 / (len(labels) / CLASSES)).sum())
    assert np.mean(chi2) < 20, chi2  # about 9 (9 degrees of freedom) when well mixed


def test_in_memory_streams_sorted_by_class_come_out_mixed():
    images, labels = _sorted_selection()
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    ds = pipeline.training_dataset(
        (images, labels), BATCH, (images, targets), unlabeled_ratio=1, seed=0
    )
    unlabeled, labeled = [], []
    for batch in ds.take(20):
        classes = batch["unlabeled_targets"].numpy().argmax(axis=1)
        # Images and targets are gathered with the same indices.
        np.testing.assert_array_equal(batch["unlabeled_images"].numpy()[:, 0, 0, 0], classes)
        np.testing.assert_array_equal(batch["images"].numpy()[:, 0, 0, 0], batch["labels"])
        unlabeled.append(classes)
        labeled.append(batch["labels"].numpy())
    _assert_mixed(unlabeled)
    _assert_mixed(labeled)


def test_each_in_memory_epoch_is_a_fresh_full_permutation():
    images = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 1, 3), np.uint8)
    ds = pipeline.training_dataset((images, np.arange(100)), 10, seed=1)
    seen = np.concatenate([b["labels"].numpy() for b in ds.take(20)])
    first, second = seen[:100], seen[100:]
    assert sorted(first) == list(range(100)) and sorted(second) == list(range(100))
    assert not np.array_equal(first, second) and not np.array_equal(first, np.arange(100))


def _write_class_sorted_shards(folder, shards_per_class=2):
    """Each shard holds one class (as folder-by-class ingestion writes them)."""
    images, labels = _sorted_selection()
    encoded = {c: schema.encode_png(images[labels == c][0]) for c in range(CLASSES)}
    files, per_shard = [], PER_CLASS // shards_per_class
    for shard in range(CLASSES * shards_per_class):
        cls = shard // shards_per_class
        path = str(folder / f"pseudo-{shard:05d}.tfrecord")
        probs = np.eye(CLASSES, dtype=np.float32)[cls]
        example = schema.add_teacher_view(schema.source_example(encoded[cls]), probs)
        with tf.io.TFRecordWriter(path) as writer:
            data = example.SerializeToString()
            for _ in range(per_shard):
                writer.write(data)
        files.append(path)
    return files


def test_record_stream_from_class_sorted_shards_comes_out_mixed(tmp_path):
    files = _write_class_sorted_shards(tmp_path)
    labeled = (np.zeros((8, 2, 2, 3), np.uint8), np.zeros(8, np.int64))
    unlabeled = pipeline.pseudo_labeled_records(files, CLASSES, 2, seed=0)
    ds = pipeline.training_dataset(labeled, 8, unlabeled, unlabeled_ratio=BATCH // 8, seed=0)
    batches = []
    for batch in ds.take(20):
        classes = batch["unlabeled_targets"].numpy().argmax(axis=1)
        np.testing.assert_array_equal(batch["unlabeled_images"].numpy()[:, 0, 0, 0], classes)
        batches.append(classes)
    _assert_mixed(batches)


def _first_batches(seed, unlabeled, online=False, n=3):
    rng = np.random.default_rng(0)
    labeled = (rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10)
    # A few ops keep graph tracing short; test_preprocess covers the full list.
    augment = RandAugment(2, 9, seed=123, ops=("Rotate", "Color"))
    train = preprocess.TrainPreprocess(32, augment, small_image=True)
    ds = pipeline.training_dataset(
        labeled, 4, unlabeled, unlabeled_ratio=2, preprocess=train, online_teacher=online, seed=seed
    )
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds.take(n)]


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_gives_bit_identical_batches():
    # Online teacher: both the student's noised copies and the clean ones.
    # The offline (targets) path is checked from records below.
    pool = np.random.default_rng(1).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    first = _first_batches(5, pool, online=True)
    _assert_same(first, _first_batches(5, pool, online=True))
    other = _first_batches(6, pool, online=True)
    for key in first[0]:
        assert not np.array_equal(first[0][key], other[0][key]), key
    # The teacher sees pool images as they are; the student a noised copy.
    clean = first[0]["unlabeled_teacher_images"]
    assert all(any(np.array_equal(c, p) for p in pool) for c in clean)
    assert not np.array_equal(first[0]["unlabeled_images"], clean)


def test_same_seed_gives_identical_batches_from_records(tmp_path):
    rng = np.random.default_rng(2)
    files = []
    for shard in range(3):
        path = str(tmp_path / f"pseudo-{shard:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(10):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                example = schema.source_example(schema.encode_png(image))
                probs = rng.dirichlet(np.ones(10)).astype(np.float32)
                writer.write(schema.add_teacher_view(example, probs).SerializeToString())
        files.append(path)

    def batches(seed):
        return _first_batches(seed, pipeline.pseudo_labeled_records(files, 10, 32, seed=seed))

    first = batches(3)
    _assert_same(first, batches(3))
    other = batches(4)
    for key in ("unlabeled_images", "unlabeled_targets"):
        assert not np.array_equal(first[0][key], other[0][key]), key


def test_images_stay_paired_with_their_labels_and_targets():
    # Image i is filled with i; its label is i % 7 and its target row is one-hot(i % 5).
    n = 60
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    labels = np.arange(n) % 7
    targets = np.eye(5, dtype=np.float32)[np.arange(n) % 5]
    ds = pipeline.training_dataset(
        (images, labels), 6, (images, targets), unlabeled_ratio=2, seed=3
    )
    seen = set()
    for batch in ds.take(12):
        ids = batch["images"].numpy()[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(batch["labels"].numpy(), ids % 7)
        unl_ids = batch["unlabeled_images"].numpy()[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(batch["unlabeled_targets"].numpy().argmax(1), unl_ids % 5)
        seen.update(unl_ids.tolist())
    assert len(seen) == n  # two epochs of the unlabeled set: every image came through


def test_a_second_pipeline_reuses_the_traced_preprocessing_and_gives_the_same_batches(
    monkeypatch,
):
    """Each model of a loop builds new pipelines; the preprocessing graph is
    traced once per setting and image shape, for every batch size, and reused
    with unchanged outputs."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    y = np.arange(16) % 4

    def first_batch(magnitude=9, batch_size=4):
        prep = preprocess.TrainPreprocess(32, RandAugment(2, magnitude, seed=0), small_image=True)
        ds = pipeline.training_dataset((x, y), batch_size, preprocess=prep, seed=3)
        return prep, next(iter(ds))["images"].numpy()

    prep, first = first_batch()
    traced = preprocess._TRACED[(prep.cache_key(), (None, 32, 32, 3), "uint8")]
    traces = traced.experimental_get_tracing_count()
    _, second = first_batch()
    _, larger = first_batch(batch_size=8)  # another batch size: the same graph
    assert traced.experimental_get_tracing_count() == traces  # reused, not traced again
    np.testing.assert_array_equal(first, second)
    assert larger.shape == (8, 32, 32, 3)
    other, third = first_batch(magnitude=5)  # another setting: a graph of its own
    assert other.cache_key() != prep.cache_key()
    assert not np.array_equal(first, third)
    # The traced graph computes what the untraced Python path computes.
    monkeypatch.setattr(preprocess.TrainPreprocess, "cache_key", lambda self: None)
    _, untraced = first_batch()
    np.testing.assert_array_equal(first, untraced)
