"""Grouped batch norm over 4 logical CPU replicas; run by test_fidelity.py.

Logical devices can only be configured before TensorFlow initialises, so
this runs in its own process and prints one JSON line: the largest
difference between each replica's training-mode output and one device's
batch norm over (a) its group's images (groups of 2, the expected rule),
(b) all replicas' images, (c) its own images only.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 4)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from noisy_student_tf.models.layers import GroupedBatchNormalization  # noqa: E402

REPLICAS, PER_REPLICA, GROUP = 4, 3, 2


def reference(images):
    """One device's training-mode batch norm: (x - mean) / sqrt(var + eps), gamma 1, beta 0."""
    mean = images.mean(axis=(0, 1, 2))
    var = images.var(axis=(0, 1, 2))
    return (images - mean) / np.sqrt(var + 1e-3)


def main():
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    rng = np.random.default_rng(0)
    # Each replica's images from a different distribution, so groupings differ.
    images = np.stack(
        [rng.normal(loc=r, scale=1 + r, size=(PER_REPLICA, 4, 4, 5)) for r in range(REPLICAS)]
    ).astype("float32")
    with strategy.scope():
        layer = GroupedBatchNormalization(group_size=GROUP, epsilon=1e-3)
        layer.build((None, 4, 4, 5))
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(images[ctx.replica_id_in_sync_group])
    )

    @tf.function
    def step(x):
        return strategy.run(lambda t: layer(t, training=True), args=(x,))

    outputs = [t.numpy() for t in strategy.experimental_local_results(step(values))]
    report = {"replicas": strategy.num_replicas_in_sync, "group": 0.0, "all": 0.0, "own": 0.0}
    every = reference(images.reshape(-1, 4, 4, 5)).reshape(images.shape)
    for r, out in enumerate(outputs):
        g = r // GROUP
        group = reference(images[g * GROUP : (g + 1) * GROUP].reshape(-1, 4, 4, 5))
        group = group.reshape(GROUP, PER_REPLICA, 4, 4, 5)[r % GROUP]
        report["group"] = max(report["group"], float(np.abs(out - group).max()))
        report["all"] = max(report["all"], float(np.abs(out - every[r]).max()))
        report["own"] = max(report["own"], float(np.abs(out - reference(images[r])).max()))
    print(json.dumps(report))


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
