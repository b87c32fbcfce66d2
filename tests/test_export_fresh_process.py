"""The SavedModel export works in a fresh process, whatever it imported before (issue 20).

A run of the README's "one student from the tools' output" recipe trained
for minutes and then failed inside Keras's export with `ModuleNotFoundError:
No module named 'tensorflow.saved_model'`: Keras's ExportArchive imported that
name, which TensorFlow never registers, by searching the disk at the end of
the run. The export no longer goes through ExportArchive. The
suite's other export tests never saw it, as earlier tests in the same
process had imported the name. Here a fresh process exports a small model
with that disk search made impossible; the export must not need it.
"""

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import importlib.abc, json, os, sys, tempfile
import numpy as np
import tensorflow as tf
from noisy_student_tf import configs
from noisy_student_tf.evaluation.export import export_saved_model, load_saved_model
from noisy_student_tf.training.trainer import build_model

assert "tensorflow.saved_model" not in sys.modules  # nothing imported the name yet


class NoDiskSearch(importlib.abc.MetaPathFinder):
    # The state the failing run was in: the name cannot be found on disk.
    def find_spec(self, name, path, target=None):
        if name.startswith("tensorflow.saved_model"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoDiskSearch())
config = configs.get("digits:smoke")
model = build_model(config.student, config.data.num_classes, config.data.image_size, seed=0)
path = export_saved_model(model, os.path.join(tempfile.mkdtemp(), "saved_model"))
images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
served = load_saved_model(path)(images)
print(json.dumps({
    "max_abs_diff": float(np.abs(served - model(images, training=False).numpy()).max()),
    # Never loaded from disk: absent, or TensorFlow's own module.
    "same_module": sys.modules.get("tensorflow.saved_model", tf.saved_model) is tf.saved_model,
}))
"""


def test_export_in_a_fresh_process_needs_no_import_by_name():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["max_abs_diff"] < 1e-4
    assert result["same_module"]  # TensorFlow's own module, not a second copy from disk
