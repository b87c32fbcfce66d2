"""Config rules checked before a run trains anything, and per-iteration overrides.

`validate_config` turns settings that would waste hours (a batch that does
not split over the replicas, a stream-mode key used in memory, a
temperature of 0) into one ConfigError naming the key, before data is
loaded or a model built; experiments/noisy_student.py calls it twice:
before and after the strategy is known.
"""

from __future__ import annotations

import copy

from noisy_student_tf.data import sources
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.labeling.select import validate_balance
from noisy_student_tf.training import fine_tune, precision

__all__ = ["iteration_config", "validate_config"]


def validate_config(config, num_replicas: int | None = None) -> None:
    """Raises ConfigError for settings that would waste a run; called before training.

    Args:
      config: the loop's ConfigDict.
      num_replicas: replicas of the distribution strategy, when it is known;
        the global batch must split evenly over them.
    """
    if not 0.0 <= config.pseudo.threshold <= 1.0:
        raise ConfigError(f"pseudo.threshold must be in [0, 1], got {config.pseudo.threshold}")
    ratio = config.pseudo.unlabeled_ratio
    if ratio < 1 or int(ratio) != ratio:
        raise ConfigError(f"pseudo.unlabeled_ratio must be an integer >= 1, got {ratio}")
    ratios = tuple(config.pseudo.get("unlabeled_ratio_per_iteration", ()))
    if ratios and len(ratios) != config.num_iterations:
        raise ConfigError(
            f"pseudo.unlabeled_ratio_per_iteration={ratios} has {len(ratios)} entries but "
            f"num_iterations={config.num_iterations}; give one ratio per student, or () "
            "to use pseudo.unlabeled_ratio for all"
        )
    for r in ratios:
        if r < 1 or int(r) != r:
            raise ConfigError(
                f"pseudo.unlabeled_ratio_per_iteration entries must be integers >= 1, got {r}"
            )
    if config.pseudo.soft and config.pseudo.temperature <= 0:
        raise ConfigError(f"pseudo.temperature must be > 0, got {config.pseudo.temperature}")
    if config.pseudo.online and config.pseudo.via_records:
        raise ConfigError(
            "pseudo.online and pseudo.via_records are exclusive: the online "
            "teacher labels inside the train step, via_records labels to files"
        )
    if config.num_iterations < 0:
        raise ConfigError(f"num_iterations must be >= 0, got {config.num_iterations}")
    batch = config.train.batch_size
    if batch < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {batch}")
    if num_replicas and batch % num_replicas:
        # Otherwise replicas get unequal shards and fit() fails deep inside
        # the gradient all-reduce with an unreadable AddN shape error.
        lower = max(batch // num_replicas * num_replicas, num_replicas)
        raise ConfigError(
            f"train.batch_size={batch} does not divide evenly over the strategy's "
            f"{num_replicas} replicas; use a multiple of {num_replicas} (e.g. {lower} or "
            f"{lower + num_replicas})"
        )
    if config.pseudo.images_per_class < 0:
        raise ConfigError(
            f"pseudo.images_per_class must be >= 0 (0 = no balancing), got "
            f"{config.pseudo.images_per_class}"
        )
    if config.verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 0, 1 or 2, got {config.verbose}")
    validate_balance(config.pseudo.get("balance", "exact"))
    for role in ("teacher", "student"):
        magnitude = config[role].randaugment_magnitude
        if not 0 <= magnitude <= 30:
            raise ConfigError(f"{role}.randaugment_magnitude must be in [0, 30], got {magnitude}")
    if config.train.get("save_every_steps", 0) < 0:
        raise ConfigError(
            f"train.save_every_steps must be >= 0 (0: no checkpoint during fit), got "
            f"{config.train.save_every_steps}"
        )
    _validate_data_mode(config)
    fine_tune.validate(config, sources.is_stream_mode(config.data))
    precision.resolve_config(config, "tpu" if config.strategy == "tpu" else "cpu")


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
