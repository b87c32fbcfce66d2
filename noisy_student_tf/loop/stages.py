"""Stage manifests: what a stage of the loop did, with which settings, and whether it finished.

Each stage of a run (train a model, label the unlabeled set, filter and
balance it) writes its outputs into --workdir and a small JSON manifest
beside them: the settings it ran with (a flat dict of config keys and input
fingerprints) and, when it is done, `complete: true` plus its results. A
rerun with the same --workdir then

  * reuses a complete stage whose settings equal the current ones,
  * resumes an incomplete one (a model from its last checkpoint, labeling
    from its last complete shard) if the settings are equal,
  * and stops with a ConfigError naming every differing key otherwise: an
    output made with other settings is never reused silently.

The manifests are read, compared and written (atomically: temp + rename) by
noisy_student_tf/manifests.py, as the labeling's per-shard manifests are, so
a kill leaves either the old manifest or the new one.
"""

from __future__ import annotations

import math
import os
import time

import tensorflow as tf

from noisy_student_tf import manifests

# Config keys that change how a run executes but not what it computes, so a
# run resumed with other values reuses its outputs (e.g. more iterations, or
# a rerun on a machine with more replicas).
EXECUTION_KEYS = (
    "verbose",
    "strategy",
    "tpu_address",
    "jit_compile",
    "deterministic",
    "num_iterations",
    "allow_smaller_student",
    "train.eval_batch_size",
    "train.save_every_steps",
)


def remove_stale_temporaries(workdir: str) -> None:
    """Deletes what a killed run left under temporary names (`manifests.TMP_MARK`).

    Looks in the workdir and its stage folders (labeled and balanced
    shards): shards, manifests, `.keras` files and SavedModel folders are
    all written under such names and renamed when complete, so anything
    still so named is a killed writer's and nothing reads it. A run owns its
    workdir, so no live writer is removed.
    """
    for depth in ("", "*"):
        pattern = os.path.join(workdir, depth, f"*{manifests.TMP_MARK}*")
        for stale in tf.io.gfile.glob(pattern):
            if tf.io.gfile.isdir(stale):
                tf.io.gfile.rmtree(stale)
            elif tf.io.gfile.exists(stale):
                tf.io.gfile.remove(stale)


def flat_settings(config, exclude_blocks: tuple = ()) -> dict:
    """The config as {"block.key": value}, without execution-only keys.

    Args:
      config: an ml_collections ConfigDict (or nested dict).
      exclude_blocks: top-level blocks that do not affect the stage (a
        teacher does not depend on the `student` or `pseudo` blocks).
    """
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    flat = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for k in sorted(value):
                visit(f"{prefix}{k}.", value[k])
        else:
            flat[prefix[:-1]] = list(value) if isinstance(value, tuple) else value

    for key in sorted(as_dict):
        if key not in exclude_blocks:
            visit(f"{key}.", as_dict[key])
    return {k: v for k, v in flat.items() if k not in EXECUTION_KEYS}


class Stage:
    """The manifest of one stage at `path` (a JSON file in --workdir).

    Typical use:
        stage = Stage(path, "teacher")
        if stage.complete(settings):       # raises on other settings
            reuse(stage.manifest)
        else:
            stage.start(settings)
            ... work, resumable ...
            stage.finish(results)
    """

    def __init__(self, path: str, name: str):
        self.path = path
        self.name = name
        self.manifest = manifests.read(path)

    def check(self, settings: dict) -> None:
        """Raises OtherSettingsError if the stage ran (or started) with other settings."""
        if self.manifest is None:
            return
        diffs = manifests.differences(self.manifest["settings"], settings)
        if diffs:
            raise manifests.OtherSettingsError(
                self.name,
                os.path.dirname(self.path) or ".",
                "was made" if self.manifest.get("complete") else "was started",
                diffs,
                "Rerun with the old settings to reuse or resume it, or choose another --workdir",
            )

    def complete(self, settings: dict) -> bool:
        """True if the stage finished with `settings`; raises if its settings differ."""
        self.check(settings)
        return bool(self.manifest and self.manifest.get("complete"))

    def start(self, settings: dict) -> None:
        """Records the settings before work begins (checked again on a rerun)."""
        self.check(settings)
        self.manifest = {"stage": self.name, "settings": settings, "complete": False}
        tf.io.gfile.makedirs(os.path.dirname(self.path) or ".")
        manifests.write_json(self.path, self.manifest)

    def finish(self, results: dict) -> None:
        """Marks the stage complete with its results; the last write of the stage."""
        self.manifest = {**self.manifest, **results, "complete": True}
        manifests.write_json(self.path, self.manifest)


# The stages that make a model. Each reads its inputs from and writes its
# outputs to --workdir with a manifest beside them (`Stage`), so a rerun
# reuses a finished model and resumes an interrupted fit.


def model_settings(config, iteration: int, learned_from: str) -> dict:
    """What a model stage depends on: the config (a teacher: not the student or
    pseudo blocks), the content of what it learned from and of the checkpoint
    it started from (`init_checkpoint`: a changed file is another model)."""
    exclude = ("student", "pseudo", "teacher_checkpoint") if iteration == 0 else ()
    settings = {
        **flat_settings(config, exclude),
        "iteration": iteration,
        "learned_from": learned_from,
    }
    role = "teacher" if iteration == 0 else "student"
    warm = config[role].get("init_checkpoint", "")
    if warm:
        from noisy_student_tf.models.artifact import fingerprint

        key = f"{role}.init_checkpoint"
        settings[f"{key}_fingerprint"] = fingerprint(warm, key)
    return settings


def model_stem(workdir: str, iteration: int) -> str:
    role = "teacher" if iteration == 0 else "student"
    return os.path.join(workdir, f"iteration_{iteration}_{role}")


def train_model(config, strategy, sets, workdir, iteration, learned_from, unlabeled, teacher):
    """Model `iteration` trained noised (or reused): (model, checkpoint path, wall seconds).

    Args:
      sets: the run's labeled and test sets (data_modes.ArraySets / StreamSets).
      learned_from: the fingerprint of what it learns from (its teacher), so
        a student of another teacher is never reused.
      unlabeled: None for the teacher; for a student, () -> (its unbatched
        pseudo-labeled source, size), called only if it trains.
      teacher: the previous model (the online teacher with `pseudo.online`).
    """
    from noisy_student_tf.loop.config_checks import iteration_config
    from noisy_student_tf.models import load_checkpoint
    from noisy_student_tf.training.trainer import describe, train_one

    model_config = config.teacher if iteration == 0 else config.student
    name = "teacher" if iteration == 0 else f"student {iteration}"
    stem = model_stem(workdir, iteration)
    stage = Stage(stem + ".json", name)
    settings = model_settings(config, iteration, learned_from)
    if stage.complete(settings) and tf.io.gfile.exists(stem + ".keras"):
        print(f"== iteration {iteration}: {name} reused from {stem}.keras", flush=True)
        return load_checkpoint(stem + ".keras"), stem + ".keras", stage.manifest["wall_s"]
    start = time.time()
    # Before the stage starts: a selection that cannot train (no pool image reached
    # the threshold) must leave no started student for a rerun to refuse.
    source, count = unlabeled() if unlabeled else (None, 0)
    stage.start(settings)
    epochs = config.train.student_epochs if unlabeled else config.train.teacher_epochs
    role = name.split()[0]
    on = f" + {count} pseudo-labeled" if unlabeled else ""
    print(
        f"== iteration {iteration}: {role} {describe(model_config)} on "
        f"{sets.num_labeled} labeled{on} images",
        flush=True,
    )
    seed = config.seed + iteration
    size = sets.model_size(model_config)
    try:
        model, info = train_one(
            iteration_config(config, iteration),
            strategy,
            sets.labeled(model_config, seed, size),
            sets.num_labeled,
            sets.num_classes,
            size,
            model_config,
            epochs,
            seed=seed,
            unlabeled=source,
            teacher=teacher,
            name=name,
            log_dir=os.path.join(workdir, "tensorboard", os.path.basename(stem)),
            checkpoint_dir=stem + ".ckpt",
        )
    except tf.errors.InvalidArgumentError as e:  # e.g. a labeled image that does not decode
        named = sets.name_bad_record(e)
        if named is e:
            raise
        raise named from e
    return model, stem + ".keras", _finish_model(stage, model, stem, start, info)


def _finish_model(stage: Stage, model, stem: str, start: float, info: dict) -> float:
    """Saves the model, completes its manifest, drops its mid-fit checkpoints; the wall time."""
    from noisy_student_tf.models.artifact import save_keras

    wall = time.time() - start
    save_keras(model, stem + ".keras")
    stage.finish({"wall_s": round(wall, 1), **info})
    if tf.io.gfile.exists(stem + ".ckpt"):
        tf.io.gfile.rmtree(stem + ".ckpt")
    return wall


def keep_loaded_teacher(model, loaded_from: str, workdir: str) -> tuple[str, str]:
    """(checkpoint the labeling reads, its fingerprint) for a `teacher_checkpoint`.

    A SavedModel labels as it is; anything else is saved once as
    iteration_0_teacher.keras (a rerun keeps that file, so its fingerprint,
    which the later stages were made with, stays the same).
    """
    from noisy_student_tf.models.artifact import fingerprint, is_saved_model

    source = fingerprint(loaded_from, "teacher_checkpoint")
    if is_saved_model(loaded_from):
        return loaded_from, source
    stem = model_stem(workdir, 0)
    stage = Stage(stem + ".json", "teacher")
    settings = {"teacher_checkpoint": loaded_from, "teacher_checkpoint_fingerprint": source}
    if not (stage.complete(settings) and tf.io.gfile.exists(stem + ".keras")):
        from noisy_student_tf.models.artifact import save_keras

        stage.start(settings)
        save_keras(model, stem + ".keras")
        stage.finish({"wall_s": 0.0})
    return stem + ".keras", fingerprint(stem + ".keras")


def fine_tune_model(config, strategy, sets, student, learned_from: str, workdir: str):
    """The final student fine-tuned at test resolution (training/fine_tune.py), or reused.

    Returns (model, checkpoint path, wall seconds).
    """
    from noisy_student_tf.models import load_checkpoint
    from noisy_student_tf.training import fine_tune
    from noisy_student_tf.training.trainer import describe, train_one

    block, train = config.fine_tune, config.train
    stem = os.path.join(workdir, "fine_tune_student")
    stage = Stage(stem + ".json", "fine-tuning")
    settings = model_settings(config, config.num_iterations + 1, learned_from)
    if stage.complete(settings) and tf.io.gfile.exists(stem + ".keras"):
        print(f"== fine-tuning reused from {stem}.keras", flush=True)
        return load_checkpoint(stem + ".keras"), stem + ".keras", stage.manifest["wall_s"]
    stage.start(settings)
    start = time.time()
    steps = train.steps_per_epoch or math.ceil(sets.num_labeled / train.batch_size)
    student_total = steps * train.student_epochs
    ft_total = int(round(steps * block.epochs))
    schedule = (train.student_epochs, student_total, max(student_total - ft_total, 0))
    if not block.get("continue_schedule", True):
        schedule = None
    model_config = fine_tune.model_config(config)
    print(
        f"== fine-tuning: {describe(model_config)} at {block.image_size} px, "
        f"{block.epochs} epochs on {sets.num_labeled} labeled images, stem + "
        f"{block.frozen_blocks} blocks frozen",
        flush=True,
    )
    model, info = train_one(
        config,
        strategy,
        sets.labeled(model_config, config.seed + 1000, block.image_size),
        sets.num_labeled,
        sets.num_classes,
        block.image_size,
        model_config,
        block.epochs,
        seed=config.seed + 1000,
        name="fine-tuning",
        log_dir=os.path.join(workdir, "tensorboard", "fine_tune"),
        checkpoint_dir=stem + ".ckpt",
        init_from=student,
        frozen_blocks=block.frozen_blocks,
        schedule=schedule,
    )
    return model, stem + ".keras", _finish_model(stage, model, stem, start, info)
