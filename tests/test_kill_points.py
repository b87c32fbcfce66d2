"""kill -9 at named places, rerun, same result (noisy_student_tf/kill_points.py).

Each chain runs one command in one workdir again and again: every run but
the last is SIGKILLed at the next named point (`NOISY_STUDENT_KILL_AT`), the
last runs to the end, and the workdir then matches an uninterrupted
`deterministic=True` reference run (same records, counts, results.json
accuracies, files) with no temporary file left. A chain costs about one
loop plus a process start per kill.

The in-memory chain is also the suite's determinism test: its last run, made
of fresh processes that each resumed what the one before left, must write
the reference's weights, rows, selections and pool labels bit for bit (a
separate pair of uninterrupted deterministic runs checked nothing more).
"""

import glob
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    DIGITS_SMOKE,
    read_examples,
    record_keys,
    run_script,
    script_env,
    tiny_cnn,
)

from noisy_student_tf import kill_points, labeling
from noisy_student_tf.data import records, schema
from noisy_student_tf.labeling.shards import MANIFEST_SUFFIX
from noisy_student_tf.loop import data_modes

SCRIPT = "experiments/noisy_student.py"
# The smoke loop at 16 px with the smallest EfficientNets: 4 steps per model
# (2 epochs of 2 steps), a checkpoint every 2, an even batch for 2 workers.
LOOP = [
    DIGITS_SMOKE,
    "--config.deterministic=True",
    "--config.train.save_every_steps=2",
    "--config.train.batch_size=24",
    "--config.data.image_size=16",
    *(
        f"--config.{m}.{c}_coefficient=0.1"
        for m in ("teacher", "student")
        for c in ("width", "depth")
    ),
]
STEPS = 4
ROW_KEYS = (
    "role",
    "iteration",
    "architecture",
    "parameters",
    "test_top1",
    "pseudo_label_accuracy",
    "kept",
    "dropped",
    "dropped_below_threshold",
)


def _env(point: str = "", **extra) -> dict:
    """A fresh process's environment: no TF_CONFIG or kill point but those given."""
    env = script_env()
    env.pop("TF_CONFIG", None)
    env.pop(kill_points.ENV, None)
    return {**env, **extra, **({kill_points.ENV: point} if point else {})}


def _loop(workdir, point: str = "", *extra: str):
    return run_script(SCRIPT, *LOOP, *extra, f"--workdir={workdir}", env=_env(point))


def _killed_at(proc, point: str) -> None:
    """The process died of SIGKILL at `point`, not earlier or of something else."""
    output = proc.stderr if isinstance(proc.stderr, str) else ""
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, output[-3000:])
    assert f"kill point {point} reached" in output, output[-3000:]


def _files(workdir) -> set[str]:
    """Every file under workdir, relative, without TensorBoard's (event files are appended)."""
    out = set()
    for path in glob.glob(os.path.join(str(workdir), "**"), recursive=True):
        rel = os.path.relpath(path, workdir)
        if os.path.isfile(path) and not rel.startswith("tensorboard"):
            out.add(rel)
    return out


def _temporaries(workdir) -> list[str]:
    """Paths a writer left under a temporary name (records.TMP_MARK, TF's `_temp`)."""
    found = glob.glob(os.path.join(str(workdir), "**", f"*{records.TMP_MARK}*"), recursive=True)
    return found + glob.glob(os.path.join(str(workdir), "**", "*_temp"), recursive=True)


def _json(path):
    with open(path) as f:
        return json.load(f)


def _rows(workdir) -> list[dict]:
    rows = _json(os.path.join(workdir, "results.json"))["models"]
    return [{key: row[key] for key in ROW_KEYS} for row in rows]


def _assert_same_run(workdir, reference, weights=True) -> None:
    """workdir holds what the uninterrupted reference run wrote, and nothing temporary."""
    assert not _temporaries(workdir)
    assert _files(workdir) == _files(reference)
    assert _rows(workdir) == _rows(reference)
    for name in sorted(_files(reference)):
        if name.endswith("_selection.json"):
            assert _json(os.path.join(workdir, name)) == _json(os.path.join(reference, name))
        if name.endswith(".npz"):
            got = data_modes.read_pool_labels(os.path.join(workdir, name))
            want = data_modes.read_pool_labels(os.path.join(reference, name))
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
        if name.endswith((".keras", "_teacher.json", "_student.json")) and weights:
            if name.endswith(".json"):
                got, want = (_json(os.path.join(d, name)) for d in (workdir, reference))
                assert got["complete"] and (got["steps"], got["final_step"]) == (STEPS, STEPS)
                continue
            got, want = (
                keras.models.load_model(os.path.join(d, name)) for d in (workdir, reference)
            )
            for a, b in zip(got.get_weights(), want.get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The workdir of one uninterrupted deterministic run of LOOP (in memory)."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = _loop(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(workdir)


def _latest_step(checkpoint_dir) -> int:
    return int(tf.train.latest_checkpoint(str(checkpoint_dir)).rsplit("-", 1)[1])


def test_in_memory_loop_killed_at_each_point_then_rerun_matches_the_reference(reference, tmp_path):
    # The default loop (pool in memory).
    workdir = tmp_path / "run"
    teacher, student = workdir / "iteration_0_teacher", workdir / "iteration_1_student"

    # After teacher step 3: its checkpoint of step 2 is all that is kept.
    _killed_at(_loop(workdir, "teacher_step:3"), "teacher_step:3")
    assert not os.path.exists(f"{teacher}.keras") and _latest_step(f"{teacher}.ckpt") == 2

    # The teacher resumed at step 2, trained, written to its temporary name:
    # killed before the rename.
    proc = _loop(workdir, "keras_saved")
    _killed_at(proc, "keras_saved:1")
    assert f"teacher: resumed from its checkpoint at step 2 of {STEPS}" in proc.stdout
    assert glob.glob(f"{teacher}.keras{records.TMP_MARK}*.keras")
    assert not os.path.exists(f"{teacher}.keras") and not _json(f"{teacher}.json")["complete"]

    # The rerun restores it at its last step (nothing to train) and saves it;
    # the pool is labeled; the student is killed after step 3 (checkpoint: step 2).
    _killed_at(_loop(workdir, "student_step:3"), "student_step:3")
    assert _json(f"{teacher}.json")["resumed_from_step"] == STEPS
    assert os.path.exists(f"{teacher}.keras") and not _temporaries(workdir)
    assert not os.path.exists(f"{student}.keras") and _latest_step(f"{student}.ckpt") == 2

    # The student resumes at step 2; killed with the SavedModel in its temporary folder.
    proc = _loop(workdir, "saved_model_written")
    _killed_at(proc, "saved_model_written:1")
    assert f"student 1: resumed from its checkpoint at step 2 of {STEPS}" in proc.stdout
    assert glob.glob(str(workdir / f"saved_model{records.TMP_MARK}*" / "saved_model.pb"))
    assert not os.path.exists(workdir / "saved_model")
    assert not os.path.exists(workdir / "results.json")

    proc = _loop(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "teacher reused" in proc.stdout and "student 1 reused" in proc.stdout
    _assert_same_run(str(workdir), reference)


def _same_selection(got: dict, want: dict) -> None:
    """Two selection summaries agree (the Beam one also counts duplicates per class)."""
    assert {k: v for k, v in got.items() if k != "per_class"} == {
        k: v for k, v in want.items() if k != "per_class"
    }
    for a, b in zip(got["per_class"], want["per_class"], strict=True):
        assert {k: a[k] for k in b} == b


def test_record_pool_killed_in_labeling_beam_and_fit_then_rerun_matches_the_reference(
    reference, tmp_path
):
    # pseudo.via_records with the reference's teacher (a teacher does not
    # depend on the pseudo block, so it is reused): the pool goes through
    # labeled shards and the Beam filter/balance pipeline, and the selection
    # must be the in-memory reference's.
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name in ("iteration_0_teacher.keras", "iteration_0_teacher.json"):
        tf.io.gfile.copy(os.path.join(reference, name), str(workdir / name))
    labeled, pseudo = workdir / "iteration_0_labeled", workdir / "iteration_0_pseudo"

    def run(point=""):
        return _loop(workdir, point, "--config.pseudo.via_records=True")

    _killed_at(run("label_shard:2"), "label_shard:2")
    done = sorted(glob.glob(str(labeled / f"*{MANIFEST_SUFFIX}")))
    assert len(done) == 2 and len(records.list_files(str(labeled))) == 2
    first = [os.path.getmtime(p) for p in done]

    _killed_at(run("filter_balance_shard:2"), "filter_balance_shard:2")
    assert [os.path.getmtime(p) for p in done] == first  # shards 0-1 were not labeled again
    assert glob.glob(str(pseudo / f"*{records.TMP_MARK}*"))
    assert not os.path.exists(pseudo / "manifest.json")

    # A student streaming the balanced shards, killed after step 3.
    _killed_at(run("student_step:3"), "student_step:3")
    assert not glob.glob(str(pseudo / f"*{records.TMP_MARK}*"))

    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _temporaries(workdir)
    # The teacher's row and selection are the reference's. The student's
    # stream continued with a fresh shuffle (resume.py: exact only for
    # in-memory sets), so only where it resumed is checked.
    rows = _rows(workdir)
    assert rows[0] == _rows(reference)[0] and rows[1]["role"] == "student"
    name = "iteration_0_selection.json"
    _same_selection(_json(workdir / name), _json(os.path.join(reference, name)))
    manifest = _json(workdir / "iteration_1_student.json")
    assert manifest["complete"] and manifest["resumed_from_step"] == 2
    assert manifest["final_step"] == manifest["steps"] == STEPS
    assert (workdir / "saved_model" / "saved_model.pb").exists()
    # Every pool image labeled once, with the reference teacher's probabilities;
    # the balanced shards hold the selection the in-memory rule makes of them.
    want = data_modes.read_pool_labels(data_modes.pool_labels_path(reference, 0))
    got = data_modes.read_pool_labels(data_modes.pool_labels_path(str(workdir), 0))
    np.testing.assert_array_equal(got["key"], want["key"])
    np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-6)
    selection = labeling.filter_and_balance(want["probs"], 0.0, 20, seed=0, keys=list(want["key"]))
    kept = sorted(record_keys(records.list_files(str(pseudo))))
    assert kept == sorted(want["key"][i] for i in selection.indices)


def test_make_records_and_label_killed_after_a_shard_then_rerun_complete(tmp_path, rng):
    # make_records: two class folders and one corrupt JPEG, into 4 shards.
    tree, images = tmp_path / "tree", {}
    for c in range(2):
        (tree / f"class{c}").mkdir(parents=True)
        for i in range(6):
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            (tree / f"class{c}" / f"{i}.png").write_bytes(schema.encode_png(image))
            images[f"class{c}/{i}.png".encode()] = image
    (tree / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    src = tmp_path / "src"
    make = ("tools/make_records.py", f"--input={tree}", f"--output_dir={src}", "--num_shards=4")
    _killed_at(run_script(*make, env=_env("make_records_shard:2")), "make_records_shard:2")
    assert len(records.list_files(str(src))) == 2  # shards 0 and 1; 2 and 3 still temporary
    assert len(glob.glob(str(src / f"*{records.TMP_MARK}*"))) == 2
    assert not (src / "manifest.json").exists()
    proc = run_script(*make, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = _json(src / "manifest.json")
    assert made["written"] == 12 and made["skipped"] == {"undecodable_image": 1}
    assert made["per_label"] == {"0": 6, "1": 6} and made["records_per_shard"] == [3] * 4
    assert made["classes"] == ["class0", "class1"]
    assert not _temporaries(src)
    assert sorted(record_keys(str(src))) == sorted(images)

    # label.py: killed once its second shard is complete; the rerun labels the rest.
    teacher_path, out = str(tmp_path / "teacher.keras"), tmp_path / "labeled"
    teacher = tiny_cnn(2, size=8)
    teacher.save(teacher_path)
    label = ("tools/label.py", f"--input={src}", f"--output_dir={out}", f"--teacher={teacher_path}")
    _killed_at(run_script(*label, env=_env("label_shard:2")), "label_shard:2")
    done = sorted(glob.glob(str(out / f"*{MANIFEST_SUFFIX}")))
    assert len(done) == 2 and not (out / "manifest.json").exists()
    first = [os.path.getmtime(p) for p in done]
    proc = run_script(*label, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [os.path.getmtime(p) for p in done] == first  # not labeled again
    summary = _json(out / "manifest.json")
    assert summary["complete"] and summary["labeled"] == summary["records_in"] == 12
    assert not _temporaries(out)
    # Every image once, with the teacher's own probabilities.
    examples = read_examples(str(out))
    keys = [e.features.feature[schema.KEY].bytes_list.value[0] for e in examples]
    assert sorted(keys) == sorted(images)
    got = [list(e.features.feature[schema.TEACHER_PROBS].float_list.value) for e in examples]
    logits = teacher.predict(np.stack([images[k] for k in keys]).astype("float32"), verbose=0)
    np.testing.assert_allclose(got, tf.nn.softmax(logits).numpy(), atol=1e-5)
