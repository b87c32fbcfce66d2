"""Source shards from an image folder tree or a tfds split (tools/make_records.py).

A folder with class subfolders (`root/cat/1.jpg`) gives labeled records,
classes numbered in sorted folder-name order; a folder of images only gives
unlabeled records (label -1). tfds images are kept as their original encoded
bytes (no decode and re-encode). Every image is test-decoded first; one that
fails is skipped and counted, with the first few names in the manifest.
Records are dealt round-robin over the shards, in sorted order, so shards
are about equal and the output is deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import tensorflow as tf

from noisy_student_tf.data import records, schema
from noisy_student_tf.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
MAX_NAMED_FAILURES = 20


def folder_items(root: str) -> tuple[list[str], Iterator[tuple[bytes, int, bytes]]]:
    """(class names, iterator of (encoded, label, key)) for an image folder.

    Keys are the paths relative to `root`.
    """
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"--input {root!r} is not a folder of images")
    entries = sorted(tf.io.gfile.listdir(root))
    classes = [e.rstrip("/") for e in entries if tf.io.gfile.isdir(os.path.join(root, e))]
    if classes:
        files = [
            (os.path.join(c, f), label)
            for label, c in enumerate(classes)
            for f in sorted(tf.io.gfile.listdir(os.path.join(root, c)))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    else:
        files = [(f, schema.UNLABELED) for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise FileNotFoundError(f"--input {root!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")

    def items():
        for rel, label in files:
            with tf.io.gfile.GFile(os.path.join(root, rel), "rb") as f:
                yield f.read(), label, rel.encode()

    return classes, items()


def tfds_items(name: str, split: str, data_dir: str | None = None):
    """(class names, iterator of (encoded, label, key)) for a tfds split."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()
    features = builder.info.features
    label_feature = features["label"] if "label" in features else None
    classes = list(label_feature.names) if label_feature is not None else []
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )

    def items():
        for i, ex in enumerate(tfds.as_numpy(ds)):
            label = int(ex["label"]) if label_feature is not None else schema.UNLABELED
            yield ex["image"], label, f"{name}/{split}/{i}".encode()

    return classes, items()


def _decodes(encoded: bytes) -> bool:
    try:
        tf.io.decode_image(encoded, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
        return False
    return True


def write_source_shards(
    items: Iterable[tuple[bytes, int, bytes]],
    output_dir: str,
    num_shards: int,
    prefix: str = "train",
    classes: list[str] | None = None,
) -> dict:
    """Writes source shards; returns the manifest (also `output_dir/manifest.json`)."""
    if num_shards < 1:
        raise ConfigError(f"--num_shards must be >= 1, got {num_shards}")
    timer = records.Timer()
    tf.io.gfile.makedirs(output_dir)
    paths = [
        os.path.join(output_dir, records.shard_name(prefix, i, num_shards))
        for i in range(num_shards)
    ]
    writers = [records.AtomicWriter(p) for p in paths]
    written, failures, per_class = 0, [], {}
    try:
        for encoded, label, key in items:
            if not _decodes(encoded):
                failures.append(key.decode(errors="replace"))
                continue
            example = schema.source_example(encoded, label, key, schema.image_format(encoded))
            writers[written % num_shards].write(example.SerializeToString())
            per_class[label] = per_class.get(label, 0) + 1
            written += 1
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:
        w.commit()
    manifest = {
        "stage": "make_records",
        "records_in": written + len(failures),
        "written": written,
        "skipped": {"undecodable_image": len(failures)} if failures else {},
        "skipped_examples": failures[:MAX_NAMED_FAILURES],
        "classes": classes or [],
        "num_classes": len(classes or []),
        "per_label": {str(k): v for k, v in sorted(per_class.items())},
        "shards": [os.path.basename(p) for p in paths],
        "records_per_shard": [w.count for w in writers],
        "elapsed_s": timer.elapsed(),
    }
    records.write_json(os.path.join(output_dir, "manifest.json"), manifest)
    return manifest
