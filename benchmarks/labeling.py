r"""Throughput of the labeling stage and of the filter/balance pipeline.

  python benchmarks/labeling.py                        # the defaults below
  python benchmarks/labeling.py --num_records=100000   # a smaller filter run

Prints one JSON line:
  label_images_per_s     tools/label.py's work (TFRecord read, JPEG decode,
                         teacher, top-k, record write), model load excluded
  predict_images_per_s   plain model.predict on the same images, decoded
                         in memory beforehand
  label_vs_predict       the ratio (target >= 0.9)
  filter_records_per_s   beam_filter on --num_records synthetic prediction
                         records with --num_classes classes, DirectRunner
  peak_rss_mb            this process's peak resident memory after each stage
  beam_label_images_per_s, beam_filter_records_per_s
                         with --beam_workers=N (default 2; 0 skips): the Beam
                         labeling (--engine=beam) and filter/balance pipelines
                         under the DirectRunner in multi_processing mode, keyed
                         by worker count, "1" beside "N" (same mode, so the
                         ratio is the parallelism's); each includes starting
                         the worker processes and, for labeling, their
                         TensorFlow import and teacher load
"""

import json
import os
import resource
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from noisy_student_tf.data import records, schema
from noisy_student_tf.labeling import beam_filter, beam_label, shards
from noisy_student_tf.models import build_efficientnet

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "efficientnet-b0", "Teacher architecture.")
flags.DEFINE_integer("image_size", 224, "Teacher input side (B0: 224).")
flags.DEFINE_integer("num_images", 512, "Images labeled.")
flags.DEFINE_integer("label_classes", 1000, "Teacher classes.")
flags.DEFINE_integer("topk", 10, "Sparse top-k stored by the labeler.")
flags.DEFINE_integer("batch_size", 64, "Teacher batch size.")
flags.DEFINE_integer("rounds", 3, "Alternating timing rounds of predict and label.")
flags.DEFINE_integer("num_records", 1_000_000, "Records for the filter/balance run.")
flags.DEFINE_integer("num_classes", 1000, "Classes of the filter/balance records.")
flags.DEFINE_integer("num_files", 16, "Input shards for the filter/balance run.")
flags.DEFINE_string("workdir", None, "Scratch folder (default: a temporary one).")
flags.DEFINE_integer(
    "beam_workers",
    2,
    "Also run both Beam pipelines with 1 and with this many DirectRunner worker "
    "processes (multi_processing); 0 skips.",
)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_labeling(workdir: str) -> dict:
    rng = np.random.default_rng(0)
    size = FLAGS.image_size
    images = rng.integers(0, 256, (FLAGS.num_images, size, size, 3), dtype=np.uint8)
    src = os.path.join(workdir, "src")
    tf.io.gfile.makedirs(src)
    files = [os.path.join(src, records.shard_name("train", s, 4)) for s in range(4)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i, image in enumerate(images):
        jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
        writers[i % 4].write(
            schema.source_example(jpeg, key=b"%d" % i, image_format=b"jpeg").SerializeToString()
        )
    for w in writers:
        w.close()
    decoded = np.stack(
        [
            schema.decode_image(r[schema.IMAGE], size).numpy()
            for f in files
            for r in tf.data.TFRecordDataset(f).map(schema.parse_source)
        ]
    )

    model = build_efficientnet(
        FLAGS.model, num_classes=FLAGS.label_classes, input_shape=(size, size, 3)
    )
    path = os.path.join(workdir, "teacher.keras")
    model.save(path)
    model.predict(decoded[: FLAGS.batch_size], batch_size=FLAGS.batch_size, verbose=0)
    strategy = tf.distribute.get_strategy()
    teacher = shards.load_teacher(path)
    predict = shards.make_predict(teacher, strategy)
    predict(decoded[: FLAGS.batch_size])  # trace once, as model.predict was warmed up

    # The two are timed alternately, best of --rounds each, so that load
    # from other processes on a shared machine hits both alike.
    predict_s, label_s = [], []
    for r in range(FLAGS.rounds):
        start = time.perf_counter()
        model.predict(decoded, batch_size=FLAGS.batch_size, verbose=0)
        predict_s.append(time.perf_counter() - start)
        out = os.path.join(workdir, f"labeled-{r}")
        tf.io.gfile.makedirs(out)
        start = time.perf_counter()
        labeled = 0
        for i, f in enumerate(files):
            m = shards.label_file(
                predict,
                f,
                os.path.join(out, f"labeled-{i}.tfrecord"),
                shards.TeacherView(size),
                FLAGS.batch_size,
                topk=FLAGS.topk,
            )
            labeled += m["labeled"]
        label_s.append(time.perf_counter() - start)
    predict_s, label_s = min(predict_s), min(label_s)
    assert labeled == FLAGS.num_images
    beam = {}
    for n in _worker_counts():
        start = time.perf_counter()
        m = beam_label.label_with_beam(
            path,
            files,
            os.path.join(workdir, f"beam-labeled-{n}"),
            topk=FLAGS.topk,
            batch_size=FLAGS.batch_size,
            pipeline_args=_workers(n),
        )
        assert m["labeled"] == FLAGS.num_images
        beam[str(n)] = round(FLAGS.num_images / (time.perf_counter() - start), 1)
    return {
        "model": FLAGS.model,
        "image_size": size,
        "num_images": FLAGS.num_images,
        "batch_size": FLAGS.batch_size,
        "rounds": FLAGS.rounds,
        "predict_images_per_s": round(FLAGS.num_images / predict_s, 1),
        "label_images_per_s": round(FLAGS.num_images / label_s, 1),
        "label_vs_predict": round(predict_s / label_s, 3),
        "peak_rss_mb_after_labeling": round(_peak_mb()),
        **({"beam_label_images_per_s": beam} if beam else {}),
    }


def _worker_counts() -> list[int]:
    """1 and --beam_workers, or none when it is 0."""
    return sorted({1, FLAGS.beam_workers}) if FLAGS.beam_workers else []


def _workers(n: int) -> list[str]:
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={n}"]


def synthetic_predictions(
    folder: str, num_records: int, num_classes: int, num_files: int
) -> list[str]:
    """Pseudo records with a 5-sparse teacher view and a tiny shared image.

    Confidences are uniform in [0, 1]; classes follow a Zipf-like law so some
    classes are over-full and some under-full for K = mean class size.
    """
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, num_classes + 1) ** 0.7
    labels = rng.choice(num_classes, size=num_records, p=weights / weights.sum())
    confidence = rng.random(num_records, dtype=np.float32)
    png = schema.encode_png(np.zeros((2, 2, 3), np.uint8))
    tf.io.gfile.makedirs(folder)
    files = [
        os.path.join(folder, records.shard_name("labeled", s, num_files)) for s in range(num_files)
    ]
    template = schema.source_example(png)
    feature = template.features.feature
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i in range(num_records):
        c, p = int(labels[i]), float(confidence[i])
        others = [(c + j) % num_classes for j in range(1, 5)]
        feature[schema.KEY].bytes_list.value[:] = [b"%09d" % i]
        feature[schema.TEACHER_LABEL].int64_list.value[:] = [c]
        feature[schema.TEACHER_CONFIDENCE].float_list.value[:] = [p]
        feature[schema.TEACHER_TOPK_CLASSES].int64_list.value[:] = [c, *others]
        feature[schema.TEACHER_TOPK_PROBS].float_list.value[:] = [p] + [(1 - p) / 8] * 4
        writers[i % num_files].write(template.SerializeToString())
    for w in writers:
        w.close()
    return files


def bench_filter(workdir: str) -> dict:
    files = synthetic_predictions(
        os.path.join(workdir, "preds"), FLAGS.num_records, FLAGS.num_classes, FLAGS.num_files
    )
    before = _peak_mb()
    k = FLAGS.num_records // FLAGS.num_classes
    start = time.perf_counter()
    m = beam_filter.run_filter_balance(
        files,
        os.path.join(workdir, "balanced"),
        FLAGS.num_classes,
        threshold=0.3,
        images_per_class=k,
        num_output_shards=16,
        seed=0,
    )
    elapsed = time.perf_counter() - start
    assert m["out_records"] == k * sum(p["candidates"] > 0 for p in m["per_class"])
    parallel = {}
    for n in _worker_counts():
        start = time.perf_counter()
        beam_filter.run_filter_balance(
            files,
            os.path.join(workdir, f"balanced-{n}"),
            FLAGS.num_classes,
            threshold=0.3,
            images_per_class=k,
            num_output_shards=16,
            seed=0,
            plots=False,
            pipeline_args=_workers(n),
        )
        parallel[str(n)] = round(FLAGS.num_records / (time.perf_counter() - start))
    return {
        "filter_records": FLAGS.num_records,
        "filter_classes": FLAGS.num_classes,
        "filter_images_per_class": k,
        "filter_out_records": m["out_records"],
        "filter_s": round(elapsed, 1),
        "filter_records_per_s": round(FLAGS.num_records / elapsed),
        "peak_rss_mb_before_filter": round(before),
        "peak_rss_mb_after_filter": round(_peak_mb()),
        **({"beam_filter_records_per_s": parallel} if parallel else {}),
    }


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        workdir = FLAGS.workdir or tmp
        result = {
            "benchmark": "labeling",
            "cpus": os.cpu_count(),
            "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        }
        result.update(bench_labeling(workdir))
        result.update(bench_filter(workdir))
        print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
