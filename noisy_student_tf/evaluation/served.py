"""A model to evaluate: a SavedModel from any source, or a Keras model in memory.

What `tools/evaluate.py` needs from a SavedModel is one signature that maps
float32 pixels [B, H, W, 3] in [0, 255] to logits [B, C] and that can be
differentiated with respect to its input (the FGSM and PGD attacks follow
the gradient of the loss with respect to the pixels). It is found as:

  1. `--signature` when given;
  2. else the first of `serve`, `serve_images_float`, `serving_default`,
     then any other signature, that has exactly one float input of rank 4
     with 3 channels and whose gradient reaches that input;
  3. its output `logits`, else its only output (e.g. `output_0`).

Our exports (evaluation/export.py) resolve to `serve`: the model alone, at
its fixed size S. `serve_images_float` takes any size but rounds to uint8
first, which has no gradient, so it is used only when no differentiable
signature exists and no attack is asked for. Only TensorFlow is needed to
load the model: no class of this package has to be importable, so a
SavedModel written by other code with such a signature works too.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from noisy_student_tf.errors import ConfigError

PREFERRED_SIGNATURES = ("serve", "serve_images_float", "serving_default")


class ServedModel:
    """Float pixels -> logits, differentiable, with a fixed or free image size.

    Attributes:
      name: a short label for tables and plots.
      source: the SavedModel path, or "keras" / "callable".
      signature: the signature used (SavedModel only).
      image_size: the side S its input needs, or None for any size.
      differentiable: whether gradients reach the pixels (else
        `why_not_differentiable` says why).
    """

    def __init__(
        self, fn, name, source, signature=None, image_size=None, why_not_differentiable=None
    ):
        self._fn = fn
        self.name = name
        self.source = source
        self.signature = signature
        self.image_size = image_size
        self.why_not_differentiable = why_not_differentiable

    @property
    def differentiable(self) -> bool:
        return self.why_not_differentiable is None

    def renamed(self, name: str) -> ServedModel:
        """The same model under another name (one load serves several table rows)."""
        copy = ServedModel(
            self._fn,
            name,
            self.source,
            self.signature,
            self.image_size,
            self.why_not_differentiable,
        )
        copy._loaded = getattr(self, "_loaded", None)
        return copy

    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """float32 [B, S, S, 3] pixels in [0, 255] -> float32 logits [B, C]."""
        return tf.cast(self._fn(tf.cast(images, tf.float32)), tf.float32)

    def predict(self, images, batch_size: int = 256) -> np.ndarray:
        """Logits [N, C] of uint8 or float images [N, S, S, 3], in batches."""
        out = [
            self.logits(tf.convert_to_tensor(images[start : start + batch_size])).numpy()
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros([0, 0], np.float32)


def _pixel_input(signature):
    """The (name, spec) of a signature's only input if it is float [B, H, W, 3]."""
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        return None
    ((name, spec),) = kwargs.items()
    if not spec.dtype.is_floating or spec.shape.rank != 4 or spec.shape[-1] != 3:
        return None
    return name, spec


def _logits_key(signature, signature_name, path):
    outputs = signature.structured_outputs
    if "logits" in outputs:
        return "logits"
    if len(outputs) == 1:
        return next(iter(outputs))
    raise ConfigError(
        f"--model={path!r}: signature {signature_name!r} has outputs {sorted(outputs)}; "
        f"expected one named 'logits' or a single output"
    )


def _custom_gradient_types(function) -> set[str]:
    """`_gradient_op_type` marks of the ops in a concrete function and the functions it calls."""
    graph_def = function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for library_function in graph_def.library.function:
        nodes.extend(library_function.node_def)
    return {
        node.attr["_gradient_op_type"].s.decode()
        for node in nodes
        if "_gradient_op_type" in node.attr
    }


def _pass_through(op, *grads):
    return list(grads)


def differentiate_recorded_ops(function) -> list[str]:
    """Lets gradients through custom-gradient ops whose gradient was not saved.

    `tf.custom_gradient` (Keras' swish, for one) ties its outputs with an
    IdentityN op marked with a gradient name. A SavedModel written with
    `SaveOptions(experimental_custom_gradients=False)`, as our export does,
    keeps the mark but not the function, and any gradient then fails. The
    forward ops are in the graph, so registering IdentityN's own gradient
    (pass-through) under the missing names differentiates the recorded
    computation: the same derivative, computed from the forward ops.

    Returns:
      The gradient names that were registered (empty when none was missing).
    """
    registered = []
    for name in sorted(_custom_gradient_types(function)):
        try:
            tf.RegisterGradient(name)(_pass_through)
        except KeyError:  # registered already: by TF, the loader, or an earlier call
            continue
        registered.append(name)
    return registered


def _reaches_input(fn, spec) -> str | None:
    """None when the gradient of the output reaches the input; else why not."""
    size = [1] + [d if d is not None else 8 for d in spec.shape[1:]]
    probe = tf.fill(size, tf.constant(127.0, spec.dtype))
    try:
        with tf.GradientTape() as tape:
            tape.watch(probe)
            loss = tf.reduce_sum(fn(probe))
        gradient = tape.gradient(loss, probe)
    except (LookupError, TypeError) as e:
        # TypeError "... is out of scope": this process exported the model, so
        # its custom-gradient names point at the exporter's own functions.
        return f"its gradient fails here ({str(e).splitlines()[0][:160]})"
    return None if gradient is not None else "its output has no gradient with respect to it"


def load_served_model(path: str, signature: str | None = None, name: str | None = None):
    """Loads a SavedModel folder as a ServedModel (see the module docstring).

    Raises:
      FileNotFoundError: `path` is not a SavedModel folder.
      ConfigError: no signature fits (the message lists what it has).
    """
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(
            f"--model={path!r} is not a SavedModel folder (no saved_model.pb in it)"
        )
    loaded = tf.saved_model.load(path)
    available = dict(loaded.signatures)
    if signature is not None and signature not in available:
        raise ConfigError(
            f"--signature={signature!r} is not in {path!r}; it has {sorted(available)}"
        )
    order = [signature] if signature else list(PREFERRED_SIGNATURES)
    order += [s for s in sorted(available) if s not in order and not signature]
    fallback = None
    for candidate in order:
        if candidate not in available:
            continue
        sig = available[candidate]
        found = _pixel_input(sig)
        if found is None:
            continue
        input_name, spec = found
        key = _logits_key(sig, candidate, path)
        differentiate_recorded_ops(sig)

        def fn(images, sig=sig, input_name=input_name, key=key, dtype=spec.dtype):
            return sig(**{input_name: tf.cast(images, dtype)})[key]

        size = (
            spec.shape[1] if spec.shape[1] is not None and spec.shape[1] == spec.shape[2] else None
        )
        served = ServedModel(
            fn,
            name or os.path.basename(os.path.normpath(path)),
            path,
            signature=candidate,
            image_size=size,
            why_not_differentiable=_reaches_input(fn, spec),
        )
        # Keep the model alive: the signature functions hold weak references.
        served._loaded = loaded
        if served.differentiable:
            return served
        fallback = fallback or served
    if fallback is not None:
        return fallback
    described = {
        s: {
            k: (v.dtype.name, v.shape.as_list()) for k, v in f.structured_input_signature[1].items()
        }
        for s, f in available.items()
    }
    raise ConfigError(
        f"--model={path!r}: no signature takes one float32 image batch [B, H, W, 3] in 0-255 "
        f"and returns logits; it has {described}"
    )


def as_served_model(model, name: str | None = None, signature: str | None = None) -> ServedModel:
    """A ServedModel from a SavedModel path, a Keras model, or a ServedModel."""
    if isinstance(model, ServedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_served_model(os.fspath(model), signature, name)
    import keras

    if isinstance(model, keras.Model):
        shape = model.input_shape
        size = shape[1] if shape[1] is not None and shape[1] == shape[2] else None
        # One traced graph instead of eager layer calls: PGD calls it dozens of times.
        call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return ServedModel(call, name or model.name, "keras", image_size=size)
    if callable(model):
        return ServedModel(model, name or "model", "callable")
    raise ConfigError(f"cannot evaluate {model!r}: expected a SavedModel path or a Keras model")
