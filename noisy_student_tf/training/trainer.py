"""Training one model of the loop: build it from a config block, noise its
input, fit it with the Noisy Student step, resume it after a kill.

The loop (loop/runner.py) decides what each model learns from; this module knows
how one model trains: `train_one` builds the EfficientNet a `teacher` /
`student` block describes, wraps it in `NoisyStudent` (loss, moving
average, online teacher), compiles it with the resolved precision, restores
its mid-fit checkpoint and runs fit() over the pipeline's batches. Also here:
loading a `teacher_checkpoint` and the equal-or-larger student rule.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from noisy_student_tf import kill_points
from noisy_student_tf.data import pipeline
from noisy_student_tf.data import preprocess as preprocessing
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models import build_efficientnet, load_checkpoint, open_model
from noisy_student_tf.models.artifact import is_saved_model
from noisy_student_tf.training import fine_tune, precision, progress, resume
from noisy_student_tf.training.noisy_student import NoisyStudent
from noisy_student_tf.training.optimization import build_optimizer

__all__ = [
    "build_model",
    "check_student_size",
    "describe",
    "load_init_checkpoint",
    "load_teacher_checkpoint",
    "train_one",
    "train_preprocess",
]


def build_model(
    model_config, num_classes: int, image_size: int, seed: int | None = None
) -> keras.Model:
    """The EfficientNet a config's `teacher` or `student` block describes.

    With `seed`, the initial weights (and the dropout/stochastic-depth seed
    generators) are a function of `seed` alone: the global generators are
    reseeded first, so a model's weights do not depend on how many models
    this process built before it (the loop passes seed + iteration).
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
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
        normalization=model_config.get("normalization"),  # None: ImageNet statistics
        batch_norm_group_size=model_config.get("batch_norm_group_size"),  # None: per replica
        **overrides,
    )


def load_teacher_checkpoint(
    path: str, image_size: int, num_classes: int | None = None
) -> keras.Model:
    """`teacher_checkpoint`: any artifact `models.open_model` takes, as a Keras model.

    Lets ablations share one teacher and a run start from a teacher trained
    elsewhere. A SavedModel becomes a Keras model around its signature, so it
    can label, be evaluated and act as an online teacher like a trained one.
    Its input size and, given `num_classes`, its class count are checked
    here, right after loading: a mismatch otherwise surfaces only when the
    student trains on its labels.
    """
    teacher = open_model(path, image_size, setting="teacher_checkpoint")
    teacher.check_fits(
        image_size, num_classes, "teacher.image_size, else data.image_size", "data.num_classes"
    )
    if teacher.image_size is None:  # a SavedModel signature of any size
        teacher.image_size = image_size
    return teacher.keras_model


def load_init_checkpoint(path: str, model: keras.Model, key: str) -> None:
    """A block's `init_checkpoint`: `model` takes a checkpoint's weights (a warm start).

    The official main.py --init_model with --init_model_path assigned every
    variable of the model from the checkpoint's moving averages
    (utils.init_from_ckpt); a `.keras` file of ours already holds them and an
    official checkpoint is read from its EMA shadows (models.load_checkpoint).
    The architecture must match; the input size need not (an EfficientNet's
    weights do not depend on it), so an official or keras.applications
    checkpoint is built at the model's size.

    Raises:
      ConfigError: naming `key`: no such file, a SavedModel (its weights are
        not a Keras model's), or weights that do not fit `model`.
    """
    if is_saved_model(path):
        raise ConfigError(
            f"{key}={path!r} is a SavedModel, which holds no Keras weights to start "
            "from; give the .keras file (or an official / keras.applications checkpoint)"
        )
    try:
        source = load_checkpoint(path, image_size=model.input_shape[1])
    except FileNotFoundError as e:
        raise ConfigError(f"{key}={path!r} does not exist") from e
    try:
        model.set_weights(source.get_weights())
    except ValueError as e:
        raise ConfigError(
            f"{key}={path!r} ({source.name}, {source.count_params():,} parameters) does not "
            f"fit the model ({model.name}, {model.count_params():,} parameters): {e}"
        ) from e


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
    unlabeled: pipeline.RecordStream | tf.data.Dataset | tuple | np.ndarray | None = None,
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
        stream (`pipeline.RecordStream`, `RecordSource.training_stream`).
      num_labeled: labeled images; one epoch is one pass over them.
      unlabeled: the student's unbatched pseudo-labeled source (see
        `loop.runner.pseudo_labeled_stream`, `loop.record_stages.balanced_stream`); None
        trains on labeled images only (a teacher).
      name: labels its progress lines.
      log_dir: if set, receives TensorBoard scalars (loss terms, accuracy,
        learning rate per epoch).
      checkpoint_dir: where the fit's state is saved every
        `train.save_every_steps` steps and restored from on a rerun
        (resume.py); None saves nothing.
      init_from: start from this model's weights (same architecture, any
        input size) instead of a fresh initialization (fine-tuning); without
        it, `model_config.init_checkpoint` (a file) is the warm start if set.
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
    resolved = precision.resolve_config(config, precision.device_kind(strategy))
    with strategy.scope():
        student = build_model(model_config, num_classes, image_size, seed=seed)
        if init_from is not None:
            student.set_weights(init_from.get_weights())
            fine_tune.freeze_shallow_layers(student, frozen_blocks)
        elif model_config.get("init_checkpoint", ""):  # a warm start (checked by the loop)
            load_init_checkpoint(model_config.init_checkpoint, student, "init_checkpoint")
        model = _noisy_student(config, student, num_classes, teacher)
        _compile(model, train, resolved, num_labeled, schedule or (epochs, total, 0))
    checkpoint = resume.FitCheckpoint(checkpoint_dir, model) if checkpoint_dir else None
    start = checkpoint.restore() if checkpoint else 0
    if start:
        print(f"   {name}: resumed from its checkpoint at step {start} of {total}", flush=True)
    preprocess = train_preprocess(model_config, image_size, seed)
    ds = _dataset(config, strategy, labeled, unlabeled, preprocess, seed, start)
    if start < total:
        model.fit(
            ds,
            epochs=math.ceil(epochs),
            initial_epoch=start // steps,
            steps_per_epoch=steps,
            verbose=2 if config.verbose == 2 else 0,
            callbacks=_callbacks(config, name, total, start, checkpoint, log_dir),
            shuffle=False,
        )
    elif model.average is not None:  # killed after its last step: only the average is left
        model.average.copy_to_variables(strategy)
    info = {"steps": total, "resumed_from_step": start, "final_step": checkpoint_step(model)}
    return student, info


def _noisy_student(config, student: keras.Model, num_classes: int, teacher) -> NoisyStudent:
    """`student` wrapped with the config's loss, moving average and online teacher."""
    train = config.train
    return NoisyStudent(
        student,
        num_classes,
        unlabeled_ratio=config.pseudo.unlabeled_ratio,
        label_smoothing=train.label_smoothing,
        weight_decay=train.weight_decay,
        teacher=teacher if config.pseudo.online else None,
        temperature=config.pseudo.temperature if config.pseudo.soft else None,
        ema_decay=train.ema_decay,
    )


def _compile(
    model: NoisyStudent,
    train,
    resolved: precision.Precision,
    num_labeled: int,
    schedule: tuple[float, int, int],
) -> None:
    """Compiles `model` with an optimizer that follows `schedule` = (epochs, total steps, offset).

    Called inside the strategy's scope, so the optimizer's variables are
    mirrored; its slots are built here so a checkpoint can be restored into
    them before fit() would create them.
    """
    # Schedule epochs are the official float N / B; fit's epochs are whole steps.
    schedule_epoch = train.steps_per_epoch or num_labeled / train.batch_size
    schedule_epochs, schedule_total, offset = schedule
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
    model.optimizer.build(model.trainable_variables)


def _dataset(config, strategy, labeled, unlabeled, preprocess, seed: int, start: int):
    """The noised training batches, labeled and pseudo-labeled, from batch `start` on,
    built by each host for its own replicas (`pipeline.distributed_training_dataset`)."""
    return pipeline.distributed_training_dataset(
        strategy,
        labeled,
        config.train.batch_size,
        unlabeled,
        unlabeled_ratio=config.pseudo.unlabeled_ratio if unlabeled is not None else 0,
        preprocess=preprocess,
        online_teacher=config.pseudo.online,
        seed=seed,
        start_batch=start,
    )


def _callbacks(config, name: str, total: int, start: int, checkpoint, log_dir) -> list:
    """fit()'s callbacks: stop at `total`, periodic checkpoints, progress, TensorBoard."""
    train = config.train
    callbacks = [resume.StopAtStep(total)]
    if checkpoint is not None and train.get("save_every_steps", 0):
        callbacks.append(resume.SaveEverySteps(checkpoint, train.save_every_steps))
    point = f"{name.split()[0]}_step"  # teacher_step, student_step (test-only)
    if kill_points.armed(point):
        callbacks.append(resume.KillPoint(point))
    if config.verbose == 1:
        callbacks.append(progress.ProgressLines(name, total - start))
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0))
    return callbacks


def checkpoint_step(model: keras.Model) -> int:
    return int(model.optimizer.iterations.numpy())


def describe(model_config) -> str:
    """A model block in a few words, for progress lines and result rows."""
    text = model_config.architecture
    if model_config.get("width_coefficient") or model_config.get("depth_coefficient"):
        text += f" w{model_config.width_coefficient:g} d{model_config.depth_coefficient:g}"
    return text + (" small" if model_config.small_image else "")
