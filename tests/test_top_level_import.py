"""`import noisy_student_tf` registers the custom layers; the version has one source."""

import os
import subprocess
import sys

import numpy as np

import noisy_student_tf
from noisy_student_tf.models import build_efficientnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fresh processes import this tree (first on their path), wherever they run.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
}


def _fresh(code: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV
    )


def test_top_level_import_lets_keras_load_a_loop_checkpoint(tmp_path):
    model = build_efficientnet(
        "efficientnet-b0",
        num_classes=3,
        input_shape=(16, 16, 3),
        width_coefficient=0.1,
        depth_coefficient=0.1,
        small_image=True,
    )
    assert any(type(layer).__name__ == "StochasticDepth" for layer in model.layers)
    path, images = str(tmp_path / "ckpt.keras"), str(tmp_path / "images.npy")
    model.save(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    np.save(images, x)
    load = f"model = keras.models.load_model({path!r})\n"

    # Without the package, Keras cannot find the class: the check below means something.
    proc = _fresh(f"import keras\n{load}", str(tmp_path))
    assert proc.returncode != 0 and "StochasticDepth" in proc.stderr, proc.stderr[-2000:]

    code = (
        "import keras, numpy as np\n"
        "import noisy_student_tf\n"
        f"{load}"
        f"np.save({images!r} + '.out.npy', model.predict(np.load({images!r}), verbose=0))\n"
    )
    proc = _fresh(code, str(tmp_path))  # from outside the repository, as a user would
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(
        np.load(images + ".out.npy"), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_version_is_single_sourced():
    from setuptools.config.setupcfg import read_configuration

    metadata = read_configuration(os.path.join(REPO, "setup.cfg"))["metadata"]
    assert metadata["version"] == noisy_student_tf.__version__
    with open(os.path.join(REPO, "setup.cfg")) as f:
        assert "version = attr: noisy_student_tf.__version__" in f.read()
