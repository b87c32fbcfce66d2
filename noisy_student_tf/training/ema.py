"""Exponential moving average of a model's weights and batch-norm statistics.

The official code (google-research/noisystudent main.py) keeps
`tf.train.ExponentialMovingAverage(decay=0.9999, num_updates=global_step)`
over `utils.get_all_variable()`, i.e. every trainable variable plus every
batch-norm `moving_mean` / `moving_variance`, applied after each train op;
evaluation and the next teacher read the averaged values. Two properties of
that average matter and Keras's optimizer `use_ema` has neither:

* the decay at update t is `min(decay, (1 + t) / (10 + t))`: early on the
  average spans about the last (10 + t) / 9 steps, so 0.9999 also works in
  short runs instead of staying near the random initialisation;
* the batch-norm statistics are averaged too, so the evaluated model pairs
  averaged weights with statistics that match them.

`MovingAverage` is a layer only so that its shadow variables are tracked by
the model that owns it (checkpoints and `BackupAndRestore` save them).
"""

from __future__ import annotations

import keras
import tensorflow as tf

# official main.py: flags.DEFINE_float('moving_average_decay', default=0.9999)
OFFICIAL_DECAY = 0.9999


def ramped_decay(decay: float, num_updates):
    """`min(decay, (1 + t) / (10 + t))`, tf.train.ExponentialMovingAverage's ramp.

    Args:
      decay: the asymptotic decay in [0, 1).
      num_updates: t, the number of updates applied so far (this one
        included, as the official global_step is incremented by the train op
        the average depends on). Scalar tensor or number.

    Returns:
      float32 scalar tensor.
    """
    t = tf.cast(num_updates, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))


def batch_norm_statistics(model: keras.Model) -> list:
    """The moving mean and variance of every BatchNormalization layer in `model`."""
    stats = []
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            stats += [layer.moving_mean, layer.moving_variance]
    return stats


class MovingAverage(keras.layers.Layer):
    """Shadow copies of `variables`, averaged after every applied train step.

    Args:
      decay: asymptotic decay in (0, 1); ramped by `ramped_decay`.
      variables: the Keras variables to average, e.g. a student's trainable
        weights followed by `batch_norm_statistics(student)`. Shadows start at
        their current values (as TF1's ExponentialMovingAverage.apply did).
    """

    def __init__(self, decay: float, variables: list, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"moving-average decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.sources = list(variables)
        self.shadows = [
            self.add_weight(
                shape=v.shape,
                dtype=v.dtype,
                initializer=_copy_of(v),
                trainable=False,
                autocast=False,
                name=v.path.replace("/", "__"),
            )
            for v in self.sources
        ]
        self.built = True

    def update(self, num_updates) -> None:
        """shadow -= (1 - d_t) * (shadow - variable), per replica.

        Runs in a replica context after the optimizer has applied the step:
        each replica averages its own copies (the same values on every
        replica, as the train step keeps the batch-norm statistics equal).
        """
        rate = 1.0 - ramped_decay(self.decay, num_updates)
        for shadow, source in zip(self.shadows, self.sources):
            shadow.assign_sub(rate * (shadow.value - tf.cast(source.value, shadow.dtype)))

    def copy_to_variables(self, strategy: tf.distribute.Strategy) -> None:
        """Overwrites the averaged variables with their shadows, on every device."""
        with strategy.scope():
            for shadow, source in zip(self.shadows, self.sources):
                strategy.extended.update(
                    source.value, lambda var, avg: var.assign(avg), args=(shadow.value,)
                )


def _copy_of(variable):
    """An initializer returning `variable`'s current value.

    A callable, so that when Keras creates the shadow inside a symbolic build
    (deferred initialisation) it reads the source after that is initialised.
    """

    def initializer(shape, dtype=None):
        return tf.identity(keras.ops.convert_to_tensor(variable))

    return initializer
