"""The record stages of an iteration: label -> filter/balance -> the student's stream.

This is the paper's JFT-scale path inside the loop, through the same
library code as tools/: `labeling.shards.label_shards` writes one labeled
shard per unlabeled shard (resumable per shard, spread over the strategy's
replicas), `labeling.beam_filter.run_filter_balance` filters and balances
them with Apache Beam, and the student streams the balanced shards
(`pipeline.pseudo_labeled_stream`). Each stage keeps a stage manifest
(stages.py) in its output folder, so a rerun reuses finished stages, resumes
labeling at its first incomplete shard, and refuses outputs made with other
settings.

Also here: the reports a streamed run computes without holding a set in
memory (test top-1 over a stream; pseudo-label accuracy over the labeled
shards, where the unlabeled records carry true labels).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from noisy_student_tf import evaluation
from noisy_student_tf.data import pipeline, records, schema
from noisy_student_tf.data.sources import RecordSource
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop.stages import Stage

STAGE_FILE = "stage.json"  # beside the tools' own manifest.json in each output folder


def source_files(source: RecordSource, workdir: str) -> list[str]:
    """The shards of a set; a set given otherwise (a tfds split) is first written as shards.

    label_shards reads record files, so such a set is ingested once
    (streamed, constant memory) into WORKDIR/unlabeled_source; the copy is
    reused on rerun.
    """
    items = source.source_items()
    if items is None:
        return list(source.files)
    from noisy_student_tf.data import ingest

    out = os.path.join(workdir, "unlabeled_source")
    stage = Stage(os.path.join(out, STAGE_FILE), "the unlabeled set's shards")
    settings = {"data.unlabeled": source.spec, "data_dir": source.data_dir}
    if not stage.complete(settings):
        stage.start(settings)
        num_shards = max(1, min(1024, source.num_records // 10_000))
        manifest = ingest.write_source_shards(items, out, num_shards, prefix="unlabeled")
        stage.finish({"written": manifest["written"]})
    return records.list_files(os.path.join(out, "unlabeled-*"))


def label(
    teacher_path: str,
    fingerprint: str,
    files: list[str],
    output_dir: str,
    pseudo,
    strategy: tf.distribute.Strategy,
    batch_size: int,
    spec: str,
    small_image: bool | None = None,
    resize: str = "tf2",
) -> dict:
    """Labels `files` with the teacher into `output_dir`; returns label_shards' summary.

    Args:
      teacher_path: the checkpoint (`.keras`, SavedModel or official TF1).
      fingerprint: its content hash (models.artifact.fingerprint).
      pseudo: the config's `pseudo` block (soft, temperature, topk).
      spec: the unlabeled set's config value, recorded in the stage manifest.
      small_image, resize: the teacher's eval view (labeling.shards.TeacherView):
        its model block's `small_image` and its in-memory model's eval resize
        ("official" for a loaded official checkpoint, whose `.keras` copy at
        `teacher_path` no longer says so).
    """
    from noisy_student_tf.labeling import shards

    topk = int(pseudo.get("topk", 0)) or None
    settings = {
        "data.unlabeled": spec,
        "num_input_shards": len(files),
        "teacher_fingerprint": fingerprint,
        "pseudo.soft": bool(pseudo.soft),
        "pseudo.temperature": float(pseudo.temperature) if pseudo.soft else None,
        "pseudo.topk": topk,
        "teacher_resize": resize,
        "teacher_small_image": small_image,
    }
    stage = Stage(os.path.join(output_dir, STAGE_FILE), "the labeled shards")
    if stage.complete(settings):
        return records.read_json(os.path.join(output_dir, "manifest.json"))
    stage.start(settings)
    summary = shards.label_shards(
        teacher_path,
        files,
        output_dir,
        soft=pseudo.soft,
        temperature=pseudo.temperature,
        topk=topk,
        batch_size=batch_size,
        strategy=strategy,
        verbose=0,
        small_image=small_image,
        resize=resize,
    )
    if not summary["complete"]:
        raise RuntimeError(f"labeling {output_dir} ended incomplete: {summary}")
    stage.finish({"labeled": summary["labeled"], "skipped": summary["skipped"]})
    return summary


def filter_balance(
    labeled_dir: str, output_dir: str, num_classes: int, pseudo, seed: int, fingerprint: str
) -> dict:
    """Filters and balances the labeled shards into `output_dir`; returns the Beam manifest."""
    from noisy_student_tf.labeling import beam_filter

    settings = {
        "teacher_fingerprint": fingerprint,
        "num_classes": int(num_classes),
        "pseudo.threshold": float(pseudo.threshold),
        "pseudo.images_per_class": int(pseudo.images_per_class),
        "pseudo.balance": pseudo.get("balance", "exact"),
        "pseudo.num_output_shards": int(pseudo.get("num_output_shards", 4)),
        "seed": int(seed),
    }
    stage = Stage(os.path.join(output_dir, STAGE_FILE), "the filtered and balanced shards")
    if stage.complete(settings):
        return records.read_json(os.path.join(output_dir, "manifest.json"))
    stage.start(settings)
    manifest = beam_filter.run_filter_balance(
        records.list_files(os.path.join(labeled_dir, "labeled-*")),
        output_dir,
        num_classes,
        pseudo.threshold,
        pseudo.images_per_class,
        num_output_shards=settings["pseudo.num_output_shards"],
        seed=seed,
        balance=settings["pseudo.balance"],
    )
    stage.finish({"out_records": manifest["out_records"]})
    return manifest


def selection_summary(manifest: dict) -> dict:
    """The in-memory selection's summary keys (select.Selection.manifest) from a Beam manifest."""
    return {
        "in": manifest["in"],
        "kept_unique": manifest["kept_unique"],
        "dropped_below_threshold": manifest["dropped"]["below_threshold"],
        "dropped_over_quota": manifest["dropped"]["over_quota"],
        "out_records": manifest["out_records"],
        "per_class": manifest["per_class"],
    }


def balanced_stream(
    folder: str, num_classes: int, image_size: int, seed: int, small_image: bool
) -> tuple[pipeline.RecordStream, int]:
    """(unbatched (image, probs) stream, record count) of a filter_balance output folder.

    Raises:
      ConfigError: the folder is not a finished filter_balance output, or its
        class count is not `num_classes`.
    """
    manifest_path = os.path.join(folder, "manifest.json")
    if not tf.io.gfile.exists(manifest_path):
        raise ConfigError(
            f"{folder!r} has no manifest.json; expected the --output_dir of a finished "
            "tools/filter_balance.py run"
        )
    manifest = records.read_json(manifest_path)
    if manifest.get("num_classes") != num_classes:
        raise ConfigError(
            f"{folder!r} holds pseudo labels over {manifest.get('num_classes')} classes "
            f"but data.num_classes={num_classes}"
        )
    if not manifest.get("out_records"):
        raise ConfigError(
            f"{folder!r} holds no pseudo-labeled record (threshold "
            f"{manifest.get('threshold')}); lower the threshold or train the teacher longer"
        )
    files = [os.path.join(folder, name) for name in manifest["shards"]]
    files = [f for f in files if records.count_records(f)]
    stream = pipeline.pseudo_labeled_stream(
        files, num_classes, image_size, seed=seed, small_image=small_image
    )
    return stream, int(manifest["out_records"])


def _labeled_batches(labeled_dir: str, features: dict):
    """Parsed batches of `features` from the labeled shards of `labeled_dir`, in file order."""
    files = records.list_files(os.path.join(labeled_dir, "labeled-*"))
    ds = tf.data.TFRecordDataset(files).batch(4096)
    return ds.map(lambda s: tf.io.parse_example(s, features), num_parallel_calls=tf.data.AUTOTUNE)


def pseudo_label_accuracy(labeled_dir: str) -> float:
    """Agreement of `teacher/label` with the records' true labels, where known (else NaN).

    Reads two integers per record from the labeled shards; nothing is kept.
    """
    features = {
        schema.LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=schema.UNLABELED),
        schema.TEACHER_LABEL: tf.io.FixedLenFeature([], tf.int64),
    }
    batches = _labeled_batches(labeled_dir, features)
    return evaluation.agreement_over_batches(
        (b[schema.TEACHER_LABEL].numpy(), b[schema.LABEL].numpy()) for b in batches
    )


def read_labeled(labeled_dir: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys [N], true labels [N], stored teacher probabilities [N, C]) in key order.

    For a pool that fits in memory (via_records): what the selection was made
    from, kept for reports. The probabilities are the stored pseudo labels
    (temperature-scaled if soft, one-hot if hard, top-k densified).
    """
    files = records.list_files(os.path.join(labeled_dir, "labeled-*"))
    ds = tf.data.TFRecordDataset(files).map(lambda s: schema.parse_pseudo(s, num_classes))
    keys, labels, probs = [], [], []
    for batch in ds.batch(4096):
        keys.extend(batch[schema.KEY].numpy())
        labels.append(batch[schema.LABEL].numpy())
        probs.append(batch[schema.TEACHER_PROBS].numpy())
    order = np.argsort(np.asarray(keys, object).astype(bytes), kind="stable")
    keys = np.asarray(keys, object).astype(bytes)[order]
    return keys, np.concatenate(labels)[order], np.concatenate(probs)[order]
