"""kill -9 at named places on a two-worker loopback cluster, rerun (kill_points.py).

The two-worker chain of tests/test_kill_points.py, in a module of its own so
pytest-xdist runs it beside the other chains (a module stays on one worker).
"""

import hashlib
import json
import os
import subprocess
import tempfile

import keras
import numpy as np
import tensorflow as tf
from conftest import loopback_cluster, start_script
from test_kill_points import (
    LOOP,
    SCRIPT,
    _assert_same_run,
    _env,
    _killed_at,
    _latest_step,
    _rows,
    _temporaries,
)


class _Ended:
    """What `_killed_at` reads of a process whose output went to a log file."""

    def __init__(self, returncode: int, log: str):
        self.returncode, self.stderr = returncode, log


def _two_workers(workdirs, logs, point: str = "") -> list[_Ended]:
    """LOOP on a 2-worker loopback cluster (multi_worker strategy), both to their end."""
    cluster = loopback_cluster()
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(
            start_script(
                SCRIPT,
                *LOOP,
                "--config.strategy=multi_worker",
                f"--workdir={workdirs[index]}",
                env=_env(point, TF_CONFIG=json.dumps(tf_config)),
                stdout=open(logs[index], "w"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [_Ended(code, open(log).read()) for code, log in zip(codes, logs, strict=True)]


def _scratch(workdir) -> str:
    """The non-chief worker's scratch folder for workdir (loop/runner.py `_scratch_dir`)."""
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"noisy_student_{digest}_worker_1")


def test_two_workers_both_killed_then_rerun_complete(tmp_path):
    logs = [tmp_path / "log0", tmp_path / "log1"]
    ref = [tmp_path / "ref_chief", tmp_path / "ref_worker"]
    run = [tmp_path / "chief", tmp_path / "worker"]
    try:
        ended = _two_workers(ref, logs)
        assert [e.returncode for e in ended] == [0, 0], ended[0].stderr[-3000:]
        assert [r["role"] for r in _rows(ref[0])] == ["teacher", "student"]
        assert (ref[0] / "saved_model" / "saved_model.pb").exists()
        # One model on both workers: the worker's copy, batch-norm statistics
        # included (NoisyStudent._average_bn_stats), is the chief's saved one.
        for name in ("iteration_0_teacher.keras", "iteration_1_student.keras"):
            chief, worker = (
                keras.models.load_model(os.path.join(d, name)) for d in (ref[0], _scratch(ref[1]))
            )
            for a, b in zip(chief.get_weights(), worker.get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)

        # Chief and worker killed at the same named point in the student's fit (the
        # teacher finished before it), then both rerun. One kill round: the
        # one-process chains of test_kill_points.py kill at every other point.
        for e in _two_workers(run, logs, "student_step:3"):
            _killed_at(e, "student_step:3")
        assert _latest_step(run[0] / "iteration_1_student.ckpt") == 2
        ended = _two_workers(run, logs)
        assert [e.returncode for e in ended] == [0, 0], ended[1].stderr[-3000:]
        assert "student 1: resumed from its checkpoint at step 2" in ended[1].stderr
        assert "teacher reused" in ended[0].stderr
        # The reference's files, rows, selections, pool labels and weights, bit
        # for bit: both runs are deterministic, and the collectives of two
        # workers (sums of two values) do not depend on their order.
        _assert_same_run(str(run[0]), str(ref[0]))
        # Only the chief wrote into its --workdir; the worker saved into its scratch folder.
        assert not ref[1].exists() and not run[1].exists()
        assert os.path.isdir(_scratch(run[1])) and not _temporaries(_scratch(run[1]))
    finally:
        for workdir in (ref[1], run[1]):
            if os.path.exists(_scratch(workdir)):
                tf.io.gfile.rmtree(_scratch(workdir))
