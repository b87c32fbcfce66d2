"""Sharded TFRecord files: naming, listing, reading, atomic writing, manifests.

Every tool reads and writes shards named `PREFIX-00003-of-00128.tfrecord`
(docs/data_format.md). A shard is written to a temporary name beside its
final one and renamed when complete, so a killed job never leaves a file
that looks finished; the rerun finds the temporary file and starts that
shard over. The reader here is plain Python over `tf.io.gfile` (local,
GCS, ...) so it runs inside Beam workers without a TF graph, and a damaged
file raises an error that names it instead of stopping in the middle of a
pipeline with "truncated record at 1234".
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
from collections.abc import Iterator

import tensorflow as tf

from noisy_student_tf.errors import ConfigError

SUFFIX = ".tfrecord"
TMP_MARK = ".tmp-"  # PATH.tmp-<random>: a shard being written


def shard_name(prefix: str, index: int, num_shards: int) -> str:
    """`PREFIX-00003-of-00128.tfrecord`."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{SUFFIX}"


def list_files(input_spec: str) -> list[str]:
    """The sorted files of a glob, or the `*.tfrecord*` shards of a folder.

    Raises:
      FileNotFoundError: the path does not exist or matches no shard; the
        message names it.
    """
    if not input_spec:
        raise ConfigError("--input is empty; give a file glob or a folder of shards")
    if tf.io.gfile.isdir(input_spec):
        pattern = os.path.join(input_spec, f"*{SUFFIX}*")
    else:
        pattern = input_spec
    files = sorted(
        f
        for f in tf.io.gfile.glob(pattern)
        if TMP_MARK not in os.path.basename(f) and not f.endswith(".json")
    )
    if not files:
        what = "folder" if tf.io.gfile.isdir(input_spec) else "path or glob"
        raise FileNotFoundError(f"input {what} {input_spec!r} matches no TFRecord file")
    return files


def read_records(path: str) -> Iterator[bytes]:
    """Yields the serialized records of one TFRecord file, in order.

    The TFRecord framing is: uint64 length, uint32 masked crc of the length,
    the data, uint32 masked crc of the data (little endian). CRCs are not
    checked here (tf.data checks them where images are decoded).

    Raises:
      IOError: the file is missing or ends in the middle of a record; the
        message names the file and the record index.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"TFRecord file {path!r} does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise OSError(
                    f"TFRecord file {path!r} is truncated: record {index} "
                    f"has a {len(header)}-byte header (expected 12)"
                )
            (length,) = struct.unpack("<Q", header[:8])
            body = f.read(length + 4)
            if len(body) < length + 4:
                raise OSError(
                    f"TFRecord file {path!r} is truncated: record {index} "
                    f"needs {length + 4} bytes, {len(body)} remain"
                )
            yield body[:length]
            index += 1


def check_labels(labels, files: list[str], num_classes: int, where: str, unlabeled: bool) -> None:
    """Raises ConfigError naming the shard and record of the first label out of range.

    Args:
      labels: int [N], the records of `files` in order.
      files: the shards they were read from (counted to find the record).
      num_classes: labels must be in [0, num_classes), or -1 (no label)
        when `unlabeled`.
      where: what the files are, for the message (e.g. "data.path train split").
    """
    low = -1 if unlabeled else 0  # schema.UNLABELED
    bad = [i for i, label in enumerate(labels) if not low <= label < num_classes]
    if not bad:
        return
    index = bad[0]
    for path in files:
        count = count_records(path)
        if index < count:
            break
        index -= count
    raise ConfigError(
        f"{path}: record {index} has image/class/label {labels[bad[0]]}, outside "
        f"[{low}, {num_classes}) (data.num_classes); {len(bad)} such record(s) in {where}"
    )


def filter_balance_manifest(folder: str, key: str = "data.pseudo_labeled") -> str:
    """The manifest.json of a finished tools/filter_balance.py output holding records.

    Checked before the loop hashes it or a student trains from the folder.

    Raises:
      ConfigError: no manifest (not a finished filter_balance output) or no
        record kept (every pool image below the threshold).
    """
    path = os.path.join(folder, "manifest.json")
    if not tf.io.gfile.exists(path):
        raise ConfigError(
            f"{key}={folder!r} has no manifest.json; expected the --output_dir of a "
            "finished tools/filter_balance.py run"
        )
    manifest = read_json(path)
    if not manifest.get("out_records"):
        raise ConfigError(
            f"{key}={folder!r} holds no pseudo-labeled record ({manifest.get('in', 0)} in, "
            f"none at or above threshold {manifest.get('threshold')}); lower the threshold "
            "or train the teacher longer"
        )
    return path


def class_names_beside(files: list[str]) -> list[str] | None:
    """The class names tools/make_records.py wrote beside `files`, ordered by id, or None.

    Read from the folder of the first shard: `class_map.json`, else the
    `classes` of its `manifest.json` (older outputs).
    """
    if not files:
        return None
    folder = os.path.dirname(files[0])
    class_map = os.path.join(folder, "class_map.json")  # data.ingest.CLASS_MAP
    if tf.io.gfile.exists(class_map):
        ids = read_json(class_map)
        return sorted(ids, key=ids.get)
    manifest = os.path.join(folder, "manifest.json")
    if tf.io.gfile.exists(manifest):
        return list(read_json(manifest).get("classes") or []) or None
    return None


def check_class_names(sets: dict[str, list[str]], num_classes: int) -> list[str] | None:
    """The sets' common class names (None where no set names them), checked up front.

    Args:
      sets: config key (e.g. "data.labeled") -> its shard files.
      num_classes: data.num_classes.

    Raises:
      ConfigError: a set names another number of classes than num_classes,
        or two sets name their classes differently (their ids would disagree).
    """
    named = {key: class_names_beside(files) for key, files in sets.items()}
    named = {key: names for key, names in named.items() if names}
    for key, names in named.items():
        if len(names) != num_classes:
            raise ConfigError(
                f"{key}: its shards name {len(names)} classes (class_map.json / manifest.json "
                f"beside them) but data.num_classes={num_classes}"
            )
    distinct = {tuple(names) for names in named.values()}
    if len(distinct) > 1:
        keys = ", ".join(named)
        raise ConfigError(
            f"{keys} name their classes differently, so the same id means different classes; "
            "write the later sets with tools/make_records.py --class_map of the first"
        )
    return list(distinct.pop()) if distinct else None


def count_records(path: str) -> int:
    """Number of records in a local or remote file, checking it is not truncated.

    Reads only the 12-byte headers (seeking over the data), so it is cheap.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"TFRecord file {path!r} does not exist")
    size = tf.io.gfile.stat(path).length
    count, offset = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            header = f.read(12)
            if len(header) < 12:
                raise OSError(
                    f"TFRecord file {path!r} is truncated: record {count} "
                    f"has a {len(header)}-byte header (expected 12)"
                )
            (length,) = struct.unpack("<Q", header[:8])
            offset += 12 + length + 4
            if offset > size:
                raise OSError(
                    f"TFRecord file {path!r} is truncated: record {count} "
                    f"ends at byte {offset}, the file has {size}"
                )
            count += 1
    return count


class AtomicWriter:
    """A TFRecordWriter on `path.tmp-<random>`, renamed to `path` by `commit()`.

    Used as a context manager, an exception (or a kill) leaves only the
    temporary file, which `remove_stale_temporaries` cleans on the rerun.
    """

    def __init__(self, path: str):
        self.path = path
        self.tmp_path = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        self._writer = tf.io.TFRecordWriter(self.tmp_path)
        self.count = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.count += 1

    def commit(self) -> str:
        self._writer.close()
        tf.io.gfile.rename(self.tmp_path, self.path, overwrite=True)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        if tf.io.gfile.exists(self.tmp_path):
            tf.io.gfile.remove(self.tmp_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def remove_stale_temporaries(output_path: str) -> None:
    """Deletes `output_path.tmp-*` left by a killed writer."""
    for stale in tf.io.gfile.glob(f"{output_path}{TMP_MARK}*"):
        tf.io.gfile.remove(stale)


def write_file(path: str, content: str | bytes) -> str:
    """Writes a small file atomically through tf.io.gfile (temp name, then rename).

    A kill leaves the old file or the new one (and perhaps a `TMP_MARK`
    temporary, which readers skip and reruns delete), and an existing file
    is replaced whole (TF's `ram://` filesystem, for one, does not truncate
    a file reopened for writing).
    """
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def write_json(path: str, payload: dict) -> str:
    """Writes JSON atomically (`write_file`)."""
    return write_file(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def content_digest(array) -> str:
    """`sha256:HEX` of an array's bytes and shape: names an in-memory set in a manifest."""
    digest = hashlib.sha256(repr((array.shape, str(array.dtype))).encode())
    digest.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
    return f"sha256:{digest.hexdigest()}"


class Timer:
    """Seconds since construction, for the manifests' `elapsed_s`."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.start, 3)
