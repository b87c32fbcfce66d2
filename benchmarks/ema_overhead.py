r"""Per-step cost of NoisyStudent's moving average against Keras's `use_ema`.

  python benchmarks/ema_overhead.py                  # CPU defaults below
  python benchmarks/ema_overhead.py --jit_compile    # the XLA path (TPU-like)

Builds the small-image EfficientNet-B0 of the digits config (width and
depth 0.25, 32 px) three times and trains all three on one labeled +
`ratio` x unlabeled batch per step, alternating step by step
(`train_on_batch`) so that the load of a shared machine hits all alike:

  none        NoisyStudent(ema_decay=0), Adam: no average (baseline)
  ours        NoisyStudent(ema_decay=0.9999): ramped average of the weights
              and batch-norm statistics (ema.py)
  keras_ema   NoisyStudent(ema_decay=0), Adam(use_ema=True): Keras's average
              of the trainable weights

All three include the non-finite guard. Prints one JSON line: the median
step time of each in ms over `steps` steps (after `warmup` untimed ones)
and the overheads over `none` in ms and %.
"""

import json
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from noisy_student_tf.models import build_efficientnet
from noisy_student_tf.training import NoisyStudent

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Labeled images per step.")
flags.DEFINE_integer("ratio", 3, "Unlabeled batch = ratio x batch_size.")
flags.DEFINE_integer("steps", 30, "Timed steps of each model.")
flags.DEFINE_integer("warmup", 3, "Untimed first steps of each model (tracing).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")

C = 10


def batch_dict(batch: int, ratio: int) -> dict:
    rng = np.random.default_rng(0)
    element = {
        "images": rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32"),
        "labels": rng.integers(0, C, batch),
        "unlabeled_images": rng.integers(0, 256, (batch * ratio, 32, 32, 3)).astype("float32"),
        "unlabeled_targets": rng.dirichlet(np.ones(C), batch * ratio).astype("float32"),
    }
    return {k: tf.constant(v) for k, v in element.items()}


def build(variant: str) -> NoisyStudent:
    keras.utils.set_random_seed(0)
    student = build_efficientnet(
        "efficientnet-b0",
        C,
        input_shape=(32, 32, 3),
        width_coefficient=0.25,
        depth_coefficient=0.25,
        small_image=True,
    )
    model = NoisyStudent(
        student, C, unlabeled_ratio=FLAGS.ratio, ema_decay=0.9999 if variant == "ours" else 0.0
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, use_ema=variant == "keras_ema", ema_momentum=0.9999),
        jit_compile=FLAGS.jit_compile,
    )
    return model


def main(argv):
    del argv
    batch = batch_dict(FLAGS.batch_size, FLAGS.ratio)
    variants = ("none", "ours", "keras_ema")
    models = {v: build(v) for v in variants}
    times = {v: [] for v in variants}
    for step in range(FLAGS.warmup + FLAGS.steps):
        for v in variants:
            start = time.perf_counter()
            models[v].train_on_batch(batch)
            if step >= FLAGS.warmup:
                times[v].append(1000 * (time.perf_counter() - start))
    median = {v: float(np.median(times[v])) for v in variants}
    result = {
        "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
        "jit_compile": FLAGS.jit_compile,
        "batch": f"{FLAGS.batch_size}+{FLAGS.batch_size * FLAGS.ratio}",
        "timed_steps_per_variant": FLAGS.steps,
        **{f"{v}_ms": round(median[v], 2) for v in variants},
    }
    for v in ("ours", "keras_ema"):
        result[f"{v}_overhead_ms"] = round(median[v] - median["none"], 2)
        result[f"{v}_overhead_pct"] = round(100 * (median[v] / median["none"] - 1), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
