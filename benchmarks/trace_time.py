r"""Seconds of graph building a run pays per model: three before/after pairs.

  python benchmarks/trace_time.py            # 10 alternating rounds
  python benchmarks/trace_time.py --quick    # 1 round, no warm-up (tests)

On two CPU cores a small model's run is mostly graph building, not
arithmetic; each pair below times one such cost with the code before and
after a change, alternating in one process.

First step, Keras's Adam against FusedAdam: every model the loop trains
starts with one traced train step; on CPU the
small digits EfficientNet (B0 w0.25 d0.25, small-image, 32 px, 192
variables) spent about as long tracing Keras's per-variable Adam update as
its forward and backward passes together. Each round builds that model
twice, wrapped in `NoisyStudent` (moving average on), once compiled with
`keras.optimizers.Adam` and once with `training.optimization.FusedAdam`
(what `train.optimizer="adam"` builds), and times its first
`train_on_batch`: tracing, graph optimization and the step itself.

Training pipeline: the digits student's 32 px training dataset (RandAugment
N=2, M=9, extra Cutout, crop; batches of 8) built and its first batch read,
with each RandAugment layer's graph built per layer (before) and once per
call (`RandAugment._traced_layer`); the traced-preprocessing cache is
cleared each round.

Export: that student written as a SavedModel with its four signatures
through Keras's `ExportArchive` (before) and by `export_saved_model`'s
plain trackable (`evaluation.export._write`).

Prints one JSON line: each candidate's median seconds with quartiles, and
each pair's per-round ratio after / before (benchmarks/rounds.py), with the
load average.
"""

import json
import os
import tempfile
import time

import keras
import numpy as np
import rounds  # benchmarks/rounds.py: the script's folder is on sys.path
import tensorflow as tf
from absl import app, flags

from noisy_student_tf.augment import RandAugment
from noisy_student_tf.data import pipeline, preprocess
from noisy_student_tf.evaluation import export
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


def _student() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_efficientnet(
        "efficientnet-b0",
        CLASSES,
        input_shape=(32, 32, 3),
        width_coefficient=0.25,
        depth_coefficient=0.25,
        small_image=True,
    )


def _first_step(optimizer_class, batch: dict):
    """A fresh digits student and its first step (the timed unit of one round)."""

    def run():
        student = _student()
        model = NoisyStudent(student, CLASSES, unlabeled_ratio=4, ema_decay=0.99)
        model.compile(optimizer=optimizer_class(1e-3))
        model.train_on_batch(batch)

    return run


def _pipeline(layer_graph_once: bool):
    """The digits student's training pipeline, built and read once."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(32) % CLASSES

    def run():
        preprocess._TRACED.clear()  # a fresh process's first pipeline
        augment = RandAugment(2, 9, seed=0)
        if not layer_graph_once:  # before: each layer built its own graph
            augment._traced_layer = lambda apply_layer: apply_layer
        prep = preprocess.TrainPreprocess(32, augment, small_image=True)
        ds = pipeline.training_dataset((images, labels), 8, preprocess=prep, seed=0)
        next(iter(ds))["images"].numpy()

    return run


def _keras_archive(model, endpoints, path, options):
    """The export as it was: Keras's ExportArchive with the same signatures."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn, input_signature in endpoints:
        archive.add_endpoint(name=name, fn=fn, input_signature=input_signature)
    archive.write_out(path, options=options, verbose=False)


def _export(write, model):
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)

    def run():
        endpoints = export._endpoints(model, 32, 5, None, True, "tf2")
        write(model, endpoints, os.path.join(tempfile.mkdtemp(), "saved_model"), options)

    return run


def main(argv):
    del argv
    count, warmup = (1, 0) if FLAGS.quick else (FLAGS.rounds, 1)
    batch = _batch(FLAGS.batch_size)
    start = time.perf_counter()
    pairs = {  # (before, after)
        "first_step": {name: _first_step(cls, batch) for name, cls in OPTIMIZERS.items()},
        "pipeline": {"per_layer": _pipeline(False), "layer_graph_once": _pipeline(True)},
        "export": {
            "keras_archive": _export(_keras_archive, _student()),
            "plain_trackable": _export(export._write, _student()),
        },
    }
    result = {}
    for pair, candidates in pairs.items():
        times = rounds.alternate(candidates, count, warmup)
        before, after = candidates
        result[pair] = {name: rounds.spread(times[name], 2) for name in candidates}
        result[pair]["after_over_before"] = rounds.ratio(times[after], times[before])
    result["load_average"] = rounds.load_average()
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
