r"""Wall time and peak host memory of the at-scale path on a synthetic JFT-like pool.

  python benchmarks/scale.py --num_records=100000
  python benchmarks/scale.py --num_records=1000000

Four stages, each in its own process (so each peak is that stage's own):

  make     N unlabeled 32 px source records (PNG and JPEG, a bank of
           `--distinct_images` random-ish images cycled, each record its own
           key), `--records_per_shard` per shard; also the tiny teacher
           (EfficientNet w0.25 d0.25, small-image, 10 classes, random
           weights with a sharpened classifier so confidences spread over
           [0, 1]), saved as `.keras`
  label    labeling.shards.label_shards (tools/label.py's job array, 1 job)
  filter   labeling.beam_filter.run_filter_balance, DirectRunner, threshold
           0.3 (paper), K = N * `--kept_fraction` / classes per class, one
           output shard per `--records_per_shard` output records
  student  one pass over the balanced shards: data.pipeline.pseudo_labeled_records
           + a NoisyStudent fit (same tiny EfficientNet, a small in-memory
           labeled set), steps = ceil(balanced records / unlabeled batch)

Prints one JSON line: per stage wall_s and peak_rss_mb (ru_maxrss of the
stage's process), records in/out, and the figures per second. Memory must
not grow with N (issue 9: peak at 1M <= 1.5x peak at 100k).

A long run can be split: with `--workdir=DIR` (kept, not removed),
`--stages=make,label` and later `--stages=filter,student` on the same DIR.
"""

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_records", 100_000, "Unlabeled pool size N.")
flags.DEFINE_integer("records_per_shard", 10_000, "Records per source / balanced shard.")
flags.DEFINE_integer("distinct_images", 1024, "Distinct encoded images cycled in the pool.")
flags.DEFINE_integer("num_classes", 10, "Teacher classes.")
flags.DEFINE_float("threshold", 0.3, "Filter confidence threshold (paper: 0.3).")
flags.DEFINE_float("kept_fraction", 0.25, "K * classes / N: the balanced set's size.")
flags.DEFINE_integer("batch_size", 32, "Labeled images per student step.")
flags.DEFINE_integer("unlabeled_ratio", 4, "Unlabeled batch = ratio x batch_size.")
flags.DEFINE_integer("label_batch_size", 512, "Teacher batch when labeling.")
flags.DEFINE_string("workdir", None, "Scratch folder (default: a temporary one, removed).")
flags.DEFINE_string("stages", "make,label,filter,student", "Stages to run, in order.")
flags.DEFINE_string("stage", None, "Internal: run one stage in this process.")

SIZE = 32
TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, small_image=True)
# The random teacher's classifier is refit on its own pooled features of the
# image bank, standardized, times this: its softmax was near uniform
# (confidence ~1/C, all below the paper's 0.3); standardized it spreads.
TEACHER_LOGIT_SCALE = 0.5


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tiny_model():
    from noisy_student_tf.models import build_efficientnet

    return build_efficientnet(
        "efficientnet-b0", FLAGS.num_classes, input_shape=(SIZE, SIZE, 3), **TINY
    )


def stage_make(workdir: str) -> dict:
    import keras
    import tensorflow as tf

    from noisy_student_tf.data import records, schema

    rng = np.random.default_rng(0)
    bank, pixels = [], []
    for i in range(FLAGS.distinct_images):
        # Smooth colour fields plus noise: compresses like a photo, not like noise.
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        image = tf.image.resize(base[None], [SIZE, SIZE]).numpy()[0]
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        pixels.append(image)
        if i % 2:
            bank.append((tf.io.encode_jpeg(image, quality=90).numpy(), b"jpeg"))
        else:
            bank.append((schema.encode_png(image), b"png"))
    n, per = FLAGS.num_records, FLAGS.records_per_shard
    num_shards = math.ceil(n / per)
    src = os.path.join(workdir, "pool")
    tf.io.gfile.makedirs(src)
    written = 0
    for s in range(num_shards):
        path = os.path.join(src, records.shard_name("pool", s, num_shards))
        with records.AtomicWriter(path) as writer:
            for i in range(s * per, min(n, (s + 1) * per)):
                encoded, fmt = bank[i % len(bank)]
                example = schema.source_example(encoded, key=b"%d" % i, image_format=fmt)
                writer.write(example.SerializeToString())
                written += 1
    keras.utils.set_random_seed(0)
    teacher = _tiny_model()
    pooled = keras.Model(teacher.input, teacher.get_layer("avg_pool").output)
    features = pooled.predict(np.stack(pixels), verbose=0)
    mean, std = features.mean(0), features.std(0) + 1e-6
    kernel = rng.normal(0, 1, (features.shape[1], FLAGS.num_classes)) / std[:, None]
    kernel *= TEACHER_LOGIT_SCALE
    teacher.get_layer("predictions").set_weights([kernel, -mean @ kernel])
    teacher.save(os.path.join(workdir, "teacher.keras"))
    return {"records": written, "shards": num_shards}


def stage_label(workdir: str) -> dict:
    from noisy_student_tf.data import records
    from noisy_student_tf.labeling import shards

    summary = shards.label_shards(
        os.path.join(workdir, "teacher.keras"),
        records.list_files(os.path.join(workdir, "pool")),
        os.path.join(workdir, "labeled"),
        batch_size=FLAGS.label_batch_size,
        verbose=0,
    )
    return {"records_in": summary["records_in"], "labeled": summary["labeled"]}


def _images_per_class() -> int:
    return max(1, int(FLAGS.num_records * FLAGS.kept_fraction / FLAGS.num_classes))


def stage_filter(workdir: str) -> dict:
    from noisy_student_tf.data import records
    from noisy_student_tf.labeling import beam_filter

    k = _images_per_class()
    out_shards = max(1, math.ceil(k * FLAGS.num_classes / FLAGS.records_per_shard))
    manifest = beam_filter.run_filter_balance(
        records.list_files(os.path.join(workdir, "labeled")),
        os.path.join(workdir, "balanced"),
        FLAGS.num_classes,
        threshold=FLAGS.threshold,
        images_per_class=k,
        num_output_shards=out_shards,
        plots=False,
    )
    return {
        "records_in": manifest["in"],
        "kept_unique": manifest["kept_unique"],
        "below_threshold": manifest["dropped"]["below_threshold"],
        "records_out": manifest["out_records"],
        "images_per_class": k,
        "output_shards": out_shards,
    }


def stage_student(workdir: str) -> dict:
    import keras
    import tensorflow as tf

    from noisy_student_tf.data import pipeline, records
    from noisy_student_tf.training import NoisyStudent

    balanced = os.path.join(workdir, "balanced")
    out_records = records.read_json(os.path.join(balanced, "manifest.json"))["out_records"]
    unlabeled = pipeline.pseudo_labeled_records(
        records.list_files(os.path.join(balanced, "pseudo-*")),
        FLAGS.num_classes,
        SIZE,
        seed=0,
        small_image=True,
    )
    rng = np.random.default_rng(1)
    labeled = (
        rng.integers(0, 256, (1024, SIZE, SIZE, 3), dtype=np.uint8),
        rng.integers(0, FLAGS.num_classes, 1024),
    )
    data = pipeline.training_dataset(
        labeled, FLAGS.batch_size, unlabeled=unlabeled, unlabeled_ratio=FLAGS.unlabeled_ratio
    )
    steps = math.ceil(out_records / (FLAGS.batch_size * FLAGS.unlabeled_ratio))
    keras.utils.set_random_seed(0)
    model = NoisyStudent(_tiny_model(), FLAGS.num_classes, unlabeled_ratio=FLAGS.unlabeled_ratio)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    history = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    elapsed = time.perf_counter() - start
    unl = steps * FLAGS.batch_size * FLAGS.unlabeled_ratio
    return {
        "steps": steps,
        "unlabeled_images": unl,
        "fit_s": round(elapsed, 1),
        "unlabeled_images_per_s": round(unl / elapsed, 1),
        "final_metrics": {k: round(float(v[-1]), 4) for k, v in history.history.items()},
        "gpu": bool(tf.config.list_physical_devices("GPU")),
    }


STAGES = {
    "make": stage_make,
    "label": stage_label,
    "filter": stage_filter,
    "student": stage_student,
}


def _run_stage(name: str, workdir: str) -> dict:
    """Runs one stage in a fresh process; its last stdout line is its JSON result."""
    args = [a for a in sys.argv[1:] if not a.startswith(("--stage=", "--stages=", "--workdir="))]
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            *args,
            f"--stage={name}",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main(argv):
    del argv
    if FLAGS.stage:
        result = STAGES[FLAGS.stage](FLAGS.workdir)
        print(json.dumps({**result, "peak_rss_mb": round(_peak_mb(), 1)}))
        return
    stages = [s for s in FLAGS.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
    own = FLAGS.workdir is None
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="scale_")
    result = {"num_records": FLAGS.num_records, "cpus": os.cpu_count(), "stages": {}}
    try:
        for name in stages:
            out = _run_stage(name, workdir)
            result["stages"][name] = out
            print(f"{name}: {json.dumps(out)}", file=sys.stderr, flush=True)
        done = result["stages"]
        for name, count in (("label", "records_in"), ("filter", "records_in")):
            if name in done:
                done[name]["records_per_s"] = round(done[name][count] / done[name]["wall_s"], 1)
        result["peak_rss_mb"] = max(s["peak_rss_mb"] for s in done.values())
    finally:
        if own:
            subprocess.run(["rm", "-rf", workdir], check=False)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
