"""The model's own layers: stochastic depth and grouped cross-replica batch norm.

StochasticDepth drops a block's residual branch per sample while training.
Reference: Huang et al., "Deep Networks with Stochastic Depth" (ECCV 2016), as
used by EfficientNet (official `utils.drop_connect` / `stochastic_depth`) and
by the Noisy Student paper (section 2, "stochastic depth").

GroupedBatchNormalization computes batch-norm moments over groups of
replicas, the official TPU batch norm (noisystudent utils.py).
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="noisy_student_tf")
class StochasticDepth(keras.layers.Layer):
    """Keeps each sample's residual branch with probability `survival_prob`.

    In training the branch of a sample is either zeroed or divided by
    `survival_prob`, so its expectation is unchanged; at inference the layer is
    the identity. A frozen layer (`trainable=False`) is the identity too, as a
    frozen Keras BatchNormalization runs in inference mode: fine-tuning
    freezes the shallow blocks, which the official code calls with
    training=False (main.py --fix_layer_num, efficientnet_model.py). This is `keras.layers.Dropout(1 - survival_prob,
    noise_shape=(None, 1, 1, 1))` as in keras.applications, written out so the
    survival probability is a named, inspectable attribute.

    Args:
        survival_prob: float in (0, 1], probability of keeping the branch.
        seed: optional int seed for the per-sample Bernoulli draws.
        **kwargs: `keras.layers.Layer` arguments (name, dtype, ...).

    Call args:
        inputs: float tensor [B, ...], the residual branch.
        training: bool; the branch is dropped only when True and the layer
            is trainable.

    Returns:
        Tensor of the same shape and dtype as `inputs`.
    """

    def __init__(self, survival_prob, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < survival_prob <= 1.0:
            raise ValueError(f"survival_prob must be in (0, 1], got {survival_prob!r}.")
        self.survival_prob = float(survival_prob)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or not self.trainable or self.survival_prob == 1.0:
            return inputs
        batch = keras.ops.shape(inputs)[0]
        noise_shape = (batch,) + (1,) * (len(inputs.shape) - 1)
        uniform = keras.random.uniform(noise_shape, seed=self.seed_generator, dtype=inputs.dtype)
        # floor(p + U[0, 1)) is 1 with probability p and 0 otherwise.
        keep = keras.ops.floor(self.survival_prob + uniform)
        return inputs / self.survival_prob * keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"survival_prob": self.survival_prob, "seed": self.seed})
        return config


# Official noisystudent utils.TpuBatchNormalization with main.py's default
# --num_shards_per_group=-1: no cross-replica moments up to 8 cores (a 2x2
# slice or smaller), beyond that groups of max(8, cores // 8) consecutive cores.
OFFICIAL_GROUP_RULE = -1
OFFICIAL_LOCAL_REPLICAS = 8


def official_group_size(num_replicas: int) -> int:
    """Replicas per batch-norm group under the official rule (1: per replica)."""
    if num_replicas <= OFFICIAL_LOCAL_REPLICAS:
        return 1
    return max(OFFICIAL_LOCAL_REPLICAS, num_replicas // OFFICIAL_LOCAL_REPLICAS)


def resolve_group_size(group_size: int, num_replicas: int) -> int:
    """The replicas per group for a `group_size` setting (-1: the official rule).

    Raises:
        ValueError: the replicas do not split into groups of that size (the
            official code raises on this too).
    """
    size = official_group_size(num_replicas) if group_size == OFFICIAL_GROUP_RULE else group_size
    if size < 1 or num_replicas % size:
        raise ValueError(
            f"batch_norm_group_size={group_size} gives groups of {size}, which do not "
            f"divide the {num_replicas} replicas"
        )
    return size


def _grouped_sum(context, x, size, num_replicas):
    """Sum of `x` over this replica's group of `size` consecutive replicas.

    On TPU the cross-replica sum takes the official group assignment (this
    path is not exercised on CPU). Elsewhere a portable form: each replica
    places `x` in its group's row of a [groups, ...] tensor, one all-reduce
    sums the rows, and the replica reads its own.
    """
    groups = num_replicas // size
    if isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        assignment = [list(range(g * size, (g + 1) * size)) for g in range(groups)]
        return tf.compat.v1.tpu.cross_replica_sum(x, assignment)
    group = tf.cast(context.replica_id_in_sync_group, tf.int32) // size
    rows = tf.reshape(tf.one_hot(group, groups, dtype=x.dtype), [groups] + [1] * x.shape.rank)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, rows * x[None])
    return tf.gather(total, group)


@keras.saving.register_keras_serializable(package="noisy_student_tf")
class GroupedBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm whose training moments are all-reduced within groups of replicas.

    The official TPU batch norm (noisystudent utils.TpuBatchNormalization)
    averages each core's mean and mean of squares over a group of cores and
    takes the variance as E[x^2] - E[x]^2, so large pod slices normalise
    over more than one core's images without a pod-wide all-reduce. Here the
    group sums are of sums, squares and counts, which equals the official
    average of per-core moments when every replica holds the same number of
    images (as fit()'s even split guarantees). With one replica, or groups
    of one, this is plain BatchNormalization.

    Args:
        group_size: replicas per group (consecutive replica ids, as the
            official group assignment), or -1 for the official rule
            (`official_group_size`), resolved when the layer is called under
            a strategy.
        **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def __init__(self, group_size=OFFICIAL_GROUP_RULE, **kwargs):
        super().__init__(**kwargs)
        if group_size != OFFICIAL_GROUP_RULE and not group_size >= 1:
            raise ValueError(f"group_size must be >= 1 or -1 (official rule), got {group_size!r}.")
        self.group_size = int(group_size)

    def _moments(self, inputs, mask):
        context = tf.distribute.get_replica_context()
        if mask is not None or context is None:
            return super()._moments(inputs, mask)
        replicas = context.num_replicas_in_sync
        size = resolve_group_size(self.group_size, replicas)
        if size == 1:
            return super()._moments(inputs, mask)
        axes = list(self._reduction_axes)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
        total_x = tf.reduce_sum(inputs, axis=axes)
        local = tf.stack(
            [total_x, tf.reduce_sum(tf.square(inputs), axis=axes), tf.ones_like(total_x) * count]
        )
        total = _grouped_sum(context, local, size, replicas)
        mean = total[0] / total[2]
        variance = tf.maximum(total[1] / total[2] - tf.square(mean), 0.0)
        return mean, variance

    def get_config(self):
        config = super().get_config()
        config["group_size"] = self.group_size
        return config
