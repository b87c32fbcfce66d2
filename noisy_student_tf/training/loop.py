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
experiments/configs/digits.py for every key). `run` returns the results
dict that experiments/noisy_student.py writes to results.json.
"""

from __future__ import annotations

import copy
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
from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import pipeline, records, schema, sources
from noisy_student_tf.data import preprocess as preprocessing
from noisy_student_tf.data.sources import SemiSupervisedData, StreamingData
from noisy_student_tf.labeling.select import validate_balance
from noisy_student_tf.models import build_efficientnet, load_checkpoint
from noisy_student_tf.training import (
    fine_tune,
    precision,
    progress,
    record_stages,
    resume,
    stages,
)
from noisy_student_tf.training.noisy_student import NoisyStudent, smooth
from noisy_student_tf.training.optimization import build_optimizer
from noisy_student_tf.training.results import format_table, plot, robustness
from noisy_student_tf.training.strategy import get_strategy

__all__ = ["build_model", "format_table", "iteration_config", "run", "train_one", "validate_config"]

# Decoded labeled images (S x S x 3 bytes each) a streamed run keeps in host
# memory with tf.data's cache(); larger labeled sets are re-read every epoch.
LABELED_CACHE_BYTES = 1 << 30


def build_model(model_config, num_classes: int, image_size: int) -> keras.Model:
    """The EfficientNet a config's `teacher` or `student` block describes."""
    overrides = {}
    for key in ("width_coefficient", "depth_coefficient", "batch_norm_momentum"):
        if model_config.get(key):
            overrides[key] = model_config[key]
    return build_efficientnet(
        model_config.architecture,
        num_classes=num_classes,
        input_shape=(image_size, image_size, 3),
        dropout_rate=model_config.dropout_rate,
        final_survival_prob=model_config.final_survival_prob,
        small_image=model_config.small_image,
        sync_batch_norm=model_config.get("sync_batch_norm", False),
        **overrides,
    )


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
    precision.resolve(
        config.get("precision", "auto"),
        config.get("jit_compile", "auto"),
        "tpu" if config.strategy == "tpu" else "cpu",
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


def _is_saved_model(path: str) -> bool:
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def load_teacher_checkpoint(path: str, image_size: int) -> keras.Model:
    """`teacher_checkpoint`: a `.keras` file, an exported SavedModel or an official checkpoint.

    Lets ablations share one teacher and a run start from a teacher trained
    elsewhere. A SavedModel (evaluation.export_saved_model's `serve`
    endpoint) is wrapped as a Keras model so it can label, be evaluated and
    act as an online teacher like a trained one.
    """
    if _is_saved_model(path):
        endpoint = keras.layers.TFSMLayer(path, call_endpoint="serve")
        inputs = keras.Input((image_size, image_size, 3), name="images")
        model = keras.Model(inputs, endpoint(inputs), name="saved_model_teacher")
    else:  # a .keras file, or an official TF1 checkpoint built at the data's size
        model = load_checkpoint(path, image_size=image_size)
    if tuple(model.input_shape[1:3]) != (image_size, image_size):
        raise ConfigError(
            f"teacher_checkpoint={path!r} takes {model.input_shape[1:3]} images but "
            f"the data is {image_size}x{image_size} (data.image_size)"
        )
    return model


def check_student_size(teacher: keras.Model, student: keras.Model, allow_smaller: bool) -> None:
    """The paper's students are equal or larger than their teachers."""
    t, s = teacher.count_params(), student.count_params()
    if s < t and not allow_smaller:
        raise ConfigError(
            f"the student ({s:,} parameters) is smaller than its teacher "
            f"({t:,}); Noisy Student uses an equal-or-larger student. Set "
            f"allow_smaller_student=True to run it anyway"
        )


def train_preprocess(model_config, image_size: int, seed: int):
    """A model block's training input noise: crop, flip, RandAugment, Cutout.

    `preprocess` = "official" (default: the official order for the image
    size, see data/preprocess.py), "randaugment_only" or "none".
    """
    randaugment = None
    if model_config.randaugment_magnitude > 0 and model_config.randaugment_layers > 0:
        from noisy_student_tf.augment import RandAugment

        randaugment = RandAugment(
            num_layers=model_config.randaugment_layers,
            magnitude=model_config.randaugment_magnitude,
            cutout=model_config.cutout,
            seed=seed,
            variant=model_config.get("randaugment_variant", "corrected"),
        )
    return preprocessing.train_preprocess(
        model_config.get("preprocess", "official"),
        image_size,
        randaugment,
        small_image=model_config.small_image,
        flip=model_config.get("flip", True),
        extra_cutout=model_config.get("extra_cutout", True),
    )


def train_one(
    config,
    strategy,
    labeled,
    num_labeled: int,
    num_classes: int,
    image_size: int,
    model_config,
    epochs: int,
    seed: int,
    unlabeled: tf.data.Dataset | tuple | np.ndarray | None = None,
    teacher: keras.Model | None = None,
    name: str = "model",
    log_dir: str | None = None,
    checkpoint_dir: str | None = None,
    init_from: keras.Model | None = None,
    frozen_blocks: int = 0,
    schedule: tuple[float, int, int] | None = None,
) -> tuple[keras.Model, dict]:
    """Trains one noised model with fit(); returns it holding its EMA weights, and step counts.

    Args:
      labeled: (uint8 images, labels) arrays or an unbatched (image, label)
        stream (`pipeline.source_records`).
      num_labeled: labeled images; one epoch is one pass over them.
      unlabeled: the student's unbatched pseudo-labeled source (see
        `pseudo_labeled_stream`, `record_stages.balanced_stream`); None
        trains on labeled images only (a teacher).
      name: labels its progress lines.
      log_dir: if set, receives TensorBoard scalars (loss terms, accuracy,
        learning rate per epoch).
      checkpoint_dir: where the fit's state is saved every
        `train.save_every_steps` steps and restored from on a rerun
        (resume.py); None saves nothing.
      init_from: start from this model's weights (same architecture, any
        input size) instead of a fresh initialization (fine-tuning).
      frozen_blocks: with init_from, freeze the stem and this many blocks.
      schedule: (epochs, total steps, step offset) of another run's
        learning-rate schedule to follow instead of this run's own
        (fine-tuning continues the student's schedule); epochs may be
        fractional.

    Returns:
      (student, {"steps", "resumed_from_step", "final_step"}).
    """
    train = config.train
    steps = train.steps_per_epoch or math.ceil(num_labeled / train.batch_size)
    total = int(round(steps * epochs))
    resolved = precision.resolve(
        config.get("precision", "auto"),
        config.get("jit_compile", "auto"),
        precision.device_kind(strategy),
    )
    with strategy.scope():
        student = build_model(model_config, num_classes, image_size)
        if init_from is not None:
            student.set_weights(init_from.get_weights())
            fine_tune.freeze_shallow_layers(student, frozen_blocks)
        model = NoisyStudent(
            student,
            num_classes,
            unlabeled_ratio=config.pseudo.unlabeled_ratio,
            label_smoothing=train.label_smoothing,
            weight_decay=train.weight_decay,
            teacher=teacher if config.pseudo.online else None,
            temperature=config.pseudo.temperature if config.pseudo.soft else None,
            ema_decay=train.ema_decay,
        )
        # Schedule epochs are the official float N / B; fit's epochs are whole steps.
        schedule_epoch = train.steps_per_epoch or num_labeled / train.batch_size
        schedule_epochs, schedule_total, offset = schedule or (epochs, total, 0)
        optimizer = build_optimizer(
            train,
            train.batch_size,
            schedule_epoch,
            schedule_epochs,
            total_steps=schedule_total,
            step_offset=offset,
        )
        model.compile(
            optimizer=precision.wrap_optimizer(optimizer, resolved),
            jit_compile=resolved.jit_compile,
        )
        # Slots exist before a checkpoint is restored into them.
        model.optimizer.build(model.trainable_variables)
    checkpoint = resume.FitCheckpoint(checkpoint_dir, model) if checkpoint_dir else None
    start = checkpoint.restore() if checkpoint else 0
    if start:
        print(f"   {name}: resumed from its checkpoint at step {start} of {total}", flush=True)
    ds = pipeline.training_dataset(
        labeled,
        train.batch_size,
        unlabeled,
        unlabeled_ratio=config.pseudo.unlabeled_ratio if unlabeled is not None else 0,
        preprocess=train_preprocess(model_config, image_size, seed),
        online_teacher=config.pseudo.online,
        seed=seed,
        start_batch=start,
    )
    callbacks = [resume.StopAtStep(total)]
    if checkpoint is not None and train.get("save_every_steps", 0):
        callbacks.append(resume.SaveEverySteps(checkpoint, train.save_every_steps))
    if config.verbose == 1:
        callbacks.append(progress.ProgressLines(name, total - start))
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0))
    if start < total:
        model.fit(
            ds,
            epochs=math.ceil(epochs),
            initial_epoch=start // steps,
            steps_per_epoch=steps,
            verbose=2 if config.verbose == 2 else 0,
            callbacks=callbacks,
            shuffle=False,
        )
    elif model.average is not None:  # killed after its last step: only the average is left
        model.average.copy_to_variables(strategy)
    info = {"steps": total, "resumed_from_step": start, "final_step": checkpoint_step(model)}
    return student, info


def checkpoint_step(model: keras.Model) -> int:
    return int(model.optimizer.iterations.numpy())


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


def _describe(model_config) -> str:
    text = model_config.architecture
    if model_config.get("width_coefficient") or model_config.get("depth_coefficient"):
        text += f" w{model_config.width_coefficient:g} d{model_config.depth_coefficient:g}"
    return text + (" small" if model_config.small_image else "")


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
        else:
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
        )

    def test_top1(self, model: keras.Model, small_image: bool, image_size: int | None = None):
        batch = self.config.train.eval_batch_size
        if not self.streamed:
            return evaluation.top1_accuracy(
                model, self.data.test_images, self.data.test_labels, batch
            )
        size = image_size or self.image_size
        batches = record_stages.eval_batches(self.data.test, size, batch, small_image)
        return record_stages.streamed_top1(model, batches)


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
    loaded = load_teacher_checkpoint(loaded_from, image_size) if loaded_from else None
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
        fingerprint = _fingerprint(os.path.join(pseudo_dir, "manifest.json"))
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
                    f"== iteration {iteration}: {role} {_describe(model_config)} on "
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
                else _describe(model_config)
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
        model, os.path.join(workdir, "saved_model"), small_image=config.student.small_image
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
        "architecture": f"{_describe(config.student)} at {size} px",
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
        f"== fine-tuning: {_describe(model_config)} at {block.image_size} px, "
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
    if _is_saved_model(loaded_from):
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
