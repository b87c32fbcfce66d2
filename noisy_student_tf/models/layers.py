"""Stochastic depth: drop a block's residual branch per sample while training.

Reference: Huang et al., "Deep Networks with Stochastic Depth" (ECCV 2016), as
used by EfficientNet (official `utils.drop_connect` / `stochastic_depth`) and
by the Noisy Student paper (section 2, "stochastic depth").
"""

import keras


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
