r"""Throughput of the Noisy Student train step against a plain Keras step.

  python benchmarks/train_step.py                   # B0 w0.25 d0.25, 32 px, 32 + 96
  python benchmarks/train_step.py --quick           # a few steps, for a smoke check
  python benchmarks/train_step.py --precision=mixed_bfloat16 --jit_compile

Same EfficientNet, same images per step (`batch_size` labeled + `ratio` x
`batch_size` unlabeled), offline targets:

  plain           keras.Model.compile(loss=CategoricalCrossentropy) on the
                  concatenated batch: the cost floor of one optimisation step
  offline         NoisyStudent with stored targets: the two loss terms,
                  weight decay, the non-finite guard, the moving average
  online          NoisyStudent with a frozen teacher (same architecture)
                  labelling the unlabeled batch inside the step
  teacher         the teacher's inference forward pass on the unlabeled batch

The models are stepped in turn, one step each per round (`train_on_batch`,
which runs the compiled train function fit() runs), so the load of a shared
machine hits all alike; medians over the timed rounds, and the offline/plain
ratio per round as median and interquartile range with the load average
(benchmarks/rounds.py; issue 22's bar is its lower quartile >= 0.95). Paper-scale target:
offline at >= 0.95x the plain images/s, and online costing no more than
`teacher` over offline. Unless --nomirrored, a second process with
NOISY_STUDENT_LOGICAL_CPUS=2 times the offline step under a 2-replica
MirroredStrategy against one device on the same global batch: the cost of
the replica machinery (on logical CPUs that share the same cores, so
nothing runs faster).

Prints one JSON line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import rounds  # benchmarks/rounds.py: the script's folder is on sys.path
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Labeled images per step.")
flags.DEFINE_integer("ratio", 3, "Unlabeled batch = ratio x batch_size.")
flags.DEFINE_integer("image_size", 32, "Image side in pixels (small-image model at 32).")
flags.DEFINE_float("width", 0.25, "EfficientNet-B0 width coefficient.")
flags.DEFINE_float("depth", 0.25, "EfficientNet-B0 depth coefficient.")
flags.DEFINE_integer("steps", 20, "Timed rounds (one step of every model each).")
flags.DEFINE_integer("warmup", 3, "Untimed first rounds (tracing, compilation).")
flags.DEFINE_bool("quick", False, "4 timed rounds after 1 warm-up round.")
flags.DEFINE_enum(
    "precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "Keras policy."
)
flags.DEFINE_bool("jit_compile", False, "Compile the train steps with XLA.")
flags.DEFINE_bool("mirrored", True, "Also time the 2-replica MirroredStrategy overhead.")
flags.DEFINE_bool("mirrored_worker", False, "Internal: the 2-logical-CPU subprocess.")

C = 10


def _batch(rng):
    """One step's images and targets, as NoisyStudent and a plain fit take them."""
    b, u, s = FLAGS.batch_size, FLAGS.batch_size * FLAGS.ratio, FLAGS.image_size
    images = rng.integers(0, 256, (b + u, s, s, 3)).astype("float32")
    labels = rng.integers(0, C, b)
    targets = rng.dirichlet(np.ones(C), u).astype("float32")
    return {
        "images": images[:b],
        "labels": labels,
        "unlabeled_images": images[b:],
        "unlabeled_targets": targets,
        "unlabeled_teacher_images": images[b:],
        "plain_targets": np.concatenate([np.eye(C, dtype="float32")[labels], targets]),
        "plain_images": images,
    }


def _efficientnet():
    from noisy_student_tf.models import build_efficientnet

    return build_efficientnet(
        "efficientnet-b0",
        C,
        input_shape=(FLAGS.image_size, FLAGS.image_size, 3),
        width_coefficient=FLAGS.width,
        depth_coefficient=FLAGS.depth,
        small_image=FLAGS.image_size <= 32,
    )


def _optimizer(resolved):
    import keras

    from noisy_student_tf.training import precision

    return precision.wrap_optimizer(keras.optimizers.SGD(0.01, momentum=0.9), resolved)


def _noisy_student(resolved, online: bool):
    from noisy_student_tf.training import NoisyStudent

    teacher = _efficientnet() if online else None
    model = NoisyStudent(_efficientnet(), C, unlabeled_ratio=FLAGS.ratio, teacher=teacher)
    model.compile(optimizer=_optimizer(resolved), jit_compile=resolved.jit_compile)
    return model


def _steppers(data, resolved):
    """name -> a function running one step (or one teacher forward pass)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    plain = _efficientnet()
    plain.compile(
        optimizer=_optimizer(resolved),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=resolved.jit_compile,
    )
    offline = _noisy_student(resolved, online=False)
    online = _noisy_student(resolved, online=True)
    teacher_forward = tf.function(
        lambda x: online.teacher(x, training=False), jit_compile=resolved.jit_compile
    )
    keys = ("images", "labels", "unlabeled_images")
    offline_batch = {k: tf.constant(data[k]) for k in keys + ("unlabeled_targets",)}
    online_batch = {k: tf.constant(data[k]) for k in keys + ("unlabeled_teacher_images",)}
    x, y = tf.constant(data["plain_images"]), tf.constant(data["plain_targets"])
    teacher_x = online_batch["unlabeled_teacher_images"]
    return {
        "plain": lambda: plain.train_on_batch(x, y),
        "offline": lambda: offline.train_on_batch(offline_batch),
        "online": lambda: online.train_on_batch(online_batch),
        "teacher": lambda: teacher_forward(teacher_x).numpy(),
    }


def _median_ms(times):
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def _mirrored_worker(data, resolved, warmup, steps):
    """In the 2-logical-CPU process: offline step, 2 replicas against 1 device."""
    import tensorflow as tf

    from noisy_student_tf.training import get_strategy

    mirrored = get_strategy("mirrored")
    with mirrored.scope():
        two = _noisy_student(resolved, online=False)
    one = _noisy_student(resolved, online=False)
    keys = ("images", "labels", "unlabeled_images", "unlabeled_targets")
    batch = {k: data[k] for k in keys}

    data_set = tf.data.Dataset.from_tensors(batch).repeat()
    per_fit = 5  # steps per fit() call, so its per-call setup is a small share

    def fit(model):
        return lambda: model.fit(data_set, steps_per_epoch=per_fit, epochs=1, verbose=0)

    times = rounds.alternate({"two_replicas": fit(two), "one_device": fit(one)}, steps, warmup)
    ms = {name: value / per_fit for name, value in _median_ms(times).items()}
    return {
        "replicas": mirrored.num_replicas_in_sync,
        "two_replicas_vs_one_device": rounds.ratio(times["two_replicas"], times["one_device"]),
        "two_replicas_ms": round(ms["two_replicas"], 1),
        "one_device_ms": round(ms["one_device"], 1),
        "overhead_pct": round(100 * (ms["two_replicas"] / ms["one_device"] - 1), 1),
    }


def main(argv):
    del argv
    from noisy_student_tf.training import precision

    if FLAGS.quick:
        FLAGS.steps, FLAGS.warmup = 4, 1
    if FLAGS.mirrored_worker:
        from noisy_student_tf.training import get_strategy

        get_strategy("mirrored")  # splits the CPU before TF initialises
    resolved = precision.configure({"precision": FLAGS.precision, "jit_compile": FLAGS.jit_compile})
    data = _batch(np.random.default_rng(0))
    if FLAGS.mirrored_worker:
        print(json.dumps(_mirrored_worker(data, resolved, FLAGS.warmup, FLAGS.steps)))
        return

    load_before = rounds.load_average()
    times = rounds.alternate(_steppers(data, resolved), FLAGS.steps, FLAGS.warmup)
    ms = _median_ms(times)
    images = FLAGS.batch_size * (1 + FLAGS.ratio)
    rate = {name: images / (ms[name] / 1000) for name in ("plain", "offline", "online")}
    result = {
        "device": precision.device_kind(),
        "precision": resolved.policy,
        "jit_compile": resolved.jit_compile,
        "model": f"efficientnet-b0 w{FLAGS.width:g} d{FLAGS.depth:g} {FLAGS.image_size}px",
        "batch": f"{FLAGS.batch_size}+{FLAGS.batch_size * FLAGS.ratio}",
        "timed_rounds": FLAGS.steps,
        "plain_images_per_s": round(rate["plain"], 1),
        "offline_images_per_s": round(rate["offline"], 1),
        "offline_vs_plain": round(rate["offline"] / rate["plain"], 3),
        # per-round throughput ratio offline / plain (= plain time / offline time)
        "offline_vs_plain_rounds": rounds.ratio(times["plain"], times["offline"]),
        "load_average": [load_before, rounds.load_average()],
        "online_images_per_s": round(rate["online"], 1),
        "online_extra_ms": round(ms["online"] - ms["offline"], 1),
        "teacher_forward_ms": round(ms["teacher"], 1),
        **{f"{name}_ms": round(ms[name], 1) for name in ("plain", "offline", "online")},
    }
    if FLAGS.mirrored:
        from noisy_student_tf.training.strategy import LOGICAL_CPUS_ENV

        forwarded = [a for a in sys.argv[1:] if not a.startswith("--mirrored")]
        worker = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--mirrored_worker", *forwarded],
            env=dict(os.environ, **{LOGICAL_CPUS_ENV: "2"}),
            capture_output=True,
            text=True,
            check=False,
        )
        if worker.returncode:
            print(worker.stderr[-3000:], file=sys.stderr)
            result["mirrored_2_logical_cpus"] = f"failed with exit status {worker.returncode}"
        else:
            result["mirrored_2_logical_cpus"] = json.loads(worker.stdout.strip().splitlines()[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
