"""Resume a model's fit() after preemption: a checkpoint every N steps, restored on rerun.

`keras.callbacks.BackupAndRestore` restores whole epochs only (Keras 3.x
reads back the epoch, not the batch, and restarts that epoch), and the
paper's students train for hundreds of thousands of steps in few, long
epochs. So the state is saved with a `tf.train.CheckpointManager` every
`train.save_every_steps` optimizer steps, and a rerun restores it before
`fit()` and continues at that step:

  * saved: every variable of the `NoisyStudent` wrapper (the student's
    weights and batch-norm statistics, the moving-average shadows of
    training/ema.py, the dropout / stochastic-depth seed generators) and of
    its optimizer (slots and `iterations`, the step counter the learning-rate
    schedule and the average's decay ramp read);
  * the input stream continues at the restored step (`pipeline.training_dataset`
    `start_batch`), so augmentation keys, functions of (seed, stream, batch
    index), continue too;
  * fit() starts at the restored step's epoch and `StopAtStep` ends it at the
    schedule's last step, so a resumed fit runs exactly the missing steps.

Variables are matched by position in the wrapper's and optimizer's variable
lists; the loop's stage manifests (stages.py) guarantee that a checkpoint is
only restored into a model built from the same config.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from noisy_student_tf import kill_points

MAX_TO_KEEP = 2  # the last save and the one before, in case the last is damaged


class FitCheckpoint:
    """The periodic checkpoint of one model's fit, in `directory`.

    Args:
      directory: a folder of its own (e.g. WORKDIR/iteration_1_student.ckpt).
      model: the compiled `NoisyStudent` wrapper, built, with its optimizer built.
    """

    def __init__(self, directory: str, model: keras.Model):
        self.directory = directory
        self.model = model
        self.checkpoint = tf.train.Checkpoint(
            model=list(model.variables), optimizer=list(model.optimizer.variables)
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=MAX_TO_KEEP
        )

    @property
    def step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def restore(self) -> int:
        """Restores the latest save, if any; returns the step it holds (0 if none)."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return self.step

    def save(self) -> str:
        return self.manager.save(checkpoint_number=self.step)


class SaveEverySteps(keras.callbacks.Callback):
    """Saves `checkpoint` whenever the optimizer step reaches a multiple of `every`."""

    def __init__(self, checkpoint: FitCheckpoint, every: int):
        super().__init__()
        self.checkpoint = checkpoint
        self.every = int(every)

    def on_train_batch_end(self, batch, logs=None):
        if self.checkpoint.step % self.every == 0:
            self.checkpoint.save()


class StopAtStep(keras.callbacks.Callback):
    """Ends fit() when the optimizer has made `last_step` steps.

    A resumed fit starts at the epoch of its restored step but mid-epoch, so
    fit()'s own epoch count would overshoot by the steps done before the kill.
    """

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = int(last_step)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.last_step:
            self.model.stop_training = True


class KillPoint(keras.callbacks.Callback):
    """Test-only: reaches `kill_points.kill_point(name)` after every step.

    Added to fit() only when the point is armed, so a normal run pays nothing.
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def on_train_batch_end(self, batch, logs=None):
        kill_points.kill_point(self.name, step=int(self.model.optimizer.iterations.numpy()))
