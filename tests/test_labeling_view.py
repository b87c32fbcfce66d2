"""The teacher labels its eval view (issue 21): both engines, official checkpoints, evaluate.

A pool of large JPEGs and PNGs (300x225, 225x300) with a coloured border
that the eval center crop removes is labeled at 224 px. The stored
probabilities must be the teacher's softmax on the eval view computed here
independently (crop S/(S+32) of the shorter side, TF2 bicubic), and not on
the former squash of the whole image. An official checkpoint labels (and is
evaluated) on the official float32 view.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import read_examples, run_script, tiny_cnn, write_records
from test_official_checkpoint import make_checkpoint, randomize

from noisy_student_tf.data import preprocess, schema
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.evaluation import datasets, metrics
from noisy_student_tf.labeling import beam_label, shards
from noisy_student_tf.models import build_efficientnet, load_checkpoint

SIZE = 224  # eval_preprocess's large path by size
CLASSES = 4
BORDER = 10  # px of colour on every side; the crop keeps 196 of 225 px


def _pool_images(n=6):
    """Large images, half landscape and half portrait, some with a red border."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        shape = (225, 300, 3) if i % 2 else (300, 225, 3)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        if i % 3:
            image[:BORDER], image[-BORDER:] = (255, 0, 0), (255, 0, 0)
            image[:, :BORDER], image[:, -BORDER:] = (255, 0, 0), (255, 0, 0)
        images.append(image)
    return images


def _encoded(image, i):
    if i % 2:
        return tf.io.encode_jpeg(image, quality=95).numpy()
    return schema.encode_png(image)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """(source shard files, {key: encoded image}) of the large pool."""
    folder = tmp_path_factory.mktemp("pool")
    encoded = {f"{i:05d}".encode(): _encoded(im, i) for i, im in enumerate(_pool_images())}
    examples = [schema.source_example(e, -1, k) for k, e in encoded.items()]
    return write_records(str(folder / "src"), examples, num_shards=2), encoded


def _independent_view(encoded):
    """The eval view by hand: center square of S/(S+32) of the shorter side, TF2 bicubic."""
    image = tf.io.decode_image(encoded, channels=3).numpy()
    h, w = image.shape[:2]
    side = int(SIZE / (SIZE + 32) * min(h, w))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    crop = image[top : top + side, left : left + side].astype(np.float32)
    resized = tf.image.resize(crop, [SIZE, SIZE], method="bicubic").numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def _squash(encoded):
    return schema.decode_image(tf.constant(encoded), SIZE).numpy()


def _softmax(logits):
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _stored(folder) -> dict:
    return {
        e.features.feature[schema.KEY].bytes_list.value[0]: np.array(
            e.features.feature[schema.TEACHER_PROBS].float_list.value
        )
        for e in read_examples(str(folder / "labeled-*"))
    }


def test_both_engines_label_the_eval_view_not_the_squash(pool, tmp_path):
    files, encoded = pool
    keras.utils.set_random_seed(3)
    model = tiny_cnn(CLASSES, size=SIZE)
    teacher = str(tmp_path / "teacher.keras")
    model.save(teacher)
    views = {k: _independent_view(e) for k, e in encoded.items()}
    for key, e in encoded.items():  # ours is the view computed by hand
        np.testing.assert_array_equal(preprocess.eval_preprocess(e, SIZE).numpy(), views[key])
    keys = sorted(encoded)
    want = _softmax(model.predict(np.stack([views[k] for k in keys]), verbose=0))
    squashed = _softmax(model.predict(np.stack([_squash(encoded[k]) for k in keys]), verbose=0))
    assert np.abs(want - squashed).max() > 1e-3  # the squash would fail this test

    shards.label_shards(teacher, files, str(tmp_path / "job"), batch_size=4, verbose=0)
    beam_label.label_with_beam(teacher, files, str(tmp_path / "beam"), batch_size=4)
    for engine in ("job", "beam"):
        stored = _stored(tmp_path / engine)
        assert sorted(stored) == keys, engine
        np.testing.assert_allclose(np.stack([stored[k] for k in keys]), want, atol=1e-5)
        manifest = json.loads((tmp_path / engine / "manifest.json").read_text())
        assert manifest["settings"]["teacher_resize"] == "tf2", engine

    # Labeled with another resize: refused on rerun, naming the setting.
    with pytest.raises(ConfigError, match=r"teacher_resize: 'tf2' -> 'official'") as error:
        shards.label_shards(teacher, files, str(tmp_path / "job"), resize="official", verbose=0)
    assert "--overwrite" in str(error.value) and len(str(error.value).splitlines()) == 1


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(an official-named B0 checkpoint folder, its converted Keras model)."""
    keras.utils.set_random_seed(5)
    source = build_efficientnet("efficientnet-b0", num_classes=CLASSES)  # 224 px
    randomize(source, seed=6)
    folder = str(tmp_path_factory.mktemp("official") / "noisy_student_efficientnet-b0")
    make_checkpoint(folder, source, "efficientnet-b0")
    return folder, load_checkpoint(folder)


def test_an_official_teacher_labels_and_is_evaluated_on_the_official_view(pool, official, tmp_path):
    files, encoded = pool
    folder, model = official
    keys = sorted(encoded)
    views = {
        r: [preprocess.eval_preprocess(encoded[k], SIZE, resize=r) for k in keys]
        for r in ("official", "tf2")
    }
    assert views["official"][0].dtype == tf.float32
    want = _softmax(model.predict(np.stack(views["official"]), verbose=0))
    tf2 = _softmax(model.predict(np.stack(views["tf2"]), verbose=0))
    assert np.abs(want - tf2).max() > 1e-5  # the views give different labels

    summary = shards.label_shards(folder, files, str(tmp_path / "job"), batch_size=4, verbose=0)
    assert summary["settings"]["teacher_resize"] == "official"
    stored = _stored(tmp_path / "job")
    np.testing.assert_allclose(np.stack([stored[k] for k in keys]), want, atol=1e-5)

    # The evaluation data: the same float32 view; the evaluate tool's top-1 on it.
    labels = want.argmax(axis=-1)
    examples = [schema.source_example(encoded[k], int(y), k) for k, y in zip(keys, labels)]
    test = write_records(str(tmp_path / "test"), examples, prefix="test")
    images, got_labels, _ = datasets.load_eval_data(test[0], SIZE, resize="official")
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, np.stack(views["official"]), atol=1e-4)
    np.testing.assert_array_equal(got_labels, labels)
    out = tmp_path / "eval"
    proc = run_script(
        "tools/evaluate.py",
        f"--model={folder}",
        f"--data={test[0]}",
        f"--output_dir={out}",
        "--max_examples=0",
        "--corruptions=",
        "--perturbations=",
        "--eps=",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["top1"] == 1.0  # labels are its argmax on the official view
    assert report["settings"]["num_examples"] == len(keys)
    # Calibration reads the probabilities, so it tells the two views apart.
    ece = {r: metrics.calibration(p, labels)["ece"] for r, p in (("official", want), ("tf2", tf2))}
    assert abs(ece["official"] - ece["tf2"]) > 1e-6
    assert report["ece"] == pytest.approx(ece["official"], abs=1e-7)


@keras.saving.register_keras_serializable(package="test_labeling_view")
class Fractions(keras.layers.Layer):
    """Logits [10 x mean |x - round(x)|, 1]: class 0 wins only on float (unrounded) pixels,
    so a model made of it tells the official view from TF2's uint8 one."""

    def call(self, x):
        fraction = keras.ops.mean(keras.ops.abs(x - keras.ops.round(x)), axis=[1, 2, 3])
        return keras.ops.stack([10 * fraction, 1 + 0 * fraction], axis=-1)


def test_the_loop_labels_and_tests_with_its_in_memory_models_resize(pool, tmp_path):
    """A `.keras` copy of an official checkpoint loses its mark: the loop passes it on."""
    import ml_collections

    from noisy_student_tf.data.sources import RecordSource
    from noisy_student_tf.loop import data_modes, record_stages

    files, encoded = pool
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, Fractions()(inputs))
    teacher = str(tmp_path / "iteration_0_teacher.keras")
    model.save(teacher)
    keys = sorted(encoded)
    official = [preprocess.eval_preprocess(encoded[k], SIZE, resize="official") for k in keys]
    want = _softmax(model.predict(np.stack(official), verbose=0))
    assert (want.argmax(axis=-1) == 0).all()  # on TF2's view class 1 would win
    pseudo = ml_collections.ConfigDict({"soft": True, "temperature": 1.0, "topk": 0})
    out = tmp_path / "labeled"
    summary = record_stages.label(
        teacher,
        "sha256:x",
        files,
        str(out),
        pseudo,
        tf.distribute.get_strategy(),
        4,
        "pool",
        False,
        "official",
    )
    assert summary["settings"]["teacher_resize"] == "official"
    assert summary["settings"]["teacher_small_image"] is False
    stored = _stored(out)
    np.testing.assert_allclose(np.stack([stored[k] for k in keys]), want, atol=1e-5)

    # Test top-1 on the model's own view: all labels 0 score 1 on the official
    # view and 0 on TF2's.
    probe = model
    examples = [schema.source_example(encoded[k], 0, k) for k in keys]
    test = write_records(str(tmp_path / "test"), examples, prefix="test")
    sets = data_modes.StreamSets.__new__(data_modes.StreamSets)  # only what test_top1 reads
    sets.image_size, sets.num_classes = SIZE, 2
    sets.config = ml_collections.ConfigDict({"train": {"eval_batch_size": 4}})
    sets.data = type("Data", (), {"test": RecordSource("test", tuple(test))})()
    assert sets.test_top1(probe, False, SIZE) == 0.0
    setattr(probe, preprocess.EVAL_RESIZE_ATTR, "official")  # as the converter marks it
    assert sets.test_top1(probe, False, SIZE) == 1.0


def test_models_with_different_resizes_each_read_their_own_view(pool, tmp_path):
    from noisy_student_tf.evaluation import evaluate_models
    from noisy_student_tf.models.artifact import as_artifact

    _, encoded = pool
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, Fractions()(inputs))
    views = {
        r: np.stack([preprocess.eval_preprocess(e, SIZE, resize=r) for e in encoded.values()])
        for r in ("official", "tf2")
    }
    labels = np.zeros(len(encoded), np.int64)  # class 0 wins on float pixels only
    models = [
        as_artifact(model, "official").with_eval_resize("official"),
        as_artifact(model, "ours"),
    ]
    report = evaluate_models(
        models,
        views,
        labels,
        str(tmp_path / "eval"),
        corruption_names=["contrast"],
        severities=[1],
        perturbation_names=[],
        eps=[],
        log=None,
    )
    assert [(r["name"], r["top1"]) for r in report["models"]] == [("official", 1.0), ("ours", 0.0)]
    # Corrupted copies are stored uint8 (as the benchmark's): neither model sees float pixels.
    assert [r["corruption"]["contrast"]["1"] for r in report["models"]] == [0.0, 0.0]
