"""NoisyStudent under MirroredStrategy over 2 logical CPUs; run by test_noisy_student.py.

Logical devices can only be configured before TensorFlow initialises, so
this runs in its own process and prints one JSON line of findings:

* a functional student whose input is named "pixels" (no batch norm, so the
  2-replica step must equal the 1-replica step on the same global batch),
  offline and online: final weights and losses of both runs;
* a subclassed student with batch norm, unbuilt until fit(): it builds,
  trains, its averaged statistics differ from the raw ones, and both
  replicas hold the same moving statistics and shadows;
* a NaN batch under the strategy: the step is skipped on both replicas;
* a student with synchronised batch norm (what EfficientNet's
  `sync_batch_norm=True` builds), offline and online: the 2-replica step
  equals the 1-replica step on the global batch, while the same model
  without synchronisation differs (each replica normalises its half).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from noisy_student_tf.training import NoisyStudent  # noqa: E402

C, SIZE, N_LAB, RATIO, STEPS = 3, 8, 4, 2, 2


def pixels_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(C)(x))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same")
        self.norm = keras.layers.BatchNormalization(momentum=0.5)
        self.head = keras.layers.Dense(C)

    def call(self, x, training=False):
        x = self.norm(self.conv(x / 255.0), training=training)
        return self.head(tf.reduce_mean(x, axis=[1, 2]))


def batch_norm_model(sync: bool):
    """Conv-BN-pool-dense; BN momentum 0.5 so the moving statistics show each step."""

    def build():
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs / 255.0)
        x = keras.layers.BatchNormalization(momentum=0.5, synchronized=sync)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(C)(x))

    return build


def batches(online: bool, nan: bool = False) -> tf.data.Dataset:
    rng = np.random.default_rng(1)
    data = {
        "images": rng.integers(0, 256, (STEPS, N_LAB, SIZE, SIZE, 3)).astype("float32"),
        "labels": rng.integers(0, C, (STEPS, N_LAB)),
        "unlabeled_images": rng.integers(0, 256, (STEPS, N_LAB * RATIO, SIZE, SIZE, 3)).astype(
            "float32"
        ),
    }
    if nan:
        data["images"][:, 0, 0, 0, 0] = np.nan
    if online:
        data["unlabeled_teacher_images"] = data["unlabeled_images"]
    else:
        data["unlabeled_targets"] = rng.dirichlet(np.ones(C), (STEPS, N_LAB * RATIO)).astype(
            "float32"
        )
    return tf.data.Dataset.from_tensor_slices(data)


class RecordRaw(keras.callbacks.Callback):
    """The student's raw weights after the last step, before fit() swaps in the average."""

    def __init__(self, student):
        super().__init__()
        self.student, self.raw = student, None

    def on_train_batch_end(self, batch, logs=None):
        self.raw = [v.numpy().copy() for v in self.student.weights]


def train(strategy, student_fn, initial, online: bool):
    """Fits STEPS steps; returns (student, wrapper, losses, raw final weights)."""
    with strategy.scope():
        student = student_fn()
        if initial is not None:
            student.set_weights(initial)
        teacher = None
        if online:
            keras.utils.set_random_seed(2)
            teacher = pixels_model()
        model = NoisyStudent(
            student, C, unlabeled_ratio=RATIO, weight_decay=1e-3, teacher=teacher, ema_decay=0.9
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    record = RecordRaw(student)
    history = model.fit(batches(online), epochs=1, verbose=0, shuffle=False, callbacks=[record])
    return student, model, history.history["loss"], record.raw


def max_difference(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def main() -> None:
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {"replicas": mirrored.num_replicas_in_sync}
    keras.utils.set_random_seed(0)
    initial = pixels_model().get_weights()
    for mode, online in (("offline", False), ("online", True)):
        two, two_model, two_loss, two_raw = train(mirrored, pixels_model, initial, online)
        one, _, one_loss, one_raw = train(
            tf.distribute.get_strategy(), pixels_model, initial, online
        )
        report[mode] = {
            "weights_moved": max_difference(two.get_weights(), initial),
            "one_vs_two_replicas": max_difference(two.get_weights(), one.get_weights()),
            "raw_one_vs_two_replicas": max_difference(two_raw, one_raw),
            "loss_two": two_loss[-1],
            "loss_one": one_loss[-1],
            "shadows_vs_student": max_difference(
                [v.numpy() for v in two_model.average.shadows],
                [v.numpy() for v in two_model.average.sources],
            ),
        }

    keras.utils.set_random_seed(0)
    student, model, loss, raw = train(mirrored, Subclassed, None, online=False)
    paths = [v.path for v in student.weights]
    stats = [paths.index(v.path) for v in (student.norm.moving_mean, student.norm.moving_variance)]
    report["subclassed"] = {
        "built": bool(student.built),
        "loss": loss[-1],
        "num_shadows": len(model.average.shadows),
        "student_holds_average": max_difference(
            [v.numpy() for v in model.average.shadows],
            [v.numpy() for v in model.average.sources],
        ),
        "averaged_vs_raw_bn_stats": max_difference(
            [student.weights[i].numpy() for i in stats], [raw[i] for i in stats]
        ),
        # Each replica's copy of the moving statistics and their shadows.
        "replica_bn_stats_apart": max_difference(
            *zip(
                *(
                    [c.numpy() for c in v.value.values]
                    for v in [student.norm.moving_mean, student.norm.moving_variance]
                    + model.average.shadows
                ),
                strict=True,
            )
        ),
    }

    # A NaN batch: both replicas skip the step together.
    before = [v.numpy().copy() for v in student.weights + model.average.shadows]
    iterations = int(model.optimizer.iterations.numpy())
    error = ""
    try:
        model.fit(batches(online=False, nan=True), epochs=1, verbose=0, shuffle=False)
    except FloatingPointError as e:
        error = str(e)
    after = [v.numpy() for v in student.weights + model.average.shadows]
    report["nan"] = {
        "error": error,
        "changed": max_difference(before, after),
        "iterations_advanced": int(model.optimizer.iterations.numpy()) - iterations,
        "count": float(model.nonfinite_tracker.result()),
    }
    # Synchronised batch norm: 2 replicas see the global batch's statistics.
    for mode, online in (("offline", False), ("online", True)):
        found = {}
        for sync in (True, False):
            keras.utils.set_random_seed(0)
            initial = batch_norm_model(sync)().get_weights()
            two, _, two_loss, _ = train(mirrored, batch_norm_model(sync), initial, online)
            one, _, one_loss, _ = train(
                tf.distribute.get_strategy(), batch_norm_model(sync), initial, online
            )
            key = "sync" if sync else "unsynced"
            found[key] = max_difference(two.get_weights(), one.get_weights())
            found[f"{key}_loss_two_vs_one"] = abs(two_loss[-1] - one_loss[-1])
        found["weights_moved"] = max_difference(two.get_weights(), initial)
        report[f"sync_batch_norm_{mode}"] = found
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
