"""Config rules checked before a run trains anything, and per-iteration overrides.

`validate_config` turns settings that would waste hours (a batch that does
not split over the replicas, a stream-mode key used in memory, a
temperature of 0, batch-norm groups that do not split the replicas) into
one ConfigError naming the key, before data is loaded or a model built;
experiments/noisy_student.py calls it twice: before and after the strategy
is known.
"""

from __future__ import annotations

import copy
import math

from noisy_student_tf.data import sources
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.labeling.select import validate_balance
from noisy_student_tf.models import layers
from noisy_student_tf.models.efficientnet import NORMALIZATIONS
from noisy_student_tf.training import fine_tune, optimization, precision

__all__ = ["RANGES", "iteration_config", "model_image_size", "range_problem", "validate_config"]


MIN_IMAGE_SIZE = 8  # the EfficientNet stem and stages need >= 8 px

# Every numeric key's interval: "[a, b]" closed, "(a, b)" open, "inf" no bound.
# A key missing from a config (older files, fine_tune-less configs) is not
# checked; ROLE stands for both model blocks. ROLE.batch_norm_group_size is
# not an interval (-1 or >= 1): _check_model_block. Values out of these make a run
# that cannot train (a batch of 0), trains backwards (learning_rate < 0) or
# fails hours later (a temperature of 0 divides by zero).
RANGES = {
    "seed": "[0, inf)",  # numpy and the stateless tf.random ops take no negative seed
    "num_iterations": "[0, inf)",
    "data.num_classes": "[2, inf)",
    "data.image_size": "[8, inf)",  # MIN_IMAGE_SIZE
    "data.num_labeled_per_class": "[1, inf)",  # 0: an empty labeled set
    "data.num_test_per_class": "[1, inf)",
    "data.split_seed": "[0, inf)",
    "ROLE.width_coefficient": "(0, inf)",
    "ROLE.depth_coefficient": "(0, inf)",
    "ROLE.batch_norm_momentum": "[0, 1]",
    "ROLE.dropout_rate": "[0, 1)",  # keras.layers.Dropout
    "ROLE.final_survival_prob": "(0, 1]",
    "ROLE.randaugment_layers": "[0, inf)",
    "ROLE.randaugment_magnitude": "[0, 30]",  # the official 0-30 scale
    "ROLE.image_size": "[0, inf)",  # 0: data.image_size; 1-7 refused by _check_model_block
    "train.batch_size": "[1, inf)",
    "train.eval_batch_size": "[1, inf)",
    "train.steps_per_epoch": "[0, inf)",  # 0: one pass over the labeled images
    "train.teacher_epochs": "[0, inf)",  # >= 1 when it trains: _check_epochs
    "train.student_epochs": "[0, inf)",
    "train.warmup_epochs": "[0, inf)",
    "train.learning_rate": "(0, inf)",  # <= 0 would train backwards or not at all
    "train.ema_decay": "[0, 1)",  # 0: no moving average (training/noisy_student.py)
    "train.decay_rate": "(0, 1]",
    "train.decay_epochs": "(0, inf)",
    "train.final_learning_rate": "[0, inf)",  # 0: off
    "train.weight_decay": "[0, inf)",
    "train.label_smoothing": "[0, 1)",
    "train.save_every_steps": "[0, inf)",  # 0: no checkpoint during fit
    # TF1RMSprop's mean-square start (training/optimization.py); a negative one
    # makes sqrt(ms + epsilon) undefined on the first steps. rmsprop only: _check_schedule.
    "train.rmsprop_second_moment_init": "[0, inf)",
    "pseudo.threshold": "[0, 1]",  # a confidence
    "pseudo.temperature": "(0, inf)",  # softmax(logits / temperature)
    "pseudo.images_per_class": "[0, inf)",  # 0: no balancing
    "pseudo.unlabeled_ratio": "[1, inf)",
    "pseudo.unlabeled_ratio_per_iteration": "[1, inf)",
    "pseudo.topk": "[0, inf)",  # 0: all classes
    "pseudo.num_output_shards": "[1, inf)",
    "evaluate.sample": "[0, inf)",  # 0: all
    "evaluate.severities": "[1, 5]",  # ImageNet-C severities
    "evaluate.eps": "[0, 255]",  # pixels
    "evaluate.pgd_steps": "[1, inf)",
    "fine_tune.image_size": "[0, inf)",  # 0 while disabled; >= 1 when enabled: fine_tune.validate
    "fine_tune.epochs": "(0, inf)",
    "fine_tune.frozen_blocks": "[0, inf)",
    "fine_tune.unlabeled_ratio": "[0, inf)",  # 0 when enabled: fine_tune.validate
}


def range_problem(name: str, value, interval: str) -> str | None:
    """Why `value` is not a finite number in `interval` (e.g. "[0, 1)"), or None.

    Shared by validate_config (config keys) and the tools' flags (cli.py),
    so a key and a flag say the same thing about the same range.
    """
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number in {interval}, got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number in {interval}, got {value}"
    below = value < low if interval[0] == "[" else value <= low
    above = value > high if interval[-1] == "]" else value >= high
    if not (below or above):
        return None
    if math.isinf(high):
        bound = f">= {low:g}" if interval[0] == "[" else f"> {low:g}"
        return f"{name} must be {bound}, got {value}"
    return f"{name} must be in {interval}, got {value}"


def validate_config(config, num_replicas: int | None = None) -> None:
    """Raises ConfigError for settings that would waste a run; called before training.

    Args:
      config: the loop's ConfigDict.
      num_replicas: replicas of the distribution strategy, when it is known;
        the global batch and each model's batch-norm groups must split
        evenly over them.
    """
    _check_numbers(config)
    _check_epochs(config)
    _check_schedule(config.train)
    for role in ("teacher", "student"):
        _check_model_block(role, config[role], num_replicas)
    _check_model_sizes(config)
    ratios = tuple(config.pseudo.get("unlabeled_ratio_per_iteration", ()))
    if ratios and len(ratios) != config.num_iterations:
        raise ConfigError(
            f"pseudo.unlabeled_ratio_per_iteration={ratios} has {len(ratios)} entries but "
            f"num_iterations={config.num_iterations}; give one ratio per student, or () "
            "to use pseudo.unlabeled_ratio for all"
        )
    for r in (config.pseudo.unlabeled_ratio, *ratios):
        if int(r) != r:
            raise ConfigError(f"pseudo.unlabeled_ratio values must be integers >= 1, got {r}")
    if config.pseudo.online and config.pseudo.via_records:
        raise ConfigError(
            "pseudo.online and pseudo.via_records are exclusive: the online "
            "teacher labels inside the train step, via_records labels to files"
        )
    batch = config.train.batch_size
    if num_replicas and batch % num_replicas:
        # Otherwise replicas get unequal shards and fit() fails deep inside
        # the gradient all-reduce with an unreadable AddN shape error.
        lower = max(batch // num_replicas * num_replicas, num_replicas)
        raise ConfigError(
            f"train.batch_size={batch} does not divide evenly over the strategy's "
            f"{num_replicas} replicas; use a multiple of {num_replicas} (e.g. {lower} or "
            f"{lower + num_replicas})"
        )
    if config.verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 0, 1 or 2, got {config.verbose}")
    validate_balance(config.pseudo.get("balance", "exact"))
    _validate_data_mode(config)
    fine_tune.validate(config, sources.is_stream_mode(config.data))
    precision.resolve_config(config, "tpu" if config.strategy == "tpu" else "cpu")


def setting_leaves(config, prefix=""):
    """(dotted key, value) of every setting of a ConfigDict, depth first."""
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from setting_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check_numbers(config) -> None:
    """No NaN or infinity anywhere (a float key takes both), and every RANGES key in range."""
    leaves = dict(setting_leaves(config))
    for key, value in leaves.items():
        for number in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {number}")
    for pattern, interval in RANGES.items():
        for key in (pattern.replace("ROLE", r) for r in ("teacher", "student")):
            value = leaves.get(key)
            for number in value if isinstance(value, (tuple, list)) else (value,):
                problem = number is not None and range_problem(key, number, interval)
                if problem:
                    raise ConfigError(problem)


def _check_epochs(config) -> None:
    """A model the loop trains needs at least one epoch; zero trains nothing, silently."""
    loads_teacher = config.get("teacher_checkpoint", "") or config.data.get("pseudo_labeled", "")
    if config.train.teacher_epochs < 1 and not loads_teacher:
        raise ConfigError(
            f"train.teacher_epochs must be >= 1, got {config.train.teacher_epochs}: the teacher "
            "would label the pool untrained (set teacher_checkpoint to use a trained one)"
        )
    if config.train.student_epochs < 1 and config.num_iterations > 0:
        raise ConfigError(
            f"train.student_epochs must be >= 1 when num_iterations={config.num_iterations} "
            f"> 0, got {config.train.student_epochs}"
        )


def _check_schedule(train) -> None:
    """The optimizer and schedule by name, and a final rate below the peak, before fit()."""
    if train.optimizer not in optimization.OPTIMIZERS:
        raise ConfigError(
            f"train.optimizer={train.optimizer!r} is not one of {optimization.OPTIMIZERS}"
        )
    if train.schedule not in optimization.SCHEDULES:
        raise ConfigError(
            f"train.schedule={train.schedule!r} is not one of {optimization.SCHEDULES}"
        )
    ms_init = train.get("rmsprop_second_moment_init", 0.0)
    if ms_init and train.optimizer != "rmsprop":
        # Only RMSProp has a mean square; silently ignoring the key would let
        # a paper config switched to sgd/adam look like it kept a setting.
        raise ConfigError(
            f"train.rmsprop_second_moment_init={ms_init} is for train.optimizer='rmsprop', "
            f"but train.optimizer={train.optimizer!r}; set it to 0.0 (or use rmsprop)"
        )
    final = train.get("final_learning_rate", 0.0) or 0.0
    if final and final >= train.learning_rate:
        raise ConfigError(
            f"train.final_learning_rate must be in (0, train.learning_rate="
            f"{train.learning_rate}), got {final} (0 turns it off)"
        )


def _check_model_block(role: str, block, num_replicas: int | None) -> None:
    """The input statistics by name and a batch-norm grouping the replicas split into.

    models/efficientnet.py refuses both too, but only when the model is
    built: for a group size, when fit() first traces it under the strategy.
    """
    size = block.get("image_size", 0)
    if 0 < size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"{role}.image_size must be >= {MIN_IMAGE_SIZE} (the EfficientNet stem and "
            f"stages), or 0 for data.image_size, got {size}"
        )
    name = block.get("normalization", "imagenet")
    if name not in NORMALIZATIONS:
        raise ConfigError(
            f"{role}.normalization={name!r} is not one of {', '.join(NORMALIZATIONS)}"
        )
    group = block.get("batch_norm_group_size", 1)
    rule = layers.OFFICIAL_GROUP_RULE
    if isinstance(group, bool) or not isinstance(group, int) or not (group >= 1 or group == rule):
        raise ConfigError(
            f"{role}.batch_norm_group_size must be an integer >= 1 (replicas per group; 1: "
            f"per replica) or {rule} (the official rule), got {group!r}"
        )
    if group != 1 and block.get("sync_batch_norm", False):
        raise ConfigError(
            f"{role}.batch_norm_group_size={group} and {role}.sync_batch_norm=True both "
            "set: groups of replicas or all replicas; choose one"
        )
    if not num_replicas:
        return
    size = layers.official_group_size(num_replicas) if group == rule else group
    if num_replicas % size:
        rule_note = " (the official rule for that many replicas)" if group == rule else ""
        raise ConfigError(
            f"{role}.batch_norm_group_size={group} gives groups of {size}{rule_note}, which "
            f"do not divide the strategy's {num_replicas} replicas; use a divisor of "
            f"{num_replicas} (1: per replica)"
        )


def model_image_size(config, block) -> int:
    """A model block's input side: its own `image_size`, else `data.image_size`.

    Each model trains, is evaluated, labels and is exported at this size, as
    the official code fed a teacher its own resolution (data_input.py); a
    block without the key (older configs) takes the data's.
    """
    return int(block.get("image_size", 0) or config.data.image_size)


def _check_model_sizes(config) -> None:
    """Model sizes the data mode can give, and a teacher loaded or warm-started, not both.

    The robustness report evaluates every model on one set of images, so it
    needs one size (fine-tuning's included); found here, not after the run.
    """
    teacher, student = (model_image_size(config, config[r]) for r in ("teacher", "student"))
    if config.get("teacher_checkpoint", "") and config.teacher.get("init_checkpoint", ""):
        raise ConfigError(
            "teacher_checkpoint and teacher.init_checkpoint are exclusive: the first is "
            "the teacher, the second the weights a trained teacher starts from"
        )
    sizes = " and ".join(
        f"{role}.image_size={config[role].get('image_size', 0)}"
        + ("" if config[role].get("image_size", 0) else f" (data.image_size={size})")
        for role, size in (("teacher", teacher), ("student", student))
    )
    if teacher != student and config.pseudo.get("online", False):
        # The official online teacher got its own view of each image
        # (data_input.py teacher_image); here the pipeline carries one clean
        # copy, so one size keeps the train step as it is.
        raise ConfigError(
            f"pseudo.online needs one size for teacher and student, got {sizes}: the "
            "online teacher labels the student's batches; set both to one size or use "
            "offline labels (pseudo.online=False)"
        )
    if {teacher, student} != {config.data.image_size} and not sources.is_stream_mode(config.data):
        raise ConfigError(
            f"{sizes}, but in-memory data is held at data.image_size="
            f"{config.data.image_size}; per-model sizes need streamed records "
            "(data.labeled/unlabeled/test)"
        )
    evaluate = config.get("evaluate")
    if evaluate is not None and evaluate.robustness:
        every = {teacher, student}
        if fine_tune.enabled(config):
            every.add(config.fine_tune.image_size)
        if len(every) > 1:
            raise ConfigError(
                f"evaluate.robustness compares every model on the same images, but the "
                f"models take {sorted(every)} px ({sizes}, fine_tune); "
                "evaluate them separately with noisy-student-evaluate"
            )


def iteration_config(config, iteration: int):
    """The config iteration `iteration` trains with: per-student overrides applied.

    `pseudo.unlabeled_ratio_per_iteration[i - 1]`, when set, is student i's
    `pseudo.unlabeled_ratio` (the paper's L2 run: 14, 14, 28). The teacher
    (iteration 0) and configs without overrides get `config` itself.
    """
    ratios = tuple(config.pseudo.get("unlabeled_ratio_per_iteration", ()))
    if iteration == 0 or not ratios:
        return config
    config = copy.deepcopy(config)
    config.pseudo.unlabeled_ratio = int(ratios[iteration - 1])
    return config


def _validate_data_mode(config) -> None:
    """Settings that do not go together with the data mode (streamed or in memory)."""
    data = config.data
    sources.validate_stream_config(data)
    if not sources.is_stream_mode(data):
        if data.source == "digits" and data.get("path", ""):
            # The digits come with scikit-learn; a folder here was meant for
            # another source, and training on the digits instead is silent.
            raise ConfigError(
                f"data.path={data.path!r} is set but data.source='digits' ignores it; "
                "set data.source=tfrecord (a folder of train-*/test-* shards) or tfds"
            )
        return
    for mode in ("online", "via_records"):
        if config.pseudo[mode]:
            raise ConfigError(
                f"pseudo.{mode} is for in-memory data; with data.labeled the pseudo "
                f"labels always go through records (set pseudo.{mode}=False)"
            )
    folder = data.get("pseudo_labeled", "")
    if not folder:
        if not data.get("unlabeled", "") and config.num_iterations > 0:
            raise ConfigError(
                "data.unlabeled is empty but num_iterations > 0: a student needs an "
                "unlabeled set (or data.pseudo_labeled, a filter_balance output folder)"
            )
        return
    if config.get("teacher_checkpoint", ""):
        raise ConfigError(
            "data.pseudo_labeled and teacher_checkpoint are exclusive: with a "
            "filter_balance output folder there is no teacher stage"
        )
    if config.num_iterations < 1:
        raise ConfigError(
            "data.pseudo_labeled trains a student; num_iterations must be >= 1, got "
            f"{config.num_iterations}"
        )
    if config.num_iterations > 1 and not data.get("unlabeled", ""):
        raise ConfigError(
            f"num_iterations={config.num_iterations} needs data.unlabeled for the students "
            "after the first (data.pseudo_labeled feeds only the first)"
        )
