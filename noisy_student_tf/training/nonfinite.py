"""Skip a train step whose loss or gradients are not finite, count it, stop.

`tf.debugging.check_numerics` does nothing inside an XLA cluster
(`jit_compile=True`, every TPU run), so a NaN loss would reach the weights,
the optimizer's slots and the moving average there. Instead the step decides
in-graph: all replicas agree whether the step is finite (one all-reduce of a
flag), and only then is the update applied, under a `tf.cond`. A skipped
step leaves the weights, the optimizer state (slots and `iterations`), the
batch-norm statistics and their moving average as they were; the
`nonfinite_steps` metric counts it and `StopOnNonFiniteLoss` ends `fit()`
with the step's number (big_vision's trainers stop the same way).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def all_replicas_finite(loss: tf.Tensor, grads: list) -> tf.Tensor:
    """True iff the loss and every gradient are finite on every replica.

    Called in a replica context. The decision must be the same on all
    replicas: the update it guards contains collective ops.
    """
    checks = [tf.reduce_all(tf.math.is_finite(loss))]
    checks += [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
    finite = tf.reduce_all(tf.stack(checks))
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return finite
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    return tf.equal(bad, 0.0)


def apply_if_finite(finite: tf.Tensor, apply_fn, apply_args, skip_fn, skip_args) -> None:
    """Runs `apply_fn(*apply_args)` if `finite` else `skip_fn(*skip_args)`, per replica.

    Called in a replica context. Strategies that need `merge_call` for an
    optimizer update (MirroredStrategy) cannot run it inside a `tf.cond` in a
    replica context, so there the cond runs in the cross-replica context and
    each branch goes back to the replicas, as Keras's LossScaleOptimizer
    does. TPU, multi-worker and the default strategy take the cond directly.
    """
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: apply_fn(*apply_args), lambda: skip_fn(*skip_args))
        return

    def cross_replica(strategy, finite, apply_args, skip_args):
        # all_replicas_finite made the flag identical on every replica.
        finite = strategy.experimental_local_results(finite)[0]
        tf.cond(
            finite,
            lambda: strategy.extended.call_for_each_replica(apply_fn, args=apply_args),
            lambda: strategy.extended.call_for_each_replica(skip_fn, args=skip_args),
        )

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(finite, tuple(apply_args), tuple(skip_args))
    )


class StepCounter(keras.metrics.Metric):
    """Counts steps flagged by `update_state(flag)`; reset each epoch like every metric.

    Every replica adds the same (global) flag, so the variable is averaged
    across replicas on read rather than summed.
    """

    def __init__(self, name: str = "nonfinite_steps", **kwargs):
        super().__init__(name=name, **kwargs)
        self.count = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", aggregation="mean", name="count"
        )

    def update_state(self, flag):
        self.count.assign_add(tf.cast(flag, "float32"))

    def result(self):
        return tf.identity(self.count.value)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Ends `fit()` with FloatingPointError after a step was skipped as non-finite.

    Reads the `nonfinite_steps` log that `NoisyStudent` reports. The skipped
    step left the model as it was after the last finite step, so a run can be
    inspected, or resumed from a backup with a lower learning rate.

    Args:
      key: the log entry holding the per-epoch count of skipped steps.
    """

    def __init__(self, key: str = "nonfinite_steps"):
        super().__init__()
        self.key = key
        self._steps_before_epoch = 0
        self._steps_in_epoch = 0
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._steps_before_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._steps_in_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        self._steps_before_epoch += self._steps_in_epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps_in_epoch = batch + 1
        count = float((logs or {}).get(self.key, 0.0))
        if count > 0:
            step = self._steps_before_epoch + batch + 1
            raise FloatingPointError(
                f"the loss was not finite at training step {step} (epoch {self._epoch + 1}, "
                f"batch {batch + 1}; {count:g} non-finite step(s) this epoch): the update "
                f"was skipped, so weights, optimizer state and their moving average hold "
                f"the last finite step. Lower the learning rate or check the input data"
            )
