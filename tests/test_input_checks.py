"""Settings and flags are refused in one line, before any work (issue 20).

Generated cases: every float setting of every config set to NaN and to
infinity, and every count (int setting) to -1, must be a ConfigError that
names the key. A few cases then run end to end in fresh processes, all
started at once: exit status 2, exactly one `error:` line naming the key or
flag, nothing trained or written.
"""

import glob
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_cnn

from noisy_student_tf import configs
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop.config_checks import range_problem, setting_leaves, validate_config

# Each config the generated cases start from; each validates as it is (the
# ImageNet ones once given the unlabeled pool their users must name).
SPECS = (
    "digits",
    "digits:smoke",
    "cifar10_4k",
    "cifar10_4k:cpu",
    "imagenet:b0",
    "imagenet:l2",
    "svhn",
)


def _config(spec):
    config = configs.get(spec)
    if spec.startswith("imagenet"):
        config.data.unlabeled = "/data/unlabeled"
    validate_config(config)  # the unchanged config is valid, so a refusal names the change
    return config


def _cases():
    """(spec, key, bad value): NaN and inf for floats, -1 for counts (-2 where -1 is a rule), in tuples too."""
    cases = []
    for spec in SPECS:
        for key, value in setting_leaves(_config(spec)):
            first = value[0] if isinstance(value, tuple) and value else None
            if isinstance(first, (int, float)) and not isinstance(first, bool):
                cases.append((spec, key, (-1 if isinstance(first, int) else math.nan, *value[1:])))
            elif isinstance(value, float):
                cases += [(spec, key, math.nan), (spec, key, math.inf)]
            elif isinstance(value, int) and not isinstance(value, bool):
                # -1 is a legal batch_norm_group_size (the official group rule)
                cases.append((spec, key, -2 if key.endswith(".batch_norm_group_size") else -1))
    return cases


CASES = _cases()


def test_every_config_has_generated_cases_for_the_keys_the_issue_names():
    keys = {key for _, key, _ in CASES}
    for key in (
        "train.learning_rate",
        "train.ema_decay",
        "pseudo.temperature",
        "data.num_labeled_per_class",
        "train.teacher_epochs",
        "evaluate.eps",
    ):
        assert key in keys
    assert len(CASES) > 300  # about 50 per config


def test_nan_infinity_and_negative_counts_are_refused_naming_the_key():
    accepted = []
    for spec, key, value in CASES:
        config = _config(spec)
        section, _, leaf = key.rpartition(".")
        (config[section] if section else config)[leaf] = value
        try:
            validate_config(config)
        except ConfigError as e:
            if not str(e).startswith(f"{key} "):
                accepted.append((spec, key, value, str(e)))
        else:
            accepted.append((spec, key, value, "accepted"))
    assert not accepted, accepted


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("train.learning_rate", -1.0, "train.learning_rate must be > 0, got -1.0"),
        ("train.learning_rate", 0.0, "train.learning_rate must be > 0"),
        ("train.ema_decay", 1.0, "train.ema_decay must be in [0, 1), got 1.0"),
        ("pseudo.temperature", 0.0, "pseudo.temperature must be > 0"),
        ("pseudo.temperature", math.nan, "pseudo.temperature must be a finite number"),
        ("data.num_labeled_per_class", 0, "data.num_labeled_per_class must be >= 1, got 0"),
        ("train.teacher_epochs", 0, "train.teacher_epochs must be >= 1, got 0"),
        ("train.student_epochs", 0, "train.student_epochs must be >= 1"),
        ("teacher.dropout_rate", 1.0, "teacher.dropout_rate must be in [0, 1)"),
        ("student.final_survival_prob", 0.0, "student.final_survival_prob must be in (0, 1]"),
        ("train.label_smoothing", 1.0, "train.label_smoothing must be in [0, 1)"),
        ("train.optimizer", "lamb", "train.optimizer='lamb' is not one of"),
        ("train.schedule", "linear", "train.schedule='linear' is not one of"),
        ("train.final_learning_rate", 0.5, "train.final_learning_rate must be in (0, "),
        ("pseudo.num_output_shards", 0, "pseudo.num_output_shards must be >= 1"),
        ("seed", -1, "seed must be >= 0, got -1"),
    ],
)
def test_out_of_range_values_are_refused_with_the_range(key, value, expected):
    config = _config("digits")
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value).startswith(expected)


def test_a_teacher_checkpoint_or_pseudo_labeled_folder_needs_no_teacher_epochs():
    config = _config("digits")
    config.train.teacher_epochs = 0
    with pytest.raises(ConfigError, match=r"^train\.teacher_epochs"):
        validate_config(config)  # a teacher to train with no epochs
    config.teacher_checkpoint = "teacher.keras"
    validate_config(config)  # the teacher is loaded, not trained
    config = _config("digits")
    config.train.student_epochs = 0
    with pytest.raises(ConfigError, match=r"^train\.student_epochs"):
        validate_config(config)  # a student to train with no epochs
    config.num_iterations = 0
    validate_config(config)  # no student trains


@pytest.mark.parametrize(
    "value, interval, expected",
    [
        (0.5, "[0, 1]", None),
        (1.0, "[0, 1)", "x must be in [0, 1), got 1.0"),
        (0, "(0, inf)", "x must be > 0, got 0"),
        (-2, "[-1, inf)", "x must be >= -1, got -2"),
        (math.nan, "[0, 1]", "x must be a finite number in [0, 1], got nan"),
        (-math.inf, "(-inf, inf)", "x must be a finite number in (-inf, inf), got -inf"),
        ("a", "[0, 1]", "x must be a number in [0, 1], got 'a'"),
    ],
)
def test_range_problem(value, interval, expected):
    assert range_problem("x", value, interval) == expected


# End to end, in fresh processes started together: the six cases seen in
# issue 20 through experiments/noisy_student.py, and every numeric flag of the
# tools out of range at once (one line naming each, before any file is read;
# the required flags are missing too, and the range errors still show).
def _script(path, *args, workdir=None):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, path), *args]
        + ([f"--workdir={workdir}"] if workdir else []),
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _one_error_line(proc, stderr):
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


LOOP_CASES = {
    "--config.train.learning_rate=-1": "error: train.learning_rate must be > 0, got -1.0",
    "--config.pseudo.temperature=nan": "error: pseudo.temperature must be a finite number",
    "--config.data.num_labeled_per_class=0": "error: data.num_labeled_per_class must be >= 1",
    "--config.train.teacher_epochs=0": "error: train.teacher_epochs must be >= 1, got 0",
    "--config.train.ema_decay=nan": "error: train.ema_decay must be a finite number",
    "six_class_teacher": "predicts 6 classes but the data has 10 (data.num_classes)",
}

TOOL_CASES = {
    (
        "tools/label.py",
        "--temperature=nan",
        "--topk=-1",
        "--batch_size=0",
        "--image_size=-1",
        "--shard_index=2",
        "--num_shards=2",
    ): (
        "--teacher is required",
        "--temperature must be a finite number in (0, inf), got nan",
        "--topk must be >= 0, got -1",
        "--batch_size must be >= 1, got 0",
        "--image_size must be >= 0, got -1",
        "--shard_index must be below --num_shards",
    ),
    (
        "tools/filter_balance.py",
        "--threshold=nan",
        "--images_per_class=-1",
        "--num_output_shards=0",
        "--seed=-1",
        "--num_classes=1",
    ): (
        "--input is required",
        "--threshold must be a finite number in [0, 1], got nan",
        "--images_per_class must be >= 0, got -1",
        "--num_output_shards must be >= 1, got 0",
        "--seed must be >= 0, got -1",
        "--num_classes must be 0 (inferred) or >= 2, got 1",
    ),
    (
        "tools/evaluate.py",
        "--max_examples=-2",
        "--seed=-1",
        "--image_size=-1",
        "--frames=0",
        "--eps=1,nan",
        "--severities=1,6",
        "--pgd_steps=0",
        "--pgd_step_size=inf",
        "--batch_size=0",
    ): (
        "--model is required",
        "--max_examples must be >= -1, got -2",
        "--seed must be >= 0, got -1",
        "--image_size must be >= 0, got -1",
        "--frames must be >= 1, got 0",
        "--eps must be a finite number in [0, 255], got nan",
        "--severities must be in [1, 5], got 6",
        "--pgd_steps must be >= 1, got 0",
        "--pgd_step_size must be a finite number in [0, inf), got inf",
        "--batch_size must be >= 1, got 0",
    ),
    ("tools/make_records.py", "--num_shards=0", "--input=/no/such/folder", "--output_dir=out"): (
        "error: --num_shards must be >= 1, got 0",
    ),
}


def test_bad_settings_and_flags_stop_fresh_processes_in_one_line(tmp_path):
    teacher = str(tmp_path / "six_classes.keras")
    tiny_cnn(6, size=32).save(teacher)
    smoke = "--config=experiments/configs/digits.py:smoke"
    running = {}
    for case in LOOP_CASES:
        args = [f"--config.teacher_checkpoint={teacher}"] if case == "six_class_teacher" else [case]
        workdir = tmp_path / f"run_{len(running)}"
        running[case] = (
            workdir,
            _script("experiments/noisy_student.py", smoke, *args, workdir=workdir),
        )
    for args in TOOL_CASES:
        running[args] = (None, _script(*args))
    failures = []
    for case, (workdir, proc) in running.items():
        _, stderr = proc.communicate(timeout=600)
        line = _one_error_line(proc, stderr)
        expected = LOOP_CASES.get(case) or TOOL_CASES[case]
        for part in (expected,) if isinstance(expected, str) else expected:
            if part not in line:
                failures.append((case, part, line))
        if workdir is not None:  # nothing trained, labeled or exported
            written = glob.glob(str(workdir / "**" / "*"), recursive=True)
            assert {os.path.basename(p) for p in written} <= {"config.json"}, written
    assert not failures, failures
