"""Labeling as a Beam pipeline (labeling/beam_label.py): the job array's output, file for file."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_script, tiny_cnn

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import records, schema
from noisy_student_tf.labeling import beam_label, shards

SIZE, C = 8, 4
# Fields of a shard manifest that describe the run rather than the result.
RUN_FIELDS = ("elapsed_s", "engine", "output")


def _teacher(tmp_path):
    path = str(tmp_path / "teacher.keras")
    tiny_cnn(C, size=SIZE).save(path)
    return path


def _write_sources(folder, rng, sizes=(5, 0, 3)):
    """Shards of random PNGs (one empty); shard 0 also has a corrupt JPEG, a
    record without an image and one without a key (record index 6)."""
    folder.mkdir()
    files = []
    for s, n in enumerate(sizes):
        path = str(folder / records.shard_name("src", s, len(sizes)))
        with tf.io.TFRecordWriter(path) as w:
            for i in range(n):
                image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                key = b"" if (s, i) == (0, 4) else f"s{s}-{i}".encode()
                w.write(
                    schema.source_example(schema.encode_png(image), -1, key).SerializeToString()
                )
                if (s, i) == (0, 1):
                    w.write(
                        schema.source_example(b"\xff\xd8\xffjunk", 0, b"bad").SerializeToString()
                    )
                    w.write(tf.train.Example().SerializeToString())
        files.append(path)
    return files


def _shard_contents(path):
    """[(key, features without teacher/probs, probs)] in file order."""
    out = []
    for raw in records.read_records(path):
        feature = tf.train.Example.FromString(raw).features.feature
        probs = list(feature[schema.TEACHER_PROBS].float_list.value)
        rest = {
            name: feature[name].SerializeToString()
            for name in feature
            if name not in (schema.TEACHER_PROBS, schema.TEACHER_CONFIDENCE)
        }
        conf = feature[schema.TEACHER_CONFIDENCE].float_list.value[0]
        out.append((feature[schema.KEY].bytes_list.value[0], rest, np.array(probs + [conf])))
    return out


def _without(manifest, names):
    return {k: v for k, v in manifest.items() if k not in names}


@pytest.mark.parametrize("options", [dict(temperature=2.0), dict(topk=2, soft=False)])
def test_beam_writes_what_the_job_array_writes(tmp_path, rng, options):
    files = _write_sources(tmp_path / "src", rng)
    teacher = _teacher(tmp_path)
    array_dir, beam_dir = str(tmp_path / "array"), str(tmp_path / "beam")
    array = shards.label_shards(teacher, files, array_dir, batch_size=2, verbose=0, **options)
    beam = beam_label.label_with_beam(teacher, files, beam_dir, batch_size=3, **options)
    assert beam["records_in"] == array["records_in"] == 10 and beam["labeled"] == 8
    assert beam["skipped"] == array["skipped"] == {"undecodable_image": 1, "missing_image": 1}
    assert _without(beam, ("elapsed_s_this_job",)) == _without(array, ("elapsed_s_this_job",))
    for i in range(3):
        name = records.shard_name("labeled", i, 3)
        a, b = (_shard_contents(os.path.join(d, name)) for d in (array_dir, beam_dir))
        assert [x[0] for x in b] == [x[0] for x in a]  # same keys, same order
        assert [x[1] for x in b] == [x[1] for x in a]  # every other feature byte-equal
        for (_, _, pa), (_, _, pb) in zip(a, b):
            np.testing.assert_allclose(pb, pa, atol=1e-6)
        ma, mb = (
            records.read_json(os.path.join(d, name) + ".manifest.json")
            for d in (array_dir, beam_dir)
        )
        assert mb["engine"] == "beam"
        assert _without(mb, RUN_FIELDS) == _without(ma, RUN_FIELDS)
    assert b"src-00000-of-00003.tfrecord:6" in [
        x[0] for x in _shard_contents(os.path.join(beam_dir, records.shard_name("labeled", 0, 3)))
    ]


def test_rerun_reuses_refuses_overwrites_and_finishes_a_killed_run(tmp_path, rng):
    files = _write_sources(tmp_path / "src", rng, sizes=(3, 2, 4))
    teacher = _teacher(tmp_path)
    out = str(tmp_path / "out")
    beam_label.label_with_beam(teacher, files, out)
    outputs = shards.output_paths(out, "labeled", 3)
    stamps = [os.stat(p).st_mtime_ns for p in outputs]

    beam_label.label_with_beam(teacher, files, out)  # complete: nothing rewritten
    assert [os.stat(p).st_mtime_ns for p in outputs] == stamps

    with pytest.raises(ConfigError, match=r"temperature: 1.0 -> 2.0.*--overwrite"):
        beam_label.label_with_beam(teacher, files, out, temperature=2.0)
    assert [os.stat(p).st_mtime_ns for p in outputs] == stamps

    # A run killed after shard 0: shard 1 without its manifest, shard 2 a temporary file only.
    os.remove(outputs[1] + shards.MANIFEST_SUFFIX)
    os.rename(outputs[2], outputs[2] + records.TMP_MARK + "dead")
    os.remove(outputs[2] + shards.MANIFEST_SUFFIX)
    summary = beam_label.label_with_beam(teacher, files, out)
    assert summary["complete"] and summary["labeled"] == 9
    assert os.stat(outputs[0]).st_mtime_ns == stamps[0]
    assert os.stat(outputs[1]).st_mtime_ns != stamps[1]
    assert not [f for f in os.listdir(out) if records.TMP_MARK in f]

    summary = beam_label.label_with_beam(teacher, files, out, temperature=2.0, overwrite=True)
    assert summary["complete"] and summary["settings"]["temperature"] == 2.0
    assert all(os.stat(p).st_mtime_ns != s for p, s in zip(outputs, stamps))


def test_handler_is_our_model_handler_without_tensorflow_hub():
    code = (
        "import sys\n"
        "from apache_beam.ml.inference.base import ModelHandler\n"
        "from noisy_student_tf.labeling import beam_label\n"
        "assert issubclass(beam_label.TeacherModelHandler, ModelHandler)\n"
        "assert 'tensorflow_hub' not in sys.modules, 'tensorflow_hub imported'\n"
    )
    proc = run_script("-c", code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
