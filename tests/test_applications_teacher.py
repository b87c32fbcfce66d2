"""A keras.applications EfficientNet weights file as a teacher (models/artifact.py, weights.py).

Files are written here from randomly initialised keras.applications models
(weights=None, no download) in the three forms such a file takes: Keras 3
`save_weights` (`.weights.h5`, groups named by layer class), a legacy
whole-model `.h5`, and the legacy weights-only `.h5` that
`EfficientNetB0(weights="imagenet")` downloads.
"""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_script
from keras.src.legacy.saving import legacy_h5_format

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import records, schema
from noisy_student_tf.models import efficientnet as en
from noisy_student_tf.models import load_checkpoint
from noisy_student_tf.models import weights as weights_lib

SIZE, CLASSES = 32, 5


def _source(name="efficientnet-b0", include_top=True):
    """A keras.applications model with non-trivial batch-norm and input statistics."""
    model = weights_lib.KERAS_BUILDERS[name](
        weights=None,
        include_top=include_top,
        classes=CLASSES,
        classifier_activation=None,
        input_shape=(SIZE, SIZE, 3),
    )
    rng = np.random.RandomState(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0, 0.2, shape),
                    rng.normal(0, 0.2, shape),
                    rng.uniform(0.5, 1.5, shape),
                ]
            )
    # keras.applications rescales to [0, 1] and normalizes inside the model;
    # the project's model must apply the same statistics to the same pixels.
    norm = weights_lib._find_normalization(model)[0]
    en.set_normalization(norm, en.IMAGENET_MEAN_RGB, np.square(en.IMAGENET_STDDEV_RGB))
    return model


def _save(model, path, form):
    if form == "keras3":
        model.save_weights(path)
    elif form == "legacy_model":
        model.save(path)
    else:  # the downloaded file's layout: one group per layer at the root
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def _pixels(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize(
    "form, filename",
    [("keras3", "b0.weights.h5"), ("legacy_model", "b0.h5"), ("download", "efficientnetb0.h5")],
)
def test_weights_file_loads_as_the_same_model(tmp_path, form, filename):
    source = _source()
    path = _save(source, str(tmp_path / filename), form)
    model = load_checkpoint(path, image_size=SIZE)
    assert model.name == "efficientnet-b0" and model.output_shape == (None, CLASSES)
    x = _pixels(3)
    expected = source(x, training=False).numpy()
    assert np.abs(expected).max() > 1e-2  # not vacuous
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, atol=1e-5)
    fresh = en.build_efficientnet("efficientnet-b0", CLASSES, input_shape=(SIZE, SIZE, 3))
    assert np.abs(fresh(x, training=False).numpy() - expected).max() > 1e-3


def test_variant_is_read_from_the_shapes_b2_not_b1(tmp_path):
    # B1 and B2 share the stem width and block count; the head tells them apart.
    path = _save(_source("efficientnet-b2"), str(tmp_path / "b2.weights.h5"), "keras3")
    assert weights_lib.keras_applications_file_variant(path) == ("efficientnet-b2", CLASSES)
    with pytest.raises(ConfigError, match="holds efficientnet-b2 weights, not.*efficientnet-b1"):
        load_checkpoint(path, image_size=SIZE, variant="efficientnet-b1")


def test_notop_and_foreign_files_are_refused(tmp_path):
    notop = _save(_source(include_top=False), str(tmp_path / "notop.weights.h5"), "keras3")
    with pytest.raises(ConfigError, match="0 classifier kernels.*_notop"):
        load_checkpoint(notop)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other = str(tmp_path / "mlp.weights.h5")
    dense.save_weights(other)
    with pytest.raises(ConfigError, match="does not look like a keras.applications EfficientNet"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="gone.h5"):
        load_checkpoint(str(tmp_path / "gone.h5"))


def test_label_tool_takes_the_weights_file_in_a_fresh_process(tmp_path):
    source = _source()
    teacher = _save(source, str(tmp_path / "efficientnetb0.weights.h5"), "keras3")
    images = _pixels(4, seed=3).astype(np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    with tf.io.TFRecordWriter(str(src / "pool-00000-of-00001.tfrecord")) as w:
        for i, image in enumerate(images):
            example = schema.source_example(schema.encode_png(image), key=b"%d" % i)
            w.write(example.SerializeToString())
    out = tmp_path / "labeled"
    proc = run_script(
        "tools/label.py",
        f"--input={src}",
        f"--output_dir={out}",
        f"--teacher={teacher}",
        f"--image_size={SIZE}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = records.read_json(str(out / "manifest.json"))
    assert summary["labeled"] == 4 and summary["num_classes"] == CLASSES
    assert summary["settings"]["teacher_image_size"] == SIZE
    probs = [
        tf.train.Example.FromString(r).features.feature[schema.TEACHER_PROBS].float_list.value
        for f in records.list_files(str(out))
        for r in records.read_records(f)
    ]
    expected = tf.nn.softmax(source(images.astype("float32"), training=False)).numpy()
    np.testing.assert_allclose(np.array(probs), expected, atol=1e-5)
