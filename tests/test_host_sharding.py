"""The training input sharded per host (issue 21, item 4): under a 2-worker
MultiWorkerMirroredStrategy each worker reads only its own share (record
files split before decoding, array rows split per global batch) and draws
its own augmentation noise; with one input pipeline nothing changes."""

import json
import subprocess

import numpy as np
import tensorflow as tf
from conftest import loopback_cluster, script_env, source_examples, start_script, write_records

from noisy_student_tf.data import pipeline, records, schema

WORKER = "tests/host_sharding_worker.py"
# Shared with host_sharding_worker.py.
N, SIZE, BATCH, RATIO, SEED = 32, 32, 4, 2, 3
SHARDS, STEPS = 4, 3


def _image():
    """An image whose every crop, flip and rotation looks different (56 x 64)."""
    y, x = np.mgrid[:56, :64]
    return np.stack([y * 4, x * 4, (x * y) % 256], -1).astype(np.uint8)


def _write_sets(folder):
    """N labeled and N pseudo-labeled records, all of the same image; label and
    target of record i are i. Round-robin into SHARDS files each."""
    image = _image()
    images = [image] * N
    write_records(folder, source_examples(images, np.arange(N)), SHARDS, prefix="labeled")
    pseudo = (
        schema.add_teacher_view(example, np.eye(N, dtype=np.float32)[i])
        for i, example in enumerate(source_examples(images))
    )
    write_records(folder, pseudo, SHARDS, prefix="pseudo")


def _run_workers(folder, logs):
    cluster = loopback_cluster()
    procs = []
    for index in range(2):
        env = script_env()
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        procs.append(
            start_script(
                WORKER,
                str(folder),
                str(STEPS),
                env=env,
                stdout=open(logs[index], "w"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    return [json.loads(t.strip().splitlines()[-1]) for t in texts]


def _single_worker_labels():
    """The labels of the first STEPS steps one input pipeline gives from the arrays."""
    images = np.zeros((N, 4, 4, 3), np.uint8)
    ds = pipeline.training_dataset(
        (images, np.arange(N)), BATCH, (images, np.eye(N, dtype=np.float32)), RATIO, seed=SEED
    )
    return [
        (set(b["labels"].numpy().tolist()), set(b["unlabeled_targets"].numpy().argmax(1).tolist()))
        for b in ds.take(STEPS)
    ]


def test_two_workers_read_disjoint_shares_and_draw_different_noise(tmp_path):
    _write_sets(tmp_path / "data")
    workers = _run_workers(tmp_path / "data", [tmp_path / "log0", tmp_path / "log1"])
    # Arrays: each step's global batch split between the workers, as one
    # pipeline would have drawn it.
    for step, (labeled, unlabeled) in enumerate(_single_worker_labels()):
        parts = [w["arrays"][step] for w in workers]
        assert [len(p["labels"]) for p in parts] == [BATCH // 2] * 2
        assert [len(p["unlabeled"]) for p in parts] == [BATCH * RATIO // 2] * 2
        assert set(parts[0]["labels"]).isdisjoint(parts[1]["labels"])
        assert set(parts[0]["labels"]) | set(parts[1]["labels"]) == labeled
        assert set(parts[0]["unlabeled"]) | set(parts[1]["unlabeled"]) == unlabeled
    # Records: worker w reads shard files w and w + 2 only (record i is in
    # file i % SHARDS), so it never decodes the other's records.
    for index, worker in enumerate(workers):
        for step in worker["records"]:
            for key in ("labels", "unlabeled"):
                assert {i % SHARDS % 2 for i in step[key]} == {index}, (index, key, step)
    # Same pixels everywhere: only the keys make the draws differ. Within a
    # worker every image drew its own noise, and no draw of one worker is
    # repeated by the other.
    for source in ("arrays", "records"):
        for key in ("images", "unlabeled_images"):
            drawn = [{d for step in w[source] for d in step[key]} for w in workers]
            assert all(len(d) == STEPS * len(workers[0][source][0][key]) for d in drawn)
            assert drawn[0].isdisjoint(drawn[1]), (source, key)


def test_one_input_pipeline_keeps_its_batches_and_keys():
    """The default strategy's input is `training_dataset` unchanged; an
    explicit single-pipeline context gives the same batches as none."""
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    data = (images, np.arange(12))
    from noisy_student_tf.data import preprocess

    train = preprocess.TrainPreprocess(16, None, small_image=True, cutout=False)
    plain = pipeline.training_dataset(data, 4, preprocess=train, seed=1)
    default = pipeline.distributed_training_dataset(
        tf.distribute.get_strategy(), data, 4, preprocess=train, seed=1
    )
    context = tf.distribute.InputContext(1, 0, 1)
    explicit = pipeline.training_dataset(data, 4, preprocess=train, seed=1, input_context=context)
    assert isinstance(default, tf.data.Dataset)
    for a, b, c in zip(plain.take(3), default.take(3), explicit.take(3)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])


def test_fewer_files_than_pipelines_splits_records_before_decoding(tmp_path):
    """One shard file, two pipelines: each reads every other record."""
    files = write_records(tmp_path, source_examples([np.zeros((4, 4, 3), np.uint8)] * 6, range(6)))
    shares = [
        [int(y) for _, y in pipeline.source_stream(files, 4, shuffle_buffer=0).eval_view((i, 2))]
        for i in range(2)
    ]
    assert shares == [[0, 2, 4], [1, 3, 5]]
    assert records.count_records(files[0]) == 6
