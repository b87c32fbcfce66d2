r"""Seconds to a model's first Noisy Student step: Keras's Adam against FusedAdam.

  python benchmarks/trace_time.py            # 10 alternating rounds
  python benchmarks/trace_time.py --quick    # 1 round, no warm-up (tests)

Every model the loop trains starts with one traced train step; on CPU the
small digits EfficientNet (B0 w0.25 d0.25, small-image, 32 px, 192
variables) spent about as long tracing Keras's per-variable Adam update as
its forward and backward passes together. Each round builds that model
twice, wrapped in `NoisyStudent` (moving average on), once compiled with
`keras.optimizers.Adam` and once with `training.optimization.FusedAdam`
(what `train.optimizer="adam"` builds), and times its first
`train_on_batch`: tracing, graph optimization and the step itself.

Prints one JSON line: each optimizer's median seconds with quartiles, and
the per-round ratio fused / keras (benchmarks/rounds.py), with the load
average.
"""

import json
import time

import keras
import numpy as np
import rounds  # benchmarks/rounds.py: the script's folder is on sys.path
import tensorflow as tf
from absl import app, flags

from noisy_student_tf.models import build_efficientnet
from noisy_student_tf.training import NoisyStudent
from noisy_student_tf.training.optimization import FusedAdam

FLAGS = flags.FLAGS
flags.DEFINE_integer(
    "rounds", rounds.MIN_ROUNDS, "Timed rounds (each builds and steps both models)."
)
flags.DEFINE_integer("batch_size", 8, "Labeled images per step (unlabeled: 4x).")
flags.DEFINE_bool("quick", False, "One round, no warm-up round: the plumbing only.")

CLASSES = 10
OPTIMIZERS = {"keras_adam": keras.optimizers.Adam, "fused_adam": FusedAdam}


def _batch(batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    unlabeled = 4 * batch_size
    return {
        "images": tf.constant(rng.integers(0, 256, (batch_size, 32, 32, 3)), tf.float32),
        "labels": tf.constant(rng.integers(0, CLASSES, batch_size)),
        "unlabeled_images": tf.constant(rng.integers(0, 256, (unlabeled, 32, 32, 3)), tf.float32),
        "unlabeled_targets": tf.constant(rng.dirichlet(np.ones(CLASSES), unlabeled), tf.float32),
    }


def _first_step(optimizer_class, batch: dict):
    """A fresh digits student and its first step (the timed unit of one round)."""

    def run():
        keras.utils.set_random_seed(0)
        student = build_efficientnet(
            "efficientnet-b0",
            CLASSES,
            input_shape=(32, 32, 3),
            width_coefficient=0.25,
            depth_coefficient=0.25,
            small_image=True,
        )
        model = NoisyStudent(student, CLASSES, unlabeled_ratio=4, ema_decay=0.99)
        model.compile(optimizer=optimizer_class(1e-3))
        model.train_on_batch(batch)

    return run


def main(argv):
    del argv
    count, warmup = (1, 0) if FLAGS.quick else (FLAGS.rounds, 1)
    batch = _batch(FLAGS.batch_size)
    start = time.perf_counter()
    times = rounds.alternate(
        {name: _first_step(cls, batch) for name, cls in OPTIMIZERS.items()}, count, warmup
    )
    result = {name: rounds.spread(times[name], 2) for name in OPTIMIZERS}
    result["fused_over_keras"] = rounds.ratio(times["fused_adam"], times["keras_adam"])
    result["load_average"] = rounds.load_average()
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
