"""The iterative Noisy Student loop (paper, Algorithm 1).

  iteration 0: train a noised teacher on the labeled images.
  iteration i: the previous model, un-noised, labels the unlabeled pool;
               the labels are filtered by confidence and balanced per class;
               an equal-or-larger noised student trains on labeled +
               pseudo-labeled images; it becomes the next teacher.

Everything is configured by one ml_collections ConfigDict (see
experiments/configs/digits.py for every key). `run` returns the results
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
from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import pipeline, schema
from noisy_student_tf.data import preprocess as preprocessing
from noisy_student_tf.data.sources import SemiSupervisedData
from noisy_student_tf.labeling.select import validate_balance
from noisy_student_tf.models import build_efficientnet, load_checkpoint
from noisy_student_tf.training import progress
from noisy_student_tf.training.noisy_student import NoisyStudent, smooth
from noisy_student_tf.training.optimization import build_optimizer
from noisy_student_tf.training.strategy import get_strategy


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
    data: SemiSupervisedData,
    model_config,
    epochs: int,
    seed: int,
    unlabeled: tf.data.Dataset | None = None,
    teacher: keras.Model | None = None,
    name: str = "model",
    log_dir: str | None = None,
) -> keras.Model:
    """Trains one noised model with fit(); returns it holding its EMA weights.

    `unlabeled` is the student's unbatched pseudo-labeled stream (see
    `pseudo_labeled_stream`); None trains on labeled images only (a teacher).
    `name` labels its progress lines; `log_dir`, if set, receives its
    TensorBoard scalars (loss terms, accuracy, learning rate per epoch).
    """
    train = config.train
    image_size = data.test_images.shape[1]
    steps = train.steps_per_epoch or math.ceil(len(data.labeled_labels) / train.batch_size)
    ds = pipeline.training_dataset(
        (data.labeled_images, data.labeled_labels),
        train.batch_size,
        unlabeled,
        unlabeled_ratio=config.pseudo.unlabeled_ratio if unlabeled is not None else 0,
        preprocess=train_preprocess(model_config, image_size, seed),
        online_teacher=config.pseudo.online,
        seed=seed,
    )
    with strategy.scope():
        student = build_model(model_config, data.num_classes, image_size)
        model = NoisyStudent(
            student,
            data.num_classes,
            unlabeled_ratio=config.pseudo.unlabeled_ratio,
            label_smoothing=train.label_smoothing,
            weight_decay=train.weight_decay,
            teacher=teacher if config.pseudo.online else None,
            temperature=config.pseudo.temperature if config.pseudo.soft else None,
            ema_decay=train.ema_decay,
        )
        # Schedule epochs are the official float N / B; fit's epochs are whole steps.
        schedule_epoch = train.steps_per_epoch or len(data.labeled_labels) / train.batch_size
        model.compile(
            optimizer=build_optimizer(
                train, train.batch_size, schedule_epoch, epochs, total_steps=steps * epochs
            ),
            jit_compile=config.jit_compile,
        )
    callbacks = []
    if config.verbose == 1:
        callbacks.append(progress.ProgressLines(name, epochs * steps))
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False, profile_batch=0))
    model.fit(
        ds,
        epochs=epochs,
        steps_per_epoch=steps,
        verbose=2 if config.verbose == 2 else 0,
        callbacks=callbacks,
        shuffle=False,
    )
    return student


def _pool_key(index: int) -> bytes:
    """A pool image's record key; the official balancing's coin flips hash it."""
    return f"pool/{index:08d}".encode()


def pseudo_labeled_stream(
    config,
    data: SemiSupervisedData,
    probs: np.ndarray,
    selection,
    teacher_path: str,
    workdir: str,
    iteration: int,
) -> tuple | np.ndarray | tf.data.Dataset:
    """The student's unlabeled source, in the mode `pseudo` selects.

    offline (default): (selected pool images, targets made from the
      teacher's stored probabilities), in memory.
    online: the selected pool images alone; the frozen teacher computes the
      targets inside the train step.
    via_records: the JFT-scale path, through the same library code as
      tools/: the pool is written as source shards, the teacher checkpoint
      labels them (labeling.shards), Apache Beam filters and balances them
      (labeling.beam_filter) and the student reads the output shards.
    """
    pseudo = config.pseudo
    if pseudo.online:
        return data.unlabeled_images[selection.indices]
    if not pseudo.via_records:
        targets = labeling.training_targets(
            probs[selection.indices], pseudo.soft, pseudo.temperature, config.train.label_smoothing
        )
        return data.unlabeled_images[selection.indices], targets
    from noisy_student_tf.data import ingest, records
    from noisy_student_tf.labeling import beam_filter, shards

    # The loop does not resume, so every stage starts clean: label_shards
    # skips complete shards, which would otherwise keep an earlier run's labels.
    pool_dir = os.path.join(workdir, "pool")
    labeled_dir = os.path.join(workdir, f"iteration_{iteration - 1}_labeled")
    for stale in (pool_dir, labeled_dir):
        if tf.io.gfile.exists(stale):
            tf.io.gfile.rmtree(stale)
    items = (
        (schema.encode_png(image), schema.UNLABELED, _pool_key(i))
        for i, image in enumerate(data.unlabeled_images)
    )
    ingest.write_source_shards(items, pool_dir, num_shards=4, prefix="pool")
    shards.label_shards(
        teacher_path,
        records.list_files(os.path.join(pool_dir, "pool-*")),
        labeled_dir,
        soft=pseudo.soft,
        temperature=pseudo.temperature,
        verbose=0,
    )
    pseudo_dir = os.path.join(workdir, f"iteration_{iteration - 1}_pseudo")
    beam_filter.run_filter_balance(
        records.list_files(os.path.join(labeled_dir, "labeled-*")),
        pseudo_dir,
        data.num_classes,
        pseudo.threshold,
        pseudo.images_per_class,
        num_output_shards=4,
        seed=config.seed + iteration - 1,
        balance=pseudo.get("balance", "exact"),
    )
    stream = pipeline.pseudo_labeled_records(
        records.list_files(os.path.join(pseudo_dir, "pseudo-*")),
        data.num_classes,
        data.test_images.shape[1],
        seed=config.seed + iteration,
        small_image=config.student.small_image,
    )
    if not pseudo.soft:  # stored one-hot; smooth like real labels (official main.py)
        eps = config.train.label_smoothing
        stream = stream.map(lambda x, t: (x, smooth(t, eps)))
    return stream


def _plot(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(
        [r["iteration"] for r in rows],
        [100 * r["test_top1"] for r in rows],
        "o-",
        label="test top-1",
    )
    ax.plot(
        [r["iteration"] for r in rows],
        [100 * r["pseudo_label_accuracy"] for r in rows],
        "s--",
        label="pseudo-label accuracy (pool)",
    )
    ax.set_xticks(
        [r["iteration"] for r in rows],
        [("teacher" if r["role"] == "teacher" else f"student {r['iteration']}") for r in rows],
    )
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(rows: list) -> str:
    """A plain-text table of the results rows."""
    lines = [
        f"{'model':<12}{'architecture':<34}{'test top-1':>11}{'pseudo acc':>11}"
        f"{'kept':>7}{'dropped':>8}{'wall s':>8}"
    ]
    for r in rows:
        name = "teacher" if r["role"] == "teacher" else f"student {r['iteration']}"
        lines.append(
            f"{name:<12}{r['architecture']:<34}{100 * r['test_top1']:>10.2f}%"
            f"{100 * r['pseudo_label_accuracy']:>10.2f}%{r['kept']:>7}"
            f"{r['dropped']:>8}{r['wall_s']:>8.1f}"
        )
    return "\n".join(lines)


def _describe(model_config) -> str:
    text = model_config.architecture
    if model_config.get("width_coefficient") or model_config.get("depth_coefficient"):
        text += f" w{model_config.width_coefficient:g} d{model_config.depth_coefficient:g}"
    return text + (" small" if model_config.small_image else "")


def run(
    config, workdir: str, data: SemiSupervisedData, strategy: tf.distribute.Strategy | None = None
) -> dict:
    """Runs teacher + `num_iterations` students; writes checkpoints, plot, SavedModel.

    Returns {"models": [row per model], "config": resolved config}; see
    README for the row fields.
    """
    validate_config(config)
    # Multi-worker and TPU strategies must exist before other TF ops run, so
    # scripts create them first (see experiments/noisy_student.py).
    strategy = strategy or get_strategy(config.strategy, config.tpu_address)
    validate_config(config, strategy.num_replicas_in_sync)
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
    image_size = data.test_images.shape[1]
    loaded_from = config.get("teacher_checkpoint", "")
    loaded = load_teacher_checkpoint(loaded_from, image_size) if loaded_from else None
    check_student_size(
        loaded if loaded is not None else build_model(config.teacher, data.num_classes, image_size),
        build_model(config.student, data.num_classes, image_size),
        config.allow_smaller_student,
    )
    logging.info("data: %s", data.summary())

    # Carried from one iteration to the next: the model that just trained,
    # its pool predictions, their selection and its checkpoint.
    rows, model, probs, selection, teacher_path = [], None, None, None, ""
    for iteration in range(config.num_iterations + 1):
        role = "teacher" if iteration == 0 else "student"
        model_config = config.teacher if iteration == 0 else config.student
        name = "teacher" if iteration == 0 else f"student {iteration}"
        log_dir = os.path.join(workdir, "tensorboard", f"iteration_{iteration}_{role}")
        start = time.time()
        if iteration == 0 and loaded is not None:
            print(f"== iteration 0: teacher loaded from {loaded_from}", flush=True)
            model = loaded
        else:
            unlabeled, epochs, on = None, config.train.teacher_epochs, ""
            if iteration > 0:
                if len(selection.indices) == 0:
                    raise ConfigError(
                        f"no unlabeled image reached pseudo.threshold={config.pseudo.threshold} "
                        f"after iteration {iteration - 1}; lower the threshold or train the "
                        f"teacher longer (train.teacher_epochs)"
                    )
                unlabeled = pseudo_labeled_stream(
                    config, data, probs, selection, teacher_path, workdir, iteration
                )
                epochs = config.train.student_epochs
                on = f" + {len(selection.indices)} pseudo-labeled"
            print(
                f"== iteration {iteration}: {role} {_describe(model_config)} on "
                f"{len(data.labeled_labels)} labeled{on} images",
                flush=True,
            )
            model = train_one(
                config,
                strategy,
                data,
                model_config,
                epochs,
                seed=config.seed + iteration,
                unlabeled=unlabeled,
                teacher=model,
                name=name,
                log_dir=log_dir,
            )
        wall = time.time() - start
        # The model, un-noised, labels the pool (for the next student, and to
        # report how good its labels are), then the labels are filtered.
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
        row = {
            "role": role,
            "iteration": iteration,
            "architecture": (
                f"loaded {os.path.basename(loaded_from.rstrip('/'))}"
                if iteration == 0 and loaded is not None
                else _describe(model_config)
            ),
            "parameters": int(model.count_params()),
            "test_top1": evaluation.top1_accuracy(
                model, data.test_images, data.test_labels, config.train.eval_batch_size
            ),
            "pseudo_label_accuracy": evaluation.agreement(probs, data.unlabeled_labels),
            "kept": selection.num_kept_unique,
            "dropped": selection.num_in - selection.num_kept_unique,
            "dropped_below_threshold": selection.num_below_threshold,
            "wall_s": round(wall, 1),
        }
        rows.append(row)
        print(
            f"   test top-1 {100 * row['test_top1']:.2f}%, pseudo-label accuracy "
            f"{100 * row['pseudo_label_accuracy']:.2f}%, kept {row['kept']} / "
            f"{selection.num_in}",
            flush=True,
        )
        if iteration == 0 and loaded is not None and _is_saved_model(loaded_from):
            teacher_path = loaded_from  # a SavedModel teacher labels as it is
        else:
            teacher_path = os.path.join(workdir, f"iteration_{iteration}_{role}.keras")
            model.save(teacher_path)
        with open(os.path.join(workdir, f"iteration_{iteration}_selection.json"), "w") as f:
            json.dump(selection.manifest(), f, indent=1)
        # The pool's probabilities, for confidence histograms and counts
        # before balancing (experiments/report.py); 4 bytes per class per image.
        np.save(os.path.join(workdir, f"iteration_{iteration}_pool_probabilities.npy"), probs)

    evaluation.export_saved_model(
        model, os.path.join(workdir, "saved_model"), small_image=config.student.small_image
    )
    _plot(rows, os.path.join(workdir, "accuracy.png"))
    results = {"models": rows, "config": config.to_dict()}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
