"""One worker of a 2-process MultiWorkerMirroredStrategy input check; run by
test_host_sharding.py.

  TF_CONFIG=... python tests/host_sharding_worker.py RECORDS_FOLDER STEPS

Builds the training input the loop builds (`pipeline.distributed_training_dataset`
with the real large-image `TrainPreprocess`: crop, flip) from arrays and from
the loop's two record streams, iterates STEPS steps on this worker's replica
and prints one JSON line: per source and step, the labels this worker saw
(each record's or array row's label is its index) and a digest of each
augmented image. Every image has the same pixels, so two workers' augmented
images differ only if their keys do.
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from noisy_student_tf.training.strategy import get_strategy  # noqa: E402

FOLDER, STEPS = sys.argv[1], int(sys.argv[2])
strategy = get_strategy("multi_worker")

import numpy as np  # noqa: E402

from noisy_student_tf.data import pipeline, preprocess, records  # noqa: E402

# Shared with test_host_sharding.py.
N, SIZE, BATCH, RATIO, SEED = 32, 32, 4, 2, 3


def _image():
    """An image whose every crop, flip and rotation looks different (56 x 64)."""
    y, x = np.mgrid[:56, :64]
    return np.stack([y * 4, x * 4, (x * y) % 256], -1).astype(np.uint8)


def sources():
    """name -> (labeled, unlabeled): arrays, and the loop's two record streams."""
    image = _image()
    images = np.repeat(image[None], N, axis=0)
    labels, targets = np.arange(N), np.eye(N, dtype=np.float32)
    labeled_files = records.list_files(os.path.join(FOLDER, "labeled-*"))
    pseudo_files = records.list_files(os.path.join(FOLDER, "pseudo-*"))
    return {
        "arrays": ((images, labels), (images, targets)),
        "records": (
            pipeline.source_stream(labeled_files, SIZE, seed=SEED, small_image=False),
            pipeline.pseudo_labeled_stream(pseudo_files, N, SIZE, seed=SEED, small_image=False),
        ),
    }


def digest(image) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:12]


def main():
    # Crop and flip only: RandAugment draws from the same keys, and tracing it
    # in two fresh processes would double this check's time.
    train = preprocess.TrainPreprocess(SIZE, None, small_image=False, cutout=False)
    report = {}
    for name, (labeled, unlabeled) in sources().items():
        ds = pipeline.distributed_training_dataset(
            strategy,
            labeled,
            BATCH,
            unlabeled,
            unlabeled_ratio=RATIO,
            preprocess=train,
            seed=SEED,
        )
        steps, batches = [], iter(ds)
        for _ in range(STEPS):
            (batch,) = strategy.experimental_local_results(next(batches))
            batch = {k: v.numpy() for k, v in batch.items()}
            steps.append(
                {
                    "labels": batch["labels"].tolist(),
                    "unlabeled": batch["unlabeled_targets"].argmax(1).tolist(),
                    "images": [digest(x) for x in batch["images"]],
                    "unlabeled_images": [digest(x) for x in batch["unlabeled_images"]],
                }
            )
        report[name] = steps
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
