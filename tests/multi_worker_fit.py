"""One worker of a 2-process MultiWorkerMirroredStrategy fit; run by test_strategy.py.

  TF_CONFIG=... python tests/multi_worker_fit.py STEPS HEARTBEAT_S [LOG_DIR]

Trains a tiny NoisyStudent for STEPS steps (a short pause after each, so a
test can kill a peer mid-run), printing `step N` per step, through
`get_strategy("multi_worker", heartbeat_timeout_s=HEARTBEAT_S)` and inside
`worker_failures_reported`, as a training script would. A dead peer must
end it with a WorkerFailure, not a hang. With LOG_DIR, a TensorBoard
callback also writes the logs there (as the loop's fit does).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from noisy_student_tf.training.strategy import (  # noqa: E402
    get_strategy,
    worker_failures_reported,
)

STEPS, HEARTBEAT_S = int(sys.argv[1]), float(sys.argv[2])
strategy = get_strategy("multi_worker", heartbeat_timeout_s=HEARTBEAT_S)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from noisy_student_tf.training import NoisyStudent  # noqa: E402

C, SIZE, BATCH, RATIO = 3, 8, 4, 2


class Pace(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"step {batch + 1} loss {float(np.ravel(logs['loss'])[0]):.4f}", flush=True)
        time.sleep(0.2)


def main():
    rng = np.random.default_rng(0)
    data = {
        "images": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)).astype("float32"),
        "labels": rng.integers(0, C, BATCH),
        "unlabeled_images": rng.integers(0, 256, (BATCH * RATIO, SIZE, SIZE, 3)).astype("float32"),
        "unlabeled_targets": rng.dirichlet(np.ones(C), BATCH * RATIO).astype("float32"),
    }
    ds = tf.data.Dataset.from_tensors(data).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(options)
    with strategy.scope():
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs / 255.0)
        x = keras.layers.BatchNormalization(synchronized=True)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = NoisyStudent(keras.Model(inputs, keras.layers.Dense(C)(x)), C, RATIO)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    with worker_failures_reported(strategy):
        callbacks = [Pace()]
        if len(sys.argv) > 3:
            callbacks.append(keras.callbacks.TensorBoard(sys.argv[3]))
        model.fit(ds, epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=callbacks)
    print("done", flush=True)


if __name__ == "__main__":
    main()
