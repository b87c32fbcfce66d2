"""Tests for noisy_student_tf.models: EfficientNet builders, noise, weight transfer."""

import math

import keras
import numpy as np
import pytest
from conftest import run_script

from noisy_student_tf.models import (
    VARIANTS,
    StochasticDepth,
    build_efficientnet,
    load_keras_applications_weights,
)
from noisy_student_tf.models import efficientnet as en
from noisy_student_tf.models import weights as weights_lib

TINY = dict(
    input_shape=(32, 32, 3), width_coefficient=0.25, depth_coefficient=0.25, small_image=True
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session(free_memory=False)  # names restart; gc.collect costs ~0.4 s


def _pixels(n, size, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _keras_app(name, **kwargs):
    return weights_lib.KERAS_BUILDERS[name](weights=None, classifier_activation=None, **kwargs)


def _randomize_statistics(model, seed=1):
    """Non-trivial batch-norm statistics, so copying them is tested too."""
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


def _drop_layers(model):
    return [lyr for lyr in model.layers if isinstance(lyr, StochasticDepth)]


# --- the variant table ------------------------------------------------------


def test_variant_table_matches_official_efficientnet_params():
    # tensorflow/tpu efficientnet_builder.efficientnet_params.
    assert VARIANTS == {
        "efficientnet-b0": (1.0, 1.0, 224, 0.2),
        "efficientnet-b1": (1.0, 1.1, 240, 0.2),
        "efficientnet-b2": (1.1, 1.2, 260, 0.3),
        "efficientnet-b3": (1.2, 1.4, 300, 0.3),
        "efficientnet-b4": (1.4, 1.8, 380, 0.4),
        "efficientnet-b5": (1.6, 2.2, 456, 0.4),
        "efficientnet-b6": (1.8, 2.6, 528, 0.5),
        "efficientnet-b7": (2.0, 3.1, 600, 0.5),
        "efficientnet-l2": (4.3, 5.3, 800, 0.5),
    }


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_builds_with_its_depth_and_defaults(name):
    width, depth, _, dropout = VARIANTS[name]
    # Real depth; width shrunk only so L2 stays cheap. Width scaling of every
    # variant is covered by the parameter-count tests and the table script.
    model = build_efficientnet(name, num_classes=7, input_shape=(32, 32, 3), width_coefficient=0.1)
    expected_blocks = sum(math.ceil(depth * s.repeats) for s in en.BLOCKS)
    blocks = [lyr for lyr in model.layers if lyr.name.endswith("_project_conv")]
    assert len(blocks) == expected_blocks
    assert model.get_layer("top_dropout").rate == dropout
    assert model.name == name
    logits = model(_pixels(2, 32), training=False)
    assert logits.shape == (2, 7)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b1", "efficientnet-b2"])
def test_param_count_equals_keras_applications(name):
    classes = 1000 if name != "efficientnet-b1" else 10
    ours = build_efficientnet(name, num_classes=classes).count_params()
    assert ours == _keras_app(name, classes=classes).count_params()


def test_round_filters_and_repeats_follow_official_rules():
    assert en.round_filters(32, 1.0) == 32
    assert en.round_filters(1280, 2.0) == 2560  # B7 head
    assert en.round_filters(1280, 4.3) == 5504  # L2 head
    assert en.round_filters(16, 1.1) == 16  # 17.6 -> 16 (within 10%)
    assert en.round_filters(24, 0.25) == 8  # never below the divisor
    assert en.round_repeats(4, 5.3) == 22


def test_l2_parameter_count_within_one_percent_of_paper():
    model = build_efficientnet("efficientnet-l2", num_classes=1000)
    # Noisy Student paper, Table 1 / section 3.1: 480M parameters.
    assert abs(model.count_params() - 480e6) / 480e6 < 0.01


# --- inputs, shapes, small-image variant ----------------------------------------


def test_small_image_variant_ends_at_4x4_and_default_at_1x1():
    small = build_efficientnet("efficientnet-b0", 10, **TINY)
    default = build_efficientnet(
        "efficientnet-b0",
        10,
        input_shape=(32, 32, 3),
        width_coefficient=0.25,
        depth_coefficient=0.25,
    )
    assert small.get_layer("top_conv").output.shape[1:3] == (4, 4)
    assert default.get_layer("top_conv").output.shape[1:3] == (1, 1)
    # Same weights either way: stride does not change any shape.
    assert small.count_params() == default.count_params()


def test_resolution_defaults_and_overrides():
    assert build_efficientnet("efficientnet-b1", 5, width_coefficient=0.25).input_shape == (
        None,
        240,
        240,
        3,
    )
    assert build_efficientnet(
        "efficientnet-b0", 5, resolution=64, width_coefficient=0.25
    ).input_shape == (None, 64, 64, 3)
    assert build_efficientnet(
        "efficientnet-b0", 5, small_image=True, width_coefficient=0.25
    ).input_shape == (None, 32, 32, 3)


def test_unset_arguments_never_override_variant_defaults():
    model = build_efficientnet(
        "efficientnet-b2",
        5,
        input_shape=(32, 32, 3),
        dropout_rate=None,
        final_survival_prob=None,
        width_coefficient=None,
        depth_coefficient=None,
        resolution=None,
        small_image=None,
        batch_norm_momentum=None,
    )
    assert model.get_layer("top_conv").kernel.shape[-1] == 1408  # width 1.1
    assert len([lyr for lyr in model.layers if lyr.name.endswith("_project_conv")]) == 23
    assert model.get_layer("top_conv").output.shape[1:3] == (1, 1)  # strides
    assert model.get_layer("top_dropout").rate == 0.3
    assert min(lyr.survival_prob for lyr in _drop_layers(model)) > 0.8
    assert model.get_layer("stem_bn").momentum == 0.99


def test_uint8_and_float_pixels_give_same_logits_and_variable_size_works():
    model = build_efficientnet("efficientnet-b0", 10, **TINY)
    x = _pixels(2, 32)
    as_uint8 = np.round(x).astype("uint8")
    np.testing.assert_array_equal(
        model(as_uint8, training=False), model(as_uint8.astype("float32"), training=False)
    )
    flexible = build_efficientnet(
        "efficientnet-b0",
        10,
        input_shape=(None, None, 3),
        width_coefficient=0.25,
        depth_coefficient=0.25,
    )
    assert flexible(_pixels(1, 45), training=False).shape == (1, 10)


def test_batch_norm_and_initializers_follow_official_code():
    model = build_efficientnet("efficientnet-b0", 10, **TINY)
    bn = model.get_layer("block2a_bn")
    assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)
    init = model.get_layer("stem_conv").kernel_initializer.get_config()
    assert (init["scale"], init["mode"], init["distribution"]) == (
        2.0,
        "fan_out",
        "untruncated_normal",
    )
    dense = model.get_layer("predictions").kernel_initializer.get_config()
    assert (dense["scale"], dense["mode"], dense["distribution"]) == (
        1.0 / 3.0,
        "fan_out",
        "uniform",
    )
    norm = model.get_layer("normalization")
    np.testing.assert_allclose(norm.mean.numpy().ravel(), en.IMAGENET_MEAN_RGB, rtol=1e-6)
    np.testing.assert_allclose(
        norm.variance.numpy().ravel(), np.square(en.IMAGENET_STDDEV_RGB), rtol=1e-6
    )


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_efficientnet("efficientnet-b0", 10, **TINY)
        assert model.get_layer("top_conv").compute_dtype == "float16"
        assert model(_pixels(2, 32), training=False).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_keras_format_round_trip_gives_same_logits(tmp_path):
    model = build_efficientnet("efficientnet-b0", 10, **TINY)
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    x = _pixels(2, 32)
    np.testing.assert_allclose(restored(x, training=False), model(x, training=False), atol=1e-6)
    assert [lyr.survival_prob for lyr in _drop_layers(restored)] == [
        lyr.survival_prob for lyr in _drop_layers(model)
    ]


# --- stochastic depth and dropout -----------------------------------------------


def test_survival_schedule_is_linear_over_all_blocks():
    model = build_efficientnet(
        "efficientnet-b0",
        10,
        input_shape=(32, 32, 3),
        width_coefficient=0.25,
        final_survival_prob=0.8,
    )
    specs = en._block_specs(0.25, 1.0, False, 8, 0.8)
    assert len(specs) == 16
    for i, spec in enumerate(specs):
        # official: survival = 1 - 0.2 * i / num_blocks, i across all stages.
        assert spec.survival_prob == pytest.approx(1 - 0.2 * i / 16)
    has_skip = {
        s.name + "drop": s.survival_prob
        for s in specs
        if s.strides == 1 and s.filters_in == s.filters_out and s.survival_prob < 1
    }
    assert {lyr.name: lyr.survival_prob for lyr in _drop_layers(model)} == has_skip
    assert len(has_skip) == 9  # B0: 16 blocks, 7 stage-first blocks lack a skip
    no_noise = build_efficientnet(
        "efficientnet-b0", 10, final_survival_prob=1.0, dropout_rate=0.0, **TINY
    )
    assert not _drop_layers(no_noise)
    assert "top_dropout" not in [lyr.name for lyr in no_noise.layers]


def test_keras_applications_uses_the_same_drop_schedule():
    ours = build_efficientnet("efficientnet-b0", 10, input_shape=(32, 32, 3))
    theirs = _keras_app("efficientnet-b0", input_shape=(32, 32, 3), classes=10)
    keras_rates = {lyr.name: lyr.rate for lyr in theirs.layers if lyr.name.endswith("_drop")}
    assert keras_rates == pytest.approx(
        {lyr.name: 1 - lyr.survival_prob for lyr in _drop_layers(ours)}
    )


def test_stochastic_depth_layer_drops_at_rate_and_rescales():
    layer = StochasticDepth(0.7, seed=3)
    x = np.ones((20000, 2, 2, 3), "float32")
    y = layer(x, training=True).numpy()
    per_sample = y.reshape(len(y), -1)
    # Each sample is entirely kept (scaled 1/p) or entirely dropped.
    assert np.all(np.isclose(per_sample, 0) | np.isclose(per_sample, 1 / 0.7))
    assert np.all(per_sample.min(1) == per_sample.max(1))
    kept = np.mean(per_sample[:, 0] > 0)
    sigma = math.sqrt(0.7 * 0.3 / len(y))
    assert abs(kept - 0.7) < 4 * sigma
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_model_drops_each_residual_branch_at_scheduled_rate_only_in_training():
    model = build_efficientnet(
        "efficientnet-b0",
        10,
        input_shape=(32, 32, 3),
        width_coefficient=0.25,
        depth_coefficient=0.5,
        small_image=True,
        final_survival_prob=0.5,
    )
    drops = _drop_layers(model)
    probe = keras.Model(model.input, [lyr.input for lyr in drops] + [lyr.output for lyr in drops])
    x = _pixels(256, 32)
    n, dropped = 0, np.zeros(len(drops))
    for _ in range(4):
        outs = [o.numpy() for o in probe(x, training=True)]
        ins, results = outs[: len(drops)], outs[len(drops) :]
        for k, (a, b) in enumerate(zip(ins, results)):
            live = np.abs(a).reshape(len(a), -1).max(1) > 0
            assert live.all()
            dropped[k] += np.sum(np.abs(b).reshape(len(b), -1).max(1) == 0)
        n += len(x)
    for layer, count in zip(drops, dropped):
        rate = 1 - layer.survival_prob
        sigma = math.sqrt(rate * (1 - rate) / n)
        assert abs(count / n - rate) < 4 * sigma + 1e-3, layer.name
    # Inference: every branch passes unchanged, logits are deterministic.
    outs = [o.numpy() for o in probe(x[:8], training=False)]
    for a, b in zip(outs[: len(drops)], outs[len(drops) :]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model(x[:8], training=False), model(x[:8], training=False))


def test_classifier_dropout_only_in_training():
    model = build_efficientnet("efficientnet-b0", 10, dropout_rate=0.5, **TINY)
    dropout = model.get_layer("top_dropout")
    features = np.ones((4000, 320), "float32")
    y = dropout(features, training=True).numpy()
    zero_fraction = np.mean(y == 0)
    sigma = math.sqrt(0.25 / y.size)
    assert abs(zero_fraction - 0.5) < 4 * sigma
    np.testing.assert_array_equal(dropout(features, training=False), features)
    x = _pixels(4, 32)
    assert not np.allclose(model(x, training=True), model(x, training=True))


# --- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, bad, valid",
    [
        (dict(name="efficientnet-b9"), "efficientnet-b9", "efficientnet-l2"),
        (dict(width_coefficient=0), "width_coefficient", "positive"),
        (dict(depth_coefficient=-1.0), "-1.0", "positive"),
        (dict(resolution=0), "resolution", "positive"),
        (dict(final_survival_prob=0.0), "0.0", "(0, 1]"),
        (dict(final_survival_prob=1.5), "1.5", "(0, 1]"),
        (dict(dropout_rate=1.0), "1.0", "[0, 1)"),
        (dict(num_classes=0), "num_classes", "positive"),
        (dict(widht_coefficient=1.0), "widht_coefficient", "width_coefficient"),
        (dict(input_shape=(32, 32, 1)), "(32, 32, 1)", "(height, width, 3)"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, bad, valid):
    args = dict(name="efficientnet-b0", num_classes=10)
    args.update(kwargs)
    with pytest.raises(ValueError) as error:
        build_efficientnet(**args)
    assert bad in str(error.value) and valid in str(error.value)


def test_stochastic_depth_rejects_bad_survival_prob():
    with pytest.raises(ValueError, match="1.2"):
        StochasticDepth(1.2)


# --- keras.applications weight transfer ----------------------------------------


@pytest.mark.parametrize("name, size", [("efficientnet-b0", 64), ("efficientnet-b2", 48)])
def test_logits_match_keras_applications_after_copy(name, size):
    source = _keras_app(name, input_shape=(size, size, 3))
    _randomize_statistics(source)
    model = build_efficientnet(name, 1000, input_shape=(size, size, 3))
    copied = load_keras_applications_weights(model, source)
    assert len(copied) == len([lyr for lyr in model.layers if lyr.weights])
    x = _pixels(4, size)
    expected = source(x, training=False).numpy()
    logits = model(x, training=False).numpy()
    assert np.abs(expected).max() > 1e-2  # the comparison is not vacuous
    assert np.abs(logits - expected).max() <= 1e-5
    before = build_efficientnet(name, 1000, input_shape=(size, size, 3))
    assert np.abs(before(x, training=False) - expected).max() > 1e-3


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_load_from_weights_file(tmp_path, suffix):
    source = _keras_app("efficientnet-b0", input_shape=(32, 32, 3))
    _randomize_statistics(source)
    path = str(tmp_path / ("b0" + suffix))
    if suffix == ".h5":
        source.save(path)  # legacy HDF5, the keras-applications file format
    else:
        source.save_weights(path)
    model = build_efficientnet("efficientnet-b0", 1000, input_shape=(32, 32, 3))
    load_keras_applications_weights(model, path)
    x = _pixels(2, 32)
    assert np.abs(model(x, training=False) - source(x, training=False)).max() <= 1e-5


def test_imagenet_file_stddev_convention_is_corrected(tmp_path):
    # keras' ImageNet files hold the stddev as the Normalization variance.
    source = _keras_app("efficientnet-b0", input_shape=(32, 32, 3))
    en.set_normalization(
        weights_lib._find_normalization(source)[0], en.IMAGENET_MEAN_RGB, en.IMAGENET_STDDEV_RGB
    )
    path = str(tmp_path / "imagenet_like.weights.h5")
    source.save_weights(path)
    model = build_efficientnet("efficientnet-b0", 1000, input_shape=(32, 32, 3), small_image=True)
    load_keras_applications_weights(model, path)
    norm = model.get_layer("normalization")
    np.testing.assert_allclose(
        norm.variance.numpy().ravel(), np.square(en.IMAGENET_STDDEV_RGB), rtol=1e-6
    )


def test_imagenet_model_rescaling_fix_is_folded_into_variance():
    # keras' EfficientNetBx(weights="imagenet") adds Rescaling(1/sqrt(stddev))
    # after the Normalization; a stand-in with the same three layers:
    inputs = keras.Input((8, 8, 3))
    norm = keras.layers.Normalization(axis=-1)
    x = norm(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Rescaling([1 / math.sqrt(s) for s in en.IMAGENET_STDDEV_RGB])(x)
    stand_in = keras.Model(inputs, x)
    en.set_normalization(norm, en.IMAGENET_MEAN_RGB, en.IMAGENET_STDDEV_RGB)
    mean, variance = weights_lib._effective_statistics(stand_in, False)
    np.testing.assert_allclose(variance, np.square(en.IMAGENET_STDDEV_RGB), rtol=1e-5)
    np.testing.assert_allclose(mean, en.IMAGENET_MEAN_RGB, rtol=1e-6)


def test_backbone_transfer_into_small_image_model_with_other_classes():
    source = _keras_app("efficientnet-b0", input_shape=(32, 32, 3))
    model = build_efficientnet("efficientnet-b0", 10, input_shape=(32, 32, 3), small_image=True)
    head = model.get_layer("predictions").get_weights()
    with pytest.raises(ValueError, match="include_top=False"):
        load_keras_applications_weights(model, source)
    copied = load_keras_applications_weights(model, source, include_top=False)
    assert "predictions" not in copied and "stem_conv" in copied
    np.testing.assert_array_equal(
        model.get_layer("top_conv").kernel, source.get_layer("top_conv").kernel
    )
    for now, was in zip(model.get_layer("predictions").get_weights(), head):
        np.testing.assert_array_equal(now, was)


def test_transfer_rejects_mismatched_variant_and_missing_file(tmp_path):
    source = _keras_app("efficientnet-b1", input_shape=(32, 32, 3))
    model = build_efficientnet("efficientnet-b0", 1000, input_shape=(32, 32, 3))
    kernel = model.get_layer("stem_conv").get_weights()[0]
    with pytest.raises(ValueError, match="lacks.*block1b"):
        load_keras_applications_weights(model, source)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel, kernel)
    with pytest.raises(ValueError, match="does not exist"):
        load_keras_applications_weights(model, str(tmp_path / "missing.h5"))
    tiny = build_efficientnet("efficientnet-b0", 10, **TINY)
    with pytest.raises(ValueError, match="matches none"):
        weights_lib.keras_variant_of(tiny)


_INIT_CHECKSUM = """
import keras, numpy as np
from noisy_student_tf.models import build_efficientnet
keras.utils.set_random_seed(0)
model = build_efficientnet("efficientnet-b0", 10, input_shape=(32, 32, 3), width_coefficient=0.25,
                           depth_coefficient=0.25, small_image=True)
print("CHECKSUM", sum(float(np.abs(w).sum()) for w in model.get_weights()))
"""


def test_initial_weights_are_distinct_per_layer_and_seeded_across_processes():
    model = build_efficientnet("efficientnet-b0", 10, input_shape=(32, 32, 3), small_image=True)
    kernels = [w.numpy() for w in model.weights if w.path.endswith("kernel")]
    first_values = [k.ravel()[:16].tobytes() for k in kernels]
    assert len(set(first_values)) == len(kernels)  # no two layers start identical
    # keras.utils.set_random_seed fixes the initial weights in any process.
    runs = [run_script("-c", _INIT_CHECKSUM) for _ in range(2)]
    sums = [line for run in runs for line in run.stdout.splitlines() if "CHECKSUM" in line]
    assert len(sums) == 2 and sums[0] == sums[1], [run.stderr[-1000:] for run in runs]


def test_build_model_with_a_seed_ignores_what_was_built_before():
    """The loop's weights depend on (seed, iteration), not on the process's build order."""
    from noisy_student_tf import configs
    from noisy_student_tf.training.trainer import build_model

    block = configs.get("digits:smoke").student
    first = build_model(block, 10, 8, seed=3).get_weights()
    build_model(block, 10, 8)  # a throwaway model moves the global generators
    again = build_model(block, 10, 8, seed=3).get_weights()
    other = build_model(block, 10, 8, seed=4).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
