"""Optimizers and learning-rate schedules named in the configs.

Official EfficientNet / Noisy Student recipe (official utils.py, main.py):
RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3), base LR 0.016 per 256
images scaled linearly with the global batch, 5 warm-up epochs, then x0.97
every 2.4 epochs, and an exponential moving average of the weights (0.9999).
Keras's RMSprop adds epsilon outside the square root where TF1 added it
inside, and TF1 started the second-moment estimate at 1 where Keras starts at
0, so Keras's first updates are larger; warm-up absorbs most of that.
Short CPU runs use a cosine schedule instead: 0.97 per 2.4 epochs barely
decays in the few epochs they train.
"""

from __future__ import annotations

import math

import keras

OPTIMIZERS = ("rmsprop", "sgd", "adam")
SCHEDULES = ("exponential", "cosine", "constant")


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then `schedule`: exponential (official) or cosine."""

    def __init__(self, peak: float, steps_per_epoch: int, total_steps: int,
                 warmup_epochs: float = 5.0, schedule: str = "exponential",
                 decay_rate: float = 0.97, decay_epochs: float = 2.4):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
        self.peak = float(peak)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_epochs * steps_per_epoch)
        self.schedule = schedule
        self.decay_rate = float(decay_rate)
        self.decay_steps = max(int(decay_epochs * steps_per_epoch), 1)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * step / max(self.warmup_steps, 1)
        after = keras.ops.maximum(step - self.warmup_steps, 0.0)
        if self.schedule == "exponential":
            # Official utils.build_learning_rate: staircase decay counted from
            # step 0 (warm-up included), overridden by the ramp during warm-up.
            decayed = self.peak * self.decay_rate ** keras.ops.floor(step / self.decay_steps)
        elif self.schedule == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = keras.ops.minimum(after / span, 1.0)
            decayed = 0.5 * self.peak * (1.0 + keras.ops.cos(math.pi * progress))
        else:
            decayed = self.peak + 0.0 * step
        return keras.ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"peak": self.peak, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "warmup_epochs": self.warmup_steps / max(self.steps_per_epoch, 1),
                "schedule": self.schedule, "decay_rate": self.decay_rate,
                "decay_epochs": self.decay_steps / max(self.steps_per_epoch, 1)}


def build_optimizer(train_config, global_batch_size: int, steps_per_epoch: int,
                    epochs: int) -> keras.optimizers.Optimizer:
    """The optimizer a config's `train` block describes, with EMA of the weights.

    The peak LR is `train.learning_rate * global_batch_size / 256` (linear
    scaling rule of the official code), where global_batch_size counts the
    labeled images of a step, as the official code does.
    """
    name = train_config.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer={name!r} is not one of {OPTIMIZERS}")
    lr = WarmupSchedule(
        peak=train_config.learning_rate * global_batch_size / 256.0,
        steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs,
        warmup_epochs=train_config.warmup_epochs, schedule=train_config.schedule)
    ema = dict(use_ema=train_config.ema_decay > 0,
               ema_momentum=train_config.ema_decay or 0.99)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.9, epsilon=1e-3, **ema)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **ema)
    return keras.optimizers.Adam(lr, **ema)
