"""SavedModel export of a trained model, and loading it back for evaluation.

The export runs the model in inference mode and holds four signatures
(docs/serving.md shows how to call each one):

  serve               float32 pixels [B, S, S, 3] in [0, 255] at the model's
                      size S -> logits [B, C] (output key `output_0`). The
                      raw model, as earlier exports had it; the training
                      loop's `teacher_checkpoint`, the labeling tools and
                      `load_saved_model` read this one.
  serving_default     encoded JPEG/PNG strings [B] (input `image_bytes`) ->
                      named outputs. Each image is decoded and given the
                      evaluation view (`data.preprocess.eval_preprocess`).
  serve_images        uint8 pixels [B, H, W, 3] at any size (input `images`)
                      -> named outputs, after the same evaluation view.
  serve_images_float  the same for float pixels in [0, 255]; they are rounded
                      to uint8 first, because the evaluation view (and every
                      image our pipelines feed a model) is uint8.

Named outputs: `logits` [B, C] float32, `probabilities` [B, C] (softmax),
`top_k_classes` int32 [B, k], `top_k_probabilities` float32 [B, k] and, when
class names are given, `class_names` string [B, k] (the names of the top-k).

The evaluation view is built into the graph by calling `eval_preprocess`
itself, so a served model and our evaluation pipeline cannot drift apart, and
anything that reads SavedModels (TF Serving, `tf.saved_model.load`,
`saved_model_cli`) gets it without this package's Python code.

Uint8 and float pixels get two signatures rather than one float signature
with a cast because a signature has exactly one dtype per input: a uint8
caller would otherwise have to cast, and `serve_images` keeps uint8 inputs
bit-identical to what the pipeline feeds the model.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import keras
import tensorflow as tf

from noisy_student_tf import kill_points
from noisy_student_tf.data.preprocess import eval_preprocess, eval_resize_of
from noisy_student_tf.errors import ConfigError
from noisy_student_tf.manifests import TMP_MARK
from noisy_student_tf.models.artifact import open_model

# Top-5 is the second accuracy the paper reports on ImageNet (Table 2).
TOP_K = 5
BYTES_INPUT = "image_bytes"  # `_bytes` marks base64 inputs for Cloud AI Platform
IMAGES_INPUT = "images"
SIGNATURES = ("serve", "serving_default", "serve_images", "serve_images_float")


def _image_size(model: keras.Model) -> int:
    """The side S of a model taking [B, S, S, 3]; the eval view needs a fixed square."""
    shape = model.input_shape
    if (
        not isinstance(shape, tuple)
        or len(shape) != 4
        or shape[3] != 3
        or shape[1] is None
        or shape[1] != shape[2]
    ):
        raise ConfigError(
            f"export_saved_model needs a model with one fixed square RGB input "
            f"[B, S, S, 3]; model {model.name!r} has input shape {shape}"
        )
    return int(shape[1])


def _check_head(model, class_names, top_k):
    """Validates `class_names` and `top_k`; returns (k, names tuple or None)."""
    num_classes = int(model.output_shape[-1])
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"export_saved_model top_k must be a positive int; got {top_k!r}")
    if class_names is None:
        return min(top_k, num_classes), None
    if isinstance(class_names, (str, bytes)) or len(class_names) != num_classes:
        raise ConfigError(
            f"export_saved_model class_names must list one name per class "
            f"({num_classes} for model {model.name!r}); got {class_names!r:.200}"
        )
    return min(top_k, num_classes), tuple(str(name) for name in class_names)


def export_saved_model(
    model: keras.Model,
    path: str,
    class_names: Sequence[str] | None = None,
    top_k: int = TOP_K,
    small_image: bool | None = None,
    resize: str | None = None,
) -> str:
    """Writes `model` (inference mode) as a TF SavedModel at `path`.

    Args:
      model: pixels [B, S, S, 3] in [0, 255] -> logits [B, C], e.g. a
        `models.build_efficientnet` model with a fixed input size.
      path: the SavedModel folder to write.
      class_names: C names for the `class_names` output; None leaves it out.
      top_k: how many classes the top-k outputs hold (at most C).
      small_image: which evaluation view the image signatures apply (see
        `eval_preprocess`): True the small-image path (resize if needed),
        False the center crop + bicubic resize; None picks by the model's
        size, as the eval pipeline does. Pass the model config's
        `small_image` when it differs from that default.
      resize: the evaluation view's resize (`eval_preprocess`); None takes
        the model's own (`eval_resize_of`: "official" for a converted
        official checkpoint, whose view is then float32).

    The SavedModel is written to a temporary folder beside `path` and moved
    into place when complete (`_replace_folder`).

    Returns:
      `path`.

    Raises:
      ConfigError: the model's input is not a fixed square RGB image, or
        `class_names` / `top_k` do not fit its C classes.
    """
    size = _image_size(model)
    k, names = _check_head(model, class_names, top_k)
    resize = resize or eval_resize_of(model)
    # Custom gradients only matter to code that trains the loaded model;
    # tracing them took as long as the rest of the export (measured).
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tmp = f"{path.rstrip('/')}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    _write(model, _endpoints(model, size, k, names, small_image, resize), tmp, options)
    kill_points.kill_point("saved_model_written", path=path)
    _replace_folder(tmp, path)
    return path


def _replace_folder(tmp: str, path: str) -> None:
    """Moves the finished export `tmp` to `path`, replacing an older one.

    A kill leaves the old SavedModel, none (between the two steps; the loop
    exports again on its rerun) or the new one, never a mix of old variables
    and a new graph. A local folder moves with one rename; object stores
    (and TF's `ram://`) rename files, not folders, so there each file moves
    on its own with `saved_model.pb`, which readers look for, last.
    """
    try:
        tf.io.gfile.rmtree(path)
    except tf.errors.NotFoundError:  # nothing to replace (ram:// `exists` matches prefixes)
        pass
    if "://" not in path:
        tf.io.gfile.rename(tmp, path)
        return
    files = [os.path.join(d, f) for d, _, names in tf.io.gfile.walk(tmp) for f in names]
    files.sort(key=lambda f: os.path.basename(f) == "saved_model.pb")
    for source in files:
        target = os.path.join(path, source[len(tmp) :].lstrip("/"))
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.rename(source, target, overwrite=True)
    tf.io.gfile.rmtree(tmp)


def _endpoints(model, size: int, k: int, names, small_image, resize: str):
    """(name, function, input signature) of every serving signature `export_saved_model` writes."""
    view = tf.TensorSpec([size, size, 3], tf.float32 if resize == "official" else tf.uint8)

    # Traced once and called by every signature: tracing the Keras model is
    # most of an export's time.
    @tf.function(
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], autograph=False
    )
    def logits_of(pixels):
        return tf.cast(model(pixels, training=False), tf.float32)

    def named_outputs(pixels):
        logits = logits_of(tf.cast(pixels, tf.float32))
        probabilities = tf.nn.softmax(logits, axis=-1)
        top = tf.math.top_k(probabilities, k=k)
        outputs = {
            "logits": logits,
            "probabilities": probabilities,
            "top_k_classes": top.indices,
            "top_k_probabilities": top.values,
        }
        if names is not None:
            outputs["class_names"] = tf.gather(tf.constant(names), top.indices)
        return outputs

    def serve(images):
        return logits_of(images)

    def serving_default(image_bytes):
        # One image at a time: encoded images in a batch may differ in size.
        pixels = tf.map_fn(
            lambda encoded: eval_preprocess(encoded, size, small_image, resize),
            image_bytes,
            fn_output_signature=view,
        )
        return named_outputs(pixels)

    def serve_images(images):
        return named_outputs(eval_preprocess(images, size, small_image, resize))

    def serve_images_float(images):
        # The rounding the pipeline applies when it stores a resized image.
        pixels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)
        return named_outputs(eval_preprocess(pixels, size, small_image, resize))

    def spec(shape, dtype, name):
        return [tf.TensorSpec(shape, dtype, name=name)]

    endpoints = (
        ("serve", serve, spec([None, size, size, 3], tf.float32, IMAGES_INPUT)),
        ("serving_default", serving_default, spec([None], tf.string, BYTES_INPUT)),
        ("serve_images", serve_images, spec([None, None, None, 3], tf.uint8, IMAGES_INPUT)),
        (
            "serve_images_float",
            serve_images_float,
            spec([None, None, None, 3], tf.float32, IMAGES_INPUT),
        ),
    )
    return endpoints


def _write(model: keras.Model, endpoints, path: str, options) -> None:
    """Saves the model's variables and the endpoints' signatures to `path`.

    The object saved holds only what the signatures need: the model's
    variables (as `variables`, `trainable_variables` and
    `non_trainable_variables`) and one tf.function per endpoint, each also an
    attribute of the loaded object. Keras's `ExportArchive` saved the same,
    but first walked every object the model reaches to look for lookup tables
    (an EfficientNet has none): the digits student's export takes 0.81x the
    time without it (benchmarks/trace_time.py). It also imported
    `tensorflow.saved_model` by name inside that walk: TensorFlow never
    registers that name, so a process that had not imported it before
    searched the disk at the end of a long run and failed there with
    `ModuleNotFoundError` (issue 20).
    """
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.non_trainable_variables = list(model.non_trainable_variables)
    signatures = {}
    for name, fn, input_signature in endpoints:
        function = tf.function(fn, input_signature=input_signature, autograph=False)
        setattr(root, name, function)
        signatures[name] = function.get_concrete_function()
    # The TF variables the graphs read, tracked themselves: a TF1 loader
    # (`saved_model_cli run`, TF Serving) finds them by name in the graph.
    used = {id(v): v for f in signatures.values() for v in f.variables}
    root._all_variables = list(used.values())
    tf.saved_model.save(root, path, signatures=signatures, options=options)


def load_saved_model(path: str):
    """Returns a callable images -> logits numpy from an exported SavedModel.

    Uses the `serve` signature (through `models.open_model`): float32 pixels
    at the model's size, no preprocessing (the caller's images are already
    the evaluation view).
    """
    return open_model(path, signature="serve").predict
