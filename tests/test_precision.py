"""Precision and XLA per device: the auto table, the errors, and a Noisy
Student step under each mixed policy with float32 logits, losses, weights
and moving average (loss scaling with float16)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_cnn

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.models import build_efficientnet
from noisy_student_tf.training import NoisyStudent, precision
from noisy_student_tf.training.precision import Precision, resolve

C = 3


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "setting, jit, kind, expected",
    [
        ("auto", "auto", "tpu", ("mixed_bfloat16", True)),
        ("auto", "auto", "gpu", ("mixed_float16", True)),
        ("auto", "auto", "cpu", ("float32", False)),
        ("float32", "auto", "tpu", ("float32", True)),
        ("mixed_bfloat16", False, "cpu", ("mixed_bfloat16", False)),
        ("auto", True, "cpu", ("float32", True)),
        ("auto", "False", "gpu", ("mixed_float16", False)),  # as --config.jit_compile=False
        ("mixed_float16", "TRUE", "cpu", ("mixed_float16", True)),
    ],
)
def test_resolution_table(setting, jit, kind, expected):
    assert tuple(resolve(setting, jit, kind)) == expected


@pytest.mark.parametrize(
    "jit, kind, expected",
    [("auto", "gpu", ("mixed_float16", False)), (False, "cpu", ("float32", False))],
)
def test_deterministic_runs_resolve_auto_to_no_xla(jit, kind, expected):
    # Keras compiles without XLA under TF op determinism; the resolved
    # setting (and what compile() is given) must say so.
    assert tuple(resolve("auto", jit, kind, deterministic=True)) == expected


def test_resolve_config_reads_deterministic():
    assert precision.resolve_config({"deterministic": True}, "gpu").jit_compile is False
    assert precision.resolve_config({}, "gpu").jit_compile is True


def test_only_float16_scales_the_loss():
    assert Precision("mixed_float16", True).loss_scaling
    assert not Precision("mixed_bfloat16", True).loss_scaling
    assert not Precision("float32", False).loss_scaling


@pytest.mark.parametrize(
    "args, key",
    [
        (("float16", "auto", "gpu"), "precision='float16'"),
        (("auto", "yes", "cpu"), "jit_compile='yes'"),
        (("auto", False, "tpu"), "jit_compile=False cannot run on a TPU"),
        (("auto", "auto", "ipu"), "device kind 'ipu'"),
        (("auto", True, "gpu", True), "deterministic=True cannot run XLA"),
        (("auto", "auto", "tpu", True), "deterministic=True cannot run XLA"),
    ],
)
def test_bad_settings_are_config_errors(args, key):
    with pytest.raises(ConfigError, match=key):
        resolve(*args)


def test_configure_sets_the_policy_for_this_device():
    config = {"precision": "mixed_bfloat16", "jit_compile": "auto"}
    assert precision.device_kind() == "cpu"
    assert precision.configure(config) == Precision("mixed_bfloat16", False)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert precision.configure({}) == Precision("float32", False)  # keys absent: auto
    assert keras.mixed_precision.global_policy().name == "float32"


def _student():
    return build_efficientnet(
        "efficientnet-b0",
        C,
        input_shape=(16, 16, 3),
        width_coefficient=0.25,
        depth_coefficient=0.25,
        small_image=True,
        dropout_rate=0.0,
        final_survival_prob=1.0,
    )


def _batch(rng):
    return {
        "images": tf.constant(rng.integers(0, 256, (4, 16, 16, 3)), tf.float32),
        "labels": tf.constant(rng.integers(0, C, 4)),
        "unlabeled_images": tf.constant(rng.integers(0, 256, (8, 16, 16, 3)), tf.float32),
        "unlabeled_teacher_images": tf.constant(rng.integers(0, 256, (8, 16, 16, 3)), tf.float32),
    }


def _step(policy, initial, teacher_weights, rng):
    """One SGD step of NoisyStudent with an online teacher under `policy`."""
    resolved = precision.configure({"precision": policy, "jit_compile": False})
    student, teacher = _student(), tiny_cnn(C, size=16)  # tiny_cnn's head follows the policy
    student.set_weights(initial)
    teacher.set_weights(teacher_weights)
    model = NoisyStudent(student, C, unlabeled_ratio=2, teacher=teacher, ema_decay=0.5)
    model.compile(optimizer=precision.wrap_optimizer(keras.optimizers.SGD(0.1), resolved))
    batch = _batch(rng)
    # Dynamic loss scaling starts at 2**15 and skips the steps whose float16
    # gradients overflow, halving the scale each time, until one applies.
    tries = 0
    while int(model.optimizer.iterations.numpy()) == 0 and tries < 20:
        logs = model.train_on_batch(batch, return_dict=True)
        tries += 1
    return model, student, logs, batch, tries


@pytest.mark.parametrize(
    "policy, compute", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]
)
def test_mixed_step_keeps_logits_losses_and_weights_float32(policy, compute):
    keras.utils.set_random_seed(0)
    initial, teacher_weights = _student().get_weights(), tiny_cnn(C, size=16).get_weights()
    reference, *_ = _step("float32", initial, teacher_weights, np.random.default_rng(0))
    model, student, logs, batch, tries = _step(
        policy, initial, teacher_weights, np.random.default_rng(0)
    )

    assert student.get_layer("stem_conv").compute_dtype == compute
    assert model.teacher(batch["unlabeled_teacher_images"]).dtype == compute  # cast in the step
    total, lab, unl, logits = model.compute_losses(batch, training=False)
    assert [t.dtype for t in (total, lab, unl, logits)] == [tf.float32] * 4
    assert np.isfinite(logs["loss"]) and logs["unlabeled_loss"] > 0
    assert all(v.dtype == "float32" for v in student.weights if "int" not in v.dtype)
    assert all(v.dtype == "float32" for v in model.average.shadows)

    wrapped = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert wrapped == (policy == "mixed_float16")
    if wrapped:  # the loss was scaled, by 2**15 halved once per skipped step
        assert float(model.optimizer.dynamic_scale) == 2.0 ** (16 - tries)
    else:
        assert tries == 1
    # The applied update matches float32's: a loss scale left in the
    # gradients would multiply it by thousands. (Trainable weights only: the
    # skipped steps' forward passes moved the batch-norm statistics.)
    ids = {id(v) for v in student.trainable_weights}
    trainable = [i for i, v in enumerate(student.weights) if id(v) in ids]
    final, ref = student.get_weights(), reference.student.get_weights()
    moved = [final[i] - initial[i] for i in trainable]
    expected = [ref[i] - initial[i] for i in trainable]
    largest = max(np.abs(e).max() for e in expected)
    assert largest > 1e-3
    assert max(np.abs(m - e).max() for m, e in zip(moved, expected)) < 0.1 * largest
