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

The optimizer's `use_ema` keeps an exponential moving average of the
weights; `fit()` swaps it into the student at the end, so the evaluated
model and the next teacher are the averaged weights (official: EMA 0.9999).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of -sum(targets * log_softmax(logits))."""
    return tf.reduce_mean(tf.reduce_sum(-targets * tf.nn.log_softmax(logits), axis=-1))


def smooth(one_hot: tf.Tensor, label_smoothing: float) -> tf.Tensor:
    """Label smoothing as in tf.losses.softmax_cross_entropy."""
    num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
    return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def teacher_targets(teacher_logits: tf.Tensor, temperature: float | None,
                    label_smoothing: float) -> tf.Tensor:
    """Pseudo labels from teacher logits: soft at `temperature`, or hard if None."""
    if temperature is None:
        num_classes = tf.shape(teacher_logits)[-1]
        hard = tf.one_hot(tf.argmax(teacher_logits, axis=-1), num_classes)
        return smooth(hard, label_smoothing)
    return tf.nn.softmax(teacher_logits / temperature)


def _is_batch_norm_variable(layer_names: set, variable) -> bool:
    return any(part in layer_names for part in variable.path.split("/"))


class NoisyStudent(keras.Model):
    """Trains `student` on labeled + pseudo-labeled batches (see module doc).

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
    """

    def __init__(self, student: keras.Model, num_classes: int, unlabeled_ratio: float = 1.0,
                 label_smoothing: float = 0.1, weight_decay: float = 1e-5,
                 teacher: keras.Model | None = None, temperature: float | None = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        if teacher is not None and unlabeled_ratio < 1:
            raise ValueError(f"unlabeled_ratio must be >= 1 with a teacher, got {unlabeled_ratio}")
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or None for hard labels), got {temperature}")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.num_classes = num_classes
        self.unlabeled_ratio = float(unlabeled_ratio)
        self.label_smoothing = float(label_smoothing)
        self.weight_decay = float(weight_decay)
        self.temperature = temperature
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.labeled_loss_tracker = keras.metrics.Mean(name="labeled_loss")
        self.unlabeled_loss_tracker = keras.metrics.Mean(name="unlabeled_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        bn_names = {layer.name for layer in student._flatten_layers()
                    if isinstance(layer, keras.layers.BatchNormalization)}
        self._decayed = [v for v in student.trainable_variables
                         if not _is_batch_norm_variable(bn_names, v)]

    @property
    def metrics(self):
        return [self.loss_tracker, self.labeled_loss_tracker,
                self.unlabeled_loss_tracker, self.accuracy]

    def call(self, images, training=False):
        return self.student(images, training=training)

    def compute_losses(self, data: dict, training: bool = True):
        """Returns (total, labeled, unlabeled, labeled logits) for one batch."""
        images, labels = data["images"], data["labels"]
        batch = tf.shape(images)[0]
        if "unlabeled_images" not in data:
            logits = self.student(images, training=training)
            lab_logits, unl_loss = logits, tf.constant(0.0)
        else:
            if "unlabeled_targets" in data:
                targets = data["unlabeled_targets"]
            else:
                if self.teacher is None:
                    raise ValueError("the batch has no 'unlabeled_targets' and the model "
                                     "has no teacher to compute them")
                teacher_logits = tf.stop_gradient(
                    self.teacher(data["unlabeled_teacher_images"], training=False))
                targets = teacher_targets(teacher_logits, self.temperature,
                                          self.label_smoothing)
            logits = self.student(tf.concat([images, data["unlabeled_images"]], 0),
                                  training=training)
            lab_logits, unl_logits = logits[:batch], logits[batch:]
            unl_loss = _cross_entropy(tf.cast(targets, unl_logits.dtype), unl_logits)
        one_hot = tf.one_hot(labels, self.num_classes, dtype=lab_logits.dtype)
        lab_loss = _cross_entropy(smooth(one_hot, self.label_smoothing), lab_logits)
        total = lab_loss + self.unlabeled_ratio * unl_loss
        if self.weight_decay:
            total += self.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in self._decayed])
        return total, lab_loss, unl_loss, lab_logits

    def train_step(self, data):
        with tf.GradientTape() as tape:
            total, lab_loss, unl_loss, lab_logits = self.compute_losses(data, training=True)
            # Stop before a non-finite loss reaches the weights and their EMA.
            total = tf.debugging.check_numerics(total, "Noisy Student loss is not finite")
            # Gradients are summed across replicas; scale so they average.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total / replicas)
        # The wrapper's own list and order: fit() maps the EMA back onto
        # `self.trainable_weights` by position. The frozen teacher has none.
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._update_metrics(total, lab_loss, unl_loss, data["labels"], lab_logits)

    def test_step(self, data):
        if isinstance(data, (tuple, list)):
            data = {"images": data[0], "labels": data[1]}
        total, lab_loss, unl_loss, lab_logits = self.compute_losses(data, training=False)
        return self._update_metrics(total, lab_loss, unl_loss, data["labels"], lab_logits)

    def _update_metrics(self, total, lab_loss, unl_loss, labels, lab_logits):
        self.loss_tracker.update_state(total)
        self.labeled_loss_tracker.update_state(lab_loss)
        self.unlabeled_loss_tracker.update_state(unl_loss)
        self.accuracy.update_state(labels, lab_logits)
        return {m.name: m.result() for m in self.metrics}
