"""The fine-tuning stage's parts: frozen shallow layers, schedule continuation, validation."""

import ml_collections
import numpy as np
import pytest

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.models import build_efficientnet
from noisy_student_tf.training import fine_tune
from noisy_student_tf.training.optimization import WarmupSchedule


def _tiny(size):
    return build_efficientnet(
        "efficientnet-b0",
        num_classes=3,
        input_shape=(size, size, 3),
        width_coefficient=0.1,
        depth_coefficient=0.1,
        small_image=True,
    )


def test_freezes_the_stem_and_the_first_blocks_only():
    model = _tiny(16)
    blocks = fine_tune.block_prefixes(model)
    assert blocks[0] == "block1a_" and len(blocks) >= 3
    frozen = fine_tune.freeze_shallow_layers(model, 2)
    assert frozen > 0
    for layer in model.layers:
        shallow = layer.name.startswith(("stem", *blocks[:2]))
        assert layer.trainable == (not shallow), layer.name
    with pytest.raises(ConfigError, match="frozen_blocks=99"):
        fine_tune.freeze_shallow_layers(_tiny(16), 99)


def test_weights_carry_over_to_a_larger_input_and_frozen_layers_do_not_move():
    small, large = _tiny(16), _tiny(24)
    large.set_weights(small.get_weights())
    fine_tune.freeze_shallow_layers(large, 1)
    stem_before = [w.numpy().copy() for w in large.get_layer("stem_conv").weights]
    images = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3)).astype("float32")
    large.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    large.fit(images, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    for before, after in zip(stem_before, large.get_layer("stem_conv").weights):
        np.testing.assert_array_equal(before, after.numpy())
    head = large.get_layer("predictions").kernel.numpy()
    assert not np.array_equal(head, small.get_layer("predictions").kernel.numpy())


def test_schedule_offset_continues_another_schedule():
    main = WarmupSchedule(1.0, steps_per_epoch=10, total_steps=100, schedule="cosine")
    tail = WarmupSchedule(
        1.0, steps_per_epoch=10, total_steps=100, schedule="cosine", step_offset=85
    )
    for step in (0, 5, 14):
        np.testing.assert_allclose(float(tail(step)), float(main(step + 85)), rtol=1e-6)
    assert tail.get_config()["step_offset"] == 85


def test_fine_tuning_needs_stream_mode_and_labeled_images_only():
    block = dict(
        enabled=True,
        image_size=48,
        epochs=1.5,
        preprocess="none",
        frozen_blocks=1,
        unlabeled_ratio=0,
        continue_schedule=True,
    )
    config = ml_collections.ConfigDict(dict(fine_tune=block))
    fine_tune.validate(config, streamed=True)
    with pytest.raises(ConfigError, match="needs stream mode"):
        fine_tune.validate(config, streamed=False)
    config.fine_tune.unlabeled_ratio = 2
    with pytest.raises(ConfigError, match="fine_tune.unlabeled_ratio must be 0"):
        fine_tune.validate(config, streamed=True)
    config.fine_tune.enabled = False
    fine_tune.validate(config, streamed=False)  # a disabled block is never checked
