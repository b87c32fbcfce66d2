"""SavedModel export of a trained model, and loading it back for evaluation.

The export holds one `serve` signature: float32 pixels [B, H, W, 3] in
[0, 255] -> logits [B, C], inference mode. Anything that reads SavedModels
(TF Serving, `tf.saved_model.load`, this module) can evaluate it without
this package's Python code.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def export_saved_model(model: keras.Model, path: str) -> str:
    """Writes `model` (inference mode) as a TF SavedModel at `path`."""
    height, width, channels = model.input_shape[1:]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32)],
    )
    archive.write_out(path, verbose=False)
    return path


def load_saved_model(path: str):
    """Returns a callable images -> logits numpy from an exported SavedModel."""
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serve"]

    def predict(images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start : start + batch_size], tf.float32)
            result = serve(batch)
            out.append(next(iter(result.values())).numpy())
        return np.concatenate(out)

    return predict
