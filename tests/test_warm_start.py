"""`student.init_checkpoint`: a student warm-started from weights (issue 21 item 9).

The official main.py --init_model_path assigned every variable of the student
from a checkpoint before its first step. Here: the student's logits equal the
checkpoint's when fit() begins, the checkpoint's content is part of the
student stage's settings (a changed file is refused on rerun), and a file
that does not fit is refused before anything trains.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_loop_config, tiny_loop_data

from noisy_student_tf import loop
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.loop import data_modes, stages
from noisy_student_tf.loop.config_checks import validate_config
from noisy_student_tf.training import trainer
from noisy_student_tf.training.noisy_student import NoisyStudent

SIZE, CLASSES = 16, 3


def _checkpoint(config, path, seed):
    """A `.keras` file of the student block's architecture with seeded weights."""
    model = trainer.build_model(config.student, CLASSES, SIZE, seed=seed)
    model.save(path)
    return model


def test_warm_started_student_starts_from_the_checkpoint_and_a_changed_file_is_refused(
    tmp_path, monkeypatch
):
    # The student stage alone (stages.train_model, as the loop calls it).
    config = tiny_loop_config()
    data = tiny_loop_data(np.random.default_rng(0), size=SIZE, classes=CLASSES)
    sets = data_modes.ArraySets(config, data)
    path = str(tmp_path / "init.keras")
    source = _checkpoint(config, path, seed=123)
    config.student.init_checkpoint = path
    probe = data.test_images.astype(np.float32)
    at_fit = []  # the student's logits of the probe images when fit() starts

    def fit(self, *args, **kwargs):
        # Recorded, then no step taken: what matters is the state fit() starts from.
        at_fit.append(keras.ops.convert_to_numpy(self.student(probe, training=False)))

    monkeypatch.setattr(NoisyStudent, "fit", fit)
    workdir = str(tmp_path / "run")
    strategy = tf.distribute.get_strategy()
    stages.train_model(config, strategy, sets, workdir, 1, "sha256:teacher", None, None)
    expected = keras.ops.convert_to_numpy(source(probe, training=False))
    assert len(at_fit) == 1
    np.testing.assert_allclose(at_fit[0], expected, rtol=1e-5, atol=1e-5)
    fresh = trainer.build_model(config.student, CLASSES, SIZE, seed=config.seed + 1)
    assert np.abs(keras.ops.convert_to_numpy(fresh(probe)) - expected).max() > 1e-3

    # Another file at the same path: the student made from the old one is refused.
    _checkpoint(config, path, seed=7)
    with pytest.raises(ConfigError, match="made with other settings") as error:
        stages.train_model(config, strategy, sets, workdir, 1, "sha256:teacher", None, None)
    assert "student.init_checkpoint_fingerprint" in str(error.value)
    assert len(at_fit) == 1  # refused before training


def test_an_init_checkpoint_that_does_not_fit_is_refused_naming_the_key(tmp_path):
    config = tiny_loop_config()
    student = trainer.build_model(config.student, CLASSES, SIZE)
    wider = config.student.copy_and_resolve_references()
    wider.width_coefficient = 0.3
    other = str(tmp_path / "wider.keras")
    trainer.build_model(wider, CLASSES, SIZE).save(other)
    with pytest.raises(ConfigError, match=r"^student\.init_checkpoint=.*does not fit"):
        trainer.load_init_checkpoint(other, student, "student.init_checkpoint")
    # The loop refuses it before anything trains.
    config.student.init_checkpoint = other
    data = tiny_loop_data(np.random.default_rng(0), size=SIZE, classes=CLASSES)
    with pytest.raises(ConfigError, match=r"^student\.init_checkpoint=.*does not fit"):
        loop.run(config, str(tmp_path / "run"), data)
    assert not (tmp_path / "run" / "iteration_0_teacher.json").exists()
    with pytest.raises(ConfigError, match=r"^student\.init_checkpoint=.*does not exist"):
        trainer.load_init_checkpoint(str(tmp_path / "no.keras"), student, "student.init_checkpoint")
    saved_model = tmp_path / "exported"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a SavedModel, which holds no Keras weights"):
        trainer.load_init_checkpoint(str(saved_model), student, "student.init_checkpoint")
    # Another input size is fine: an EfficientNet's weights do not depend on it.
    _checkpoint(config, str(tmp_path / "at16.keras"), seed=1)
    at_32 = trainer.build_model(config.student, CLASSES, 32)
    trainer.load_init_checkpoint(str(tmp_path / "at16.keras"), at_32, "student.init_checkpoint")
    # A warm start of the teacher is its own block's key, not teacher_checkpoint.
    config.teacher.init_checkpoint = other
    config.teacher_checkpoint = other
    with pytest.raises(ConfigError, match="teacher_checkpoint and teacher.init_checkpoint"):
        validate_config(config)
