"""Official-rule fidelity: each feature against a direct computation of the official behaviour.

Sources: google-research/noisystudent (utils.py, task_info.py, main.py,
efficientnet_model.py) and TF1's own kernels, recomputed here in numpy or
with the TF1 op itself, independently of the code under test.
"""

import keras
import ml_collections
import numpy as np
import pytest

from noisy_student_tf.configs import imagenet, svhn
from noisy_student_tf.training.optimization import TF1RMSprop, build_optimizer


def _tf1_rmsprop(w, grads, lr, decay=0.9, momentum=0.9, epsilon=1e-3):
    """TF1 tf.train.RMSPropOptimizer (ApplyRMSProp), ms slot initialised to ones."""
    ms, mom = np.ones_like(w), np.zeros_like(w)
    for g in grads:
        ms = decay * ms + (1 - decay) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + epsilon)
        w = w - mom
    return w


def test_rmsprop_with_ones_follows_tf1_rmsprop_optimizer():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype("float64")
    grads = [rng.normal(scale=0.05, size=w0.shape) for _ in range(5)]
    train = ml_collections.ConfigDict(
        dict(
            optimizer="rmsprop",
            learning_rate=0.016,
            schedule="constant",
            warmup_epochs=0,
            rmsprop_second_moment_init=1.0,
        )
    )
    opt = build_optimizer(train, 256, 10, 1)
    assert isinstance(opt, TF1RMSprop)
    var = keras.Variable(w0.astype("float32"))
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g.astype("float32")), var)])
    expected = _tf1_rmsprop(w0, grads, lr=0.016)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var), expected, rtol=1e-5, atol=1e-6)
    # Keras's zeros start is what differed: its first steps are far larger.
    keras_start = _tf1_rmsprop(w0, grads[:1], lr=0.016) - w0
    zeros = TF1RMSprop(
        second_moment_init=0.0, learning_rate=0.016, rho=0.9, momentum=0.9, epsilon=1e-3
    )
    var0 = keras.Variable(w0.astype("float32"))
    zeros.apply_gradients([(keras.ops.convert_to_tensor(grads[0].astype("float32")), var0)])
    step0 = keras.ops.convert_to_numpy(var0) - w0
    assert np.all(np.abs(step0) > 5 * np.abs(keras_start))


def test_rmsprop_second_moment_init_round_trips_through_config():
    opt = TF1RMSprop(second_moment_init=1.0, learning_rate=0.1)
    assert TF1RMSprop.from_config(opt.get_config()).second_moment_init == 1.0


@pytest.mark.parametrize("config", [imagenet.get_config("b0"), svhn.get_config()])
def test_paper_configs_start_rmsprop_at_ones(config):
    assert config.train.optimizer == "rmsprop"
    assert config.train.rmsprop_second_moment_init == 1.0
