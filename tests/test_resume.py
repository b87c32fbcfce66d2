"""Resume after preemption: stage manifests, the fit checkpoint, and the in-memory loop.

A loop killed with SIGKILL at named points is tested in test_kill_points.py.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import copy_workdir
from conftest import tiny_loop_config as _tiny_config
from conftest import tiny_loop_data as _tiny_data

from noisy_student_tf import loop
from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import pipeline
from noisy_student_tf.loop import stages


def test_stage_reuses_equal_settings_and_names_the_differing_key(tmp_path):
    path = str(tmp_path / "stage.json")
    stage = stages.Stage(path, "teacher")
    assert not stage.complete({"train.batch_size": 4})
    stage.start({"train.batch_size": 4})
    # Started but not finished: resumable with the same settings, an error with others.
    assert not stages.Stage(path, "teacher").complete({"train.batch_size": 4})
    with pytest.raises(ConfigError, match=r"teacher .* started .*train.batch_size: 4 -> 8"):
        stages.Stage(path, "teacher").complete({"train.batch_size": 8})
    stage.finish({"wall_s": 1.0})
    again = stages.Stage(path, "teacher")
    assert again.complete({"train.batch_size": 4}) and again.manifest["wall_s"] == 1.0
    with pytest.raises(ConfigError, match=r"was made .*seed: \(absent\) -> 1"):
        again.complete({"train.batch_size": 4, "seed": 1})


def test_flat_settings_leave_out_execution_keys_and_excluded_blocks():
    config = _tiny_config()
    flat = stages.flat_settings(config, exclude_blocks=("student", "pseudo"))
    assert flat["train.batch_size"] == 4 and flat["teacher.width_coefficient"] == 0.1
    assert "num_iterations" not in flat and "train.save_every_steps" not in flat
    assert not any(k.startswith(("student.", "pseudo.")) for k in flat)


def test_in_memory_stream_resumes_at_the_batch_it_stopped_at():
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    labels = np.arange(10)

    def labels_of(ds, n):
        return [b["labels"].numpy().tolist() for b in ds.take(n)]

    full = labels_of(pipeline.training_dataset((images, labels), 3, seed=5), 9)
    resumed = labels_of(pipeline.training_dataset((images, labels), 3, seed=5, start_batch=4), 5)
    assert resumed == full[4:]


def test_record_stream_resumes_with_keys_at_the_batch_index(tmp_path):
    """A Dataset source is not replayed, but its augmentation keys continue at start_batch."""
    seen = []

    def preprocess(images, seed):
        seen.append(seed)
        return images + tf.cast(seed[1] % 7, tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices((np.zeros((6, 2, 2, 3), np.uint8), np.arange(6)))
    fresh = pipeline.training_dataset(ds, 2, preprocess=preprocess, seed=1, shuffle_buffer=0)
    later = pipeline.training_dataset(
        ds, 2, preprocess=preprocess, seed=1, shuffle_buffer=0, start_batch=3
    )
    fresh_pixels = [int(b["images"][0, 0, 0, 0]) for b in fresh.take(5)]
    later_pixels = [int(b["images"][0, 0, 0, 0]) for b in later.take(2)]
    assert later_pixels == fresh_pixels[3:5]


def test_rerun_with_other_settings_is_an_error_naming_the_key(tmp_path, tiny_teacher_workdir):
    data = _tiny_data(np.random.default_rng(0))
    config = _tiny_config()
    config.num_iterations = 0
    # The first run with this config and data: the session's (conftest), copied.
    workdir = copy_workdir(tiny_teacher_workdir, tmp_path / "run")
    teacher_mtime = os.path.getmtime(os.path.join(workdir, "iteration_0_teacher.keras"))
    config.train.learning_rate = 0.5
    with pytest.raises(ConfigError, match=r"train.learning_rate: 0.01 -> 0.5"):
        loop.run(config, workdir, data)
    # Execution-only settings do not count: more iterations reuse the teacher.
    config.train.learning_rate = 0.01
    config.num_iterations = 1
    config.verbose = 0
    results = loop.run(config, workdir, data)
    assert os.path.getmtime(os.path.join(workdir, "iteration_0_teacher.keras")) == teacher_mtime
    assert [r["role"] for r in results["models"]] == ["teacher", "student"]
