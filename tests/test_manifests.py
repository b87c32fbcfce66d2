"""One manifest mechanism (noisy_student_tf/manifests.py) for the loop's stages and the shards.

No model is built here: the stage and shard manifests are written by hand,
so every check runs in well under a second.
"""

import os

import pytest
import tensorflow as tf

from noisy_student_tf import manifests
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.labeling import shards
from noisy_student_tf.loop import stages


@pytest.mark.parametrize("root", ["local", "ram://manifests_test"])
def test_writes_are_atomic_and_replace_the_whole_file(tmp_path, root):
    folder = str(tmp_path) if root == "local" else root
    tf.io.gfile.makedirs(folder)
    path = os.path.join(folder, "manifest.json")
    assert manifests.read(path) is None  # not run yet
    manifests.write_json(path, {"settings": {"a": 1}, "notes": "x" * 100})
    manifests.write_json(path, {"settings": {"a": 2}})  # shorter: no tail of the old file
    assert manifests.read(path) == {"settings": {"a": 2}}
    manifests.write_file(os.path.join(folder, "raw.bin"), b"\x00\x01")
    with tf.io.gfile.GFile(os.path.join(folder, "raw.bin"), "rb") as f:
        assert f.read() == b"\x00\x01"
    leftovers = [n for n in tf.io.gfile.listdir(folder) if manifests.TMP_MARK in n]
    assert not leftovers, leftovers


def test_differences_compare_the_chosen_keys_and_name_a_fingerprint_by_its_path():
    old = {"a": 1, "b": [1, 2], "gone": True, "model": "x.keras", "model_fp": "sha256:1"}
    new = {"a": 1, "b": [1, 3], "added": 0, "model": "moved/x.keras", "model_fp": "sha256:1"}
    assert manifests.differences(old, new) == [
        "added: (absent) -> 0",
        "b: [1, 2] -> [1, 3]",
        "gone: True -> (absent)",
        "model: 'x.keras' -> 'moved/x.keras'",
    ]
    # Compared keys only: the path moved but the content is the same.
    named = {"model_fp": "model"}
    assert manifests.differences(old, new, ("a", "model_fp"), named) == []
    changed = {**new, "model_fp": "sha256:2"}
    assert manifests.differences(old, changed, ("model_fp",), named) == [
        "model: 'x.keras' ('sha256:1') -> 'moved/x.keras' ('sha256:2')"
    ]


def test_the_refusal_is_one_config_error_text_with_at_most_five_differences():
    diffs = [f"k{i}: {i} -> {i + 1}" for i in range(7)]
    error = manifests.OtherSettingsError("teacher", "/run", "was made", diffs, "Do this.")
    assert isinstance(error, ConfigError)
    assert str(error) == (
        "teacher in '/run' was made with other settings (k0: 0 -> 1; k1: 1 -> 2; k2: 2 -> 3; "
        "k3: 3 -> 4; k4: 4 -> 5; and 2 more; old -> new). Do this."
    )


def _complete_shard(folder, index, total, **settings):
    """A labeled shard and its manifest, as label_file + label_shards leave them."""
    output = os.path.join(folder, f"labeled-{index:05d}-of-{total:05d}.tfrecord")
    with tf.io.TFRecordWriter(output):
        pass
    recorded = {"records_in": 0, "labeled": 0, "skipped": {}, "teacher": "t.keras"}
    manifests.write_json(output + shards.MANIFEST_SUFFIX, {**recorded, **settings})
    return output


def test_stages_and_shards_refuse_in_the_same_words_and_shards_relabel_with_overwrite(tmp_path):
    settings = {
        "teacher": "t.keras",
        "teacher_fingerprint": "sha256:1",
        "soft": True,
        "temperature": 1.0,
        "topk": None,
        "teacher_image_size": None,
    }
    folder = str(tmp_path / "labeled")
    os.makedirs(folder)
    outputs = [
        _complete_shard(folder, 0, 3, **settings),
        _complete_shard(folder, 1, 3, **{**settings, "temperature": 2.0}),
        _complete_shard(folder, 2, 3, **{**settings, "temperature": 2.0}),
    ]
    with pytest.raises(manifests.OtherSettingsError) as shard_error:
        shards.plan(outputs, [0, 1, 2], settings, overwrite=False)
    assert str(shard_error.value) == (
        f"labeled-00001-of-00003.tfrecord and 1 more complete shard(s) in {folder!r} were "
        "labeled with other settings (temperature: 2.0 -> 1.0; old -> new). Pass --overwrite "
        "to relabel them, or choose another --output_dir"
    )
    moved = {**settings, "teacher": "elsewhere/t.keras"}  # same content, another path
    assert shards.plan(outputs, [0], moved, overwrite=False) == []
    # --overwrite: the stale shards lose their manifests (incomplete until relabeled).
    assert shards.plan(outputs, [0, 1, 2], settings, overwrite=True) == [1, 2]
    assert [os.path.exists(o + shards.MANIFEST_SUFFIX) for o in outputs] == [True, False, False]
    summary = shards.write_summary(folder, outputs, 0.0)
    assert summary["shards_complete"] == 1 and not summary["complete"]
    assert manifests.read(os.path.join(folder, "manifest.json")) == summary

    stage = stages.Stage(str(tmp_path / "run" / "iteration_0_teacher.json"), "teacher")
    stage.start({"seed": 0})
    stage.finish({"wall_s": 1.0})
    with pytest.raises(manifests.OtherSettingsError) as stage_error:
        stages.Stage(stage.path, "teacher").complete({"seed": 1})
    assert str(stage_error.value) == (
        f"teacher in {str(tmp_path / 'run')!r} was made with other settings (seed: 0 -> 1; "
        "old -> new). Rerun with the old settings to reuse or resume it, or choose another "
        "--workdir"
    )
