"""What the loop asks of its data, one implementation per data mode (STYLE rule 11).

The loop (runner.py) needs four things of its data, whatever form it has
(and `model_size(block)`, the side a model block's model takes):

  labeled(model_config, seed)  the labeled set a model trains on;
  test_top1(model, ...)        a model's top-1 on the test set;
  label_pool(model, ...)       the model, un-noised, labels the unlabeled
                               pool once; the labels are filtered and
                               balanced into the selection the next student
                               trains on (`PoolLabels`: that selection's
                               kept/dropped summary, the pool's pseudo-label
                               accuracy, and where the selection is);
  student_source(labels, ...)  the student's pseudo-labeled source made
                               from those labels.

Two sides implement them. The sets (labeled, test): `ArraySets` (uint8
arrays in memory) and `StreamSets` (record shards or tfds splits, read by
tf.data). The pool: `ArrayPool` (predict in memory, `select.filter_and_balance`,
targets from the stored probabilities, or none with `pseudo.online`) and
`RecordPool` (`labeling.shards` -> Beam filter/balance -> the student streams
the balanced shards; record_stages.py). `MODES` pairs them by name:

  in_memory    ArraySets  + ArrayPool   (data.source, the default)
  via_records  ArraySets  + RecordPool  (the array pool written once as
                                         shards that carry its true labels)
  streamed     StreamSets + RecordPool  (data.labeled/unlabeled/test)

`data.pseudo_labeled` (a tools/filter_balance.py output folder) is the
record pool's labels given before the loop starts (`RecordPool.given`).
A new data mode is one class with these methods and one row of `MODES`.
"""

from __future__ import annotations

import dataclasses
import io
import os

import keras
import numpy as np
import tensorflow as tf

from noisy_student_tf import evaluation, labeling, manifests
from noisy_student_tf.data import records, schema, sources
from noisy_student_tf.data.preprocess import eval_resize_of
from noisy_student_tf.data.sources import SemiSupervisedData, StreamingData
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.labeling.targets import pseudo_targets
from noisy_student_tf.loop import record_stages, stages
from noisy_student_tf.loop.config_checks import model_image_size

# Labeled shards (encoded records) a streamed run keeps in host memory with
# tf.data's cache(); larger labeled sets are re-read every epoch.
LABELED_CACHE_BYTES = 1 << 30
POOL_SHARDS = 4  # the in-memory pool's shards in via_records mode


@dataclasses.dataclass
class PoolLabels:
    """One model's labels of the pool, as the next student trains on them.

    Attributes:
      summary: the selection's counts (`select.Selection.manifest` keys: in,
        kept_unique, dropped_below_threshold, dropped_over_quota,
        out_records, per_class); None for a given folder.
      accuracy: agreement of the teacher's labels with the pool's true
        labels over the whole pool (NaN where none is known).
      selection: where the selection is: (probs, `Selection`) in memory, the
        balanced shards' folder for records.
    """

    summary: dict | None
    accuracy: float
    selection: object


def pool_key(index: int) -> bytes:
    """A pool image's record key; the official balancing's coin flips hash it."""
    return f"pool/{index:08d}".encode()


def pool_labels_path(workdir: str, iteration: int) -> str:
    """Model `iteration`'s labels of an in-memory pool (read by experiments/report.py)."""
    return os.path.join(workdir, f"iteration_{iteration}_pool_labels.npz")


def write_pool_labels(path: str, keys, labels, probs: np.ndarray) -> None:
    """Saves the pool's keys, true labels and teacher probabilities [N, C] through gfile.

    `probs` are those the selection was made from (temperature 1; stored
    pseudo-label distributions in via_records mode), 4 bytes per class per
    image: confidence histograms and per-class counts before balancing.
    """
    buffer = io.BytesIO()
    np.savez(buffer, key=np.asarray(keys, object).astype(bytes), label=labels, probs=probs)
    manifests.write_file(path, buffer.getvalue())


def read_pool_labels(path: str) -> dict:
    """{"key", "label", "probs"} arrays of `write_pool_labels`, pool order."""
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as saved:
            return {name: saved[name] for name in saved.files}


# Why an undecodable labeled image stops the run instead of being skipped.
LABELED_KEPT = (
    "a labeled image is never skipped, as that would change the labeled set the "
    "schedule (steps per epoch) and the reported counts are built on"
)


class ArraySets:
    """The labeled and test sets as uint8 arrays in memory."""

    streamed = False

    def __init__(self, config, data: SemiSupervisedData):
        self.data, self.config = data, config
        self.num_classes = data.num_classes
        self.image_size = int(data.test_images.shape[1])
        self.num_labeled = len(data.labeled_labels)
        self.class_names = None  # arrays carry no class names

    def model_size(self, model_config) -> int:
        """The arrays' side: resized once, when loaded (validate_config refuses
        a model block's `image_size` other than `data.image_size` in memory)."""
        del model_config
        return self.image_size

    def labeled(self, model_config, seed: int, image_size: int | None = None):
        del model_config, seed, image_size  # arrays are resized once, when loaded
        return self.data.labeled_images, self.data.labeled_labels

    @staticmethod
    def name_bad_record(error: Exception) -> Exception:
        return error  # decoded when loaded: a bad image was named then

    def test_top1(self, model: keras.Model, small_image: bool, image_size: int | None = None):
        del small_image, image_size
        batch = self.config.train.eval_batch_size
        return evaluation.top1_accuracy(model, self.data.test_images, self.data.test_labels, batch)


class StreamSets:
    """The labeled and test sets as record streams (`data.labeled`, `data.test`)."""

    streamed = True

    def __init__(self, config, data: StreamingData):
        self.data, self.config = data, config
        self.num_classes = data.num_classes
        self.image_size = data.image_size
        self.num_labeled = data.num_labeled
        # The pool may come from another label space (JFT), so only these two.
        named = {"data.labeled": data.labeled, "data.test": data.test}
        self.class_names = records.check_class_names(
            {key: s.files for key, s in named.items() if not s.tfds_name}, self.num_classes
        )

    def model_size(self, model_config) -> int:
        """A model's own side (`config_checks.model_image_size`): records are decoded at it."""
        return model_image_size(self.config, model_config)

    def labeled(self, model_config, seed: int, image_size: int | None = None):
        size = image_size or self.image_size
        source = self.data.labeled
        cache = sources.cacheable(source, LABELED_CACHE_BYTES)
        return source.training_stream(
            size, seed, model_config.small_image, cache, num_classes=self.num_classes
        )

    def name_bad_record(self, error: Exception) -> Exception:
        """A failed fit's `error` as one naming the labeled record that does not decode
        (a second pass over data.labeled), or `error` itself when every image decodes."""
        source = self.data.labeled
        if source.tfds_name:  # tfds decodes its own records
            return error
        return schema.name_bad_image(source.files, "data.labeled", error, LABELED_KEPT)

    def test_top1(self, model: keras.Model, small_image: bool, image_size: int | None = None):
        """Top-1 on the model's own eval view (a loaded official checkpoint: the official
        resize, as its published accuracy)."""
        size = image_size or self.image_size
        batches = self.data.test.eval_batches(
            size,
            self.config.train.eval_batch_size,
            small_image,
            self.num_classes,
            eval_resize_of(model),
        )
        try:
            return evaluation.top1_accuracy(model, batches)
        except tf.errors.InvalidArgumentError as e:  # e.g. an image that does not decode
            raise schema.name_bad_image(self.data.test.files, "data.test", e) from e


class ArrayPool:
    """The unlabeled pool in memory: predict, filter and balance, targets from probabilities."""

    def __init__(self, config, data: SemiSupervisedData, workdir: str):
        self.config, self.data, self.workdir = config, data, workdir
        self.keys = [pool_key(i) for i in range(len(data.unlabeled_images))]

    def given(self):
        return None, ""

    def label_pool(self, model, model_path: str, fingerprint: str, iteration: int) -> PoolLabels:
        del model_path, fingerprint  # the model in memory labels
        pseudo = self.config.pseudo
        images = self.data.unlabeled_images
        probs = labeling.predict_probabilities(
            model, images, self.config.train.eval_batch_size, verbose=0
        )
        selection = labeling.filter_and_balance(
            probs,
            pseudo.threshold,
            pseudo.images_per_class,
            seed=self.config.seed + iteration,
            balance=pseudo.get("balance", "exact"),
            keys=self.keys,
        )
        labels = self.data.unlabeled_labels
        path = pool_labels_path(self.workdir, iteration)
        write_pool_labels(path, self.keys, labels, probs)
        accuracy = evaluation.agreement(probs, labels)
        return PoolLabels(selection.manifest(), accuracy, (probs, selection))

    def student_source(self, labels: PoolLabels, iteration: int):
        """(the student's unbatched unlabeled source, its size), offline or online.

        offline (default): (selected pool images, targets made from the
          teacher's stored probabilities), in memory.
        online: the selected pool images alone; the frozen teacher computes
          the targets inside the train step.
        """
        probs, selection = labels.selection
        if len(selection.indices) == 0:
            raise ConfigError(
                f"no unlabeled image reached pseudo.threshold={self.config.pseudo.threshold} "
                f"after iteration {iteration - 1}; lower the threshold or train the "
                f"teacher longer (train.teacher_epochs)"
            )
        images = self.data.unlabeled_images[selection.indices]
        if self.config.pseudo.online:
            return images, len(images)
        pseudo = self.config.pseudo
        targets = labeling.training_targets(
            probs[selection.indices],
            pseudo.soft,
            pseudo.temperature,
            self.config.train.label_smoothing,
        )
        return (images, targets), len(images)


class RecordPool:
    """The unlabeled pool as record shards: label shards -> Beam filter/balance -> stream.

    Args:
      files: () -> the pool's source shards.
      spec: the pool's config value, recorded in the labeling manifests.
      keep_labels: also write `iteration_I_pool_labels.npz` (an in-memory
        pool; a streamed pool may hold hundreds of millions of images).
      given_folder: `data.pseudo_labeled`, the first student's selection.
    """

    def __init__(self, config, workdir, strategy, sets, files, spec, keep_labels, given_folder=""):
        self.config, self.workdir, self.strategy, self.sets = config, workdir, strategy, sets
        self.files, self.spec, self.keep_labels = files, spec, keep_labels
        self.given_folder = given_folder

    def given(self) -> tuple[PoolLabels | None, str]:
        """(labels, their teacher's fingerprint) made before the run (`data.pseudo_labeled`)."""
        if not self.given_folder:
            return None, ""
        from noisy_student_tf.models.artifact import fingerprint as content_fingerprint

        # Names a folder without a manifest or without kept records first.
        manifest = records.filter_balance_manifest(self.given_folder)
        fingerprint = content_fingerprint(manifest, "data.pseudo_labeled")
        return PoolLabels(None, float("nan"), self.given_folder), fingerprint

    def label_pool(self, model, model_path: str, fingerprint: str, iteration: int):
        """Labels the pool's shards with `model_path` once, filters and balances them.

        `model` is labeled from its checkpoint, on the strategy's replicas,
        on its own eval view: its block's `small_image` and its eval resize.
        """
        if self.files is None:
            return None
        config = self.config
        block = config.teacher if iteration == 0 else config.student
        labeled_dir = os.path.join(self.workdir, f"iteration_{iteration}_labeled")
        pseudo_dir = os.path.join(self.workdir, f"iteration_{iteration}_pseudo")
        batch = config.train.eval_batch_size
        files = self.files()
        record_stages.label(
            model_path,
            fingerprint,
            files,
            labeled_dir,
            config.pseudo,
            self.strategy,
            batch,
            self.spec,
            block.small_image,
            eval_resize_of(model),
        )
        manifest = record_stages.filter_balance(
            labeled_dir,
            pseudo_dir,
            self.sets.num_classes,
            config.pseudo,
            config.seed + iteration,
            fingerprint,
        )
        if self.keep_labels:
            keys, labels, probs = record_stages.read_labeled(labeled_dir, self.sets.num_classes)
            write_pool_labels(pool_labels_path(self.workdir, iteration), keys, labels, probs)
        accuracy = record_stages.pseudo_label_accuracy(labeled_dir)
        return PoolLabels(record_stages.selection_summary(manifest), accuracy, pseudo_dir)

    def student_source(self, labels: PoolLabels, iteration: int):
        """(the balanced shards as an unbatched (image, target) stream, record count)."""
        stream, count = record_stages.balanced_stream(
            labels.selection,
            self.sets.num_classes,
            self.sets.model_size(self.config.student),  # the student's own view
            self.config.seed + iteration,
            self.config.student.small_image,
        )
        eps = self.config.train.label_smoothing
        if not self.config.pseudo.soft:  # a stored one-hot label, smoothed by the one rule
            stream = stream.map(lambda x, t: (x, pseudo_targets(t, False, 1.0, eps, False)))
        return stream, count


def _pool_shards(data: SemiSupervisedData, workdir: str):
    """() -> the in-memory pool written once as source shards (reused on rerun).

    The shards carry the pool's true labels so the labeled shards score the
    teacher's labels; no stage trains on them (the student reads only
    `teacher/probs`).
    """

    def files() -> list[str]:
        from noisy_student_tf.data import ingest

        pool_dir = os.path.join(workdir, "pool")
        stage = stages.Stage(os.path.join(pool_dir, record_stages.STAGE_FILE), "the pool's shards")
        settings = {
            "pool_images": records.content_digest(data.unlabeled_images),
            "pool_labels": records.content_digest(np.asarray(data.unlabeled_labels, np.int64)),
            "num_shards": POOL_SHARDS,
        }
        if not stage.complete(settings):
            stage.start(settings)
            items = (
                (schema.encode_png(image), int(label), pool_key(i))
                for i, (image, label) in enumerate(
                    zip(data.unlabeled_images, data.unlabeled_labels)
                )
            )
            ingest.write_source_shards(items, pool_dir, num_shards=POOL_SHARDS, prefix="pool")
            stage.finish({})
        return records.list_files(os.path.join(pool_dir, "pool-*"))

    return files


def _in_memory(config, data, workdir, strategy):
    return ArraySets(config, data), ArrayPool(config, data, workdir)


def _via_records(config, data, workdir, strategy):
    sets = ArraySets(config, data)
    files = _pool_shards(data, workdir)
    return sets, RecordPool(config, workdir, strategy, sets, files, "pool", keep_labels=True)


def _streamed(config, data, workdir, strategy):
    sets = StreamSets(config, data)
    pool = data.unlabeled
    files = (lambda: record_stages.source_files(pool, workdir)) if pool is not None else None
    spec = pool.spec if pool is not None else ""
    return sets, RecordPool(
        config, workdir, strategy, sets, files, spec, False, given_folder=data.pseudo_labeled
    )


MODES = {"in_memory": _in_memory, "via_records": _via_records, "streamed": _streamed}


def mode_name(config, data) -> str:
    """The `MODES` row the config and data select."""
    if isinstance(data, StreamingData):
        return "streamed"
    return "via_records" if config.pseudo.via_records else "in_memory"


def make(config, data, workdir: str, strategy: tf.distribute.Strategy):
    """(sets, pool) of the run's data mode; see the module docstring."""
    return MODES[mode_name(config, data)](config, data, workdir, strategy)
