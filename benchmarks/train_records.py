r"""The large-image training record path, old against new: records -> train view -> batch.

  python benchmarks/train_records.py            # 224 px, batches of 32, 12 rounds
  python benchmarks/train_records.py --quick    # 224 px, tiny: a smoke check

Issue 21, item 1 moved the Inception crop from the batch to each record:

  old  decode the whole JPEG, take the eval view (a center crop resized to
       S), batch, then crop each image of the batch and resize it again
       (`training_dataset` on `pipeline.source_records`, as the loop did);
  new  crop from the whole image per record, decoding only the JPEG's window
       (`decode_and_random_crop`), resize once, batch (`training_dataset` on
       `pipeline.source_stream`, as the loop does now).

Both flip the batch afterwards; no RandAugment (the same on both sides).
The records are synthetic 500x375 JPEGs (ImageNet's typical size, quality
90) written to a temporary folder. Shuffles are off, so a call times
decoding and cropping rather than filling a buffer: each call opens a fresh
iterator on the already built dataset and takes --batches batches. The
candidates run in alternating rounds (benchmarks/rounds.py); the ratio is
new over old time per call, median and interquartile range, with the load
average beside it. Below 1 means the new path is faster. Issue 21's target:
no slower than 1.1.

Prints one JSON line.
"""

import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import rounds  # noqa: E402  (benchmarks/rounds.py: the script's folder is on sys.path)

_SIZE = flags.DEFINE_integer("size", 224, "Model side (the large-image path).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Batches per timed call.")
_RECORDS = flags.DEFINE_integer("num_records", 64, "Synthetic JPEG records.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Timed rounds (at least rounds.MIN_ROUNDS).")
_QUICK = flags.DEFINE_bool("quick", False, "Batches of 4, 8 records, 3 rounds: a smoke check.")

WIDTH, HEIGHT = 500, 375  # a typical ImageNet photo


def _write_records(folder: str, count: int) -> list[str]:
    """`count` smooth random 500x375 JPEGs as one source shard."""
    import tensorflow as tf

    from noisy_student_tf.data import schema

    rng = np.random.default_rng(0)
    path = os.path.join(folder, "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(count):
            coarse = rng.integers(0, 256, (HEIGHT // 25, WIDTH // 25, 3)).astype(np.float32)
            image = tf.image.resize(coarse, [HEIGHT, WIDTH], "bilinear")
            encoded = tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90).numpy()
            example = schema.source_example(encoded, index % 10, str(index).encode(), b"jpeg")
            writer.write(example.SerializeToString())
    return [path]


def _candidates(files: list[str], size: int, batch: int, batches: int) -> dict:
    """name -> one timed call: a fresh iterator over `batches` batches."""
    from noisy_student_tf.data import pipeline, preprocess

    train = preprocess.TrainPreprocess(size, None, small_image=False, cutout=False)
    sources = {
        "old": pipeline.source_records(files, size, small_image=False, shuffle_buffer=0),
        "new": pipeline.source_stream(files, size, small_image=False, shuffle_buffer=0),
    }
    datasets = {
        name: pipeline.training_dataset(source, batch, preprocess=train, shuffle_buffer=0)
        for name, source in sources.items()
    }

    def call(ds):
        def run():
            iterator = iter(ds)
            for _ in range(batches):
                next(iterator)["images"].numpy()

        return run

    return {name: call(ds) for name, ds in datasets.items()}


def main(argv):
    del argv
    quick = _QUICK.value
    batch, records = (4, 8) if quick else (_BATCH.value, _RECORDS.value)
    batches = 2 if quick else _BATCHES.value
    num_rounds, warmup = (3, 1) if quick else (max(_ROUNDS.value, rounds.MIN_ROUNDS), 2)
    with tempfile.TemporaryDirectory() as folder:
        files = _write_records(folder, records)
        before = rounds.load_average()
        times = rounds.alternate(
            _candidates(files, _SIZE.value, batch, batches), num_rounds, warmup
        )
        after = rounds.load_average()
    result = {
        "benchmark": "train_records",
        "size": _SIZE.value,
        "batch_size": batch,
        "batches_per_call": batches,
        "ratio_new_over_old": rounds.ratio(times["new"], times["old"]),
        "ms_per_batch": {
            name: rounds.spread([1000 * t / batches for t in ts], 1) for name, ts in times.items()
        },
        "load_average_before": before,
        "load_average_after": after,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
