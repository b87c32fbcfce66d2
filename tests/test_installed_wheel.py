"""The package as a user installs it: a wheel, its commands, no checkout (issue 23).

The wheel is built from a copy of what it packages (noisy_student_tf/,
setup.cfg, pyproject.toml, README.md), so nothing the repository has beside
it (experiments/, tools/) can stand in, and installed with --no-deps into a
virtualenv that sees this machine's TensorFlow (--system-site-packages), so
nothing is downloaded. Every command then runs in a fresh process from a
folder outside the repository with PYTHONPATH unset: the main job on the
packaged `digits:smoke` config, make-records on an image folder, label with
the teacher the main job wrote, filter-balance, evaluate on its SavedModel.

Six command processes in three rounds (independent ones side by side),
after pip's build and install; the smoke loop is most of the time.
"""

import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits

from noisy_student_tf.data import records, schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = (
    "noisy-student",
    "noisy-student-make-records",
    "noisy-student-label",
    "noisy-student-filter-balance",
    "noisy-student-evaluate",
    "noisy-student-convert",
)
PER_CLASS = 2  # images per digit in the folder make-records reads
K = 2  # --images_per_class of filter-balance

# Run inside the venv: where the package comes from, every console script's
# --version, `python -m noisy_student_tf --version`, then two one-line errors
# of the main job (its default config loads from the package; an unknown
# config name lists the known ones), in one process to save imports.
PROBE = """
import contextlib, importlib.metadata, io, json, runpy, sys
import noisy_student_tf
out = {"file": noisy_student_tf.__file__, "version": {}}
scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
for name in COMMANDS:
    sys.argv = [name, "--version"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        scripts[name].load()()
    out["version"][name] = buffer.getvalue().strip()
sys.argv = ["python -m noisy_student_tf", "--version"]
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer):
    runpy.run_module("noisy_student_tf", run_name="__main__")
out["module_version"] = buffer.getvalue().strip()
out["errors"] = []
for argv in (["--config.train.learning_rate=-1"], ["--config=digit:smoke"]):
    sys.argv = ["noisy-student", *argv]
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        try:
            scripts["noisy-student"].load()()
        except SystemExit as e:
            out["errors"].append([e.code, buffer.getvalue()])
print(json.dumps(out))
"""


def _copy_package_sources(target):
    """What the wheel is built from; __pycache__ and build output are left behind."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    shutil.copytree(
        os.path.join(REPO, "noisy_student_tf"), target / "noisy_student_tf", ignore=ignore
    )
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), target / name)


def _check(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtualenv with the wheel installed; its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    sources, wheels, env_dir = root / "sources", root / "wheels", root / "venv"
    _copy_package_sources(sources)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(sources)])
    (wheel,) = wheels.glob("noisy_student_tf-*.whl")
    # No pip inside (ensurepip costs seconds): the system pip, run by the venv's
    # python, installs into the venv. --ignore-installed: this machine's
    # editable install of the repository is visible and must not count.
    _check([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)])
    python = str(env_dir / "bin" / "python")
    _check(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ]
    )
    return env_dir / "bin"


def _write_digit_folder(folder):
    """PER_CLASS sklearn digits per class as 32x32 PNGs in class folders 0..9."""
    digits = load_digits()
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(digits.target == label)[:PER_CLASS]):
            pixels = np.kron(digits.images[index] * 255 / 16, np.ones((4, 4))).astype(np.uint8)
            Image.fromarray(np.stack([pixels] * 3, -1)).save(folder / str(label) / f"{i}.png")


@pytest.fixture(scope="module")
def installed_run(venv, tmp_path_factory):
    """Every command of the installed wheel, in fresh processes outside the repository."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    paths = {name: cwd / name for name in ("images", "src", "run", "labeled", "pseudo", "eval")}
    _write_digit_folder(paths["images"])

    def start(*args):
        return subprocess.Popen(
            [str(args[0]), *args[1:]],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(*running):
        done = []
        for proc in running:
            stdout, stderr = proc.communicate(timeout=900)
            done.append((proc.returncode, stdout, stderr))
        return done

    code = f"COMMANDS = {COMMANDS!r}\n{PROBE}"
    first = finish(
        start(venv / "noisy-student", "--config=digits:smoke", f"--workdir={paths['run']}"),
        start(venv / "python", "-c", code),
        start(
            venv / "noisy-student-make-records",
            f"--input={paths['images']}",
            f"--output_dir={paths['src']}",
            "--num_shards=2",
        ),
    )
    for returncode, _, stderr in (first[0], first[2]):
        assert returncode == 0, stderr[-3000:]
    teacher = paths["run"] / "iteration_0_teacher.keras"
    second = finish(
        start(
            venv / "noisy-student-label",
            f"--input={paths['src']}",
            f"--output_dir={paths['labeled']}",
            f"--teacher={teacher}",
            "--batch_size=8",
        ),
        start(
            venv / "noisy-student-evaluate",
            f"--model={paths['run'] / 'saved_model'}",
            f"--data={paths['src']}",
            f"--output_dir={paths['eval']}",
            "--max_examples=0",
            "--corruptions=",
            "--perturbations=",
            "--eps=",
        ),
    )
    for returncode, _, stderr in second:
        assert returncode == 0, stderr[-3000:]
    third = finish(
        start(
            venv / "noisy-student-filter-balance",
            f"--input={paths['labeled']}",
            f"--output_dir={paths['pseudo']}",
            "--threshold=0",
            f"--images_per_class={K}",
            "--num_output_shards=1",
        )
    )
    assert third[0][0] == 0, third[0][2][-3000:]
    probe = json.loads(first[1][1].strip().splitlines()[-1])
    return {"paths": paths, "probe": probe, "venv": venv, "loop_stdout": first[0][1]}


def test_the_commands_come_from_the_wheel(installed_run):
    """The venv's copy, not this checkout or the machine's editable install."""
    probe, venv = installed_run["probe"], installed_run["venv"]
    assert probe["file"].startswith(str(venv.parent)), probe["file"]
    assert "site-packages" in probe["file"]
    for name in COMMANDS:
        assert (venv / name).exists(), name


def test_every_command_prints_the_version(installed_run):
    from noisy_student_tf import __version__

    probe = installed_run["probe"]
    assert probe["version"] == {name: f"{name} {__version__}" for name in COMMANDS}
    assert probe["module_version"] == f"noisy-student {__version__}"


def test_the_main_job_default_config_and_config_names_need_no_checkout(installed_run):
    (bad_value, unknown_name) = installed_run["probe"]["errors"]
    for status, stderr in (bad_value, unknown_name):
        assert status == 2 and "Traceback" not in stderr, stderr
        assert len([line for line in stderr.splitlines() if line.startswith("error:")]) == 1
    assert "error: train.learning_rate must be > 0" in bad_value[1]
    assert (
        "unknown config 'digit'; expected one of digits, cifar10_4k, imagenet, svhn"
        in (unknown_name[1])
    )


def test_the_smoke_loop_ran_on_the_packaged_config(installed_run):
    run = installed_run["paths"]["run"]
    results = json.loads((run / "results.json").read_text())
    assert len(results["models"]) >= 2  # the teacher and at least one student
    assert (run / "saved_model" / "saved_model.pb").exists()
    assert "results.json" in installed_run["loop_stdout"]


def _examples(folder):
    return [
        tf.train.Example.FromString(r)
        for f in records.list_files(str(folder))
        for r in records.read_records(f)
    ]


def test_the_tools_chain_on_the_loop_teacher(installed_run):
    paths = installed_run["paths"]
    made = records.read_json(str(paths["src"] / "manifest.json"))
    assert made["written"] == 10 * PER_CLASS
    labeled = records.read_json(str(paths["labeled"] / "manifest.json"))
    assert labeled["complete"] and labeled["labeled"] == labeled["records_in"] == 10 * PER_CLASS
    assert labeled["num_classes"] == 10
    predicted = collections.Counter(
        e.features.feature[schema.TEACHER_LABEL].int64_list.value[0]
        for e in _examples(paths["labeled"])
    )
    pseudo = records.read_json(str(paths["pseudo"] / "manifest.json"))
    assert pseudo["in"] == 10 * PER_CLASS and pseudo["out_records"] == K * len(predicted)
    report = json.loads((paths["eval"] / "report.json").read_text())
    assert report["settings"]["num_examples"] == 10 * PER_CLASS
    assert 0.0 <= report["top1"] <= report["top5"] <= 1.0
