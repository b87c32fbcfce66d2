"""The test harness: tiny models and data so every test runs in seconds on CPU,
one way to run a repository script in a fresh process, one record writer and
reader, and the session's reference runs of the loop that many tests read.

A reference run is trained once per session and its workdir is read, never
written, by the tests that use it: a test that needs to change a workdir
copies it first (`copy_workdir`). Under pytest-xdist (the suite runs on
`-n auto` workers, setup.cfg) "once per session" still holds: the first
worker to need a reference run makes it under a file lock in the folder all
workers share, and the others wait for it and read it (`made_once`).
"""

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_SMOKE = "--config=experiments/configs/digits.py:smoke"


def tiny_cnn(num_classes: int = 3, dropout: float = 0.0, size: int = 8) -> keras.Model:
    """Conv-BN-pool-dropout-dense: enough to exercise batch norm and dropout."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def tiny_loop_config():
    """The digits smoke config with the smallest EfficientNets (coefficients 0.1)
    and a batch of 4: the loop's plumbing at a fraction of the smoke run's cost."""
    from noisy_student_tf.configs import digits

    config = digits.get_config("smoke")
    for block in (config.teacher, config.student):
        block.width_coefficient, block.depth_coefficient = 0.1, 0.1
    config.train.batch_size = 4
    config.pseudo.unlabeled_ratio = 2
    config.pseudo.images_per_class = 3
    return config


def tiny_loop_data(rng, size=16, classes=3):
    """In-memory data for `tiny_loop_config`: 12 labeled, 30 pool (true labels
    known) and 9 test images of random pixels."""
    from noisy_student_tf.data.sources import SemiSupervisedData

    def images(n):
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

    return SemiSupervisedData(
        images(12),
        np.arange(12) % classes,
        images(30),
        np.arange(30) % classes,
        images(9),
        np.arange(9) % classes,
        num_classes=classes,
    )


# --- fresh processes ---------------------------------------------------------


def script_env(**extra) -> dict:
    """The environment of a fresh process: quiet TF, and this tree's package first.

    The package may be installed (editable) from another checkout; a script run
    from here must import the code under test, not that one.
    """
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path, **extra}


def _command(script: str, args) -> list[str]:
    if script == "-c":
        return [sys.executable, "-c", *args]
    return [sys.executable, os.path.join(REPO, script), *args]


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None):
    """Runs a repository script (`experiments/noisy_student.py`, `tools/label.py`,
    or `-c` followed by code) to its end from the repository root.

    Returns:
      The `subprocess.CompletedProcess`, with stdout and stderr as text.
    """
    return subprocess.run(
        _command(script, args),
        cwd=REPO,
        env=env or script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_script(script: str, *args: str, env: dict | None = None, **popen_kwargs):
    """Starts `run_script`'s process without waiting (for tests that kill it).

    Output goes to text pipes unless `stdout`/`stderr`/`text` say otherwise.
    """
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("text", True)
    return subprocess.Popen(
        _command(script, args), cwd=REPO, env=env or script_env(), **popen_kwargs
    )


def loopback_cluster(num_workers: int = 2) -> dict:
    """A TF_CONFIG `cluster` of `num_workers` workers on free loopback ports."""
    sockets = [socket.socket() for _ in range(num_workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return {"worker": [f"127.0.0.1:{port}" for port in ports]}


def one_error_line(proc) -> str:
    """The single `error: ` line of a run that exited 2 without a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


# --- records -----------------------------------------------------------------


def source_examples(images, labels=None, keys=None):
    """`schema.source_example`s of uint8 images as PNGs; labels default to unlabeled
    and keys to the index."""
    from noisy_student_tf.data import schema

    for i, image in enumerate(images):
        label = schema.UNLABELED if labels is None else int(labels[i])
        key = f"{i:05d}".encode() if keys is None else keys[i]
        yield schema.source_example(schema.encode_png(image), label, key)


def write_records(folder, examples, num_shards: int = 1, prefix: str = "data") -> list[str]:
    """Writes examples (`tf.train.Example` or bytes) round-robin into `num_shards`
    shards named as the tools name them; creates `folder`. Returns the paths."""
    import tensorflow as tf

    from noisy_student_tf.data import records

    os.makedirs(folder, exist_ok=True)
    paths = [
        os.path.join(folder, records.shard_name(prefix, i, num_shards)) for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for i, example in enumerate(examples):
        raw = example if isinstance(example, bytes) else example.SerializeToString()
        writers[i % num_shards].write(raw)
    for writer in writers:
        writer.close()
    return paths


def read_examples(spec) -> list:
    """Every `tf.train.Example` of a folder of shards, a glob or a list of files."""
    import tensorflow as tf

    from noisy_student_tf.data import records

    files = records.list_files(str(spec)) if isinstance(spec, (str, os.PathLike)) else spec
    return [tf.train.Example.FromString(r) for f in files for r in records.read_records(f)]


def record_keys(spec) -> list[bytes]:
    """The `image/key` of every record of `read_examples(spec)`, in file order."""
    from noisy_student_tf.data import schema

    return [e.features.feature[schema.KEY].bytes_list.value[0] for e in read_examples(spec)]


def copy_workdir(source: str, target) -> str:
    """A private copy of a reference run's workdir, for a test that reruns in it."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return str(target)


# --- fixtures ----------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def made_once(tmp_path_factory, name: str, make) -> str:
    """The folder `name` after `make(folder)` filled it, once per test session.

    pytest-xdist gives each worker a base temp folder of its own under one
    shared parent; the folder is made there, under a lock, so a second worker
    waits for the first instead of training the same reference run again.
    A failed `make` leaves no completion mark: the next test that needs the
    folder makes it again (and fails the same way) rather than reading a
    half-written one.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder, done = base / name, base / f"{name}.done"
    with _file_lock(base / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.write_text("")
    return str(folder)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(workdir, stdout) of one `digits.py:smoke` run of the main job, in a fresh process.

    With `evaluate.robustness` on, so the run also writes its robustness
    report; with `verbose=1` and a 10-step teacher, so its progress lines can
    be checked. Tests of the tools, the reports and the main job read what the
    loop itself wrote (checkpoints, manifests, SavedModel, TensorBoard logs),
    not stand-ins. About a minute, once per session.
    """

    def make(folder):
        workdir = folder / "workdir"
        proc = run_script(
            "experiments/noisy_student.py",
            DIGITS_SMOKE,
            "--config.evaluate.robustness=True",
            "--config.verbose=1",
            "--config.train.teacher_epochs=5",
            f"--workdir={workdir}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (folder / "stdout.txt").write_text(proc.stdout)

    folder = made_once(tmp_path_factory, "smoke_run", make)
    with open(os.path.join(folder, "stdout.txt")) as stdout:
        return os.path.join(folder, "workdir"), stdout.read()


@pytest.fixture(scope="session")
def smoke_workdir(smoke_run):
    """The --workdir of `smoke_run`."""
    return smoke_run[0]


@pytest.fixture(scope="session")
def tiny_teacher_workdir(tmp_path_factory):
    """The workdir of `loop.run` with `tiny_loop_config` and no student
    (`num_iterations=0`) on `tiny_loop_data(default_rng(0))`: a trained teacher,
    its manifests and its SavedModel. Rerun in a `copy_workdir` copy."""
    from noisy_student_tf import loop

    def make(folder):
        keras.utils.set_random_seed(0)
        config = tiny_loop_config()
        config.num_iterations = 0
        loop.run(config, str(folder), tiny_loop_data(np.random.default_rng(0)))

    return made_once(tmp_path_factory, "tiny_teacher", make)
