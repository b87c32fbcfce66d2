"""Optimizers and learning-rate schedules named in the configs.

Official EfficientNet / Noisy Student recipe (google-research/noisystudent
main.py and utils.py): RMSProp (decay 0.9, momentum 0.9, epsilon 1e-3), base
LR 0.016 per 256 labeled images scaled linearly with the global batch, 5
warm-up epochs, then x0.97 every 2.4 epochs (2.4 x `train_ratio`, i.e. 4.8
for the 700-epoch runs), counted in epochs of N / B steps as a float.
Alternatively the official `final_base_lr` fixes where the decay ends and
derives the decay period from it (`decay_epochs_for_final_lr`).

Keras's RMSprop and TF1's `tf.train.RMSPropOptimizer` (the official one)
share the update: ms <- decay * ms + (1 - decay) * g^2, mom <- momentum * mom
+ lr * g / sqrt(ms + epsilon), w <- w - mom; epsilon is inside the square root
in both (keras/src/optimizers/rmsprop.py; TF1 ApplyRMSProp). They differ in
where ms starts: TF1 initialises it to ones, Keras to zeros. With gradients
small against sqrt(epsilon), Keras's first update is about sqrt(1 / 1e-3),
~30x, larger, and the gap closes only as 0.9^t falls below epsilon (~100
steps). `TF1RMSprop` starts ms at `train.rmsprop_second_moment_init` (1.0 in
the paper configs).
Short CPU runs use a cosine schedule instead: 0.97 per 2.4 epochs barely
decays in the few epochs they train.

The moving average of the weights is not the optimizer's (`use_ema` stays
off): `NoisyStudent(ema_decay=...)` keeps it as the official code did,
ramped and including the batch-norm statistics (ema.py).
"""

from __future__ import annotations

import math
import weakref

import keras
import tensorflow as tf

from noisy_student_tf.errors import ConfigError

OPTIMIZERS = ("rmsprop", "sgd", "adam")
SCHEDULES = ("exponential", "cosine", "constant")

# official utils.build_learning_rate defaults, main.py: decay_epochs = 2.4 * train_ratio
DECAY_RATE = 0.97
DECAY_EPOCHS = 2.4
# official main.py: warmup_epochs=5 in the build_learning_rate call
WARMUP_EPOCHS = 5.0


# TF1 tf.train.RMSPropOptimizer: the `rms` slot is created with ones_initializer.
TF1_RMSPROP_SECOND_MOMENT_INIT = 1.0


@keras.saving.register_keras_serializable(package="noisy_student_tf")
class TF1RMSprop(keras.optimizers.RMSprop):
    """Keras RMSprop whose second-moment estimate starts at `second_moment_init`.

    With 1.0 this is TF1's `tf.train.RMSPropOptimizer` (not centered), the
    official optimizer: the same update as Keras's, but the mean square of
    the gradients starts at ones instead of zeros, so early steps are not
    inflated while the estimate warms up.

    Args:
      second_moment_init: the initial value of every second-moment slot.
      **kwargs: `keras.optimizers.RMSprop` arguments.
    """

    def __init__(self, second_moment_init=TF1_RMSPROP_SECOND_MOMENT_INIT, **kwargs):
        super().__init__(**kwargs)
        self.second_moment_init = float(second_moment_init)

    def build(self, var_list):
        if self.built:
            return
        # RMSprop.build would create the slots with zeros; create them here
        # with the initial value instead (the base class builds the step
        # counter and learning-rate state).
        super(keras.optimizers.RMSprop, self).build(var_list)
        initial = keras.initializers.Constant(self.second_moment_init)
        self._velocities = self.add_optimizer_variables(var_list, "velocity", initializer=initial)
        self._momentums = []
        if self.momentum > 0:
            self._momentums = self.add_optimizer_variables(var_list, "momentum")
        self._average_gradients = []
        if self.centered:
            self._average_gradients = self.add_optimizer_variables(var_list, "average_gradient")

    def get_config(self):
        config = super().get_config()
        config["second_moment_init"] = self.second_moment_init
        return config


@keras.saving.register_keras_serializable(package="noisy_student_tf")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam, each float32 variable updated by TF's fused `ResourceApplyAdam`.

    Why: Keras's `Adam.update_step` builds about 20 graph ops per variable
    (its step powers and bias correction again for every variable): 3,746
    ops for the digits EfficientNet's 192 variables, traced again for every
    model a run or a test trains. With this class the model's first step
    takes 0.68x the time (benchmarks/trace_time.py, docs/results.md).
    The fused kernel is one op per variable; it is the update TF1's
    `tf.train.AdamOptimizer` ran: m <- m + (g - m)(1 - beta_1), v <- v +
    (g^2 - v)(1 - beta_2), w <- w - alpha m / (sqrt(v) + epsilon) with alpha
    = lr sqrt(1 - beta_2^t) / (1 - beta_1^t), the formula of Keras's Adam,
    evaluated in another order: weights agree with Keras's to float32
    rounding, not bit for bit. Sparse gradients, `amsgrad` and other dtypes
    take Keras's step; the slots, their names and checkpoints are Keras's.
    """

    def update_step(self, gradient, variable, learning_rate):
        fused = (
            not self.amsgrad
            and variable.dtype == tf.float32
            and not isinstance(gradient, tf.IndexedSlices)
            and hasattr(variable, "handle")
        )
        if not fused:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            grad=tf.cast(gradient, tf.float32),
            **self._step_scalars(learning_rate, variable.device),
        )

    def _step_scalars(self, learning_rate, device: str) -> dict:
        """The step's shared inputs, built once per traced graph and device (the
        update runs once per variable, and per replica under MirroredStrategy)."""
        if tf.executing_eagerly():  # each eager step reads the step counter anew
            cache = (None, {})
        else:
            graph = tf.compat.v1.get_default_graph()
            cache = self.__dict__.get("_fused_cache")  # untracked: no checkpoint sees it
            if cache is None or cache[0]() is not graph:
                cache = self.__dict__["_fused_cache"] = (weakref.ref(graph), {})
        if device not in cache[1]:
            step = tf.cast(self.iterations + 1, tf.float32)
            beta1, beta2 = (tf.constant(b, tf.float32) for b in (self.beta_1, self.beta_2))
            cache[1][device] = dict(
                beta1_power=tf.pow(beta1, step),
                beta2_power=tf.pow(beta2, step),
                lr=tf.cast(learning_rate, tf.float32),
                beta1=beta1,
                beta2=beta2,
                epsilon=tf.constant(self.epsilon, tf.float32),
            )
        return cache[1][device]


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then `schedule`: exponential (official) or cosine.

    Args:
      peak: the learning rate after warm-up.
      steps_per_epoch: steps in one epoch; may be fractional (official: the
        float N / B), since it only places the epoch boundaries.
      total_steps: steps of the whole run; where cosine reaches 0.
      warmup_epochs: linear ramp from 0 over int(warmup_epochs *
        steps_per_epoch) steps (official rounding).
      schedule: "exponential", "cosine" or "constant".
      decay_rate: exponential only; factor per `decay_epochs`.
      decay_epochs: exponential only; staircase period in epochs.
      step_offset: the schedule is read at step + step_offset, so a stage
        can continue where another's schedule stands (the fine-tuning stage
        runs on the last steps of the student's schedule, as the official
        --train_last_step_num did).
    """

    def __init__(
        self,
        peak: float,
        steps_per_epoch: float,
        total_steps: int,
        warmup_epochs: float = WARMUP_EPOCHS,
        schedule: str = "exponential",
        decay_rate: float = DECAY_RATE,
        decay_epochs: float = DECAY_EPOCHS,
        step_offset: int = 0,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
        self.peak = float(peak)
        self.steps_per_epoch = float(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.warmup_epochs = float(warmup_epochs)
        self.schedule = schedule
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.step_offset = int(step_offset)
        self.warmup_steps = int(self.warmup_epochs * self.steps_per_epoch)
        # A float, as tf.train.exponential_decay received it (official utils.py).
        self.decay_steps = max(self.decay_epochs * self.steps_per_epoch, 1.0)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32") + self.step_offset
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
        return {
            "peak": self.peak,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_epochs": self.warmup_epochs,
            "schedule": self.schedule,
            "decay_rate": self.decay_rate,
            "decay_epochs": self.decay_epochs,
            "step_offset": self.step_offset,
        }


def decay_epochs_for_final_lr(
    learning_rate: float,
    final_learning_rate: float,
    epochs: float,
    decay_rate: float = DECAY_RATE,
    warmup_epochs: float = WARMUP_EPOCHS,
) -> float:
    """The decay period that takes `learning_rate` to `final_learning_rate`.

    Official main.py (`--final_base_lr`, used by the SVHN scripts with
    0.0002): the epochs after warm-up are divided into log(final / base) /
    log(decay_rate) equal periods. As there, the staircase still counts from
    step 0, warm-up included, so the run ends about warmup_epochs /
    decay_epochs periods below the final rate. Both rates are per 256
    images; only their ratio matters.
    """
    decays = math.log(final_learning_rate / learning_rate) / math.log(decay_rate)
    return (epochs - warmup_epochs) / decays


def build_optimizer(
    train_config,
    global_batch_size: int,
    steps_per_epoch: float,
    epochs: int,
    total_steps: int | None = None,
    step_offset: int = 0,
) -> keras.optimizers.Optimizer:
    """The optimizer a config's `train` block describes (no moving average).

    The peak LR is `train.learning_rate * global_batch_size / 256` (linear
    scaling rule of the official code), where global_batch_size counts the
    labeled images of a step, as the official code does.

    Keys read from `train_config` (defaults keep older configs working):
      optimizer, learning_rate, schedule, warmup_epochs;
      decay_rate (0.97), decay_epochs (2.4): exponential staircase;
      final_learning_rate (0 = off): per 256 images like learning_rate; when
        set, decay_epochs is derived from it (`decay_epochs_for_final_lr`);
      rmsprop_second_moment_init (0.0 = Keras; 1.0 = TF1, the official
        optimizer): where RMSProp's mean square of the gradients starts.
    `train.ema_decay` is NoisyStudent's, not read here.

    Args:
      train_config: the config's `train` block (ConfigDict or dict).
      global_batch_size: labeled images per step, all replicas together.
      steps_per_epoch: where the epoch boundaries of the schedule fall; the
        official value is the float N / B, not its ceiling.
      epochs: epochs of the run.
      total_steps: steps the run really takes (cosine reaches 0 there);
        defaults to round(steps_per_epoch * epochs).
      step_offset: read the schedule this many steps later (WarmupSchedule).

    Raises:
      ConfigError: an unknown optimizer or schedule, or a decay setting out
        of range; the message names the `train.` key.
    """
    name = train_config["optimizer"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={name!r} is not one of {OPTIMIZERS}")
    schedule = train_config["schedule"]
    if schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={schedule!r} is not one of {SCHEDULES}")
    learning_rate = train_config["learning_rate"]
    warmup_epochs = train_config.get("warmup_epochs", WARMUP_EPOCHS)
    decay_rate = train_config.get("decay_rate", DECAY_RATE)
    decay_epochs = train_config.get("decay_epochs", DECAY_EPOCHS)
    final = train_config.get("final_learning_rate", 0.0) or 0.0
    if not 0.0 < decay_rate <= 1.0:
        raise ConfigError(f"train.decay_rate must be in (0, 1], got {decay_rate}")
    if decay_epochs <= 0:
        raise ConfigError(f"train.decay_epochs must be > 0, got {decay_epochs}")
    if final:
        if not 0.0 < final < learning_rate:
            raise ConfigError(
                f"train.final_learning_rate must be in (0, train.learning_rate="
                f"{learning_rate}), got {final} (0 turns it off)"
            )
        if not decay_rate < 1.0 or epochs <= warmup_epochs:
            raise ConfigError(
                f"train.final_learning_rate={final} needs train.decay_rate < 1 and more "
                f"epochs ({epochs}) than train.warmup_epochs ({warmup_epochs})"
            )
        decay_epochs = decay_epochs_for_final_lr(
            learning_rate, final, epochs, decay_rate, warmup_epochs
        )
    lr = WarmupSchedule(
        peak=learning_rate * global_batch_size / 256.0,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps if total_steps is not None else round(steps_per_epoch * epochs),
        warmup_epochs=warmup_epochs,
        schedule=schedule,
        decay_rate=decay_rate,
        decay_epochs=decay_epochs,
        step_offset=step_offset,
    )
    if name == "rmsprop":
        # official utils.build_optimizer: decay 0.9, momentum 0.9, epsilon 1e-3
        ms_init = train_config.get("rmsprop_second_moment_init", 0.0)
        if ms_init < 0:
            raise ConfigError(f"train.rmsprop_second_moment_init must be >= 0, got {ms_init}")
        settings = dict(learning_rate=lr, rho=0.9, momentum=0.9, epsilon=1e-3)
        if ms_init == 0.0:  # Keras's own start
            return keras.optimizers.RMSprop(**settings)
        return TF1RMSprop(second_moment_init=ms_init, **settings)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return FusedAdam(lr)
