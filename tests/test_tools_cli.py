"""The README's tools commands end to end, each in a fresh process, on a teacher
checkpoint that the training loop itself wrote (tools/*.py, noisy_student_tf/cli.py).

A fresh process matters: in-process tests import noisy_student_tf.models
before loading a checkpoint, which hid that tools/label.py could not load an
EfficientNet checkpoint (its StochasticDepth layers were never registered).
"""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import read_examples, run_script

from noisy_student_tf.data import records, schema
from noisy_student_tf.models import load_checkpoint

IMAGE_SIZE = 32  # the digits config's resolution


@pytest.fixture(scope="session")
def loop_teacher(smoke_workdir):
    """iteration_0_teacher.keras of the session's smoke run of the loop (conftest)."""
    return os.path.join(smoke_workdir, "iteration_0_teacher.keras")


def _tool(name, *args):
    return run_script(f"tools/{name}", *args, timeout=300)


_examples = read_examples


def test_make_records_label_filter_balance_with_a_loop_checkpoint(tmp_path, loop_teacher):
    rng = np.random.default_rng(0)
    tree, images = tmp_path / "images", {}
    for name in ("cat", "dog"):
        (tree / name).mkdir(parents=True)
        for i in range(7):
            images[f"{name}/{i}.png"] = rng.integers(
                0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
            )
            (tree / name / f"{i}.png").write_bytes(schema.encode_png(images[f"{name}/{i}.png"]))
    (tree / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    src, labeled, pseudo = tmp_path / "src", tmp_path / "labeled", tmp_path / "pseudo"
    proc = _tool("make_records.py", f"--input={tree}", f"--output_dir={src}", "--num_shards=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = records.read_json(str(src / "manifest.json"))
    assert made["written"] == 14 and made["skipped"] == {"undecodable_image": 1}

    label_args = (f"--input={src}", f"--output_dir={labeled}", f"--teacher={loop_teacher}")
    proc = _tool("label.py", *label_args, "--batch_size=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = records.read_json(str(labeled / "manifest.json"))
    assert summary["complete"] and summary["labeled"] == summary["records_in"] == 14
    assert summary["num_classes"] == 10 and summary["settings"]["image_size"] == IMAGE_SIZE
    examples = _examples(labeled)
    keys = [e.features.feature[schema.KEY].bytes_list.value[0].decode() for e in examples]
    probs = np.array([e.features.feature[schema.TEACHER_PROBS].float_list.value for e in examples])
    # The stored labels are the checkpoint's own un-noised predictions.
    model = load_checkpoint(loop_teacher)
    logits = model(np.stack([images[k] for k in keys]).astype(np.float32), training=False)
    np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), atol=1e-5)

    # Rerun with another temperature: refused with the setting named, then --overwrite.
    proc = _tool("label.py", *label_args, "--temperature=2")
    assert proc.returncode == 2 and "temperature: 1.0 -> 2.0" in proc.stderr, proc.stderr[-3000:]
    proc = _tool("label.py", *label_args, "--temperature=2", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert records.read_json(str(labeled / "manifest.json"))["settings"]["temperature"] == 2.0

    # No --num_classes: the labeling manifests give it.
    k = 3
    proc = _tool(
        "filter_balance.py",
        f"--input={labeled}",
        f"--output_dir={pseudo}",
        "--threshold=0",
        f"--images_per_class={k}",
        "--num_output_shards=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = records.read_json(str(pseudo / "manifest.json"))
    predicted = collections.Counter(int(np.argmax(p)) for p in probs)
    assert manifest["num_classes"] == 10 and manifest["in"] == 14
    assert manifest["out_records"] == k * len(predicted)
    out = collections.Counter(
        e.features.feature[schema.TEACHER_LABEL].int64_list.value[0] for e in _examples(pseudo)
    )
    assert out == {c: k for c in predicted}


def _labeled_by_key(folder):
    out = {}
    for e in _examples(folder):
        feature = e.features.feature
        out[feature[schema.KEY].bytes_list.value[0]] = (
            np.array(feature[schema.TEACHER_PROBS].float_list.value),
            feature[schema.IMAGE].bytes_list.value[0],
            feature[schema.TEACHER_LABEL].int64_list.value[0],
        )
    return out


def test_beam_engine_labels_as_the_job_array_with_a_loop_checkpoint(tmp_path, loop_teacher):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    for s in range(3):
        with tf.io.TFRecordWriter(str(src / records.shard_name("pool", s, 3))) as w:
            for i in range(4):
                image = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                key = f"{s}/{i}".encode()
                w.write(
                    schema.source_example(schema.encode_png(image), key=key).SerializeToString()
                )
    array, beam = tmp_path / "array", tmp_path / "beam"
    common = (f"--input={src}", f"--teacher={loop_teacher}", "--batch_size=5")
    proc = _tool("label.py", *common, f"--output_dir={array}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Beam options after "--" reach the pipeline.
    beam_args = ("--engine=beam", "--", "--direct_num_workers=1")
    proc = _tool("label.py", *common, f"--output_dir={beam}", *beam_args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _labeled_by_key(array), _labeled_by_key(beam)
    assert len(a) == 12 and sorted(b) == sorted(a)
    for key, (probs, image, label) in a.items():
        np.testing.assert_allclose(b[key][0], probs, atol=1e-6)
        assert b[key][1:] == (image, label)
    ma, mb = (records.read_json(str(d / "manifest.json")) for d in (array, beam))
    assert mb["complete"] and mb["settings"] == ma["settings"]
    assert (mb["records_in"], mb["labeled"], mb["skipped"]) == (12, 12, {})

    # Same rerun rules as the job array: a changed setting is refused, named.
    proc = _tool("label.py", *common, f"--output_dir={beam}", "--engine=beam", "--nosoft")
    assert "soft: True -> False" in _one_error_line(proc)
    proc = _tool("label.py", *common, f"--output_dir={beam}", "--engine=beam", "--num_shards=2")
    assert "--num_shards=2 is for --engine=job_array" in _one_error_line(proc)


def _one_error_line(proc):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    "tool,args,expected",
    [
        ("filter_balance.py", ("--threshold=1.5",), "threshold must be in [0, 1], got 1.5"),
        ("label.py", ("--teacher={missing}",), "does not exist"),
        ("make_records.py", (), "is not a folder of images"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, tool, args, expected):
    src = tmp_path / "src"  # a valid source shard, so only the named flag is wrong
    src.mkdir()
    example = schema.source_example(schema.encode_png(np.zeros((4, 4, 3), np.uint8)), key=b"a")
    example = schema.add_teacher_view(example, np.array([0.9, 0.1]))
    with tf.io.TFRecordWriter(str(src / "labeled-00000-of-00001.tfrecord")) as w:
        w.write(example.SerializeToString())
    folder = {"make_records.py": tmp_path / "no_such_folder"}.get(tool, src)
    args = [a.format(missing=tmp_path / "gone.keras") for a in args]
    proc = _tool(tool, f"--input={folder}", f"--output_dir={tmp_path / 'out'}", *args)
    assert expected in _one_error_line(proc)
