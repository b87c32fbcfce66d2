"""The iterative Noisy Student loop (paper, Algorithm 1), as a list of resumable stages.

  iteration 0: train a noised teacher on the labeled images (or load one:
               `teacher_checkpoint`).
  iteration i: the previous model, un-noised, labels the unlabeled set;
               the labels are filtered by confidence and balanced per class;
               an equal-or-larger noised student trains on labeled +
               pseudo-labeled images; it becomes the next teacher.

Two data modes (data/sources.py). In memory (`data.source`: digits, a shard
folder, tfds): the sets are uint8 arrays, labeling is `predict` + the
in-memory selection (or, with `pseudo.via_records`, the record stages on
shards of the pool). Streamed (`data.labeled`, `data.unlabeled`,
`data.test`): every set is read by tf.data, each iteration labels the
unlabeled shards with `labeling.shards`, filters and balances them with the
Beam pipeline and the student streams the balanced shards
(record_stages.py). `data.pseudo_labeled` starts from a filter_balance
output folder instead: no teacher stage, the first student trains on it.

Every stage writes its outputs and a manifest into --workdir (stages.py): a
rerun with the same --workdir reuses finished models, labeled and balanced
shards, resumes a model killed in the middle of fit() from its last
checkpoint (resume.py, `train.save_every_steps`), and stops with a
ConfigError naming the key when an output was made with other settings.

Everything is configured by one ml_collections ConfigDict (see
noisy_student_tf/configs/digits.py for every key). `run` returns the results
dict that experiments/noisy_student.py writes to results.json.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from noisy_student_tf import evaluation, labeling
from noisy_student_tf.data import pipeline, records, schema, sources
from noisy_student_tf.data.sources import SemiSupervisedData, StreamingData
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop import record_stages, stages
from noisy_student_tf.loop.config_checks import iteration_config, validate_config
from noisy_student_tf.loop.results import format_table, plot, robustness
from noisy_student_tf.models import load_checkpoint
from noisy_student_tf.training import fine_tune, precision
from noisy_student_tf.training.noisy_student import smooth
from noisy_student_tf.training.strategy import get_strategy
from noisy_student_tf.training.trainer import (
    build_model,
    check_student_size,
    describe,
    is_saved_model,
    load_teacher_checkpoint,
    train_one,
)

__all__ = ["format_table", "run", "validate_config"]

# Decoded labeled images (S x S x 3 bytes each) a streamed run keeps in host
# memory with tf.data's cache(); larger labeled sets are re-read every epoch.
LABELED_CACHE_BYTES = 1 << 30


def _pool_key(index: int) -> bytes:
    """A pool image's record key; the official balancing's coin flips hash it."""
    return f"pool/{index:08d}".encode()


def pseudo_labeled_stream(config, data: SemiSupervisedData, probs: np.ndarray, selection):
    """The student's unlabeled source for in-memory data, in the mode `pseudo` selects.

    offline (default): (selected pool images, targets made from the
      teacher's stored probabilities), in memory.
    online: the selected pool images alone; the frozen teacher computes the
      targets inside the train step.
    (via_records goes through the record stages instead, see `_record_labels`.)
    """
    pseudo = config.pseudo
    if pseudo.online:
        return data.unlabeled_images[selection.indices]
    targets = labeling.training_targets(
        probs[selection.indices], pseudo.soft, pseudo.temperature, config.train.label_smoothing
    )
    return data.unlabeled_images[selection.indices], targets


def _pool_files(data: SemiSupervisedData, workdir: str) -> list[str]:
    """The in-memory pool written once as source shards (pseudo.via_records), reused on rerun."""
    from noisy_student_tf.data import ingest

    pool_dir = os.path.join(workdir, "pool")
    digest = records.content_digest(data.unlabeled_images)
    stage = stages.Stage(os.path.join(pool_dir, record_stages.STAGE_FILE), "the pool's shards")
    settings = {"pool_images": digest, "num_shards": 4}
    if not stage.complete(settings):
        stage.start(settings)
        items = (
            (schema.encode_png(image), schema.UNLABELED, _pool_key(i))
            for i, image in enumerate(data.unlabeled_images)
        )
        ingest.write_source_shards(items, pool_dir, num_shards=4, prefix="pool")
        stage.finish({})
    return records.list_files(os.path.join(pool_dir, "pool-*"))


def _record_labels(
    config, strategy, workdir, iteration, teacher_path, fingerprint, files, spec, num_classes
):
    """Label -> filter/balance of `files` by model `iteration`; returns (pseudo dir, manifest)."""
    labeled_dir = os.path.join(workdir, f"iteration_{iteration}_labeled")
    pseudo_dir = os.path.join(workdir, f"iteration_{iteration}_pseudo")
    record_stages.label(
        teacher_path,
        fingerprint,
        files,
        labeled_dir,
        config.pseudo,
        strategy,
        config.train.eval_batch_size,
        spec,
    )
    manifest = record_stages.filter_balance(
        labeled_dir,
        pseudo_dir,
        num_classes,
        config.pseudo,
        config.seed + iteration,
        fingerprint,
    )
    return pseudo_dir, manifest


def _fingerprint(path: str) -> str:
    from noisy_student_tf.labeling.shards import teacher_fingerprint

    return teacher_fingerprint(path)


class _Data:
    """What the loop needs of either data mode (arrays or streams)."""

    def __init__(self, data, config, workdir: str):
        self.data = data
        self.streamed = isinstance(data, StreamingData)
        self.num_classes = data.num_classes
        self.config = config
        self.workdir = workdir
        if self.streamed:
            self.image_size = data.image_size
            self.num_labeled = data.num_labeled
            self.pseudo_folder = data.pseudo_labeled
            self.has_unlabeled = data.unlabeled is not None
            # The pool may come from another label space (JFT), so only these two.
            named = {"data.labeled": data.labeled, "data.test": data.test}
            self.class_names = records.check_class_names(
                {key: s.files for key, s in named.items() if not s.is_tfds}, self.num_classes
            )
        else:
            self.class_names = None
            self.image_size = int(data.test_images.shape[1])
            self.num_labeled = len(data.labeled_labels)
            self.pseudo_folder = ""
            self.has_unlabeled = True

    def labeled(self, model_config, seed: int, image_size: int | None = None):
        if not self.streamed:
            return self.data.labeled_images, self.data.labeled_labels
        image_size = image_size or self.image_size
        source = self.data.labeled
        small = model_config.small_image
        if source.is_tfds:
            return pipeline.tfds_records(
                source.tfds_name,
                source.tfds_split,
                image_size,
                source.data_dir,
                small,
                shuffle_files=True,
                seed=seed,
            )
        return pipeline.source_records(
            source.files,
            image_size,
            seed=seed,
            small_image=small,
            cache=sources.cacheable(source, image_size, LABELED_CACHE_BYTES),
            num_classes=self.num_classes,
        )

    def test_top1(self, model: keras.Model, small_image: bool, image_size: int | None = None):
        batch = self.config.train.eval_batch_size
        if not self.streamed:
            return evaluation.top1_accuracy(
                model, self.data.test_images, self.data.test_labels, batch
            )
        size = image_size or self.image_size
        batches = record_stages.eval_batches(
            self.data.test, size, batch, small_image, self.num_classes
        )
        try:
            return record_stages.streamed_top1(model, batches)
        except tf.errors.InvalidArgumentError as e:  # e.g. an image that does not decode
            raise schema.name_bad_image(self.data.test.files, "data.test", e) from e


def _model_settings(config, iteration: int, previous: str) -> dict:
    """What a model stage depends on: the config (a teacher: not the student or
    pseudo blocks) and the content of what it learned from."""
    exclude = ("student", "pseudo", "teacher_checkpoint") if iteration == 0 else ()
    return {
        **stages.flat_settings(config, exclude),
        "iteration": iteration,
        "learned_from": previous,
    }


def run(
    config,
    workdir: str,
    data: SemiSupervisedData | StreamingData,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Runs teacher + `num_iterations` students; writes checkpoints, plot, SavedModel.

    Resumable: rerun with the same `workdir` after a kill (see the module
    docstring). Returns {"models": [row per model], "config": resolved
    config}; see training/results.py for the row fields.
    """
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
        # Every worker must run the saves (they are collective), but only the
        # chief's land in --workdir; the others write to a scratch folder.
        workdir = tempfile.mkdtemp(prefix="noisy_student_worker_")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    keras.utils.set_random_seed(config.seed)
    if config.get("deterministic"):
        # Bit-identical reruns: deterministic kernels (slower; see README).
        tf.config.experimental.enable_op_determinism()
    sets = _Data(data, config, workdir)
    image_size, num_classes = sets.image_size, sets.num_classes
    loaded_from = config.get("teacher_checkpoint", "")
    loaded = load_teacher_checkpoint(loaded_from, image_size, num_classes) if loaded_from else None
    if not sets.pseudo_folder:
        check_student_size(
            loaded if loaded is not None else build_model(config.teacher, num_classes, image_size),
            build_model(config.student, num_classes, image_size),
            config.allow_smaller_student,
        )
    logging.info("data: %s", data.summary())

    # Carried from one iteration to the next: the model that just trained,
    # its checkpoint and fingerprint, and the labels it gave (in memory:
    # probabilities and selection; streamed: the balanced shards' folder).
    rows, model, probs, selection, trained = [], None, None, None, []
    teacher_path, fingerprint, pseudo_dir = "", "", ""
    if sets.pseudo_folder:
        pseudo_dir = sets.pseudo_folder
        fingerprint = _fingerprint(records.filter_balance_manifest(pseudo_dir))
    first = 1 if sets.pseudo_folder else 0
    for iteration in range(first, config.num_iterations + 1):
        role = "teacher" if iteration == 0 else "student"
        model_config = config.teacher if iteration == 0 else config.student
        name = "teacher" if iteration == 0 else f"student {iteration}"
        stem = os.path.join(workdir, f"iteration_{iteration}_{role}")
        start = time.time()
        if iteration == 0 and loaded is not None:
            print(f"== iteration 0: teacher loaded from {loaded_from}", flush=True)
            model = loaded
            teacher_path, fingerprint = _keep_loaded_teacher(model, loaded_from, stem)
            wall = time.time() - start
        else:
            stage = stages.Stage(stem + ".json", name)
            settings = _model_settings(config, iteration, fingerprint)
            if stage.complete(settings) and os.path.exists(stem + ".keras"):
                print(f"== iteration {iteration}: {name} reused from {stem}.keras", flush=True)
                model = load_checkpoint(stem + ".keras")
                wall = stage.manifest["wall_s"]
            else:
                stage.start(settings)
                unlabeled, epochs, on = None, config.train.teacher_epochs, ""
                if iteration > 0:
                    unlabeled, count = _student_source(
                        config,
                        sets,
                        probs,
                        selection,
                        pseudo_dir,
                        iteration,
                        strategy,
                        teacher_path,
                        fingerprint,
                    )
                    epochs = config.train.student_epochs
                    on = f" + {count} pseudo-labeled"
                print(
                    f"== iteration {iteration}: {role} {describe(model_config)} on "
                    f"{sets.num_labeled} labeled{on} images",
                    flush=True,
                )
                model, info = train_one(
                    iteration_config(config, iteration),
                    strategy,
                    sets.labeled(model_config, config.seed + iteration),
                    sets.num_labeled,
                    num_classes,
                    image_size,
                    model_config,
                    epochs,
                    seed=config.seed + iteration,
                    unlabeled=unlabeled,
                    teacher=model,
                    name=name,
                    log_dir=os.path.join(workdir, "tensorboard", f"iteration_{iteration}_{role}"),
                    checkpoint_dir=stem + ".ckpt",
                )
                wall = time.time() - start
                model.save(stem + ".keras")
                stage.finish({"wall_s": round(wall, 1), **info})
                if tf.io.gfile.exists(stem + ".ckpt"):
                    tf.io.gfile.rmtree(stem + ".ckpt")
            teacher_path = stem + ".keras"
            fingerprint = _fingerprint(teacher_path)
        row = {
            "role": role,
            "iteration": iteration,
            "architecture": (
                f"loaded {os.path.basename(loaded_from.rstrip('/'))}"
                if iteration == 0 and loaded is not None
                else describe(model_config)
            ),
            "parameters": int(model.count_params()),
            "test_top1": sets.test_top1(model, model_config.small_image),
            "pseudo_label_accuracy": float("nan"),
            "kept": None,
            "dropped": None,
            "dropped_below_threshold": None,
            "wall_s": round(wall, 1),
        }
        # The model, un-noised, labels the unlabeled set (for the next
        # student, and to report how good its labels are); they are filtered.
        if sets.streamed:
            if sets.has_unlabeled:
                files = record_stages.source_files(data.unlabeled, workdir)
                pseudo_dir, manifest = _record_labels(
                    config,
                    strategy,
                    workdir,
                    iteration,
                    teacher_path,
                    fingerprint,
                    files,
                    data.unlabeled.spec,
                    num_classes,
                )
                summary = record_stages.selection_summary(manifest)
                row["pseudo_label_accuracy"] = record_stages.pseudo_label_accuracy(
                    os.path.join(workdir, f"iteration_{iteration}_labeled")
                )
                _fill_counts(row, summary, workdir, iteration)
        else:
            probs = labeling.predict_probabilities(
                model, data.unlabeled_images, config.train.eval_batch_size, verbose=0
            )
            selection = labeling.filter_and_balance(
                probs,
                config.pseudo.threshold,
                config.pseudo.images_per_class,
                seed=config.seed + iteration,
                balance=config.pseudo.get("balance", "exact"),
                keys=[_pool_key(i) for i in range(len(probs))],
            )
            row["pseudo_label_accuracy"] = evaluation.agreement(probs, data.unlabeled_labels)
            _fill_counts(row, selection.manifest(), workdir, iteration)
            # The pool's probabilities, for confidence histograms and counts
            # before balancing (experiments/report.py); 4 bytes per class per image.
            np.save(os.path.join(workdir, f"iteration_{iteration}_pool_probabilities.npy"), probs)
        rows.append(row)
        trained.append((name, teacher_path))
        _print_row(row)

    if fine_tune.enabled(config):
        model, teacher_path, wall = _fine_tune_stage(
            config, strategy, sets, model, fingerprint, workdir
        )
        rows.append(_fine_tuned_row(config, model, sets, wall))
        trained.append(("fine-tuned", teacher_path))
        _print_row(rows[-1])
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
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _fine_tuned_row(config, model: keras.Model, sets, wall: float) -> dict:
    """The fine-tuned student's results row: evaluated at its own resolution, labels nothing."""
    size = config.fine_tune.image_size
    return {
        "role": "fine_tune",
        "iteration": config.num_iterations + 1,
        "architecture": f"{describe(config.student)} at {size} px",
        "parameters": int(model.count_params()),
        "test_top1": sets.test_top1(model, config.student.small_image, size),
        "pseudo_label_accuracy": float("nan"),
        "kept": None,
        "dropped": None,
        "dropped_below_threshold": None,
        "wall_s": round(wall, 1),
    }


def _fine_tune_stage(config, strategy, sets, student, fingerprint: str, workdir: str):
    """The final student fine-tuned at test resolution (fine_tune.py); resumable like the others."""
    block = config.fine_tune
    stem = os.path.join(workdir, "fine_tune_student")
    stage = stages.Stage(stem + ".json", "fine-tuning")
    settings = _model_settings(config, config.num_iterations + 1, fingerprint)
    if stage.complete(settings) and os.path.exists(stem + ".keras"):
        print(f"== fine-tuning reused from {stem}.keras", flush=True)
        return load_checkpoint(stem + ".keras"), stem + ".keras", stage.manifest["wall_s"]
    stage.start(settings)
    start = time.time()
    train = config.train
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
    model.save(stem + ".keras")
    wall = time.time() - start
    stage.finish({"wall_s": round(wall, 1), **info})
    if tf.io.gfile.exists(stem + ".ckpt"):
        tf.io.gfile.rmtree(stem + ".ckpt")
    return model, stem + ".keras", wall


def _keep_loaded_teacher(model: keras.Model, loaded_from: str, stem: str) -> tuple[str, str]:
    """(checkpoint the labeling reads, its fingerprint) for a `teacher_checkpoint`.

    A SavedModel labels as it is; anything else is saved once as
    iteration_0_teacher.keras (a rerun keeps that file, so its fingerprint,
    which the later stages were made with, stays the same).
    """
    source = _fingerprint(loaded_from)
    if is_saved_model(loaded_from):
        return loaded_from, source
    stage = stages.Stage(stem + ".json", "teacher")
    settings = {"teacher_checkpoint": loaded_from, "teacher_checkpoint_fingerprint": source}
    if not (stage.complete(settings) and os.path.exists(stem + ".keras")):
        stage.start(settings)
        model.save(stem + ".keras")
        stage.finish({"wall_s": 0.0})
    return stem + ".keras", _fingerprint(stem + ".keras")


def _student_source(
    config, sets, probs, selection, pseudo_dir, iteration, strategy, teacher_path, fingerprint
):
    """(the student's unbatched unlabeled source, its size) for iteration `iteration`."""
    if sets.streamed:
        stream, count = record_stages.balanced_stream(
            pseudo_dir,
            sets.num_classes,
            sets.image_size,
            config.seed + iteration,
            config.student.small_image,
        )
    elif config.pseudo.via_records:
        # The in-memory pool through the tools' library code: source shards
        # -> labeling.shards -> labeling.beam_filter -> the balanced stream.
        files = _pool_files(sets.data, sets.workdir)
        folder, _ = _record_labels(
            config,
            strategy,
            sets.workdir,
            iteration - 1,
            teacher_path,
            fingerprint,
            files,
            "pool",
            sets.num_classes,
        )
        stream, count = record_stages.balanced_stream(
            folder,
            sets.num_classes,
            sets.image_size,
            config.seed + iteration,
            config.student.small_image,
        )
    else:
        if len(selection.indices) == 0:
            raise ConfigError(
                f"no unlabeled image reached pseudo.threshold={config.pseudo.threshold} "
                f"after iteration {iteration - 1}; lower the threshold or train the "
                f"teacher longer (train.teacher_epochs)"
            )
        return pseudo_labeled_stream(config, sets.data, probs, selection), len(selection.indices)
    if not config.pseudo.soft:  # stored one-hot; smooth like real labels (official main.py)
        eps = config.train.label_smoothing
        stream = stream.map(lambda x, t: (x, smooth(t, eps)))
    return stream, count


def _fill_counts(row: dict, summary: dict, workdir: str, iteration: int) -> None:
    """Kept/dropped into the row; the per-class counts into iteration_I_selection.json."""
    row["kept"] = summary["kept_unique"]
    row["dropped"] = summary["in"] - summary["kept_unique"]
    row["dropped_below_threshold"] = summary["dropped_below_threshold"]
    with open(os.path.join(workdir, f"iteration_{iteration}_selection.json"), "w") as f:
        json.dump(summary, f, indent=1)


def _print_row(row: dict) -> None:
    text = f"   test top-1 {100 * row['test_top1']:.2f}%"
    if row["kept"] is not None:
        accuracy = row["pseudo_label_accuracy"]
        shown = "n/a (no true labels)" if math.isnan(accuracy) else f"{100 * accuracy:.2f}%"
        text += (
            f", pseudo-label accuracy {shown}, kept {row['kept']} / {row['kept'] + row['dropped']}"
        )
    print(text, flush=True)
