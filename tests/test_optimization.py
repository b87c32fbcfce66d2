"""build_optimizer and WarmupSchedule: scaling, warm-up, each schedule, each optimizer."""

import math

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.training import WarmupSchedule, build_optimizer
from noisy_student_tf.training.optimization import FusedAdam, decay_epochs_for_final_lr


def _train(**overrides):
    """A `train` block as older configs wrote it (no decay keys)."""
    config = dict(
        optimizer="rmsprop",
        learning_rate=0.016,
        schedule="exponential",
        warmup_epochs=5,
        ema_decay=0.9999,
    )
    config.update(overrides)
    return ml_collections.ConfigDict(config)


def _lr(optimizer, step):
    """The optimizer's schedule at `step`."""
    return float(optimizer._learning_rate(step))


@pytest.mark.parametrize("batch", [64, 256, 1024])
def test_peak_learning_rate_scales_linearly_with_batch(batch):
    opt = build_optimizer(_train(schedule="constant", warmup_epochs=0), batch, 10, 3)
    assert _lr(opt, 7) == pytest.approx(0.016 * batch / 256)


def test_warmup_ramps_linearly_over_int_epochs_times_float_steps():
    # 12.5 steps per epoch (N / B as a float): warm-up is int(5 * 12.5) = 62 steps.
    opt = build_optimizer(_train(schedule="constant"), 256, 12.5, 20)
    peak = 0.016
    assert _lr(opt, 0) == 0.0
    assert _lr(opt, 31) == pytest.approx(peak * 31 / 62)
    assert _lr(opt, 61) == pytest.approx(peak * 61 / 62)
    assert _lr(opt, 62) == pytest.approx(peak)


def test_exponential_is_official_staircase_from_step_0_with_float_epochs():
    # Defaults 0.97 per 2.4 epochs; 12.5 steps per epoch: a period of 30.0 steps,
    # where a ceil'ed 13 steps per epoch would give 31.2.
    opt = build_optimizer(_train(), 256, 12.5, 100)
    peak = 0.016
    assert _lr(opt, 89) == pytest.approx(peak * 0.97**2)
    assert _lr(opt, 90) == pytest.approx(peak * 0.97**3)
    assert _lr(opt, 1000) == pytest.approx(peak * 0.97**33, rel=1e-5)


def test_exponential_reads_decay_rate_and_decay_epochs():
    opt = build_optimizer(_train(decay_rate=0.5, decay_epochs=4.8, warmup_epochs=0), 256, 10, 100)
    assert _lr(opt, 47) == pytest.approx(0.016)
    assert _lr(opt, 48) == pytest.approx(0.008)
    assert _lr(opt, 100) == pytest.approx(0.004)


def test_final_learning_rate_sets_the_decay_period_as_official():
    # official main.py: total epochs minus 5 warm-up epochs, divided into
    # log(final / base) / log(0.97) decay periods.
    epochs, base, final = 100, 0.016, 0.0002
    expected = (epochs - 5) / (math.log(final / base) / math.log(0.97))
    assert decay_epochs_for_final_lr(base, final, epochs) == pytest.approx(expected)
    opt = build_optimizer(_train(final_learning_rate=final), 256, 10, epochs)
    assert opt._learning_rate.decay_epochs == pytest.approx(expected)
    # As official, the staircase counts from step 0, warm-up included, so the
    # last step is 5 / decay_epochs (+ < 1) periods below the final rate.
    last = _lr(opt, epochs * 10 - 1)
    assert last == pytest.approx(
        base * 0.97 ** math.floor((epochs * 10 - 1) / (expected * 10)), rel=1e-5
    )
    assert final * 0.97 ** (5 / expected + 1) <= last < final


def test_cosine_reaches_zero_at_the_end_and_half_in_the_middle():
    opt = build_optimizer(_train(schedule="cosine", warmup_epochs=1), 256, 10, 11)
    peak = 0.016
    assert _lr(opt, 10) == pytest.approx(peak)
    assert _lr(opt, 60) == pytest.approx(peak / 2, rel=1e-5)
    assert _lr(opt, 110) == pytest.approx(0.0, abs=1e-9)


def test_cosine_ends_at_the_given_total_steps():
    opt = build_optimizer(_train(schedule="cosine", warmup_epochs=0), 256, 12.5, 4, total_steps=52)
    assert _lr(opt, 26) == pytest.approx(0.016 / 2, rel=1e-5)
    assert _lr(opt, 52) == pytest.approx(0.0, abs=1e-9)


def test_constant_stays_at_peak():
    opt = build_optimizer(_train(schedule="constant", warmup_epochs=1), 512, 10, 50)
    assert [_lr(opt, s) for s in (10, 200, 499)] == pytest.approx([0.032] * 3)


@pytest.mark.parametrize(
    "name, cls, settings",
    [
        ("rmsprop", keras.optimizers.RMSprop, dict(rho=0.9, momentum=0.9, epsilon=1e-3)),
        ("sgd", keras.optimizers.SGD, dict(momentum=0.9, nesterov=True)),
        ("adam", FusedAdam, {}),
    ],
)
def test_each_optimizer_name(name, cls, settings):
    opt = build_optimizer(_train(optimizer=name), 256, 10, 10)
    assert type(opt) is cls
    for key, value in settings.items():
        assert getattr(opt, key) == pytest.approx(value)
    assert isinstance(opt._learning_rate, WarmupSchedule)


def test_the_optimizer_keeps_no_moving_average():
    # The average lives in NoisyStudent(ema_decay=...); a second one here
    # would be swapped in by fit() over it.
    opt = build_optimizer(_train(ema_decay=0.9999), 256, 10, 10)
    assert not opt.use_ema


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(optimizer="lamb"), "train.optimizer"),
        (dict(schedule="linear"), "train.schedule"),
        (dict(decay_rate=0.0), "train.decay_rate"),
        (dict(decay_epochs=-1.0), "train.decay_epochs"),
        (dict(final_learning_rate=0.05), "train.final_learning_rate"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_optimizer(_train(**overrides), 256, 10, 10)


def test_schedule_config_round_trips():
    lr = WarmupSchedule(0.1, 12.5, 500, warmup_epochs=3, decay_rate=0.9, decay_epochs=4.8)
    again = WarmupSchedule.from_config(lr.get_config())
    assert [float(again(s)) for s in (10, 100, 400)] == pytest.approx(
        [float(lr(s)) for s in (10, 100, 400)]
    )
    assert again.decay_steps == pytest.approx(60.0) and again.warmup_steps == 37


def _adam_steps(optimizer, steps: int, graph: bool):
    """Weights and slots after `steps` updates of two variables with seeded gradients."""
    rng = np.random.default_rng(0)
    variables = [
        keras.Variable(rng.normal(size=shape).astype("float32")) for shape in ((3, 4), (4,))
    ]
    optimizer.build(variables)
    apply = lambda grads: optimizer.apply(grads, variables)  # noqa: E731
    apply = tf.function(apply) if graph else apply
    for _ in range(steps):
        apply([tf.constant(rng.normal(size=v.shape), tf.float32) for v in variables])
    slots = optimizer._momentums + optimizer._velocities
    return [v.numpy() for v in variables + slots]


@pytest.mark.parametrize("graph", [True, False])
def test_fused_adam_is_kerass_adam_to_rounding(graph):
    fused = _adam_steps(FusedAdam(0.01), 6, graph)
    reference = _adam_steps(keras.optimizers.Adam(0.01), 6, graph)
    for got, want in zip(fused, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(fused[0], _adam_steps(FusedAdam(0.01), 5, graph)[0])


def test_fused_adam_traces_one_update_op_per_variable():
    # The point of FusedAdam: the step's shared scalars are built once per graph.
    optimizer = FusedAdam(0.01)
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in ((3, 4), (4,), (2,))]
    optimizer.build(variables)
    grads = [tf.ones(v.shape) for v in variables]
    apply = tf.function(lambda grads: optimizer.apply(grads, variables))
    graph = apply.get_concrete_function(grads).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("ResourceApplyAdam") == 3 and kinds.count("Pow") == 2
