"""Every model at its own resolution (issue 21 item 2): the config side.

The end-to-end check (teacher and student of `imagenet.py:l2,smoke` trained,
exported, evaluated and labeling at their own sizes) is in
tests/test_configs.py `test_smoke_variant_runs_through_the_loop`; here the
sizes the configs set and the settings the loop refuses, without training.
"""

import ml_collections
import numpy as np
import pytest
from conftest import tiny_loop_config, tiny_loop_data

from noisy_student_tf import configs
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop import data_modes
from noisy_student_tf.loop.config_checks import model_image_size, validate_config
from noisy_student_tf.models import VARIANTS


def _imagenet(arg):
    config = configs.get(f"imagenet:{arg}")
    config.data.unlabeled = "/data/unlabeled"  # the one path its users must name
    return config


def test_l2_sets_the_papers_sizes_and_b0_to_b7_their_variants():
    config = _imagenet("l2")
    validate_config(config)
    # builder: B7 600 px; paper: L2 trains at 475 and tests at 800.
    assert model_image_size(config, config.teacher) == VARIANTS["efficientnet-b7"][2] == 600
    assert model_image_size(config, config.student) == 475
    assert config.fine_tune.image_size == 800
    for name in ("b0", "b3", "b7"):
        config = _imagenet(name)
        for block in (config.teacher, config.student):
            assert block.image_size == 0  # data.image_size: the variant's own
            assert model_image_size(config, block) == VARIANTS[f"efficientnet-{name}"][2]
    smoke = _imagenet("l2,smoke")
    validate_config(smoke)
    assert model_image_size(smoke, smoke.teacher) > model_image_size(smoke, smoke.student)


def test_a_block_without_image_size_takes_data_image_size():
    config = tiny_loop_config()
    for role in ("teacher", "student"):  # a config file written before the keys
        kept = {k: v for k, v in config[role].items() if k not in ("image_size", "init_checkpoint")}
        config[role] = ml_collections.ConfigDict(kept)
    validate_config(config)
    assert model_image_size(config, config.teacher) == config.data.image_size == 32
    # In memory every model takes the arrays' side, whatever data.image_size says.
    sets = data_modes.ArraySets(config, tiny_loop_data(np.random.default_rng(0), size=16))
    assert sets.model_size(config.student) == 16


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # In memory the arrays have one size: data.image_size.
        (
            {"teacher.image_size": 48},
            r"^teacher\.image_size=48 and student\.image_size=0 \(data\.image_size=32\), "
            r"but in-memory data is held at data\.image_size=32",
        ),
        ({"teacher.image_size": 48, "student.image_size": 48}, "in-memory data is held"),
        # Online, the teacher labels the student's own batches: one size.
        (
            {"teacher.image_size": 48, "pseudo.online": True},
            r"^pseudo\.online needs one size for teacher and student, got "
            r"teacher\.image_size=48 and student\.image_size=0 \(data\.image_size=32\)",
        ),
        ({"student.image_size": 4}, r"^student\.image_size must be >= 8 .* got 4"),
        ({"teacher.image_size": -1}, r"^teacher\.image_size must be >= 0, got -1"),
    ],
)
def test_sizes_the_data_mode_cannot_give_are_refused_naming_the_keys(overrides, expected):
    config = configs.get("digits")
    for key, value in overrides.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)


def test_equal_sizes_in_memory_and_different_sizes_streamed_are_accepted():
    config = configs.get("digits")
    config.teacher.image_size = config.student.image_size = config.data.image_size
    validate_config(config)
    validate_config(_imagenet("l2"))  # streamed: 600 and 475
    # The robustness report compares every model on the same images.
    config = _imagenet("l2")
    config.evaluate.robustness = True
    with pytest.raises(ConfigError, match=r"^evaluate\.robustness .* \[475, 600, 800\] px"):
        validate_config(config)
