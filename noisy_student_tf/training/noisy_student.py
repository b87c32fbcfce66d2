"""The Noisy Student training step as a `keras.Model` driven by `fit()`.

One step (Xie et al. 2019, section 2; official main.py `model_fn`):

  loss = CE(smooth(labels), student(x_lab))
         + unlabeled_ratio * CE(targets, student(x_unl))
         + weight_decay * sum(||w||^2 / 2 for non-batch-norm weights)

* Labeled and unlabeled images go through the student in ONE concatenated
  forward pass, so batch norm sees both (as in the official code).
* `targets` are the teacher's pseudo labels: soft (softmax, optionally with
  temperature) or hard (one-hot argmax, label-smoothed like real labels, as
  the official code does). They come either from stored predictions
  (offline) or from a teacher called here with `training=False` on the
  un-augmented images (online); the teacher is frozen and outside the tape.
* Each CE term is a per-batch mean; the unlabeled term is weighted by the
  batch ratio, which equals the official `data_loss` normalisation
  (lab_loss * B + unl_loss * B * r) / B.
* With no unlabeled keys in the batch this is plain supervised training with
  noise, which is how the first teacher is trained.

After each applied step a moving average of the student's weights and
batch-norm statistics is updated (ema.py, as the official code keeps it);
`fit()` copies it into the student at the end, so the evaluated model and
the next teacher are the averaged ones. A step whose loss or gradients are
not finite is skipped on every path, XLA included, counted as
`nonfinite_steps`, and ends `fit()` with an error (nonfinite.py).

Under a mixed-precision policy (precision.py) the student computes in
bfloat16 or float16, while logits, targets, losses, weights and the moving
average stay float32; with float16 the optimizer is a LossScaleOptimizer,
which owns skipping overflowing gradients.
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf

from noisy_student_tf.labeling.targets import pseudo_targets, smooth
from noisy_student_tf.training import ema, nonfinite


def _cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of -sum(targets * log_softmax(logits))."""
    return tf.reduce_mean(tf.reduce_sum(-targets * tf.nn.log_softmax(logits), axis=-1))


def teacher_targets(
    teacher_logits: tf.Tensor, temperature: float | None, label_smoothing: float
) -> tf.Tensor:
    """Pseudo labels from teacher logits: soft at `temperature`, or hard if None."""
    soft = temperature is not None
    return pseudo_targets(teacher_logits, soft, temperature or 1.0, label_smoothing)


def _as_batch(data) -> dict:
    """The batch dict from fit()'s dict, train_on_batch's tuple or (images, labels)."""
    if isinstance(data, (tuple, list)):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(tuple(data))
        data = x if isinstance(x, dict) else {"images": x, "labels": y}
    return data


class NoisyStudent(keras.Model):
    """Trains `student` on labeled + pseudo-labeled batches (see module doc).

    Any student works: functional with any input name, or subclassed. The
    wrapper is called with the batch dict and hands only `images` on, and an
    unbuilt student is built from that key's shape on the first batch.

    Args:
      student: a keras.Model mapping uint8/float pixels [B, H, W, 3] to logits.
      num_classes: number of classes C.
      unlabeled_ratio: weight of the unlabeled loss; the pipeline makes the
        unlabeled batch this many times larger than the labeled one.
      label_smoothing: on real labels and hard pseudo labels (official 0.1).
      weight_decay: L2 coefficient on non-batch-norm weights (official 1e-5).
      teacher: for online pseudo labels; called with training=False on the
        un-augmented batch. Frozen (trainable=False). None for offline mode.
      temperature: softmax temperature for online soft labels; None = hard.
      ema_decay: decay of the moving average of the student's weights and
        batch-norm statistics (ramped, see ema.py; official 0.9999); 0 turns
        it off and `fit()` leaves the raw weights. Use it instead of the
        optimizer's `use_ema`.
    """

    def __init__(
        self,
        student: keras.Model,
        num_classes: int,
        unlabeled_ratio: float = 1.0,
        label_smoothing: float = 0.1,
        weight_decay: float = 1e-5,
        teacher: keras.Model | None = None,
        temperature: float | None = 1.0,
        ema_decay: float = ema.OFFICIAL_DECAY,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if teacher is not None and unlabeled_ratio < 1:
            raise ValueError(f"unlabeled_ratio must be >= 1 with a teacher, got {unlabeled_ratio}")
        if temperature is not None and temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 (or None for hard labels), got {temperature}"
            )
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = no average), got {ema_decay}")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.num_classes = num_classes
        self.unlabeled_ratio = float(unlabeled_ratio)
        self.label_smoothing = float(label_smoothing)
        self.weight_decay = float(weight_decay)
        self.temperature = temperature
        self.ema_decay = float(ema_decay)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.labeled_loss_tracker = keras.metrics.Mean(name="labeled_loss")
        self.unlabeled_loss_tracker = keras.metrics.Mean(name="unlabeled_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.nonfinite_tracker = nonfinite.StepCounter(name="nonfinite_steps")
        self.average = None
        if student.built:
            # Create the average here, under the caller's strategy scope.
            self._build_from_student()
            self.built = True

    def build(self, input_shape):
        """Builds an unbuilt student from the `images` shape, then the average."""
        if not self.student.built:
            shape = input_shape["images"] if isinstance(input_shape, dict) else input_shape
            self.student(keras.KerasTensor(tuple(shape)))
        self._build_from_student()

    def _build_from_student(self):
        bn_stats = ema.batch_norm_statistics(self.student)
        bn_weights = {
            id(v)
            for layer in self.student._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in layer.weights
        }
        self._decayed = [v for v in self.student.trainable_variables if id(v) not in bn_weights]
        # Restored when a step is skipped: the forward pass has already
        # moved them by the time the loss is known.
        self._bn_stats = bn_stats
        if self.ema_decay > 0:
            # Eagerly, so the shadows start from the student's values even
            # when the first trace of train_step builds the student.
            with tf.init_scope():
                self.average = ema.MovingAverage(
                    self.ema_decay, self.student.trainable_variables + bn_stats, name="average"
                )

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.labeled_loss_tracker,
            self.unlabeled_loss_tracker,
            self.accuracy,
            self.nonfinite_tracker,
        ]

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):  # fit() builds the wrapper from the whole batch
            inputs = inputs["images"]
        return self.student(inputs, training=training)

    def compute_losses(self, data: dict, training: bool = True):
        """Returns (total, labeled, unlabeled, labeled logits) for one batch.

        Logits, targets and losses are float32 whatever the student's dtype
        policy (a float16 softmax over 1000 classes loses the small
        probabilities the soft targets carry).
        """
        images, labels = data["images"], data["labels"]
        batch = tf.shape(images)[0]
        if "unlabeled_images" not in data:
            logits = tf.cast(self.student(images, training=training), "float32")
            lab_logits, unl_loss = logits, tf.constant(0.0)
        else:
            if "unlabeled_targets" in data:
                targets = data["unlabeled_targets"]
            else:
                if self.teacher is None:
                    raise ValueError(
                        "the batch has no 'unlabeled_targets' and the model "
                        "has no teacher to compute them"
                    )
                teacher_logits = tf.stop_gradient(
                    tf.cast(
                        self.teacher(data["unlabeled_teacher_images"], training=False), "float32"
                    )
                )
                targets = teacher_targets(teacher_logits, self.temperature, self.label_smoothing)
            logits = tf.cast(
                self.student(tf.concat([images, data["unlabeled_images"]], 0), training=training),
                "float32",
            )
            lab_logits, unl_logits = logits[:batch], logits[batch:]
            unl_loss = _cross_entropy(tf.cast(targets, "float32"), unl_logits)
        one_hot = tf.one_hot(labels, self.num_classes, dtype="float32")
        lab_loss = _cross_entropy(smooth(one_hot, self.label_smoothing), lab_logits)
        total = lab_loss + self.unlabeled_ratio * unl_loss
        if self.weight_decay and self._decayed:
            total += self.weight_decay * tf.add_n(
                [tf.nn.l2_loss(tf.cast(v.value, "float32")) for v in self._decayed]
            )
        return total, lab_loss, unl_loss, lab_logits

    def _build_on_first_trace(self, data: dict, optimizer: bool) -> None:
        # Without a strategy scope Keras builds nothing before tracing the
        # step, and the optimizer must have its slots before the tf.cond.
        if not self.built:
            self.build(data["images"].shape)
        if optimizer and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def _build_before_tracing(self, images) -> None:
        """Builds the wrapper, the average and the optimizer's slots now, under the
        model's strategy. Variables first created inside the traced step would make
        tf.function trace the whole step a second time.

        Args:
          images: a batch of images or its spec (None: nothing to build from);
            its shape is read only if the model is not built yet (a distributed
            dataset's spec has none, and fit() builds before distributing).
        """
        with self.distribute_strategy.scope():
            if not self.built and images is not None:
                self.build(images.shape)
            if self.built and self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # train_on_batch(dict) comes here first; fit() has built everything
        # already. Keras's symbolic build would then only reduce a first
        # batch across replicas, which fails under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585).
        x = data_batch[0] if isinstance(data_batch, tuple) else None
        if isinstance(x, dict) and "images" in x:
            self._build_before_tracing(x["images"])
        if self.built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        data = _as_batch(data)
        self._build_on_first_trace(data, optimizer=True)
        saved_stats = [tf.identity(v.value) for v in self._bn_stats]
        with tf.GradientTape() as tape:
            total, lab_loss, unl_loss, lab_logits = self.compute_losses(data, training=True)
            # Gradients are summed across replicas; scale so they average.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total / replicas)
        self._average_bn_stats()
        # The list the optimizer was built with; the frozen teacher has none.
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        # Under mixed precision the loss-scale optimizer owns overflowing
        # gradients (it skips the step and lowers the scale); the loss is ours.
        scaled_grads = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        finite = nonfinite.all_replicas_finite(total, [] if scaled_grads else grads)
        nonfinite.apply_if_finite(
            finite, self._apply, (grads, variables), self._restore, (saved_stats,)
        )
        self.nonfinite_tracker.update_state(tf.logical_not(finite))
        return self._update_metrics(total, lab_loss, unl_loss, data["labels"], lab_logits)

    def _average_bn_stats(self) -> None:
        """Sets every replica's batch-norm moving statistics to their mean over the replicas.

        Each replica normalises with its own batch's moments (the official
        per-core batch norm), and Keras 3 updates a moving statistic on the
        replica that computed it only (its variables aggregate "none"), so
        without this the replicas, one per worker under MultiWorkerMirrored,
        drift apart: the chief saved its own statistics while the pool was
        labeled and the test set scored by the replicas' different ones, and
        a teacher reloaded from the saved file did not label as it had.
        Keras 2 kept these statistics per replica and read their mean (ON_READ
        with MEAN aggregation); as the moving average is linear in the batch
        moments, the mean kept here at every step is that same value, and one
        model then exists on every replica to checkpoint, save and resume.
        """
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1 or not self._bn_stats:
            return
        values = [tf.identity(v.value) for v in self._bn_stats]
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, values)
        for variable, mean in zip(self._bn_stats, means, strict=True):
            variable.assign(mean)

    def _apply(self, grads, variables):
        self.optimizer.apply(grads, variables)
        if self.average is not None:
            self.average.update(self.optimizer.iterations)

    def _restore(self, saved_stats):
        for variable, value in zip(self._bn_stats, saved_stats):
            variable.assign(value)

    def test_step(self, data):
        data = _as_batch(data)
        self._build_on_first_trace(data, optimizer=False)
        total, lab_loss, unl_loss, lab_logits = self.compute_losses(data, training=False)
        return self._update_metrics(total, lab_loss, unl_loss, data["labels"], lab_logits)

    def _update_metrics(self, total, lab_loss, unl_loss, labels, lab_logits):
        self.loss_tracker.update_state(total)
        self.labeled_loss_tracker.update_state(lab_loss)
        self.unlabeled_loss_tracker.update_state(unl_loss)
        self.accuracy.update_state(labels, lab_logits)
        logs = {m.name: m.result() for m in self.metrics}
        strategy = tf.distribute.get_strategy()
        if (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        ):
            # Keras reduces multi-worker logs with reduce("MEAN", axis=0),
            # which rejects scalars; a [1] vector reduces to the scalar. The
            # condition is Keras's own (trainer.py
            # _collective_all_reduce_multi_worker): a one-worker cluster is
            # not reduced, and a [1] vector would reach the callbacks.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def fit(self, *args, **kwargs):
        """keras.Model.fit, plus: stops on a non-finite step, ends holding the average.

        A `StopOnNonFiniteLoss` is added to the callbacks unless one is
        there. When training completes the student's weights and batch-norm
        statistics are overwritten by their moving averages, so the model
        that is evaluated, saved and used as the next teacher is the
        averaged one; `self.average.shadows` keep the averages either way.
        """
        bound = inspect.signature(super().fit).bind(*args, **kwargs)
        callbacks = bound.arguments.get("callbacks")
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks or [])
            if not any(isinstance(c, nonfinite.StopOnNonFiniteLoss) for c in callbacks):
                callbacks.append(nonfinite.StopOnNonFiniteLoss())
            bound.arguments["callbacks"] = callbacks
        # Build before the callbacks start (BackupAndRestore loads the
        # shadows and slots in on_train_begin), under the model's strategy.
        spec = getattr(bound.arguments.get("x"), "element_spec", None)
        self._build_before_tracing(spec.get("images") if isinstance(spec, dict) else None)
        history = super().fit(*bound.args, **bound.kwargs)
        if self.average is not None:
            self.average.copy_to_variables(self.distribute_strategy)
        return history
