"""Checks that were missing or weak (issue 20): the corruptions against their published
reference, undecodable images in every data input named, and a pool where no image
reaches the threshold.
"""

import colorsys
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import copy_workdir, source_examples, tiny_loop_config, tiny_loop_data, write_records

from noisy_student_tf import loop
from noisy_student_tf.data import schema, sources
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.evaluation import corruptions, datasets

# The CIFAR-10-C constants as published in hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py (Hendrycks & Dietterich, ICLR 2019),
# written out here rather than read from the module under test.
PUBLISHED = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of the added normal, on [0, 1]
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around the per-channel means
}
SEED = (3, 4)


def _corrupt(image, name, severity):
    out = corruptions.corrupt(image, name, severity, tf.constant(SEED, tf.int32))
    return out.numpy().astype(np.float64)


def _image(size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _grey_levels_apart(got, reference) -> float:
    """The largest difference in grey levels. At most 1 passes: the reference's
    float64 against TF's float32, and its uint8 truncation (np.uint8 in
    make_cifar_c.py) against our rounding."""
    return float(np.abs(np.asarray(got, np.float64) - reference).max())


@pytest.mark.parametrize("severity", corruptions.SEVERITIES)
def test_gaussian_noise_is_the_reference_formula_at_the_published_std(severity):
    c = PUBLISHED["gaussian_noise"][severity - 1]
    image = _image()
    # make_cifar_c.py: clip(x / 255 + normal(scale=c), 0, 1) * 255, with the op's draws.
    z = tf.random.stateless_normal(image.shape, tf.constant(SEED, tf.int32)).numpy()
    expected = np.clip(image / 255 + c * z, 0, 1) * 255
    assert _grey_levels_apart(_corrupt(image, "gaussian_noise", severity), expected) <= 1.0
    # The std itself, whatever the draws: mid-grey never clips, so the residual is the noise.
    grey = np.full((64, 64, 3), 128, np.uint8)
    residual = _corrupt(grey, "gaussian_noise", severity) - 128
    assert abs(residual.mean()) < 0.05 * c * 255
    assert residual.std() == pytest.approx(c * 255, rel=0.03)


@pytest.mark.parametrize("severity", corruptions.SEVERITIES)
def test_brightness_adds_the_published_value_in_hsv(severity):
    c = PUBLISHED["brightness"][severity - 1]
    image = _image(seed=1)
    reference = np.empty(image.shape)
    for index in np.ndindex(image.shape[:2]):  # colorsys: the textbook conversion skimage uses
        h, s, v = colorsys.rgb_to_hsv(*(image[index] / 255.0))
        reference[index] = colorsys.hsv_to_rgb(h, s, min(max(v + c, 0.0), 1.0))
    assert _grey_levels_apart(_corrupt(image, "brightness", severity), reference * 255) <= 1.0


@pytest.mark.parametrize("severity", corruptions.SEVERITIES)
def test_contrast_scales_around_the_channel_means_by_the_published_factor(severity):
    c = PUBLISHED["contrast"][severity - 1]
    x = _image(seed=2) / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    expected = np.clip((x - means) * c + means, 0, 1) * 255
    assert _grey_levels_apart(_corrupt(_image(seed=2), "contrast", severity), expected) <= 1.0


# --- undecodable images: named by file and record, never skipped silently --------


def _shard(folder, prefix, labels, bad_index=None, size=16):
    """One shard of PNG records; the record at `bad_index` holds bytes that are no image."""
    images = np.random.default_rng(len(labels)).integers(0, 256, (len(labels), size, size, 3))
    examples = list(source_examples(images.astype(np.uint8), labels))
    if bad_index is not None:
        examples[bad_index] = schema.source_example(b"not an image", int(labels[bad_index]))
    return write_records(folder, examples, prefix=prefix)[0]


def test_a_corrupt_image_in_data_path_is_named(tmp_path):
    good = _shard(tmp_path / "ok", "train", np.arange(12) % 3)
    _shard(tmp_path / "ok", "test", np.arange(6) % 3)
    bad_train = _shard(tmp_path / "bad_train", "train", np.arange(12) % 3, bad_index=5)
    _shard(tmp_path / "bad_train", "test", np.arange(6) % 3)
    with pytest.raises(ConfigError) as failure:
        sources.load_tfrecord_dir(str(tmp_path / "bad_train"), 3, 2)
    assert str(failure.value).startswith(
        f"{bad_train}: record 5 of data.path train-* is not a decodable image ("
    )
    assert "which images are labeled" in str(failure.value)
    os.makedirs(tmp_path / "bad_test")
    os.link(good, tmp_path / "bad_test" / os.path.basename(good))
    bad_test = _shard(tmp_path / "bad_test", "test", np.arange(6) % 3, bad_index=0)
    with pytest.raises(ConfigError, match=f"^{bad_test}: record 0 of data.path test-"):
        sources.load_tfrecord_dir(str(tmp_path / "bad_test"), 3, 2)
    assert len(sources.load_tfrecord_dir(str(tmp_path / "ok"), 3, 2).labeled_labels) == 6


def test_a_corrupt_image_in_evaluate_data_is_named(tmp_path):
    bad = _shard(tmp_path / "eval", "test", np.arange(8) % 4, bad_index=6)
    with pytest.raises(ConfigError) as failure:
        datasets.load_eval_data(str(tmp_path / "eval"), 16)
    assert str(failure.value).startswith(f"{bad}: record 6 of --data is not a decodable image (")


def test_a_corrupt_image_in_data_labeled_stops_the_fit_named(tmp_path):
    bad = _shard(tmp_path / "labeled", "train", np.arange(12) % 3, bad_index=7)
    _shard(tmp_path / "test", "test", np.arange(6) % 3)
    config = tiny_loop_config()
    config.num_iterations = 0
    config.data.labeled, config.data.test = str(tmp_path / "labeled"), str(tmp_path / "test")
    config.data.num_classes, config.data.image_size = 3, 16
    with pytest.raises(ConfigError) as failure:
        loop.run(config, str(tmp_path / "run"), sources.load(config.data))
    assert str(failure.value).startswith(
        f"{bad}: record 7 of data.labeled is not a decodable image ("
    )
    assert not os.path.exists(tmp_path / "run" / "iteration_0_teacher.keras")


# --- no pool image reaches the threshold -------------------------------------------


def test_no_pool_image_above_the_threshold_stops_before_the_student_and_resumes(
    tmp_path, tiny_teacher_workdir, capsys
):
    """The teacher is kept and its labels too; the error names the threshold and what to
    change, and a rerun with a lower threshold reuses the teacher instead of retraining."""
    workdir = copy_workdir(tiny_teacher_workdir, tmp_path / "run")
    data = tiny_loop_data(np.random.default_rng(0))
    config = tiny_loop_config()
    config.num_iterations = 1
    config.pseudo.threshold = 1.0  # a softmax of a tiny teacher never reaches 1
    with pytest.raises(ConfigError, match=r"no unlabeled image reached pseudo.threshold=1.0 "):
        loop.run(config, workdir, data)
    assert not os.path.exists(os.path.join(workdir, "iteration_1_student.keras"))
    assert os.path.exists(os.path.join(workdir, "iteration_0_teacher.keras"))
    capsys.readouterr()
    config.pseudo.threshold = 0.0
    results = loop.run(config, workdir, data)
    assert "teacher reused from" in capsys.readouterr().out
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
    assert results["models"][0]["dropped_below_threshold"] == 0
