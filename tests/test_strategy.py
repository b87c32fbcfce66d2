"""Strategies on a CPU-only machine: mirrored over logical CPUs, two local
multi-worker processes (a killed worker; the loop run to the end and killed
at named points is in test_kill_points.py), and what
TPUStrategy needs that can be checked without a TPU (address forms, XLA
compilation of the step, no host-side ops in it)."""

import json
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import DIGITS_SMOKE, loopback_cluster, run_script, script_env, start_script, tiny_cnn

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.models import build_efficientnet
from noisy_student_tf.training import NoisyStudent, strategy
from noisy_student_tf.training.strategy import get_strategy, tpu_resolver_argument

SCRIPT = "experiments/noisy_student.py"
SMOKE = DIGITS_SMOKE
# The smoke loop made smaller still: one epoch of two steps per model, an
# even global batch for two replicas, the smallest EfficientNets at 16 px
# (these tests check the strategies' plumbing, not what the models learn).
TINY = [
    "--config.train.batch_size=24",
    "--config.train.teacher_epochs=1",
    "--config.train.student_epochs=1",
    "--config.data.image_size=16",
    *(
        f"--config.{m}.{c}_coefficient=0.1"
        for m in ("teacher", "student")
        for c in ("width", "depth")
    ),
]
C = 3


@pytest.mark.parametrize(
    "address, expected",
    [
        ("", "local"),
        ("local", "local"),
        (" local ", "local"),
        ("my-tpu-v3-8", "my-tpu-v3-8"),
        ("grpc://10.0.0.2:8470", "grpc://10.0.0.2:8470"),
    ],
)
def test_tpu_address_forms(address, expected):
    assert tpu_resolver_argument(address) == expected


@pytest.mark.parametrize(
    "address", ["grpc://10.0.0.2", "http://10.0.0.2:8470", "My_TPU", "10.0.0.2:8470", "tpu-"]
)
def test_bad_tpu_address_is_a_config_error(address):
    with pytest.raises(ConfigError, match="tpu_address"):
        tpu_resolver_argument(address)


def test_tpu_strategy_gives_the_resolver_the_parsed_address(monkeypatch):
    seen = []

    class Resolver:
        def __init__(self, tpu=None, **kwargs):
            seen.append(tpu)
            raise RuntimeError("no TPU here")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
    for address, expected in (
        ("", "local"),
        ("node-1", "node-1"),
        ("grpc://h:8470", "grpc://h:8470"),
    ):
        with pytest.raises(RuntimeError, match="no TPU"):
            get_strategy("tpu", address)
        assert seen[-1] == expected
    calls = len(seen)
    with pytest.raises(ConfigError, match="tpu_address"):
        get_strategy("tpu", "grpc://nowhere")
    assert len(seen) == calls  # rejected before any connection is tried


def test_unknown_strategy_and_bad_logical_cpus_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="strategy='gpu'.*'mirrored'"):
        get_strategy("gpu")
    monkeypatch.setenv(strategy.LOGICAL_CPUS_ENV, "two")
    with pytest.raises(ConfigError, match="NOISY_STUDENT_LOGICAL_CPUS='two'"):
        strategy.logical_cpus()
    monkeypatch.setenv(strategy.LOGICAL_CPUS_ENV, "2")
    assert strategy.logical_cpus() == 2


def test_sync_batch_norm_option_reaches_every_batch_norm_layer():
    def bn_layers(sync):
        model = build_efficientnet(
            "efficientnet-b0",
            C,
            input_shape=(32, 32, 3),
            width_coefficient=0.25,
            depth_coefficient=0.25,
            small_image=True,
            sync_batch_norm=sync,
        )
        return [
            layer
            for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
        ]

    synced, plain = bn_layers(True), bn_layers(False)
    assert len(synced) > 10 and all(layer.synchronized for layer in synced)
    assert not any(layer.synchronized for layer in plain)


def _steps(rng, n, online):
    data = {
        "images": rng.integers(0, 256, (n, 4, 8, 8, 3)).astype("float32"),
        "labels": rng.integers(0, C, (n, 4)),
        "unlabeled_images": rng.integers(0, 256, (n, 8, 8, 8, 3)).astype("float32"),
    }
    if online:
        data["unlabeled_teacher_images"] = data["unlabeled_images"]
    else:
        data["unlabeled_targets"] = rng.dirichlet(np.ones(C), (n, 8)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(data)


def _fit(jit_compile, online, initial, teacher_weights):
    student = tiny_cnn(C)
    student.set_weights(initial)
    teacher = None
    if online:
        teacher = tiny_cnn(C)
        teacher.set_weights(teacher_weights)
    model = NoisyStudent(student, C, unlabeled_ratio=2, teacher=teacher, ema_decay=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile)
    assert model.jit_compile is jit_compile  # Keras did not silently drop XLA
    history = model.fit(_steps(np.random.default_rng(1), 3, online), epochs=1, verbose=0)
    return student.get_weights(), history.history["loss"][-1]


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_xla_compiled_step_matches_the_graph_step(online):
    """TPUs run only XLA: the whole step (teacher included) must compile, same numbers."""
    initial, teacher_weights = tiny_cnn(C).get_weights(), tiny_cnn(C).get_weights()
    xla, xla_loss = _fit(True, online, initial, teacher_weights)
    graph, graph_loss = _fit(False, online, initial, teacher_weights)
    assert max(np.abs(a - b).max() for a, b in zip(xla, initial)) > 1e-3
    for a, b in zip(xla, graph):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert xla_loss == pytest.approx(graph_loss, rel=1e-5)


# Ops that run on the host (Python callbacks, printing, strings): a TPU step
# cannot hold them, and on GPUs they stall the device every step.
_HOST_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2", "Print", "StringFormat"}


def _all_nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def test_train_step_has_no_host_side_ops(rng):
    teacher = tiny_cnn(C)
    model = NoisyStudent(tiny_cnn(C), C, unlabeled_ratio=2, teacher=teacher, ema_decay=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    batch = next(iter(_steps(rng, 1, online=True)))
    model.fit(_steps(rng, 1, online=True), epochs=1, verbose=0)  # builds everything
    graph = tf.function(model.train_step).get_concrete_function(batch).graph.as_graph_def()
    nodes = list(_all_nodes(graph))
    assert len(nodes) > 100 and any(n.op == "Conv2D" for n in nodes)
    assert not [n.name for n in nodes if n.op in _HOST_OPS]
    strings = [n.name for n in nodes if n.attr["dtype"].type == tf.string.as_datatype_enum]
    assert not strings


def _env(**extra):
    env = script_env(**extra)
    env.pop("TF_CONFIG", None)
    return env


def test_mirrored_smoke_loop_on_two_logical_cpus(tmp_path):
    env = _env(**{strategy.LOGICAL_CPUS_ENV: "2"})
    command = [SCRIPT, SMOKE, "--config.strategy=mirrored"]
    # The odd smoke batch (25) is refused with the replica count: 2 replicas exist.
    refused = run_script(*command, f"--workdir={tmp_path / 'refused'}", env=env, timeout=120)
    assert refused.returncode == 2
    assert "train.batch_size=25 does not divide evenly over the strategy's 2 replicas" in (
        refused.stderr
    )
    assert not (tmp_path / "refused" / "iteration_0_teacher.keras").exists()  # before training
    workdir = tmp_path / "run"
    result = run_script(*command, *TINY, f"--workdir={workdir}", env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((workdir / "results.json").read_text())["models"]
    assert [r["role"] for r in rows] == ["teacher", "student"]
    assert (workdir / "saved_model" / "saved_model.pb").exists()


def _start_workers(args_for, logs):
    """Two local processes with TF_CONFIG for a 2-worker cluster on free loopback ports."""
    cluster = loopback_cluster()
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(
            start_script(
                *args_for(index),
                env=dict(_env(), TF_CONFIG=json.dumps(tf_config)),
                stdout=open(logs[index], "w"),
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_killed_worker_fails_the_chief_with_a_clear_message(tmp_path):
    logs = [tmp_path / "log0", tmp_path / "log1"]
    procs = _start_workers(lambda i: ["tests/multi_worker_fit.py", "100000", "5"], logs)
    try:
        deadline = time.time() + 300
        while "step 3" not in logs[1].read_text():
            assert procs[0].poll() is None and procs[1].poll() is None, logs[0].read_text()[-3000:]
            assert time.time() < deadline, "the workers never started training"
            time.sleep(0.5)
        procs[1].kill()
        killed = time.time()
        code = procs[0].wait(timeout=120)  # heartbeat 5 s: well before this, or it hung
        waited = time.time() - killed
    finally:
        _stop(procs)
    text = logs[0].read_text()
    assert code != 0 and "done" not in text
    assert "WorkerFailure: worker 1 at 127.0.0.1:" in text
    assert "stopped responding, so worker 0 cannot go on" in text
    assert waited < 90


def test_one_worker_multi_worker_strategy_fits_with_tensorboard(tmp_path):
    """Without TF_CONFIG a MultiWorkerMirroredStrategy is a one-worker cluster:
    Keras does not reduce its logs, so they must stay scalars for the callbacks
    (they were [1] vectors, and TensorBoard stopped the fit)."""
    proc = run_script("tests/multi_worker_fit.py", "2", "5", str(tmp_path / "logs"), env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "step 2 loss" in proc.stdout and "done" in proc.stdout
    assert tf.io.gfile.glob(str(tmp_path / "logs" / "train" / "events.out.tfevents.*"))
