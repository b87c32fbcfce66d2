"""Every config file and variant: it loads, passes validation, its models build,
the paper's cited values hold, and its `smoke` variant runs through the loop."""

import glob
import importlib.util
import json
import math
import os

import keras
import numpy as np
import pytest
from conftest import REPO, run_script, script_env, source_examples, write_records

from noisy_student_tf import configs
from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import records, schema
from noisy_student_tf.loop import config_checks, stages
from noisy_student_tf.models import VARIANTS, load_checkpoint
from noisy_student_tf.training import trainer

CONFIG_DIR = os.path.join(REPO, "experiments", "configs")

# Every config file and the variants its docstring documents (None: no arg).
CONFIG_VARIANTS = {
    "digits.py": (None, "smoke"),
    "cifar10_4k.py": (None, "cpu", "smoke"),
    "imagenet.py": (
        *("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "l2"),
        *("smoke", "b7,smoke", "l2,smoke"),
    ),
    "svhn.py": (None, "offline", "smoke", "offline,smoke"),
}
CASES = [(name, arg) for name, args in CONFIG_VARIANTS.items() for arg in args]
CASE_IDS = [f"{name}:{arg or ''}" for name, arg in CASES]
# Built at full size here: B0 (5.3M parameters, ~6 s on 2 busy cores) and
# anything narrower. B7 alone takes ~20 s to build and L2 holds 480M
# parameters, so larger variants build at their `smoke` scaling (the same
# blocks, width and depth x1/8), and test_imagenet_l2_schedule checks L2's
# table entry instead.
FULL_BUILD = ("efficientnet-b0",)


def load_config_module(name):
    return configs.module(name.removesuffix(".py"))


def get_config(name, arg):
    return load_config_module(name).get_config(arg)


def with_required_paths(config):
    """Fills the one key a streamed paper config leaves to the user."""
    if config.data.get("labeled") and not config.data.get("unlabeled"):
        config.data.unlabeled = "/data/unlabeled_pool"
    return config


def test_every_config_file_is_covered():
    found = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))}
    assert found == set(CONFIG_VARIANTS)
    assert {f"{name}.py" for name in configs.NAMES} == set(CONFIG_VARIANTS)


@pytest.mark.parametrize("name", ["digits", "cifar10_4k"])
def test_the_script_paths_and_the_packaged_names_give_one_config(name):
    """`experiments/configs/X.py` is the packaged config, not a copy."""
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"script_config_{name}", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.get_config("smoke").to_dict() == configs.get(f"{name}:smoke").to_dict()


def test_an_unknown_config_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown config 'digit'.*digits, cifar10_4k"):
        configs.get("digit:smoke")


@pytest.mark.parametrize("name,arg", CASES, ids=CASE_IDS)
def test_config_loads_and_validates(name, arg):
    config = with_required_paths(get_config(name, arg))
    config_checks.validate_config(config)
    if config.strategy == "tpu":  # a v3-8 slice: 8 replicas share the global batch
        config_checks.validate_config(config, num_replicas=8)
    ratios = tuple(config.pseudo.get("unlabeled_ratio_per_iteration", ()))
    if ratios:  # one ratio per student, each a valid unlabeled_ratio
        assert len(ratios) == config.num_iterations
        for ratio in ratios:
            config.pseudo.unlabeled_ratio = ratio
            config_checks.validate_config(config)


@pytest.mark.parametrize("name,arg", CASES, ids=CASE_IDS)
def test_models_build_and_student_is_not_smaller(name, arg):
    config = get_config(name, arg)
    size = config.data.image_size
    architectures = {config.teacher.architecture, config.student.architecture}
    if (
        not architectures <= set(FULL_BUILD) and config.student.width_coefficient >= 1.0
    ):  # the same blocks at the smoke scaling
        tokens = [t for t in (arg or "").split(",") if t] + ["smoke"]
        config = get_config(name, ",".join(dict.fromkeys(tokens)))
        size = config.data.image_size
    keras.backend.clear_session()
    teacher = trainer.build_model(config.teacher, config.data.num_classes, size)
    student = (
        teacher
        if config.student.to_dict() == config.teacher.to_dict()
        else trainer.build_model(config.student, config.data.num_classes, size)
    )
    assert teacher.input_shape == student.input_shape == (None, size, size, 3)
    assert student.output_shape == (None, config.data.num_classes)
    trainer.check_student_size(teacher, student, config.allow_smaller_student)


MODELS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")
# local_scripts/imagenet/train.sh: RandAugment magnitude (B0/B1: none),
# --unlabel_ratio, and epochs (350 x --train_ratio).
TRAIN_SH = {
    "b0": (0, 1, 700),
    "b1": (0, 3, 700),
    "b2": (6, 3, 700),
    "b3": (12, 3, 700),
    "b4": (15, 3, 700),
    "b5": (18, 3, 350),
    "b6": (24, 3, 350),
    "b7": (27, 3, 350),
}


@pytest.mark.parametrize("model", MODELS)
def test_imagenet_per_size_values(model):
    config = get_config("imagenet.py", model)
    architecture = f"efficientnet-{model}"
    width, depth, resolution, dropout = VARIANTS[architecture]
    magnitude, ratio, epochs = TRAIN_SH[model]
    for block in (config.teacher, config.student):  # train.sh: same-size teacher
        assert block.architecture == architecture
        assert (block.width_coefficient, block.depth_coefficient) == (width, depth)
        assert block.dropout_rate == dropout and block.final_survival_prob == 0.8
        assert (block.randaugment_layers, block.randaugment_magnitude) == (2, magnitude)
    assert config.data.image_size == resolution
    assert config.pseudo.unlabeled_ratio == ratio
    assert config.train.student_epochs == epochs
    assert config.train.decay_epochs == pytest.approx(2.4 * epochs / 350)
    assert config.num_iterations == 1
    assert not config.fine_tune.enabled


def test_imagenet_shared_official_values():
    config = get_config("imagenet.py", "b3")
    train, pseudo = config.train, config.pseudo
    # paper: 0.128 at labeled batch 2048; the config holds it per 256.
    assert train.learning_rate * train.batch_size / 256 == pytest.approx(0.128)
    assert train.batch_size == 2048
    assert (train.optimizer, train.schedule, train.decay_rate) == ("rmsprop", "exponential", 0.97)
    assert (train.warmup_epochs, train.weight_decay, train.label_smoothing) == (5, 1e-5, 0.1)
    assert train.ema_decay == 0.9999
    assert config.student.batch_norm_momentum == 0.99
    assert (pseudo.threshold, pseudo.images_per_class, pseudo.soft) == (0.3, 130_000, True)
    assert (pseudo.balance, config.student.randaugment_variant) == ("official", "official")
    assert (config.strategy, config.precision) == ("tpu", "auto")
    assert config.data.labeled == "tfds:imagenet2012:train"
    assert config.data.test == "tfds:imagenet2012:validation"
    assert config.data.num_classes == 1000


def test_imagenet_l2_schedule():
    config = get_config("imagenet.py", "l2")
    assert config.teacher.architecture == "efficientnet-b7"  # paper: B7 teacher
    assert config.student.architecture == "efficientnet-l2"
    assert config.num_iterations == 3
    assert tuple(config.pseudo.unlabeled_ratio_per_iteration) == (14, 14, 28)
    assert config.pseudo.unlabeled_ratio == 14
    assert config.data.image_size == 475 and config.train.student_epochs == 350
    assert config.student.randaugment_magnitude == 27 and config.student.dropout_rate == 0.5
    # L2 is not built (480M parameters): its coefficients dominate B7's, so
    # every stage is at least as wide and as deep, hence more parameters.
    l2, b7 = VARIANTS["efficientnet-l2"], VARIANTS["efficientnet-b7"]
    assert (config.student.width_coefficient, config.student.depth_coefficient) == l2[:2]
    assert l2[0] >= b7[0] and l2[1] >= b7[1]
    fine_tune = config.fine_tune
    assert fine_tune.enabled and fine_tune.image_size == 800 == l2[2]
    assert fine_tune.epochs == 1.5 and fine_tune.preprocess == "none"
    assert fine_tune.unlabeled_ratio == 0
    assert fine_tune.frozen_blocks == 44  # stages 1-4 of L2's 88 blocks (a guess)


def test_svhn_official_values():
    config = get_config("svhn.py", None)
    train, pseudo, student = config.train, config.pseudo, config.student
    assert (student.architecture, student.small_image, config.data.image_size) == (
        "efficientnet-b0",
        True,
        32,
    )
    assert (student.randaugment_magnitude, student.flip) == (5, False)
    assert (train.batch_size, train.weight_decay, train.final_learning_rate) == (128, 1e-4, 2e-4)
    assert train.learning_rate == 0.016 and train.student_epochs == 202
    assert (pseudo.unlabeled_ratio, pseudo.soft, pseudo.temperature) == (5, True, 1.0)
    assert (pseudo.threshold, pseudo.images_per_class) == (0.0, 0)  # run.sh: every image
    offline = get_config("svhn.py", "offline").pseudo
    assert (offline.threshold, offline.images_per_class) == (0.3, 53_113)


@pytest.mark.parametrize(
    "name,arg,match",
    [("imagenet.py", "b9", "b9"), ("imagenet.py", "b0,b7", "b0"), ("svhn.py", "b0", "b0")],
)
def test_unknown_variant_is_a_config_error(name, arg, match):
    with pytest.raises(ConfigError, match=match):
        get_config(name, arg)


def test_paper_config_without_unlabeled_folder_names_the_key():
    config = get_config("imagenet.py", "b0")
    with pytest.raises(ConfigError, match="data.unlabeled"):
        config_checks.validate_config(config)


def test_unknown_variant_on_the_command_line_is_one_error_line():
    proc = run_script(
        "experiments/noisy_student.py",
        "--config=experiments/configs/imagenet.py:b9",
        env=script_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "b9" in proc.stderr and "Traceback" not in proc.stderr


# --- smoke runs through the loop on fake shards --------------------------------


def write_shards(folder, labels, size, seed, num_shards=2):
    """Source shards (schema.source_example) of random PNGs with these labels."""
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), size, size, 3), np.uint8)
    write_records(folder, source_examples(images, labels), num_shards)
    return folder


@pytest.mark.parametrize(
    "spec,overrides",
    [
        # B7 teacher -> L2 student, one iteration: the students after the first
        # run the same code (and each costs a minute here).
        (
            "imagenet.py:l2,smoke",
            ["--config.num_iterations=1", "--config.pseudo.unlabeled_ratio_per_iteration=(1,)"],
        ),
        ("svhn.py:smoke", []),
    ],
)
def test_smoke_variant_runs_through_the_loop(tmp_path, spec, overrides):
    name, arg = spec.split(":")
    config = get_config(name, arg)
    classes, size = config.data.num_classes, config.data.image_size
    labeled = write_shards(tmp_path / "labeled", np.arange(4 * classes) % classes, size, 0)
    unlabeled = write_shards(tmp_path / "unlabeled", [schema.UNLABELED] * 24, size, 1)
    test = write_shards(tmp_path / "test", np.arange(2 * classes) % classes, size, 2)
    workdir = tmp_path / "run"
    proc = run_script(
        "experiments/noisy_student.py",
        f"--config=experiments/configs/{spec}",
        f"--config.data.labeled={labeled}",
        f"--config.data.unlabeled={unlabeled}",
        f"--config.data.test={test}",
        f"--workdir={workdir}",
        *overrides,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "results.json") as f:
        results = json.load(f)
    resolved = results["config"]
    roles = [row["role"] for row in results["models"]]
    fine_tuned = ["fine_tune"] if config.get("fine_tune") and config.fine_tune.enabled else []
    assert roles == ["teacher"] + ["student"] * resolved["num_iterations"] + fine_tuned
    if fine_tuned:
        # The last stage: the student at the fine-tuning resolution, evaluated there.
        model = load_checkpoint(str(workdir / "fine_tune_student.keras"))
        assert model.input_shape[1] == config.fine_tune.image_size != size
        assert not math.isnan(results["models"][-1]["test_top1"])
    assert resolved["teacher"]["architecture"] == config.teacher.architecture
    assert resolved["student"]["architecture"] == config.student.architecture
    assert resolved["data"]["image_size"] == size
    # Each model at its own size (issue 21 item 2): trained and exported at it,
    # its test top-1 computed at it, and the teacher labeling at it.
    sizes = [config_checks.model_image_size(config, config[r]) for r in ("teacher", "student")]
    assert [row["image_size"] for row in results["models"][:2]] == sizes
    for iteration, side in enumerate(sizes):
        stem = stages.model_stem(str(workdir), iteration)
        assert load_checkpoint(stem + ".keras").input_shape[1:3] == (side, side)
    labeled = records.read_json(str(workdir / "iteration_0_labeled" / "manifest.json"))
    assert labeled["settings"]["image_size"] == sizes[0]
    if name == "imagenet.py":
        assert sizes == [config.teacher.image_size, config.student.image_size]
        assert sizes[0] != sizes[1]  # the paper's B7 at 600 px, L2 at 475, shrunk
    ratios = resolved["pseudo"].get("unlabeled_ratio_per_iteration", ())
    assert not ratios or len(ratios) == resolved["num_iterations"]


# --- per-iteration overrides (the loop reads them once it has iteration_config) --


def test_l2_students_get_their_own_unlabeled_ratio():
    config = with_required_paths(get_config("imagenet.py", "l2"))
    ratios = [
        config_checks.iteration_config(config, i).pseudo.unlabeled_ratio
        for i in range(config.num_iterations + 1)
    ]
    assert ratios == [14, 14, 14, 28]  # the teacher's is unused
    assert config.pseudo.unlabeled_ratio == 14  # the config itself is not changed
    config.num_iterations = 2
    with pytest.raises(ConfigError, match="unlabeled_ratio_per_iteration"):
        config_checks.validate_config(config)
