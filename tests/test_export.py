"""SavedModel export: the signatures a server calls without this package (docs/serving.md)."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_cnn

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data.preprocess import eval_preprocess
from noisy_student_tf.evaluation import export_saved_model, load_saved_model
from noisy_student_tf.evaluation.export import SIGNATURES
from noisy_student_tf.labeling.shards import load_teacher
from noisy_student_tf.models import build_efficientnet

C = 10
NAMES = [f"class_{i}" for i in range(C)]
HEADS = ["class_names", "logits", "probabilities", "top_k_classes", "top_k_probabilities"]
TOL = 1e-5  # the acceptance tolerance on probabilities
# A view error (no crop, a different decode) must move probabilities by far
# more than TOL for the comparisons to mean anything; checked where it matters.
SENSITIVE = 1e-3


def _tiny_efficientnet(size, small_image):
    return build_efficientnet(
        "efficientnet-b0",
        C,
        input_shape=(size, size, 3),
        width_coefficient=0.1,
        depth_coefficient=0.1,
        small_image=small_image,
    )


def _spread_logits(model, rng):
    """Random classifier weights scaled to logits of std ~2 on random images.

    A freshly built head gives logits ~0.01 apart, so every softmax is ~1/C
    and almost any preprocessing error would hide inside TOL.
    """
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    kernel = rng.normal(size=kernel.shape).astype(np.float32)
    dense.set_weights([kernel, bias])
    size = model.input_shape[1]
    probe = rng.integers(0, 256, (8, size, size, 3)).astype(np.float32)
    spread = float(np.std(model(probe, training=False)))
    dense.set_weights([kernel * (2.0 / spread), bias])


def _softmax(model, images):
    logits = model(tf.cast(tf.convert_to_tensor(images), tf.float32), training=False)
    return tf.nn.softmax(logits).numpy()


def _png(image):
    return tf.io.encode_png(image).numpy()


def _jpeg(image):
    return tf.io.encode_jpeg(image, quality=90).numpy()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The acceptance model: tiny B0 at 32 px (small-image path), exported once."""
    keras.utils.set_random_seed(1)
    model = _tiny_efficientnet(32, small_image=True)
    _spread_logits(model, np.random.default_rng(1))
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    assert export_saved_model(model, path, class_names=NAMES) == path
    return model, path


def test_fresh_process_serving_default_matches_keras(small, tmp_path, rng):
    model, path = small
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    other_size = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)  # resized in the graph
    any_size = rng.integers(0, 256, (2, 40, 44, 3), dtype=np.uint8)
    inputs = {
        "png": np.array([_png(x) for x in [*images, other_size]], dtype=object),
        "jpeg": np.array([_jpeg(x) for x in images], dtype=object),
        "pixels": any_size,
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    # A fresh interpreter that cannot import this package: loading and
    # calling the SavedModel must need nothing but TensorFlow.
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "noisy_student_tf":
                    raise ImportError("noisy_student_tf is blocked in this process")

        sys.meta_path.insert(0, Block())
        import numpy as np
        import tensorflow as tf

        data = np.load(sys.argv[1], allow_pickle=True)
        loaded = tf.saved_model.load(sys.argv[2])
        out = {}
        for kind in ("png", "jpeg"):
            result = loaded.signatures["serving_default"](image_bytes=tf.constant(list(data[kind])))
            out.update({kind + "/" + k: v.numpy() for k, v in result.items()})
        result = loaded.signatures["serve_images"](images=tf.constant(data["pixels"]))
        out.update({"pixels/" + k: v.numpy() for k, v in result.items()})
        assert "noisy_student_tf" not in sys.modules, sorted(sys.modules)
        np.savez(sys.argv[3], **out)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "inputs.npz"), path, str(tmp_path / "out.npz")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz", allow_pickle=True)  # class names: an object array

    png_view = np.concatenate([images, eval_preprocess(other_size, 32)[None].numpy()])
    np.testing.assert_allclose(out["png/probabilities"], _softmax(model, png_view), atol=TOL)
    decoded = np.stack([tf.io.decode_jpeg(_jpeg(x)).numpy() for x in images])
    expected = _softmax(model, decoded)
    np.testing.assert_allclose(out["jpeg/probabilities"], expected, atol=TOL)
    # JPEG is lossy: had the graph skipped the decode, the tolerance would catch it.
    assert np.abs(_softmax(model, images) - expected).max() > SENSITIVE
    np.testing.assert_allclose(
        out["pixels/probabilities"], _softmax(model, eval_preprocess(any_size, 32)), atol=TOL
    )

    for kind, count in (("png", 4), ("jpeg", 3), ("pixels", 2)):
        probs = out[f"{kind}/probabilities"]
        assert out[f"{kind}/logits"].shape == (count, C)
        np.testing.assert_allclose(probs, tf.nn.softmax(out[f"{kind}/logits"]), atol=1e-6)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        np.testing.assert_array_equal(out[f"{kind}/top_k_classes"], order)
        np.testing.assert_allclose(
            out[f"{kind}/top_k_probabilities"], np.take_along_axis(probs, order, 1), atol=1e-7
        )
        assert out[f"{kind}/class_names"].tolist() == [
            [f"class_{i}".encode() for i in row] for row in order
        ]


def _signature_blocks(text):
    """`saved_model_cli show --all` text -> {signature: (input keys, output keys)}."""
    blocks = {}
    for block in text.split("signature_def['")[1:]:
        name, body = block.split("']", 1)
        inputs, _, outputs = body.partition("contains the following output(s):")
        keys = [part.split("']")[0] for part in inputs.split("inputs['")[1:]]
        out_keys = [part.split("']")[0] for part in outputs.split("outputs['")[1:]]
        blocks[name] = (keys, out_keys)
    return blocks


def test_saved_model_cli_lists_signatures_and_runs_the_documented_command(small, tmp_path):
    model, path = small
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    expected = {
        "serve": (["images"], ["output_0"]),
        "serving_default": (["image_bytes"], HEADS),
        "serve_images": (["images"], HEADS),
        "serve_images_float": (["images"], HEADS),
    }
    # The tool TensorFlow installs next to the running interpreter.
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    assert os.path.exists(cli), cli
    show = subprocess.run(
        [cli, "show", "--all", "--dir", path],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    blocks = _signature_blocks(show.stdout)
    assert {k: v for k, v in blocks.items() if not k.startswith("__")} == expected
    assert set(SIGNATURES) == set(expected)

    # The `saved_model_cli run` example of docs/serving.md, on one PNG.
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", np.array([_png(image)], dtype=object))
    run = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"image_bytes={tmp_path / 'images.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    probs = np.load(tmp_path / "out" / "probabilities.npy")
    np.testing.assert_allclose(probs, _softmax(model, image[None]), atol=TOL)


def test_serve_endpoint_unchanged_for_its_consumers(small, rng):
    model, path = small
    x = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    serve = tf.saved_model.load(path).signatures["serve"]
    spec = serve.structured_input_signature[1]
    assert list(spec) == ["images"]
    assert spec["images"].shape.as_list() == [None, 32, 32, 3]
    assert spec["images"].dtype == tf.float32
    assert list(serve.structured_outputs) == ["output_0"]
    np.testing.assert_allclose(load_saved_model(path)(x), expected, atol=1e-5)
    # models/artifact.py open_model, for training/trainer.py load_teacher_checkpoint and
    # labeling/shards.py load_teacher.
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)
    teacher = load_teacher(path)
    assert teacher.image_size == 32
    np.testing.assert_allclose(teacher.logits(tf.constant(x)), expected, atol=1e-5)


def test_large_image_path_center_crops_any_size(tmp_path, rng):
    """small_image=False at 64 px: the official center crop + bicubic resize."""
    model = _tiny_efficientnet(64, small_image=False)
    _spread_logits(model, rng)
    path = export_saved_model(model, str(tmp_path / "sm"), top_k=3, small_image=False)
    signatures = tf.saved_model.load(path).signatures

    photo = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    at_size = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # taken as it is
    result = signatures["serving_default"](image_bytes=tf.constant([_png(photo), _png(at_size)]))
    view = np.stack([eval_preprocess(photo, 64, small_image=False).numpy(), at_size])
    expected = _softmax(model, view)
    np.testing.assert_allclose(result["probabilities"], expected, atol=TOL)
    assert "class_names" not in result
    assert result["top_k_classes"].shape == (2, 3)
    # Without the crop (the small-image view) the probabilities differ.
    resized = eval_preprocess(photo, 64, small_image=True)[None]
    assert np.abs(_softmax(model, resized) - expected[:1]).max() > SENSITIVE

    batch = rng.integers(0, 256, (2, 72, 90, 3), dtype=np.uint8)
    expected = _softmax(model, eval_preprocess(batch, 64, small_image=False))
    as_uint8 = signatures["serve_images"](images=tf.constant(batch))
    np.testing.assert_allclose(as_uint8["probabilities"], expected, atol=TOL)
    # Float pixels are rounded to uint8 first, so off-grid values give the same answer.
    jitter = rng.uniform(-0.45, 0.45, batch.shape).astype(np.float32)
    as_float = signatures["serve_images_float"](images=tf.constant(batch + jitter))
    np.testing.assert_allclose(as_float["logits"], as_uint8["logits"], atol=1e-6)


def test_top_k_is_capped_at_the_class_count_and_names_follow_it(tmp_path, rng):
    model = tiny_cnn(3, size=8)
    path = export_saved_model(model, str(tmp_path / "sm"), class_names=["cat", "dog", "cow"])
    images = rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8)
    out = tf.saved_model.load(path).signatures["serve_images"](images=tf.constant(images))
    probs = _softmax(model, eval_preprocess(images, 8))
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-6)
    order = np.argsort(-probs, axis=1, kind="stable")
    np.testing.assert_array_equal(out["top_k_classes"], order)
    names = np.array([b"cat", b"dog", b"cow"])
    np.testing.assert_array_equal(out["class_names"], names[order])
    np.testing.assert_allclose(out["top_k_probabilities"], np.sort(probs, 1)[:, ::-1], atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, build, message",
    [
        ({"class_names": ["a", "b"]}, lambda: tiny_cnn(3), "one name per class"),
        ({"class_names": "abc"}, lambda: tiny_cnn(3), "one name per class"),
        ({"top_k": 0}, lambda: tiny_cnn(3), "top_k must be a positive int"),
        ({"top_k": True}, lambda: tiny_cnn(3), "top_k must be a positive int"),
        ({}, lambda: _any_cnn((8, 10, 3)), "fixed square RGB input"),
        ({}, lambda: _any_cnn((None, None, 3)), "fixed square RGB input"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, build, message):
    with pytest.raises(ConfigError, match=message):
        export_saved_model(build(), str(tmp_path / "sm"), **kwargs)
    assert not os.path.exists(tmp_path / "sm")


def _any_cnn(shape):
    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_grpc_request_matches_the_signature(small, rng):
    """docs/serving.md's gRPC `PredictRequest` names the signature's input and carries its
    bytes: built, serialized, parsed back and fed to the signature it names. Needs
    `tensorflow-serving-api` (skipped without it); no gRPC server runs. The REST half
    runs against a local server in tests/test_serving_rest.py."""
    model, path = small
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    encoded = [_png(x) for x in images]
    expected = _softmax(model, images)
    signatures = tf.saved_model.load(path).signatures

    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "noisy_student"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(encoded, dtype=tf.string))
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    fn = signatures[received.model_spec.signature_name]
    spec = fn.structured_input_signature[1]
    assert set(received.inputs) == set(spec)
    tensor = received.inputs["image_bytes"]
    assert tensor.dtype == spec["image_bytes"].dtype.as_datatype_enum
    out = fn(image_bytes=tf.constant(tf.make_ndarray(tensor)))
    np.testing.assert_allclose(out["probabilities"], expected, atol=TOL)
