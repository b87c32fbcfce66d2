"""Stage manifests: what a stage of the loop did, with which settings, and whether it finished.

Each stage of a run (train a model, label the unlabeled set, filter and
balance it) writes its outputs into --workdir and a small JSON manifest
beside them: the settings it ran with (a flat dict of config keys and input
fingerprints) and, when it is done, `complete: true` plus its results. A
rerun with the same --workdir then

  * reuses a complete stage whose settings equal the current ones,
  * resumes an incomplete one (a model from its last checkpoint, labeling
    from its last complete shard) if the settings are equal,
  * and stops with a ConfigError naming every differing key otherwise: an
    output made with other settings is never reused silently.

The manifests are written atomically (temp + rename, data/records.py), so a
kill leaves either the old manifest or the new one.
"""

from __future__ import annotations

import os

import tensorflow as tf

from noisy_student_tf.data import records
from noisy_student_tf.errors import ConfigError

# Config keys that change how a run executes but not what it computes, so a
# run resumed with other values reuses its outputs (e.g. more iterations, or
# a rerun on a machine with more replicas).
EXECUTION_KEYS = (
    "verbose",
    "strategy",
    "tpu_address",
    "jit_compile",
    "deterministic",
    "num_iterations",
    "allow_smaller_student",
    "train.eval_batch_size",
    "train.save_every_steps",
)


def flat_settings(config, exclude_blocks: tuple = ()) -> dict:
    """The config as {"block.key": value}, without execution-only keys.

    Args:
      config: an ml_collections ConfigDict (or nested dict).
      exclude_blocks: top-level blocks that do not affect the stage (a
        teacher does not depend on the `student` or `pseudo` blocks).
    """
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    flat = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for k in sorted(value):
                visit(f"{prefix}{k}.", value[k])
        else:
            flat[prefix[:-1]] = list(value) if isinstance(value, tuple) else value

    for key in sorted(as_dict):
        if key not in exclude_blocks:
            visit(f"{key}.", as_dict[key])
    return {k: v for k, v in flat.items() if k not in EXECUTION_KEYS}


def differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose value differs (or is only on one side)."""
    missing = object()
    diffs = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            shown = ["(absent)" if v is missing else repr(v) for v in (before, after)]
            diffs.append(f"{key}: {shown[0]} -> {shown[1]}")
    return diffs


class Stage:
    """The manifest of one stage at `path` (a JSON file in --workdir).

    Typical use:
        stage = Stage(path, "teacher")
        if stage.complete(settings):       # raises on other settings
            reuse(stage.manifest)
        else:
            stage.start(settings)
            ... work, resumable ...
            stage.finish(results)
    """

    def __init__(self, path: str, name: str):
        self.path = path
        self.name = name
        self.manifest = records.read_json(path) if tf.io.gfile.exists(path) else None

    def check(self, settings: dict) -> None:
        """Raises ConfigError if the stage ran (or started) with other settings."""
        if self.manifest is None:
            return
        diffs = differences(self.manifest["settings"], settings)
        if diffs:
            state = "made" if self.manifest.get("complete") else "started"
            shown = "; ".join(diffs[:5]) + (
                f"; and {len(diffs) - 5} more" if len(diffs) > 5 else ""
            )
            raise ConfigError(
                f"{self.name} in {os.path.dirname(self.path) or '.'} was {state} with other "
                f"settings ({shown}; old -> new). Rerun with the old settings to reuse or "
                "resume it, or choose another --workdir"
            )

    def complete(self, settings: dict) -> bool:
        """True if the stage finished with `settings`; raises if its settings differ."""
        self.check(settings)
        return bool(self.manifest and self.manifest.get("complete"))

    def start(self, settings: dict) -> None:
        """Records the settings before work begins (checked again on a rerun)."""
        self.check(settings)
        self.manifest = {"stage": self.name, "settings": settings, "complete": False}
        tf.io.gfile.makedirs(os.path.dirname(self.path) or ".")
        records.write_json(self.path, self.manifest)

    def finish(self, results: dict) -> None:
        """Marks the stage complete with its results; the last write of the stage."""
        self.manifest = {**self.manifest, **results, "complete": True}
        records.write_json(self.path, self.manifest)
