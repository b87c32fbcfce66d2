"""The one way to pick a tf.distribute strategy: by name, from the config.

  default       no distribution (one CPU or GPU)
  mirrored      all local GPUs (MirroredStrategy)
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG
  tpu           TPUStrategy; `tpu_address` is the TPU name or grpc address
                ('' or 'local' inside a Colab/TPU VM)

Batch sizes in configs are global; the learning rate scales with them
(noisy_student_tf.training.optimization).
"""

from __future__ import annotations

import tensorflow as tf

from noisy_student_tf.cli import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name: str = "default", tpu_address: str = "") -> tf.distribute.Strategy:
    """Returns the strategy named `name`; a ValueError lists the valid names."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"strategy={name!r} is not one of {STRATEGIES}")
