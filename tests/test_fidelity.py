"""Official-rule fidelity: each feature against a direct computation of the official behaviour.

Sources: google-research/noisystudent (utils.py, task_info.py, main.py,
efficientnet_model.py) and TF1's own kernels, recomputed here in numpy or
with the TF1 op itself, independently of the code under test.
"""

import json
import os
import subprocess
import sys

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.configs import imagenet, svhn
from noisy_student_tf.data import preprocess
from noisy_student_tf.evaluation import export
from noisy_student_tf.models import build_efficientnet, layers, load_checkpoint
from noisy_student_tf.training import fine_tune, trainer
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


def _deep_tiny(survival=0.2):
    """Full depth (several blocks per stage, so residual branches to drop), tiny width."""
    return build_efficientnet(
        "efficientnet-b0",
        num_classes=3,
        input_shape=(16, 16, 3),
        width_coefficient=0.1,
        small_image=True,
        final_survival_prob=survival,
    )


def test_frozen_blocks_run_in_inference_mode_during_a_training_call():
    # Official main.py --fix_layer_num: the frozen blocks are called with
    # training=False, so no stochastic depth and batch norm on moving statistics.
    model = _deep_tiny()
    frozen = 8  # block1a ... block4c: drop layers in block2b, 3b, 4b, 4c
    last = fine_tune.block_prefixes(model)[frozen - 1]
    assert last == "block4c_" and model.get_layer(f"{last}drop").survival_prob < 0.7
    upto = keras.Model(model.input, model.get_layer(f"{last}add").output)
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3)).astype("float32")
    # Not frozen: a training call drops branches and normalises by batch
    # moments (and moves the moving statistics, so inference is read after).
    trained = keras.ops.convert_to_numpy(upto(images, training=True))
    assert np.abs(trained - keras.ops.convert_to_numpy(upto(images))).max() > 1e-3
    fine_tune.freeze_shallow_layers(model, frozen)
    inference = keras.ops.convert_to_numpy(upto(images, training=False))
    first = keras.ops.convert_to_numpy(upto(images, training=True))
    second = keras.ops.convert_to_numpy(upto(images, training=True))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, inference, rtol=1e-6, atol=1e-6)
    # The trainable blocks after them still get their noise.
    tail = model.get_layer(f"{fine_tune.block_prefixes(model)[-2]}drop")
    assert tail.trainable and tail.survival_prob < 1.0


# noisystudent task_info.get_mean_std: per-task mean and stddev on the 0-255 scale.
OFFICIAL_MEAN_STD_255 = {
    "imagenet": ([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]),
    "svhn": (
        [0.4376821 * 255, 0.4437697 * 255, 0.47280442 * 255],
        [0.19803012 * 255, 0.20101562 * 255, 0.19703614 * 255],
    ),
}


@pytest.mark.parametrize("task", ["imagenet", "svhn"])
def test_model_normalises_its_input_with_the_tasks_official_statistics(task):
    # The config's model block -> trainer.build_model -> the model's first layers.
    config = svhn.get_config() if task == "svhn" else imagenet.get_config("b0")
    model = trainer.build_model(config.student, num_classes=3, image_size=16)
    normalised = keras.Model(model.input, model.get_layer("normalization").output)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    mean, std = (np.array(v, "float64") for v in OFFICIAL_MEAN_STD_255[task])
    expected = (pixels - mean) / std  # official normalize: (x - mean) / stddev
    got = keras.ops.convert_to_numpy(normalised(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_normalization_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="imagenet, svhn, advprop"):
        build_efficientnet("efficientnet-b0", 3, (16, 16, 3), normalization="cifar")


def _official_num_shards_per_group(num_shards):
    """noisystudent utils.TpuBatchNormalization._moments with --num_shards_per_group=-1."""
    if num_shards <= 8:
        return 1  # "Skip cross_replica for 2x2 or smaller slices."
    return max(8, num_shards // 8)


@pytest.mark.parametrize("replicas", [1, 2, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
def test_official_group_rule(replicas):
    expected = _official_num_shards_per_group(replicas)
    assert layers.official_group_size(replicas) == expected
    assert layers.resolve_group_size(-1, replicas) == expected


def test_group_size_must_divide_the_replicas():
    assert layers.resolve_group_size(2, 4) == 2
    with pytest.raises(ValueError, match="batch_norm_group_size=3"):
        layers.resolve_group_size(3, 4)


def test_grouped_batch_norm_over_4_replicas_equals_one_device_per_group():
    script = os.path.join(os.path.dirname(__file__), "grouped_batch_norm_replicas.py")
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 4
    assert report["group"] < 1e-5  # each replica = one device on its group's 6 images
    assert report["all"] > 1e-2 and report["own"] > 1e-2  # neither global nor per replica


def test_imagenet_models_use_the_official_grouping_and_round_trip(tmp_path):
    config = imagenet.get_config("b0,smoke")
    assert config.student.batch_norm_group_size == -1
    model = trainer.build_model(config.student, num_classes=3, image_size=32)
    norms = [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(x, layers.GroupedBatchNormalization) for x in norms)
    assert {x.group_size for x in norms} == {-1}
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    # One replica: groups of one, i.e. plain batch norm.
    plain = trainer.build_model(svhn.get_config("smoke").student, 3, 32)
    assert not any(isinstance(x, layers.GroupedBatchNormalization) for x in plain.layers)
    model.save(tmp_path / "m.keras")
    loaded = load_checkpoint(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="choose one"):
        build_efficientnet(
            "efficientnet-b0", 3, (16, 16, 3), sync_batch_norm=True, batch_norm_group_size=2
        )


def test_grouped_batch_norm_on_one_replica_is_plain_batch_norm():
    x = np.random.default_rng(2).normal(size=(6, 4, 4, 5)).astype("float32")
    grouped = layers.GroupedBatchNormalization(group_size=-1)
    plain = keras.layers.BatchNormalization()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(grouped(x, training=True)),
        keras.ops.convert_to_numpy(plain(x, training=True)),
        rtol=1e-5,
        atol=1e-5,
    )


def _official_center_crop(image, size):
    """noisystudent preprocessing.center_crop's box: S / (S + 32) of the shorter side."""
    h, w = image.shape[:2]
    side = int(size / (size + 32) * min(h, w))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    return image[top : top + side, left : left + side]


def _tf1_eval_view(image, size):
    crop = _official_center_crop(image, size)
    resized = tf.compat.v1.image.resize_bicubic(
        crop[None], [size, size], align_corners=False, half_pixel_centers=False
    )
    return resized[0].numpy()


@pytest.mark.parametrize("height, width, size", [(375, 500, 224), (500, 375, 240), (90, 70, 64)])
def test_official_eval_resize_equals_tf1_resize_bicubic(height, width, size):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3)).astype("uint8")
    expected = _tf1_eval_view(image, size)
    got = preprocess.eval_preprocess(image, size, small_image=False, resize="official")
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    batch = preprocess.eval_preprocess(np.stack([image] * 2), size, False, "official")
    np.testing.assert_allclose(batch.numpy()[1], expected, rtol=0, atol=1e-5)
    # Ours (TF2 bicubic, uint8) is a different view of the same crop.
    ours = preprocess.eval_preprocess(image, size, small_image=False).numpy()
    assert np.abs(ours.astype("float32") - expected).max() > 1.0
    with pytest.raises(ValueError, match="tf2, official"):
        preprocess.eval_preprocess(image, size, resize="bilinear")


def test_export_applies_the_models_eval_resize(tmp_path):
    model = build_efficientnet(
        "efficientnet-b0", 3, (32, 32, 3), width_coefficient=0.1, depth_coefficient=0.1
    )
    assert preprocess.eval_resize_of(model) == "tf2"
    setattr(model, preprocess.EVAL_RESIZE_ATTR, "official")  # as the converter marks it
    assert preprocess.eval_resize_of(model) == "official"
    export.export_saved_model(model, str(tmp_path / "sm"), small_image=False)
    image = np.random.default_rng(3).integers(0, 256, (40, 50, 3)).astype("uint8")
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serve_images"]
    logits = served(images=tf.constant(image[None]))["logits"].numpy()
    expected = model(_tf1_eval_view(image, 32)[None], training=False)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-4)


def test_a_converted_official_checkpoint_asks_for_the_official_resize(tmp_path):
    from test_official_checkpoint import make_checkpoint  # the official-name writer

    source = build_efficientnet("efficientnet-b0", num_classes=4, input_shape=(32, 32, 3))
    prefix, _, _ = make_checkpoint(str(tmp_path), source, "efficientnet-b0")
    teacher = load_checkpoint(prefix, image_size=32)
    assert preprocess.eval_resize_of(teacher) == "official"
