"""Manifests: reuse an output made with the same settings, refuse one made with others.

Every stage that writes into --workdir or an output folder (a model of the
loop, a labeled shard, the labeling summary) leaves a small JSON manifest
beside its output with the settings it ran with. A rerun compares them with
its own (`differences`) and reuses the output when they are equal; when they
differ it stops with one `OtherSettingsError` text naming each differing
setting (old -> new) and what to do, so an output is never reused silently.
loop/stages.py (`Stage`: one manifest per model) and labeling/shards.py (one
per shard) are the two users; the manifest's layout is theirs.

Writes are atomic through `tf.io.gfile` (temporary name, then rename), so a
kill leaves the old file or the new one, and a `gs://` or `ram://` folder
works as a local one does.
"""

from __future__ import annotations

import json
import uuid

import tensorflow as tf

from noisy_student_tf.errors import ConfigError

TMP_MARK = ".tmp-"  # PATH.tmp-<random>: a file being written
SHOWN_DIFFERENCES = 5  # the first five in the message, then a count
_ABSENT = object()


def write_file(path: str, content: str | bytes) -> str:
    """Writes a file atomically through tf.io.gfile (temporary name, then rename).

    A kill leaves the old file or the new one, and an existing file is
    replaced whole (TF's `ram://` filesystem, for one, does not truncate a
    file reopened for writing).
    """
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def write_json(path: str, payload: dict) -> str:
    """Writes JSON atomically (sorted keys, indented)."""
    return write_file(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read(path: str) -> dict | None:
    """The manifest at `path`, or None when there is none (not run, or not finished)."""
    return read_json(path) if tf.io.gfile.exists(path) else None


def _shown(settings: dict, key: str, named_by: dict) -> str:
    value = settings.get(key, _ABSENT)
    text = "(absent)" if value is _ABSENT else repr(value)
    if key in named_by:  # a content hash reads better beside the path it hashes
        path = settings.get(named_by[key], _ABSENT)
        text = f"{'(absent)' if path is _ABSENT else repr(path)} ({text})"
    return text


def differences(old: dict, new: dict, keys=None, named_by: dict | None = None) -> list[str]:
    """'key: old -> new' for every compared setting whose value differs.

    Args:
      old, new: the recorded and the current settings.
      keys: the settings to compare, in order; None: every key of either, sorted
        (one side missing a key is a difference, shown as `(absent)`).
      named_by: {fingerprint key: the key of the path it fingerprints}; such a
        difference is shown under the path's key with both paths, e.g.
        "teacher: 'a.keras' (sha256:..) -> 'b.keras' (sha256:..)". The path
        itself is not compared, so a moved model still matches.
    """
    named_by = named_by or {}
    keys = sorted(set(old) | set(new)) if keys is None else keys
    diffs = []
    for key in keys:
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            shown = named_by.get(key, key)
            before, after = _shown(old, key, named_by), _shown(new, key, named_by)
            diffs.append(f"{shown}: {before} -> {after}")
    return diffs


class OtherSettingsError(ConfigError):
    """An output in the way was made with other settings: the one refusal text.

    `{what} in {where!r} {made} with other settings ({differences}; old -> new).
    {remedy}`, with the first `SHOWN_DIFFERENCES` differences and a count of
    the rest.
    """

    def __init__(self, what: str, where: str, made: str, diffs: list[str], remedy: str):
        shown = "; ".join(diffs[:SHOWN_DIFFERENCES])
        if len(diffs) > SHOWN_DIFFERENCES:
            shown += f"; and {len(diffs) - SHOWN_DIFFERENCES} more"
        super().__init__(
            f"{what} in {where!r} {made} with other settings ({shown}; old -> new). {remedy}"
        )
