"""A SavedModel's pixels -> logits signature, found and made differentiable.

What every reader of a SavedModel needs (labeling, the loop's
`teacher_checkpoint`, the evaluation's FGSM and PGD attacks) is one signature
that maps float32 pixels [B, H, W, 3] in [0, 255] to logits [B, C], and, for
the attacks, one whose gradient reaches that input. It is found as:

  1. the signature asked for, when given;
  2. else the first of `serve`, `serve_images_float`, `serving_default`,
     then any other signature, that has exactly one float input of rank 4
     with 3 channels and whose gradient reaches that input (the first that
     fits when none does);
  3. its output `logits`, else its only output (e.g. `output_0`).

Our exports (evaluation/export.py) resolve to `serve`: the model alone, at
its fixed size S. `serve_images_float` takes any size but rounds to uint8
first, which has no gradient, so it is used only when no differentiable
signature exists. Only TensorFlow is needed: no class of this package has to
be importable, so a SavedModel written by other code with such a signature
works too. models/artifact.py wraps the result for its callers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from noisy_student_tf.errors import ConfigError

PREFERRED_SIGNATURES = ("serve", "serve_images_float", "serving_default")


@dataclasses.dataclass
class Signature:
    """The signature chosen in a loaded SavedModel.

    Attributes:
      loaded: the loaded object; kept alive with the function (signature
        functions hold weak references to its variables).
      name: the signature's name.
      fn: float pixels [B, H, W, 3] -> logits [B, C].
      logits_key: the output `fn` returns.
      image_size: the side its input needs, or None for any size.
      num_classes: its logits' width, or None when the signature leaves it open.
      why_not_differentiable: None when gradients reach the pixels, else why not.
    """

    loaded: object
    name: str
    fn: Callable[[tf.Tensor], tf.Tensor]
    logits_key: str
    image_size: int | None
    num_classes: int | None
    why_not_differentiable: str | None


def _pixel_input(signature):
    """The (name, spec) of a signature's only input if it is float [B, H, W, 3]."""
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        return None
    ((name, spec),) = kwargs.items()
    if not spec.dtype.is_floating or spec.shape.rank != 4 or spec.shape[-1] != 3:
        return None
    return name, spec


def _logits_key(signature, signature_name, where):
    outputs = signature.structured_outputs
    if "logits" in outputs:
        return "logits"
    if len(outputs) == 1:
        return next(iter(outputs))
    raise ConfigError(
        f"{where}: signature {signature_name!r} has outputs {sorted(outputs)}; "
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


def _candidate(loaded, available, name, where) -> Signature | None:
    """`name` as a Signature if it takes pixels; None if its input does not fit."""
    sig = available[name]
    found = _pixel_input(sig)
    if found is None:
        return None
    input_name, spec = found
    key = _logits_key(sig, name, where)
    differentiate_recorded_ops(sig)

    def fn(images, sig=sig, input_name=input_name, key=key, dtype=spec.dtype):
        return sig(**{input_name: tf.cast(images, dtype)})[key]

    square = spec.shape[1] is not None and spec.shape[1] == spec.shape[2]
    classes = sig.structured_outputs[key].shape
    return Signature(
        loaded,
        name,
        fn,
        key,
        int(spec.shape[1]) if square else None,
        int(classes[-1]) if classes.rank and classes[-1] is not None else None,
        _reaches_input(fn, spec),
    )


def find_signature(path: str, signature: str | None = None, where: str | None = None) -> Signature:
    """Loads the SavedModel folder `path` and picks its signature (module docstring).

    Args:
      signature: the signature to use; None picks one.
      where: how errors name the model (a flag and its value).

    Raises:
      ConfigError: `signature` is not in the model, or no signature fits (the
        message lists what it has).
    """
    where = where or repr(path)
    loaded = tf.saved_model.load(path)
    available = dict(loaded.signatures)
    if signature is not None and signature not in available:
        raise ConfigError(
            f"--signature={signature!r} is not in {path!r}; it has {sorted(available)}"
        )
    order = [signature] if signature else list(PREFERRED_SIGNATURES)
    order += [s for s in sorted(available) if s not in order and not signature]
    fallback = None
    for name in order:
        found = _candidate(loaded, available, name, where) if name in available else None
        if found is not None and found.why_not_differentiable is None:
            return found
        fallback = fallback or found
    if fallback is not None:
        return fallback
    described = {
        s: {
            k: (v.dtype.name, v.shape.as_list()) for k, v in f.structured_input_signature[1].items()
        }
        for s, f in available.items()
    }
    raise ConfigError(
        f"{where}: no signature takes one float32 image batch [B, H, W, 3] in 0-255 "
        f"and returns logits; it has {described}"
    )
