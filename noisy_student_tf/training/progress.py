"""Progress output for long fits: a few lines per model, not one per epoch.

Keras prints one progress bar per epoch, and the CPU configs train hundreds
of short epochs (the digits default: 400 epochs of 2 steps per model), which
buries the run in 1,200 lines. `ProgressLines` prints about `num_lines`
lines over a model's whole schedule instead, each with the step, the loss
terms, the labeled-batch accuracy, the learning rate and the time left.
"""

from __future__ import annotations

import math
import sys
import time

import keras

# The train step's own metrics, in print order (training/noisy_student.py).
_SHOWN = ("loss", "labeled_loss", "unlabeled_loss", "accuracy")


class ProgressLines(keras.callbacks.Callback):
    """Prints `num_lines` evenly spaced progress lines over `total_steps`.

    Args:
      name: what is training, e.g. "teacher" or "student 1"; starts each line.
      total_steps: steps over the whole fit (epochs x steps per epoch).
      num_lines: about how many lines to print (the last step always prints).
      stream: where to write (stdout by default).
    """

    def __init__(self, name: str, total_steps: int, num_lines: int = 15, stream=None):
        super().__init__()
        self.name = name
        self.total_steps = max(int(total_steps), 1)
        self.every = max(math.ceil(self.total_steps / max(num_lines, 1)), 1)
        self.stream = stream or sys.stdout
        self._step = 0
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._step = 0
        self._start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every and self._step != self.total_steps:
            return
        elapsed = time.time() - self._start
        remaining = elapsed / self._step * (self.total_steps - self._step)
        logs = logs or {}
        values = " ".join(f"{k} {float(logs[k]):.4f}" for k in _SHOWN if k in logs)
        lr = self._learning_rate()
        print(
            f"   {self.name} step {self._step}/{self.total_steps} "
            f"({100 * self._step / self.total_steps:.0f}%) {values}"
            + (f" lr {lr:.3g}" if lr is not None else "")
            + f" | {elapsed:.0f} s, {remaining:.0f} s left",
            file=self.stream,
            flush=True,
        )

    def _learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
