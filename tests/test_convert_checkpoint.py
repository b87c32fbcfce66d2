"""Official checkpoints as Keras files (models/convert.py, tools/convert_checkpoint.py).

The checkpoints are synthetic, written with the official variable names by
tests/test_official_checkpoint.py's helpers (random weights, non-trivial
batch-norm statistics, EMA shadows unlike the raw values).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_official_checkpoint import logits, make_checkpoint, pixels, randomize

from noisy_student_tf.errors import ConfigError
from noisy_student_tf.models import build_efficientnet, convert, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fresh processes import this tree (first on their path), wherever they run.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
}


def _checkpoint(root, variant, classes, size, seed):
    """An official-named checkpoint folder of a random `variant` model."""
    keras.utils.set_random_seed(seed)
    source = build_efficientnet(variant, num_classes=classes, input_shape=(size, size, 3))
    randomize(source, seed=seed + 1)
    folder = str(root / f"noisy_student_{variant}")
    make_checkpoint(folder, source, variant)
    return folder


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """B0 at its 224 px with 10 classes, converted once."""
    root = tmp_path_factory.mktemp("convert")
    folder = _checkpoint(root, "efficientnet-b0", 10, 224, seed=1)
    return folder, convert.convert_for_keras(folder, str(root / "out"))


def _applications(export):
    model = convert.keras_applications_model(export.variant, export.num_classes, export.image_size)
    model.load_weights(export.weights_path)
    return model


def _check_both_files(export, folder, size):
    """The .keras reloads with load_checkpoint's logits (1e-5); the .weights.h5 in
    keras.applications' model gives them too (1e-4), on random images."""
    want = load_checkpoint(folder, image_size=size)
    images = pixels(3, size, seed=7)
    expected = logits(want, images)
    assert np.ptp(expected) > 1.0  # logits that a wrong normalization would move
    reloaded = keras.models.load_model(export.keras_path)
    assert not [layer for layer in reloaded.layers if type(layer).__module__.startswith("noisy")]
    np.testing.assert_allclose(logits(reloaded, images), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits(_applications(export), images), expected, atol=1e-4)


def test_b0_files_give_the_checkpoints_logits(b0):
    folder, export = b0
    assert (export.variant, export.image_size, export.num_classes) == ("efficientnet-b0", 224, 10)
    assert os.path.basename(export.keras_path) == "noisy_student_efficientnet-b0.keras"
    assert export.weights_path.endswith("noisy_student_efficientnet-b0.weights.h5")
    assert export.published_top1 == 78.8  # tensorflow/tpu README, NoisyStudent + RA, B0
    _check_both_files(export, folder, 224)


def test_a_larger_variant_at_another_size(tmp_path):
    folder = _checkpoint(tmp_path, "efficientnet-b2", 4, 64, seed=3)
    export = convert.convert_for_keras(folder, str(tmp_path / "out"), image_size=64, name="b2")
    assert (export.variant, export.image_size, export.num_classes) == ("efficientnet-b2", 64, 4)
    assert export.published_top1 is None  # published at 260 px only
    assert "none at 64 px (82.4% at 260 px)" in "\n".join(export.lines())
    _check_both_files(export, folder, 64)


def test_the_tool_prints_what_to_expect_and_plain_keras_opens_the_file(b0, tmp_path):
    folder, _ = b0
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "convert_checkpoint.py"),
            f"--checkpoint={folder}",
            f"--output_dir={out}",
            "--name=b0",
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for expected in (
        "variant: efficientnet-b0",
        "resolution: 224 x 224",
        "center crop of 224/(224+32) of the shorter side; bicubic resize to 224 x 224",
        "published ImageNet top-1 (noisy_student, tensorflow/tpu EfficientNet README): 78.8%",
        "EfficientNetB0(weights=None, classes=10, classifier_activation=None",
        "resize_bicubic",
    ):
        assert expected in proc.stdout, proc.stdout
    # A Keras user without this package opens the .keras file.
    code = (
        "import sys, keras\n"
        f"model = keras.models.load_model({str(out / 'b0.keras')!r})\n"
        "assert not any(m.startswith('noisy_student_tf') for m in sys.modules)\n"
        "print(model.name, model.output_shape)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "efficientnet-b0 (None, 10)" in proc.stdout


def test_releases_and_what_keras_applications_cannot_hold():
    assert convert.published_top1("noisy_student", "efficientnet-l2", 475) == 88.2  # L2-475
    assert convert.published_top1("noisy_student", "efficientnet-l2", 800) == 88.4
    assert convert.published_top1("advprop", "efficientnet-b7", 600) == 85.2
    with pytest.raises(ConfigError, match="release='jft'; expected one of noisy_student"):
        convert.published_top1("jft", "efficientnet-b0", 224)
    # The small-image variant has B0's weights but other strides.
    small = build_efficientnet("efficientnet-b0", 10, input_shape=(32, 32, 3), small_image=True)
    with pytest.raises(ConfigError, match="other strides .*block2a_dwconv"):
        convert.to_keras_applications(small)
