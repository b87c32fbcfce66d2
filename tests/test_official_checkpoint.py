"""Tests for noisy_student_tf.models.official_checkpoint (TF1 EfficientNet checkpoints).

The official checkpoints cannot be downloaded here, so the tests write TF1
name-based checkpoints (`SaveV2`, the op `tf.compat.v1.train.Saver` runs) from
random project models. The official names are produced by this file's own
rules, written out from tensorflow/tpu `efficientnet_model.py` (call order of
`MBConvBlock.call`, TF1 layer-name uniquification), not by the converter's,
and the first two B0 blocks are listed literally. Raw variables and their
`ExponentialMovingAverage` shadows hold different values, so the logits tell
which ones were read.
"""

import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.labeling import shards
from noisy_student_tf.models import (
    build_efficientnet,
    convert_official_checkpoint,
    load_checkpoint,
    load_official_weights,
)
from noisy_student_tf.models import efficientnet as en
from noisy_student_tf.models import official_checkpoint as oc
from noisy_student_tf.models.artifact import fingerprint

BN = "tpu_batch_normalization"
EMA = "/ExponentialMovingAverage"
# Literal names of EfficientNet-B0's stem, first block (expand_ratio 1: no
# expansion conv) and second block (expansion), as in the released checkpoints.
B0_FIRST_BLOCKS = {
    "stem_conv": "efficientnet-b0/stem/conv2d",
    "stem_bn": "efficientnet-b0/stem/tpu_batch_normalization",
    "block1a_dwconv": "efficientnet-b0/blocks_0/depthwise_conv2d",
    "block1a_bn": "efficientnet-b0/blocks_0/tpu_batch_normalization",
    "block1a_se_reduce": "efficientnet-b0/blocks_0/se/conv2d",
    "block1a_se_expand": "efficientnet-b0/blocks_0/se/conv2d_1",
    "block1a_project_conv": "efficientnet-b0/blocks_0/conv2d",
    "block1a_project_bn": "efficientnet-b0/blocks_0/tpu_batch_normalization_1",
    "block2a_expand_conv": "efficientnet-b0/blocks_1/conv2d",
    "block2a_expand_bn": "efficientnet-b0/blocks_1/tpu_batch_normalization",
    "block2a_dwconv": "efficientnet-b0/blocks_1/depthwise_conv2d",
    "block2a_bn": "efficientnet-b0/blocks_1/tpu_batch_normalization_1",
    "block2a_se_reduce": "efficientnet-b0/blocks_1/se/conv2d",
    "block2a_se_expand": "efficientnet-b0/blocks_1/se/conv2d_1",
    "block2a_project_conv": "efficientnet-b0/blocks_1/conv2d_1",
    "block2a_project_bn": "efficientnet-b0/blocks_1/tpu_batch_normalization_2",
    "top_conv": "efficientnet-b0/head/conv2d",
    "top_bn": "efficientnet-b0/head/tpu_batch_normalization",
    "predictions": "efficientnet-b0/head/dense",
}
# Official layer of each project layer within a block, in MBConvBlock.call order.
WITH_EXPANSION = {
    "expand_conv": "conv2d",
    "expand_bn": BN,
    "dwconv": "depthwise_conv2d",
    "bn": BN + "_1",
    "se_reduce": "se/conv2d",
    "se_expand": "se/conv2d_1",
    "project_conv": "conv2d_1",
    "project_bn": BN + "_2",
}
WITHOUT_EXPANSION = {
    "dwconv": "depthwise_conv2d",
    "bn": BN,
    "se_reduce": "se/conv2d",
    "se_expand": "se/conv2d_1",
    "project_conv": "conv2d",
    "project_bn": BN + "_1",
}
FIXED = {
    "stem_conv": "stem/conv2d",
    "stem_bn": f"stem/{BN}",
    "top_conv": "head/conv2d",
    "top_bn": f"head/{BN}",
    "predictions": "head/dense",
}


def official_names(model, scope):
    """[(official variable name, keras variable)] by the official rules."""
    layers = {layer.name: layer for layer in model.layers}
    blocks = {}
    for name in layers:
        m = re.fullmatch(r"block(\d+)([a-z]+)_dwconv", name)
        if m:
            blocks[name[: -len("dwconv")]] = (int(m.group(1)), len(m.group(2)), m.group(2))
    table = {k: f"{scope}/{v}" for k, v in FIXED.items()}
    for index, block in enumerate(sorted(blocks, key=blocks.get)):
        rule = WITH_EXPANSION if block + "expand_conv" in layers else WITHOUT_EXPANSION
        table.update({block + k: f"{scope}/blocks_{index}/{v}" for k, v in rule.items()})
    pairs = []
    for layer_name, official in table.items():
        layer = layers[layer_name]
        for weight in layer.weights:
            leaf = weight.name
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                leaf = "depthwise_kernel"
            pairs.append((f"{official}/{leaf}", weight))
    return pairs


def randomize(model, seed):
    """Random weights with non-trivial batch-norm statistics."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0, 0.2, shape),
                    rng.normal(0, 0.2, shape),
                    rng.uniform(0.5, 1.5, shape),
                ]
            )


def write_checkpoint(prefix, tensors):
    """A TF1 name-based checkpoint: `prefix.index` + `prefix.data-*` (SaveV2)."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )


def make_checkpoint(folder, source, scope, seed=0):
    """Raw variables scaled away from `source`'s values; shadows hold `source`'s.

    Returns (prefix, tensors, model holding the raw values).
    """
    rng = np.random.RandomState(seed)
    tensors = {"global_step": np.array(5, np.int64)}
    raw_model = keras.models.clone_model(source)
    mean, variance = source.get_layer("normalization").get_weights()[:2]
    en.set_normalization(raw_model.get_layer("normalization"), mean, variance)
    raw_weights = dict(official_names(raw_model, scope))
    for name, weight in official_names(source, scope):
        ema = keras.ops.convert_to_numpy(weight)
        raw = (ema * rng.uniform(0.5, 1.5, ema.shape)).astype("float32")
        raw_weights[name].assign(raw)
        tensors[name] = raw
        tensors[name + EMA] = ema
        tensors[name + "/RMSProp"] = np.zeros_like(raw)  # optimizer slot: ignored
    os.makedirs(folder, exist_ok=True)
    prefix = os.path.join(folder, "model.ckpt-5")
    write_checkpoint(prefix, tensors)
    with open(os.path.join(folder, "checkpoint"), "w") as f:  # tf.train.Saver's state file
        f.write(
            'model_checkpoint_path: "model.ckpt-5"\nall_model_checkpoint_paths: "model.ckpt-5"\n'
        )
    return prefix, tensors, raw_model


def pixels(n, size, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def logits(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """A B0 (10 classes, 224 px) checkpoint folder and the logits it must give."""
    keras.utils.set_random_seed(1)
    source = build_efficientnet("efficientnet-b0", num_classes=10)
    randomize(source, seed=2)
    folder = str(tmp_path_factory.mktemp("official") / "noisy_student_efficientnet-b0")
    prefix, tensors, raw_model = make_checkpoint(folder, source, "efficientnet-b0")
    images = pixels(2, 224)
    return dict(
        folder=folder,
        prefix=prefix,
        tensors=tensors,
        images=images,
        ema_logits=logits(source, images),
        raw_logits=logits(raw_model, images),
    )


def test_naming_rules_match_the_literal_b0_names():
    model = build_efficientnet("efficientnet-b0", num_classes=5, input_shape=(32, 32, 3))
    names = oc.official_layer_names(model, "efficientnet-b0")
    assert {k: names[k] for k in B0_FIRST_BLOCKS} == B0_FIRST_BLOCKS
    # The test's own rules agree with the literal table too.
    ours = {name for name, _ in official_names(model, "efficientnet-b0")}
    assert "efficientnet-b0/blocks_1/tpu_batch_normalization_2/moving_variance" in ours
    assert "efficientnet-b0/blocks_0/depthwise_conv2d/depthwise_kernel" in ours
    assert "efficientnet-b0/blocks_15/conv2d_1/kernel" in ours  # B0 has 16 blocks
    assert not any("blocks_16" in n for n in ours)


def test_folder_loads_the_moving_averages_like_official_eval(b0):
    model = load_checkpoint(b0["folder"])  # folder with a 'checkpoint' state file
    assert model.name == "efficientnet-b0"
    assert model.input_shape == (None, 224, 224, 3)  # B0's default resolution
    out = logits(model, b0["images"])
    assert out.shape == (2, 10)  # classes from head/dense/kernel
    np.testing.assert_allclose(out, b0["ema_logits"], atol=1e-5, rtol=1e-5)
    assert np.abs(b0["ema_logits"] - b0["raw_logits"]).max() > 1e-2  # the two differ


def test_prefer_ema_false_reads_the_raw_variables(b0):
    model = convert_official_checkpoint(b0["prefix"], prefer_ema=False)
    np.testing.assert_allclose(logits(model, b0["images"]), b0["raw_logits"], atol=1e-5, rtol=1e-5)


def test_report_says_where_each_weight_came_from(b0, tmp_path):
    tensors = dict(b0["tensors"])
    without_shadow = "efficientnet-b0/blocks_1/tpu_batch_normalization_1/moving_mean"
    del tensors[without_shadow + EMA]
    write_checkpoint(str(tmp_path / "model.ckpt"), tensors)
    model = build_efficientnet("efficientnet-b0", num_classes=10, input_shape=(32, 32, 3))
    report = load_official_weights(model, str(tmp_path / "model.ckpt"))
    assert report.from_raw == [without_shadow]
    assert len(report.from_ema) == len(official_names(model, "x")) - 1
    assert report.scope == "efficientnet-b0"
    assert report.ignored == 1 + len(report.from_ema) + 1  # global_step + RMSProp slots
    layer = model.get_layer("block2a_bn")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer.moving_mean), tensors[without_shadow]
    )


def test_missing_variable_is_named(b0, tmp_path):
    gone = "efficientnet-b0/blocks_1/tpu_batch_normalization_2/moving_variance"
    tensors = {k: v for k, v in b0["tensors"].items() if not k.startswith(gone)}
    write_checkpoint(str(tmp_path / "model.ckpt"), tensors)
    with pytest.raises(ConfigError, match=f"lacks variables the model needs: {gone}"):
        convert_official_checkpoint(str(tmp_path / "model.ckpt"), image_size=32)


def test_extra_variable_and_shape_mismatch_are_named(b0, tmp_path):
    extra = "efficientnet-b0/blocks_16/conv2d/kernel"
    write_checkpoint(str(tmp_path / "a"), {**b0["tensors"], extra: np.zeros((1, 1, 8, 8), "f")})
    with pytest.raises(ConfigError, match=f"no layer for .*{extra}"):
        convert_official_checkpoint(str(tmp_path / "a"), image_size=32)
    bad = "efficientnet-b0/head/conv2d/kernel"
    write_checkpoint(str(tmp_path / "b"), {**b0["tensors"], bad + EMA: np.zeros((1, 1, 320, 8))})
    with pytest.raises(ConfigError, match=re.escape(f"{bad}{EMA} (1, 1, 320, 8) vs model")):
        convert_official_checkpoint(str(tmp_path / "b"), image_size=32)
    with pytest.raises(ConfigError, match="num_classes=1000 but .* classifies 10"):
        convert_official_checkpoint(b0["prefix"], num_classes=1000)


def test_student_run_checkpoint_picks_the_student_scope(b0, tmp_path):
    # noisystudent main.py keeps the frozen teacher under teacher_model/<name>.
    tensors = dict(b0["tensors"])
    tensors.update({"teacher_model/" + k: -v for k, v in b0["tensors"].items() if "/" in k})
    prefix = str(tmp_path / "model.ckpt")
    write_checkpoint(prefix, tensors)
    student = convert_official_checkpoint(prefix)
    np.testing.assert_allclose(
        logits(student, b0["images"]), b0["ema_logits"], atol=1e-5, rtol=1e-5
    )
    model = build_efficientnet("efficientnet-b0", num_classes=10, input_shape=(32, 32, 3))
    report = load_official_weights(model, prefix, scope="teacher_model/efficientnet-b0")
    assert report.scope == "teacher_model/efficientnet-b0"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("predictions").bias),
        -tensors["efficientnet-b0/head/dense/bias" + EMA],
    )


def test_b2_at_a_small_input_size(tmp_path):
    keras.utils.set_random_seed(3)
    source = build_efficientnet("efficientnet-b2", num_classes=4, input_shape=(64, 64, 3))
    randomize(source, seed=4)
    prefix, _, _ = make_checkpoint(str(tmp_path), source, "efficientnet-b2")
    model = convert_official_checkpoint(prefix, image_size=64)
    assert model.name == "efficientnet-b2" and model.input_shape == (None, 64, 64, 3)
    images = pixels(2, 64, seed=5)
    np.testing.assert_allclose(logits(model, images), logits(source, images), atol=1e-5, rtol=1e-5)


def test_paths_and_labeling_teacher(b0, tmp_path):
    # A state file naming the prefix by another machine's absolute path.
    moved = tmp_path / "moved"
    shutil.copytree(b0["folder"], moved)
    (moved / "checkpoint").write_text('model_checkpoint_path: "/gone/train/model.ckpt-5"\n')
    assert oc.checkpoint_prefix(str(moved)) == str(moved / "model.ckpt-5")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "model.ckpt-9"))
    with pytest.raises(ConfigError, match="nor an official TF1 checkpoint"):
        load_checkpoint(str(tmp_path))  # a folder without a 'checkpoint' file
    write_checkpoint(str(tmp_path / "resnet"), {"resnet50/conv2d/kernel": np.zeros(3, "f")})
    with pytest.raises(ConfigError, match="no EfficientNet model scopes"):
        convert_official_checkpoint(str(tmp_path / "resnet"))
    write_checkpoint(str(tmp_path / "b8"), {"efficientnet-b8/stem/conv2d/kernel": np.zeros(3, "f")})
    with pytest.raises(ConfigError, match="'efficientnet-b8'; supported: efficientnet-b0"):
        convert_official_checkpoint(str(tmp_path / "b8"))
    teacher = shards.load_teacher(b0["prefix"])
    assert teacher.image_size == 224
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(teacher.logits(tf.constant(b0["images"]))),
        b0["ema_logits"],
        atol=1e-5,
        rtol=1e-5,
    )
    assert fingerprint(b0["folder"]) == fingerprint(str(moved))
