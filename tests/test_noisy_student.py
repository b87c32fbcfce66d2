"""The Noisy Student train step: loss terms, frozen un-noised teacher, EMA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_cnn
from noisy_student_tf.labeling import predict_probabilities, training_targets
from noisy_student_tf.training import NoisyStudent
from noisy_student_tf.training.noisy_student import smooth

C = 3


def _batch(rng, n_lab=4, ratio=2, with_targets=True):
    data = {
        "images": tf.constant(rng.integers(0, 256, (n_lab, 8, 8, 3)), tf.float32),
        "labels": tf.constant(rng.integers(0, C, n_lab), tf.int64),
        "unlabeled_images": tf.constant(rng.integers(0, 256, (n_lab * ratio, 8, 8, 3)),
                                        tf.float32),
    }
    if with_targets:
        data["unlabeled_targets"] = tf.constant(rng.dirichlet(np.ones(C), n_lab * ratio),
                                                tf.float32)
    return data


def _ce(targets, logits):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(np.mean(-(targets * logp).sum(-1)))


def test_loss_is_labeled_plus_ratio_weighted_unlabeled(rng):
    student = tiny_cnn(C)
    model = NoisyStudent(student, C, unlabeled_ratio=2, label_smoothing=0.1, weight_decay=0.0)
    data = _batch(rng)
    total, lab, unl, _ = model.compute_losses(data, training=False)
    logits = student(tf.concat([data["images"], data["unlabeled_images"]], 0)).numpy()
    one_hot = np.eye(C)[data["labels"].numpy()] * 0.9 + 0.1 / C
    expect_lab = _ce(one_hot, logits[:4])
    expect_unl = _ce(data["unlabeled_targets"].numpy(), logits[4:])
    assert float(lab) == pytest.approx(expect_lab, rel=1e-5)
    assert float(unl) == pytest.approx(expect_unl, rel=1e-5)
    assert float(total) == pytest.approx(expect_lab + 2 * expect_unl, rel=1e-5)
    assert float(unl) > 0.1  # the unlabeled term is really there


def test_unlabeled_batch_changes_the_gradient(rng):
    student = tiny_cnn(C)
    model = NoisyStudent(student, C, unlabeled_ratio=2, weight_decay=0.0)
    data = _batch(rng)
    other = dict(data, unlabeled_targets=tf.one_hot([0] * 8, C))

    def grads(batch):
        with tf.GradientTape() as tape:
            total = model.compute_losses(batch, training=False)[0]
        return tape.gradient(total, student.trainable_variables)[-1].numpy()

    assert np.abs(grads(data) - grads(other)).max() > 1e-4


def test_weight_decay_skips_batch_norm(rng):
    model = NoisyStudent(tiny_cnn(C), C, weight_decay=1e-5)
    names = [v.path for v in model._decayed]
    assert names and not any("batch_normalization" in n for n in names)
    assert len(names) == 4  # conv kernel+bias, dense kernel+bias


def test_online_teacher_is_frozen_and_unnoised(rng):
    teacher = tiny_cnn(C, dropout=0.9)
    student = tiny_cnn(C, dropout=0.5)
    before = [v.numpy().copy() for v in teacher.weights]  # incl. BN moving stats
    model = NoisyStudent(student, C, unlabeled_ratio=2, teacher=teacher, temperature=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    data = _batch(rng, with_targets=False)
    data["unlabeled_teacher_images"] = data["unlabeled_images"]
    ds = tf.data.Dataset.from_tensors(data).repeat(3)
    student_before = [v.numpy().copy() for v in student.trainable_variables]
    model.fit(ds, epochs=1, verbose=0)
    for b, v in zip(before, teacher.weights):
        np.testing.assert_array_equal(b, v.numpy())  # bit-identical teacher
    assert any(np.abs(b - v.numpy()).max() > 0 for b, v in
               zip(student_before, student.trainable_variables))
    # The unlabeled loss the step computes uses the teacher's inference-mode
    # softmax as target (its dropout of 0.9 would change the targets).
    x = data["unlabeled_teacher_images"]
    targets = tf.nn.softmax(teacher(x, training=False)).numpy()
    _, _, unl, _ = model.compute_losses(data, training=False)
    logits = student(tf.concat([data["images"], data["unlabeled_images"]], 0)).numpy()[4:]
    assert float(unl) == pytest.approx(_ce(targets, logits), rel=1e-5)
    noised = tf.nn.softmax(teacher(x, training=True)).numpy()
    assert abs(_ce(noised, logits) - _ce(targets, logits)) > 1e-4


def test_hard_targets_are_smoothed_one_hot():
    logits = tf.constant([[0.1, 2.0, -1.0]])
    from noisy_student_tf.training.noisy_student import teacher_targets
    np.testing.assert_allclose(teacher_targets(logits, None, 0.1).numpy(),
                               smooth(tf.one_hot([1], 3), 0.1).numpy())
    np.testing.assert_allclose(training_targets(np.array([[0.2, 0.7, 0.1]]), soft=False,
                                                label_smoothing=0.1),
                               [[0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3]], rtol=1e-6)


def test_soft_targets_temperature_matches_logit_scaling():
    logits = np.array([[1.0, 2.0, 0.5]])
    probs = np.exp(logits) / np.exp(logits).sum()
    sharpened = training_targets(probs, soft=True, temperature=0.5)
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum()
    np.testing.assert_allclose(sharpened, expected, rtol=1e-5)


def test_labeling_runs_the_teacher_in_inference_mode(rng):
    teacher = tiny_cnn(C, dropout=0.9)
    images = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    a = predict_probabilities(teacher, images, batch_size=5, verbose=0)
    b = predict_probabilities(teacher, images, batch_size=16, verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    expected = tf.nn.softmax(teacher(images.astype(np.float32), training=False)).numpy()
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)
    noised = tf.nn.softmax(teacher(images.astype(np.float32), training=True)).numpy()
    assert np.abs(noised - a).max() > 1e-3  # the noise would have shown


def test_ema_weights_are_what_fit_leaves_in_the_student(rng):
    student = tiny_cnn(C)
    model = NoisyStudent(student, C, weight_decay=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.9))
    data = {k: v for k, v in _batch(rng).items() if k in ("images", "labels")}
    ds = tf.data.Dataset.from_tensors(data).repeat(5)
    model.fit(ds, epochs=1, verbose=0)
    ema = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    for e, v in zip(ema, model.trainable_variables):
        np.testing.assert_allclose(e, v.numpy())


def test_missing_targets_without_teacher_is_an_error(rng):
    model = NoisyStudent(tiny_cnn(C), C, unlabeled_ratio=2)
    with pytest.raises(ValueError, match="unlabeled_targets"):
        model.compute_losses(_batch(rng, with_targets=False))


def test_nonpositive_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        NoisyStudent(tiny_cnn(C), C, temperature=0.0)


def test_exponential_schedule_follows_official_formula():
    from noisy_student_tf.training import WarmupSchedule

    lr = WarmupSchedule(peak=0.1, steps_per_epoch=10, total_steps=1000, warmup_epochs=5,
                        schedule="exponential", decay_rate=0.97, decay_epochs=2.4)
    # warm-up ramp, then 0.97 ** floor(step / 24) counted from step 0
    assert float(lr(10)) == pytest.approx(0.1 * 10 / 50)
    assert float(lr(50)) == pytest.approx(0.1 * 0.97 ** 2)
    assert float(lr(500)) == pytest.approx(0.1 * 0.97 ** 20, rel=1e-5)
