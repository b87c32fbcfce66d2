"""The iterative Noisy Student loop (paper, Algorithm 1), as a list of resumable stages.

  iteration 0: train a noised teacher on the labeled images (or load one:
               `teacher_checkpoint`).
  iteration i: the previous model, un-noised, labels the unlabeled set;
               the labels are filtered by confidence and balanced per class;
               an equal-or-larger noised student trains on labeled +
               pseudo-labeled images; it becomes the next teacher.

`run` only sequences the stages; what differs between data modes (arrays in
memory, the in-memory pool through record shards with `pseudo.via_records`,
streamed records, a given `data.pseudo_labeled` folder, online targets) is
behind one seam, data_modes.py: the labeled set, test top-1, "label the pool
and give me the selection", the student's source. Each pool is labeled once
per model, and the row reports the selection the next student trains on.

Every stage writes its outputs and a manifest into --workdir (stages.py),
always through tf.io.gfile, so the workdir may be a bucket (gs://...): a
rerun with the same --workdir reuses finished models, labeled and balanced
shards, resumes a model killed in the middle of fit() from its last
checkpoint (resume.py, `train.save_every_steps`), and stops with a
ConfigError naming the key when an output was made with other settings.

Everything is configured by one ml_collections ConfigDict (see
noisy_student_tf/configs/digits.py for every key). `run` returns the results
dict that experiments/noisy_student.py writes to results.json.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile

import keras
import tensorflow as tf
from absl import logging

from noisy_student_tf import evaluation, manifests
from noisy_student_tf.data import sources
from noisy_student_tf.data.preprocess import eval_resize_of
from noisy_student_tf.data.sources import SemiSupervisedData, StreamingData
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop import data_modes, stages
from noisy_student_tf.loop.config_checks import validate_config
from noisy_student_tf.loop.results import format_table, plot, robustness
from noisy_student_tf.models.artifact import fingerprint
from noisy_student_tf.training import fine_tune, precision
from noisy_student_tf.training.strategy import get_strategy
from noisy_student_tf.training.trainer import (
    build_model,
    check_student_size,
    describe,
    load_init_checkpoint,
    load_teacher_checkpoint,
)

__all__ = ["format_table", "run", "validate_config"]


def run(
    config,
    workdir: str,
    data: SemiSupervisedData | StreamingData,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Runs teacher + `num_iterations` students; writes checkpoints, plot, SavedModel.

    Resumable: rerun with the same `workdir` after a kill (see the module
    docstring). Returns {"models": [row per model], "config": resolved
    config}; see loop/results.py for the row fields.
    """
    strategy, workdir = _start(config, workdir, data, strategy)
    sets, pool = data_modes.make(config, data, workdir, strategy)
    loaded = _check_models(config, sets, pool)
    labels, learned_from = pool.given()  # data.pseudo_labeled: the first student's labels
    rows, trained, model, path = [], [], None, ""
    for iteration in range(1 if labels else 0, config.num_iterations + 1):
        # Train (or reuse) a noised model: the teacher on labeled images, a
        # student on labeled + the previous model's selection.
        if iteration == 0 and loaded is not None:
            print(f"== iteration 0: teacher loaded from {config.teacher_checkpoint}", flush=True)
            model, wall = loaded, 0.0
            path, learned_from = stages.keep_loaded_teacher(
                model, config.teacher_checkpoint, workdir
            )
        else:
            source = (
                functools.partial(pool.student_source, labels, iteration) if iteration else None
            )
            model, path, wall = stages.train_model(
                config, strategy, sets, workdir, iteration, learned_from, source, model
            )
            learned_from = fingerprint(path)
        model_config = config.teacher if iteration == 0 else config.student
        row = _row(config, iteration, model, loaded, wall, sets.model_size(model_config))
        # Evaluate it, at its own size.
        row["test_top1"] = sets.test_top1(model, model_config.small_image, row["image_size"])
        # It labels the pool, un-noised, once; filter + balance = the next student's data.
        labels = pool.label_pool(model, path, learned_from, iteration)
        if labels is not None:
            _fill_counts(row, labels, workdir, iteration)
        rows.append(row)
        trained.append((_name(iteration), path, eval_resize_of(model)))
        _print_row(row)
    if fine_tune.enabled(config):
        model, path, wall = stages.fine_tune_model(
            config, strategy, sets, model, learned_from, workdir
        )
        rows.append(_fine_tuned_row(config, model, sets, wall))
        trained.append(("fine-tuned", path, eval_resize_of(model)))
        _print_row(rows[-1])
    return _finish(config, workdir, rows, trained, model, sets, data)


def _start(config, workdir: str, data, strategy):
    """Validates, creates the strategy and precision policy, writes config.json; (strategy, workdir)."""
    validate_config(config)
    # Multi-worker and TPU strategies must exist before other TF ops run, so
    # scripts create them first (see experiments/noisy_student.py).
    strategy = strategy or get_strategy(config.strategy, config.tpu_address)
    validate_config(config, strategy.num_replicas_in_sync)
    precision.configure(config, strategy)  # the global policy, before any model is built
    if isinstance(data, StreamingData) != sources.is_stream_mode(config.data):
        raise ConfigError(
            "the data passed to loop.run does not match config.data (load it with "
            "noisy_student_tf.data.sources.load(config.data))"
        )
    if not strategy.extended.should_checkpoint:
        workdir = _scratch_dir(workdir, strategy)
    tf.io.gfile.makedirs(workdir)
    stages.remove_stale_temporaries(workdir)
    manifests.write_file(os.path.join(workdir, "config.json"), config.to_json(indent=2))
    keras.utils.set_random_seed(config.seed)
    if config.get("deterministic"):
        # Bit-identical reruns: deterministic kernels (slower; see README).
        tf.config.experimental.enable_op_determinism()
    return strategy, workdir


def _scratch_dir(workdir: str, strategy) -> str:
    """A non-chief worker's own folder, the same on every run of this --workdir.

    Every worker must run the saves (they are collective), but only the
    chief's land in --workdir. The folder is named by the workdir and the
    worker's task, so a rerun resumes next to a resuming chief instead of
    starting over (a fresh temporary folder each run did).
    """
    resolver = strategy.cluster_resolver
    task = f"{resolver.task_type}_{resolver.task_id}" if resolver is not None else "worker"
    digest = hashlib.sha256(workdir.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"noisy_student_{digest}_{task}")


def _check_models(config, sets, pool):
    """The loaded `teacher_checkpoint` (or None); checks the student is not smaller and
    that each block's `init_checkpoint` fits its model, before anything trains."""
    num_classes = sets.num_classes
    sizes = {role: sets.model_size(config[role]) for role in ("teacher", "student")}
    loaded_from = config.get("teacher_checkpoint", "")
    loaded = (
        load_teacher_checkpoint(loaded_from, sizes["teacher"], num_classes) if loaded_from else None
    )
    given = pool.given()[0] is not None  # data.pseudo_labeled: no teacher stage
    roles = ("teacher", "student")  # each built once here: sizes and warm starts checked
    if given:  # only a warm-started student needs a look before it trains
        roles = ("student",) if config.student.get("init_checkpoint", "") else ()
    models = {"teacher": loaded} if loaded is not None else {}
    for role in roles:
        block = config[role]
        if role not in models:
            models[role] = build_model(block, num_classes, sizes[role])
        if block.get("init_checkpoint", ""):
            load_init_checkpoint(block.init_checkpoint, models[role], f"{role}.init_checkpoint")
    if not given:
        check_student_size(models["teacher"], models["student"], config.allow_smaller_student)
    logging.info("data: %s", sets.data.summary())
    return loaded


def _name(iteration: int) -> str:
    return "teacher" if iteration == 0 else f"student {iteration}"


def _row(config, iteration: int, model: keras.Model, loaded, wall: float, size: int) -> dict:
    """A model's results row before evaluation (see loop/results.py)."""
    model_config = config.teacher if iteration == 0 else config.student
    if iteration == 0 and loaded is not None:
        architecture = f"loaded {os.path.basename(config.teacher_checkpoint.rstrip('/'))}"
    else:
        architecture = describe(model_config)
    return {
        "role": "teacher" if iteration == 0 else "student",
        "iteration": iteration,
        "architecture": architecture,
        "parameters": int(model.count_params()),
        "test_top1": float("nan"),
        "pseudo_label_accuracy": float("nan"),
        "kept": None,
        "dropped": None,
        "dropped_below_threshold": None,
        "wall_s": round(wall, 1),
        "image_size": size,
    }


def _fine_tuned_row(config, model: keras.Model, sets, wall: float) -> dict:
    """The fine-tuned student's results row: evaluated at its own resolution, labels nothing."""
    size = config.fine_tune.image_size
    row = _row(config, config.num_iterations + 1, model, None, wall, size)
    row["role"] = "fine_tune"
    row["architecture"] = f"{describe(config.student)} at {size} px"
    row["test_top1"] = sets.test_top1(model, config.student.small_image, size)
    return row


def _fill_counts(row: dict, labels: data_modes.PoolLabels, workdir: str, iteration: int) -> None:
    """The selection's accuracy and kept/dropped into the row; its counts to iteration_I_selection.json."""
    summary = labels.summary
    row["pseudo_label_accuracy"] = labels.accuracy
    row["kept"] = summary["kept_unique"]
    row["dropped"] = summary["in"] - summary["kept_unique"]
    row["dropped_below_threshold"] = summary["dropped_below_threshold"]
    path = os.path.join(workdir, f"iteration_{iteration}_selection.json")
    manifests.write_file(path, json.dumps(summary, indent=1))


def _finish(config, workdir: str, rows, trained, model, sets, data) -> dict:
    """Exports the last model, plots, evaluates robustness; writes and returns results.json."""
    evaluation.export_saved_model(
        model,
        os.path.join(workdir, "saved_model"),
        class_names=sets.class_names,
        small_image=config.student.small_image,
    )
    plot(rows, os.path.join(workdir, "accuracy.png"))
    results = {"models": rows, "config": config.to_dict()}
    if config.get("evaluate") is not None and config.evaluate.robustness:
        results["robustness"] = robustness(config, sets, data, trained, workdir)
    manifests.write_file(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    return results


def _print_row(row: dict) -> None:
    text = f"   test top-1 {100 * row['test_top1']:.2f}%"
    if row["kept"] is not None:
        accuracy = row["pseudo_label_accuracy"]
        shown = "n/a (no true labels)" if math.isnan(accuracy) else f"{100 * accuracy:.2f}%"
        text += (
            f", pseudo-label accuracy {shown}, kept {row['kept']} / {row['kept'] + row['dropped']}"
        )
    print(text, flush=True)
