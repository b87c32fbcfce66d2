"""One entry point for every model artifact (models/artifact.py, models/saved_model.py).

One tiny CNN, saved as a `.keras` file and exported as a SavedModel once for
the module; official and keras.applications files are opened through the
same `open_model` by tests/test_official_checkpoint.py and
tests/test_applications_teacher.py.
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_cnn

from noisy_student_tf.errors import ConfigError
from noisy_student_tf.evaluation.export import export_saved_model, load_saved_model
from noisy_student_tf.labeling import shards
from noisy_student_tf.models import ModelArtifact, as_artifact, load_checkpoint, open_model
from noisy_student_tf.models import artifact as artifacts
from noisy_student_tf.training.trainer import load_teacher_checkpoint

SIZE, CLASSES = 8, 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(Keras model, its .keras path, its SavedModel path, float images [4, 8, 8, 3])."""
    folder = tmp_path_factory.mktemp("artifacts")
    model = tiny_cnn(CLASSES, size=SIZE)
    keras_path = str(folder / "model.keras")
    model.save(keras_path)
    saved = export_saved_model(model, str(folder / "saved_model"))
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3)).astype(np.float32)
    return model, keras_path, saved, images


def test_a_keras_file_and_a_saved_model_open_to_the_same_model(files, tmp_path):
    model, keras_path, saved, images = files
    want = model(images, training=False).numpy()
    opened = {path: open_model(path) for path in (keras_path, saved)}
    for (path, artifact), kind in zip(opened.items(), ("keras", "saved_model")):
        assert artifact.kind == kind and artifact.source == path
        assert (artifact.image_size, artifact.num_classes) == (SIZE, CLASSES)
        assert artifact.differentiable and artifact.eval_resize == "tf2"
        np.testing.assert_allclose(artifact.logits(images), want, atol=1e-5)
        np.testing.assert_allclose(artifact.predict(images, batch_size=3), want, atol=1e-5)
        # A Keras model for both: a SavedModel's wraps its signature, weights counted.
        assert artifact.keras_model.count_params() == model.count_params()
        np.testing.assert_allclose(artifact.keras_model(images), want, atol=1e-5)
    np.testing.assert_allclose(load_checkpoint(keras_path)(images), want, atol=1e-5)
    assert opened[saved].signature == "serve"
    assert opened[saved].description == f"SavedModel {saved}"
    # The fingerprint is the content's: a copy elsewhere has the same, another model not.
    shutil.copy(keras_path, tmp_path / "copy.keras")
    shutil.copytree(saved, tmp_path / "copy_sm")
    assert opened[keras_path].fingerprint == artifacts.fingerprint(str(tmp_path / "copy.keras"))
    assert opened[saved].fingerprint == artifacts.fingerprint(str(tmp_path / "copy_sm"))
    assert opened[saved].fingerprint != opened[keras_path].fingerprint
    # A signature of any size that rounds to uint8: opened, not differentiable.
    free = open_model(saved, signature="serve_images_float")
    assert free.image_size is None and free.num_classes == CLASSES
    assert "no gradient" in free.why_not_differentiable


def test_labeling_the_loop_and_the_evaluation_share_the_one_type(files):
    model, keras_path, saved, images = files
    want = model(images, training=False).numpy()
    for path in (keras_path, saved):
        teacher = shards.load_teacher(path)
        assert isinstance(teacher, ModelArtifact) and teacher.image_size == SIZE
        predict = shards.make_predict(teacher, tf.distribute.get_strategy())
        np.testing.assert_allclose(predict(images.astype(np.uint8)), want, atol=1e-5)
        loaded = load_teacher_checkpoint(path, SIZE, CLASSES)
        assert loaded.count_params() == model.count_params()
        np.testing.assert_allclose(loaded(images), want, atol=1e-5)
    np.testing.assert_allclose(load_saved_model(saved)(images), want, atol=1e-5)
    in_memory = as_artifact(model, name="mine")
    assert (in_memory.kind, in_memory.name, in_memory.fingerprint) == ("in_memory", "mine", None)
    assert as_artifact(in_memory) is in_memory
    assert as_artifact(model).renamed("c").name == "c" and in_memory.name == "mine"


def test_errors_name_the_flag_or_key_the_path_came_from(files, tmp_path):
    _, keras_path, saved, _ = files
    gone = str(tmp_path / "gone.keras")
    with pytest.raises(FileNotFoundError, match=f"^--teacher='{gone}' does not exist$"):
        shards.load_teacher(gone)
    with pytest.raises(FileNotFoundError, match="--teacher=.*gone.keras' does not exist"):
        shards.labeling_settings(gone, True, 1.0, None, None)  # the fingerprint, before loading
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("")
    for path in (tmp_path / "empty", tmp_path / "notes.txt"):
        with pytest.raises(ConfigError, match="is neither a .keras file .* a SavedModel folder"):
            open_model(path, setting="teacher_checkpoint")
    with pytest.raises(ConfigError, match=r"teacher_checkpoint=.* predicts 3 classes but the data"):
        load_teacher_checkpoint(saved, SIZE, 5)
    with pytest.raises(
        ConfigError, match=r"takes 8x8 images but the data is 16x16 \(teacher.image_size"
    ):
        load_teacher_checkpoint(keras_path, 16, CLASSES)
    with pytest.raises(ConfigError, match=r"takes 8x8 images but the data is 16x16 \(--image_size"):
        shards.load_teacher(saved, 16)
    with pytest.raises(ConfigError, match="--signature='nope' is not in"):
        open_model(saved, signature="nope", setting="--model")
