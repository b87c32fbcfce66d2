"""The issue-21 model and optimizer keys on every config: defaults in the base
config that keep today's behaviour, overridable from the command line, and
checked by validate_config before any model is built."""

import copy
import os

import keras
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from noisy_student_tf import configs
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop import config_checks, stages
from noisy_student_tf.training import optimization, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every config with its smoke variant (and a few others); a config added to
# configs.NAMES must be listed here (test_every_config_is_listed).
VARIANTS = {
    "digits": (None, "smoke"),
    "cifar10_4k": (None, "cpu", "smoke"),
    "imagenet": ("b0", "l2", "smoke", "l2,smoke"),
    "svhn": (None, "offline", "smoke"),
}
CASES = [f"{name}:{arg}" if arg else name for name, args in VARIANTS.items() for arg in args]
MODEL_KEYS = {"normalization": "imagenet", "batch_norm_group_size": 1}
TRAIN_KEYS = {"rmsprop_second_moment_init": 0.0}
# The paper configs' values, each cited in imagenet.py / svhn.py.
PAPER_VALUES = {
    "imagenet": ({"normalization": "imagenet", "batch_norm_group_size": -1}, 1.0),
    "svhn": ({"normalization": "svhn", "batch_norm_group_size": 1}, 1.0),
}


def get(spec):
    config = configs.get(spec)
    if config.data.get("labeled") and not config.data.get("unlabeled"):
        config.data.unlabeled = "/data/unlabeled_pool"  # the one key paper configs leave open
    return config


def test_every_config_is_listed():
    assert set(VARIANTS) == set(configs.NAMES)


@pytest.mark.parametrize("spec", CASES)
def test_every_config_has_the_keys_with_the_base_or_paper_values(spec):
    config = configs.get(spec)
    name = spec.partition(":")[0]
    model_values, ms_init = PAPER_VALUES.get(name, (MODEL_KEYS, 0.0))
    for role in ("teacher", "student"):
        assert {k: config[role][k] for k in MODEL_KEYS} == model_values, role
    assert config.train.rmsprop_second_moment_init == ms_init


def _parse(argv):
    """experiments/noisy_student.py's --config flag (locked, like the script's)."""
    values = flags.FlagValues()
    argv = ["prog", *argv]
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


@pytest.mark.parametrize("name", ["digits", "cifar10_4k"])
def test_the_keys_are_overridable_on_the_command_line(name):
    path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    config = _parse(
        [
            f"--config={path}:smoke",
            "--config.student.batch_norm_group_size=2",
            "--config.teacher.normalization=svhn",
            "--config.train.rmsprop_second_moment_init=1.0",
        ]
    )
    assert config.student.batch_norm_group_size == 2
    assert config.teacher.normalization == "svhn"
    assert config.train.rmsprop_second_moment_init == 1.0


def _without_new_keys(config):
    """The config as it was before the keys existed in the base config."""
    old = copy.deepcopy(config)
    for role in ("teacher", "student"):
        for key in MODEL_KEYS:
            del old[role][key]
    del old.train["rmsprop_second_moment_init"]
    return old


@pytest.mark.parametrize("spec", ["digits", "digits:smoke", "cifar10_4k:cpu", "cifar10_4k:smoke"])
def test_defaults_build_the_same_model_and_optimizer_as_without_the_keys(spec):
    config = configs.get(spec)
    old = _without_new_keys(config)
    for block, old_block in ((config.teacher, old.teacher), (config.student, old.student)):
        block = copy.deepcopy(block)
        old_block = copy.deepcopy(old_block)
        # Tiny width and depth: the test compares the wiring, not the size.
        for b in (block, old_block):
            b.width_coefficient = b.depth_coefficient = 0.125
        model = trainer.build_model(block, num_classes=3, image_size=16, seed=0)
        before = trainer.build_model(old_block, num_classes=3, image_size=16, seed=0)
        assert [type(x) for x in model.layers] == [type(x) for x in before.layers]
        for w, w0 in zip(model.weights, before.weights, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), w0.numpy())
    for train in (config.train, old.train):  # the base default, on rmsprop: Keras's own
        train = copy.deepcopy(train)
        train.optimizer = "rmsprop"
        optimizer = optimization.build_optimizer(train, 32, 10, 1)
        assert type(optimizer) is keras.optimizers.RMSprop


@pytest.mark.parametrize("spec", ["digits", "digits:smoke", "cifar10_4k", "cifar10_4k:smoke"])
def test_stage_settings_change_only_by_the_added_keys_at_their_defaults(spec):
    """Adding keys adds flat settings (a workdir made before them is refused
    on rerun: '(absent) -> default'); no existing setting changes."""
    config = configs.get(spec)
    new, old = stages.flat_settings(config), stages.flat_settings(_without_new_keys(config))
    added = {k: v for k, v in new.items() if k not in old}
    assert {k: v for k, v in new.items() if k in old} == old
    assert added == {
        **{f"{role}.{k}": v for role in ("teacher", "student") for k, v in MODEL_KEYS.items()},
        **{f"train.{k}": v for k, v in TRAIN_KEYS.items()},
    }


def _official_group(replicas):
    """noisystudent utils.py / main.py --num_shards_per_group=-1, computed here directly."""
    return 1 if replicas <= 8 else max(8, replicas // 8)


@pytest.mark.parametrize("spec", CASES)
def test_validate_config_accepts_every_config_as_shipped(spec):
    config = get(spec)
    shipped = config.to_dict()
    config_checks.validate_config(config)
    config_checks.validate_config(config, num_replicas=1)
    if config.strategy == "tpu":  # a v3-8 slice and the paper's 2048-core pod
        for replicas in (8, 2048):
            config_checks.validate_config(config, num_replicas=replicas)
        # ... while the group check is live: 12 replicas are not whole groups of 8.
        with pytest.raises(ConfigError, match="batch_norm_group_size"):
            config_checks.validate_config(config, num_replicas=12)
    assert config.to_dict() == shipped  # validation reads, never rewrites, the config


def test_unknown_normalization_names_the_key_and_the_valid_names():
    config = get("digits:smoke")
    config.teacher.normalization = "cifar"
    with pytest.raises(
        ConfigError, match=r"teacher\.normalization='cifar'.*imagenet, svhn, advprop"
    ):
        config_checks.validate_config(config)


@pytest.mark.parametrize("group", [0, -2, True])
def test_group_size_must_be_minus_one_or_a_positive_integer(group):
    config = get("digits:smoke")
    config.student.batch_norm_group_size = group
    with pytest.raises(ConfigError, match=r"student\.batch_norm_group_size must be an integer"):
        config_checks.validate_config(config)  # replicas unknown: the value alone


def test_a_non_integer_group_size_is_refused_by_the_typed_base_key():
    """The base config's int default types the key: ConfigDict refuses 1.5 on assignment."""
    config = get("cifar10_4k:smoke")
    with pytest.raises(TypeError, match="batch_norm_group_size"):
        config.student.batch_norm_group_size = 1.5


def test_group_size_and_sync_batch_norm_are_exclusive():
    config = get("digits:smoke")
    config.student.batch_norm_group_size = 2
    config.student.sync_batch_norm = True
    with pytest.raises(ConfigError, match="sync_batch_norm=True both set"):
        config_checks.validate_config(config)


@pytest.mark.parametrize(
    "group,replicas,divides",
    [(2, 1, False), (3, 4, False), (2, 4, True), (4, 4, True), (1, 3, True)]
    + [(-1, n, n % _official_group(n) == 0) for n in (1, 2, 8, 12, 16, 20, 36, 64, 2048)],
)
def test_group_size_must_divide_the_replicas(group, replicas, divides):
    config = get("digits:smoke")
    config.train.batch_size = 4 * replicas  # the batch itself splits over the replicas
    config.student.batch_norm_group_size = group
    config_checks.validate_config(config)  # replicas unknown: nothing to divide yet
    if divides:
        config_checks.validate_config(config, num_replicas=replicas)
        return
    size = _official_group(replicas) if group == -1 else group
    with pytest.raises(
        ConfigError,
        match=rf"student\.batch_norm_group_size={group} gives groups of {size}\b.* {replicas} replicas",
    ):
        config_checks.validate_config(config, num_replicas=replicas)


def test_the_official_rule_leaves_some_replica_counts_undivided():
    """The parametrization above does reach the refusal for -1 (12, 20 and 36 replicas)."""
    assert [n for n in (12, 20, 36) if n % _official_group(n)] == [12, 20, 36]


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_second_moment_init_must_be_finite_and_non_negative(value):
    config = get("svhn:smoke")
    config.train.rmsprop_second_moment_init = value
    with pytest.raises(ConfigError, match="train.rmsprop_second_moment_init must be"):
        config_checks.validate_config(config)


@pytest.mark.parametrize("spec,optimizer", [("imagenet:smoke", "sgd"), ("svhn:smoke", "adam")])
def test_a_nonzero_second_moment_init_is_refused_without_rmsprop(spec, optimizer):
    config = get(spec)
    config.train.optimizer = optimizer
    with pytest.raises(
        ConfigError, match=rf"rmsprop_second_moment_init=1.0 is for .*'{optimizer}'"
    ):
        config_checks.validate_config(config)
    config.train.rmsprop_second_moment_init = 0.0  # the way out the message names
    config_checks.validate_config(config)


def test_a_second_moment_init_on_rmsprop_is_accepted_on_the_base_config():
    config = get("digits:smoke")
    config.train.optimizer = "rmsprop"
    config.train.rmsprop_second_moment_init = 1.0
    config_checks.validate_config(config, num_replicas=1)
    optimizer = optimization.build_optimizer(config.train, 32, 10, 1)
    assert isinstance(optimizer, optimization.TF1RMSprop)
