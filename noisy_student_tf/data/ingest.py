"""Source shards from an image folder tree or a tfds split (tools/make_records.py).

A folder with class subfolders (`root/cat/1.jpg`) gives labeled records,
classes numbered in sorted folder-name order; a folder of images only gives
unlabeled records (label -1). tfds images are kept as their original encoded
bytes (no decode and re-encode). Every image is test-decoded first; one that
fails is skipped and counted, with the first few names in the manifest.
Records are dealt round-robin over the shards, in sorted order, so shards
are about equal and the output is deterministic.

The class-name -> id map used is written to `output_dir/class_map.json`. A
later folder written with that map (a validation folder missing a class, or
`--prefix=test` into the same output_dir) gets the same ids by name instead
of ids shifted by the missing class, and one with a class the map lacks is
refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import tensorflow as tf

from noisy_student_tf import kill_points
from noisy_student_tf.data import records, schema
from noisy_student_tf.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
MAX_NAMED_FAILURES = 20
CLASS_MAP = "class_map.json"


def read_class_map(path: str) -> dict[str, int]:
    """A `class_map.json` ({class name: id}) written by `write_class_map`."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"class map {path!r} does not exist")
    return {str(name): int(i) for name, i in records.read_json(path).items()}


def write_class_map(output_dir: str, class_map: dict[str, int]) -> str:
    return records.write_json(os.path.join(output_dir, CLASS_MAP), class_map)


def class_ids(classes: list[str], class_map: dict[str, int] | None, where: str) -> dict[str, int]:
    """{name: id} for `classes`: sorted order, or by name through an earlier run's map.

    Raises:
      ConfigError: a class the map does not hold (its id would be a guess).
    """
    if class_map is None:
        return {name: i for i, name in enumerate(classes)}
    unknown = [name for name in classes if name not in class_map]
    if unknown:
        raise ConfigError(
            f"{where} has classes {unknown} that the class map does not hold "
            f"({len(class_map)} classes: {sorted(class_map, key=class_map.get)[:10]}...); "
            "its ids would not match the earlier shards'"
        )
    return {name: class_map[name] for name in classes}


def folder_items(
    root: str, class_map: dict[str, int] | None = None
) -> tuple[list[str], Iterator[tuple[bytes, int, bytes]]]:
    """(class names by id, iterator of (encoded, label, key)) for an image folder.

    Keys are the paths relative to `root`. With `class_map` (an earlier
    run's), class folders get their ids by name and the names returned are
    the map's, all of them.
    """
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"--input {root!r} is not a folder of images")
    entries = sorted(tf.io.gfile.listdir(root))
    classes = [e.rstrip("/") for e in entries if tf.io.gfile.isdir(os.path.join(root, e))]
    if classes:
        ids = class_ids(classes, class_map, f"--input {root!r}")
        files = [
            (os.path.join(c, f), ids[c])
            for c in classes
            for f in sorted(tf.io.gfile.listdir(os.path.join(root, c)))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if class_map is not None:
            classes = sorted(class_map, key=class_map.get)
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
    manifest_path = os.path.join(output_dir, "manifest.json")
    if tf.io.gfile.exists(manifest_path):  # written last: present only when all shards are
        tf.io.gfile.remove(manifest_path)
    for path in [*paths, manifest_path]:
        records.remove_stale_temporaries(path)  # a killed run's
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
    for index, w in enumerate(writers):
        w.commit()
        kill_points.kill_point("make_records_shard", shard=index)
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
    records.write_json(manifest_path, manifest)
    return manifest
