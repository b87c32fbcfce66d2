"""Labeling stage: sharded, restartable teacher labeling (labeling/shards.py, tools/label.py)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_script, tiny_cnn

from noisy_student_tf.cli import ConfigError
from noisy_student_tf.data import ingest, pipeline, records, schema
from noisy_student_tf.evaluation.export import export_saved_model
from noisy_student_tf.labeling import predict_probabilities, shards
from noisy_student_tf.labeling.shards import MANIFEST_SUFFIX, label_shards, teacher_outputs

SIZE, C = 8, 4


def _teacher(tmp_path):
    path = str(tmp_path / "teacher.keras")
    tiny_cnn(C, size=SIZE).save(path)
    return path


def _write_shards(tmp_path, num_shards, per_shard, rng, bad=False):
    """Source shards of random 8x8 PNGs; with `bad`, shard 0 also holds a corrupt
    JPEG and a record without image/encoded. Returns (files, {key: image})."""
    folder = tmp_path / "src"
    folder.mkdir()
    images, files = {}, []
    for s in range(num_shards):
        path = str(folder / records.shard_name("train", s, num_shards))
        with tf.io.TFRecordWriter(path) as w:
            for i in range(per_shard):
                key = f"s{s}-{i}".encode()
                images[key] = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                w.write(
                    schema.source_example(
                        schema.encode_png(images[key]), i % C, key
                    ).SerializeToString()
                )
                if bad and s == 0 and i == 1:
                    w.write(
                        schema.source_example(
                            b"\xff\xd8\xff\xe0garbage", 0, b"corrupt"
                        ).SerializeToString()
                    )
                    no_image = tf.train.Example()
                    no_image.features.feature[schema.KEY].bytes_list.value.append(b"noimg")
                    w.write(no_image.SerializeToString())
        files.append(path)
    return files, images


def _read(files):
    return [tf.train.Example.FromString(r) for f in files for r in records.read_records(f)]


def test_labels_match_predict_and_bad_records_are_counted(tmp_path, rng):
    files, images = _write_shards(tmp_path, 2, 5, rng, bad=True)
    teacher = _teacher(tmp_path)
    out = str(tmp_path / "labeled")
    summary = label_shards(teacher, files, out, batch_size=4, verbose=0)
    assert summary["records_in"] == 12 and summary["labeled"] == 10
    assert summary["skipped"] == {"undecodable_image": 1, "missing_image": 1}
    assert summary["complete"] and summary["num_classes"] == C
    outputs = sorted(glob.glob(os.path.join(out, "labeled-*.tfrecord")))
    assert [os.path.basename(f) for f in outputs] == [
        "labeled-00000-of-00002.tfrecord",
        "labeled-00001-of-00002.tfrecord",
    ]
    examples = _read(outputs)
    keys = [e.features.feature[schema.KEY].bytes_list.value[0] for e in examples]
    assert keys == list(images)  # input order, nothing lost
    probs = np.array([e.features.feature[schema.TEACHER_PROBS].float_list.value for e in examples])
    want = predict_probabilities(
        tf.keras.models.load_model(teacher), np.stack(list(images.values())), verbose=0
    )
    np.testing.assert_allclose(probs, want, atol=1e-5)
    labels = [e.features.feature[schema.LABEL].int64_list.value[0] for e in examples]
    assert labels == [i % C for i in range(5)] * 2  # source features carried through


def test_topk_output_feeds_the_training_pipeline(tmp_path, rng):
    files, images = _write_shards(tmp_path, 1, 6, rng)
    out = str(tmp_path / "labeled")
    label_shards(_teacher(tmp_path), files, out, topk=2, verbose=0)
    ds = pipeline.pseudo_labeled_records(records.list_files(out), C, SIZE)
    pairs = list(ds.as_numpy_iterator())
    assert len(pairs) == 6
    assert pairs[0][0].shape == (SIZE, SIZE, 3) and pairs[0][1].shape == (C,)
    np.testing.assert_allclose([p.sum() for _, p in pairs], 1.0, atol=1e-5)


def test_rerun_skips_complete_shards_and_job_array_splits_work(tmp_path, rng):
    files, _ = _write_shards(tmp_path, 3, 2, rng)
    teacher, out = _teacher(tmp_path), str(tmp_path / "labeled")
    first = label_shards(teacher, files, out, shard_index=1, num_shards=2, verbose=0)
    assert first["shards_complete"] == 1 and not first["complete"]
    done = os.path.join(out, "labeled-00001-of-00003.tfrecord")
    stamp = os.stat(done).st_mtime_ns
    second = label_shards(teacher, files, out, shard_index=0, num_shards=2, verbose=0)
    assert second["complete"] and second["labeled"] == 6
    label_shards(teacher, files, out, shard_index=1, num_shards=2, verbose=0)
    assert os.stat(done).st_mtime_ns == stamp  # complete shard not redone


def test_saved_model_teacher_gives_the_keras_labels(tmp_path, rng):
    files, _ = _write_shards(tmp_path, 1, 4, rng)
    teacher = _teacher(tmp_path)
    saved = export_saved_model(tf.keras.models.load_model(teacher), str(tmp_path / "sm"))
    a = label_shards(teacher, files, str(tmp_path / "a"), verbose=0)
    b = label_shards(saved, files, str(tmp_path / "b"), verbose=0)
    assert a["labeled"] == b["labeled"] == 4
    pa, pb = (
        [
            e.features.feature[schema.TEACHER_PROBS].float_list.value
            for e in _read(records.list_files(d))
        ]
        for d in (tmp_path / "a", tmp_path / "b")
    )
    np.testing.assert_allclose(np.array(pa), np.array(pb), atol=1e-5)


def test_temperature_and_hard_labels_keep_temperature_one_confidence():
    logits = np.array([[2.0, 0.0, 0.0, -1.0]])
    soft, conf = teacher_outputs(logits, soft=True, temperature=2.0)
    z = np.exp(logits / 2.0)
    np.testing.assert_allclose(soft, z / z.sum(), rtol=1e-6)
    t1 = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(conf, t1.max(), rtol=1e-6)
    hard, conf_hard = teacher_outputs(logits, soft=False, temperature=1.0)
    np.testing.assert_array_equal(hard, [[1, 0, 0, 0]])
    assert conf_hard == conf


def test_truncated_or_missing_input_names_the_file(tmp_path, rng):
    files, _ = _write_shards(tmp_path, 1, 3, rng)
    with open(files[0], "rb") as f:
        data = f.read()
    with open(files[0], "wb") as f:
        f.write(data[:-7])
    with pytest.raises(IOError, match="truncated.*train-00000-of-00001"):
        label_shards(_teacher(tmp_path), files, str(tmp_path / "out"), verbose=0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        records.list_files(str(tmp_path / "nowhere" / "*.tfrecord"))


def _probs_of(folder):
    return np.array(
        [
            e.features.feature[schema.TEACHER_PROBS].float_list.value
            for e in _read(records.list_files(str(folder)))
        ]
    )


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, rng):
    files, _ = _write_shards(tmp_path, 2, 3, rng)
    teacher, out = _teacher(tmp_path), str(tmp_path / "labeled")
    label_shards(teacher, files, out, verbose=0)
    first = _probs_of(out)
    manifest = records.read_json(out + "/labeled-00000-of-00002.tfrecord" + MANIFEST_SUFFIX)
    assert manifest["temperature"] == 1.0 and manifest["soft"] is True
    assert manifest["topk"] is None and manifest["teacher_fingerprint"].startswith("sha256:")
    with pytest.raises(ConfigError, match=r"temperature: 1\.0 -> 2\.0.*--overwrite"):
        label_shards(teacher, files, out, temperature=2.0, verbose=0)
    with pytest.raises(ConfigError, match=r"soft: True -> False"):
        label_shards(teacher, files, out, soft=False, verbose=0)
    with pytest.raises(ConfigError, match=r"topk: None -> 2"):
        label_shards(teacher, files, out, topk=2, verbose=0)
    np.testing.assert_array_equal(_probs_of(out), first)  # nothing was touched

    summary = label_shards(teacher, files, out, temperature=2.0, overwrite=True, verbose=0)
    assert summary["complete"] and summary["settings"]["temperature"] == 2.0
    z = np.log(first) / 2.0  # softmax(logits / 2) from softmax(logits)
    want = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(_probs_of(out), want, atol=1e-5)
    # Shards already labeled with these settings are kept by a further overwrite run.
    done = out + "/labeled-00001-of-00002.tfrecord"
    stamp = os.stat(done).st_mtime_ns
    label_shards(teacher, files, out, temperature=2.0, overwrite=True, verbose=0)
    assert os.stat(done).st_mtime_ns == stamp


def test_another_teacher_at_the_same_path_is_a_setting_change(tmp_path, rng):
    files, _ = _write_shards(tmp_path, 1, 3, rng)
    teacher, out = _teacher(tmp_path), str(tmp_path / "labeled")
    label_shards(teacher, files, out, verbose=0)
    tiny_cnn(C, size=SIZE).save(teacher)  # new weights (the seed moved on), same path
    with pytest.raises(ConfigError, match=r"teacher: .*teacher\.keras.*sha256:"):
        label_shards(teacher, files, out, verbose=0)
    assert label_shards(teacher, files, out, overwrite=True, verbose=0)["complete"]
    copy = str(tmp_path / "copy.keras")
    with open(teacher, "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    # The same content under another path is the same teacher: nothing to redo.
    assert label_shards(copy, files, out, verbose=0)["complete"]


def _corrupt_record_data(path, record):
    """Flips one byte inside the data of record `record` (its CRC no longer matches)."""
    data = bytearray(open(path, "rb").read())
    offset = 0
    for _ in range(record):
        (length,) = np.frombuffer(bytes(data[offset : offset + 8]), "<u8")
        offset += 12 + int(length) + 4
    data[offset + 12 + 10] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_read_fault_fails_the_shard_but_a_bad_image_is_counted(tmp_path, rng):
    files, _ = _write_shards(tmp_path, 2, 4, rng, bad=True)  # shard 0: 2 bad records
    _corrupt_record_data(files[1], 2)
    teacher, out = _teacher(tmp_path), str(tmp_path / "labeled")
    with pytest.raises(OSError, match=r"train-00001-of-00002.*corrupted record"):
        label_shards(teacher, files, out, batch_size=2, verbose=0)
    # Shard 0 (bad records, read fine) is complete; shard 1 left no output or manifest.
    good = records.read_json(out + "/labeled-00000-of-00002.tfrecord" + MANIFEST_SUFFIX)
    assert good["labeled"] == 4 and good["skipped"] == {"undecodable_image": 1, "missing_image": 1}
    assert sorted(os.listdir(out)) == [
        "labeled-00000-of-00002.tfrecord",
        "labeled-00000-of-00002.tfrecord" + MANIFEST_SUFFIX,
    ]


def test_a_record_dropped_although_it_decodes_fails_the_shard(tmp_path, rng, monkeypatch):
    files, _ = _write_shards(tmp_path, 1, 4, rng)
    decoded = shards._decoded_dataset
    # A fault that loses a good record inside the decoding (as ignore_errors did).
    monkeypatch.setattr(
        shards, "_decoded_dataset", lambda *a: decoded(*a).unbatch().skip(1).batch(2)
    )
    with pytest.raises(OSError, match=r"record 0.*decodes"):
        label_shards(_teacher(tmp_path), files, str(tmp_path / "out"), verbose=0)
    assert not glob.glob(str(tmp_path / "out" / f"*{MANIFEST_SUFFIX}"))


def test_a_training_loop_checkpoint_loads_in_a_fresh_process(tmp_path):
    # StochasticDepth must be registered by importing the labeling package alone.
    from noisy_student_tf.models import build_efficientnet

    model = build_efficientnet(
        "efficientnet-b0",
        num_classes=3,
        input_shape=(16, 16, 3),
        width_coefficient=0.1,
        depth_coefficient=0.1,
        small_image=True,
    )
    assert any(type(layer).__name__ == "StochasticDepth" for layer in model.layers)
    path = str(tmp_path / "ckpt.keras")
    model.save(path)
    code = f"""
import keras
from noisy_student_tf.labeling import shards
teacher = shards.load_teacher({path!r})
assert teacher.image_size == 16, teacher
keras.models.load_model({path!r}, compile=False)  # the package import registered it
print("OK")
"""
    proc = run_script("-c", code, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_folder_of_images_without_classes_is_unlabeled(tmp_path, rng):
    for i in range(3):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        (tmp_path / f"{i}.png").write_bytes(schema.encode_png(image))
    classes, items = ingest.folder_items(str(tmp_path))
    manifest = ingest.write_source_shards(items, str(tmp_path / "out"), 2, classes=classes)
    assert manifest["per_label"] == {"-1": 3} and manifest["records_per_shard"] == [2, 1]


def test_tfds_split_keeps_encoded_images(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        classes, items = ingest.tfds_items("mnist", "train")
        manifest = ingest.write_source_shards(items, str(tmp_path), 2, classes=classes)
    assert manifest["written"] == 5 and manifest["num_classes"] == 10
    example = _read([str(tmp_path / "train-00000-of-00002.tfrecord")])[0]
    encoded = example.features.feature[schema.IMAGE].bytes_list.value[0]
    assert schema.image_format(encoded) in (b"png", b"jpeg")
    assert example.features.feature[schema.KEY].bytes_list.value[0] == b"mnist/train/0"


def test_two_replicas_give_the_single_device_logits(tmp_path):
    # Logical devices must be set before TF starts, hence a fresh process.
    teacher = _teacher(tmp_path)
    code = f"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from noisy_student_tf.labeling import shards
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    teacher = shards.load_teacher({teacher!r})
single = shards.make_predict(teacher, tf.distribute.get_strategy())
multi = shards.make_predict(teacher, strategy)
x = np.random.default_rng(0).integers(0, 256, (7, {SIZE}, {SIZE}, 3), dtype=np.uint8)
assert strategy.num_replicas_in_sync == 2
np.testing.assert_allclose(multi(x), single(x), atol=1e-5)
assert multi(x[:1]).shape == (1, {C})
print("OK")
"""
    proc = run_script("-c", code, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
