"""Shared fixtures: tiny models and data so every test runs in seconds on CPU."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def tiny_cnn(num_classes: int = 3, dropout: float = 0.0, size: int = 8) -> keras.Model:
    """Conv-BN-pool-dropout-dense: enough to exercise batch norm and dropout."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory):
    """The --workdir of one `digits.py:smoke` run of the main job, in a fresh process.

    With `evaluate.robustness` on, so the run also writes its robustness report.

    Tests of the tools and reports use what the loop itself wrote
    (checkpoints, manifests, SavedModel), not stand-ins. About a minute, once
    per session.
    """
    workdir = tmp_path_factory.mktemp("smoke_run")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "experiments", "noisy_student.py"),
            "--config=experiments/configs/digits.py:smoke",
            "--config.evaluate.robustness=True",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(workdir)
