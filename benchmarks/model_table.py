"""Measures every EfficientNet variant: parameters, FLOPs, defaults.

Usage:
    python benchmarks/model_table.py            # all variants
    python benchmarks/model_table.py efficientnet-b0 efficientnet-b1

Builds each registered variant with 1000 classes at its default resolution on
CPU (no forward pass; all nine take about 40 s and 3 GB of memory, most of
it L2) and prints a markdown table, then one JSON line with the
same figures. For B0-B7 it also builds `keras.applications.EfficientNetBx
(weights=None)` and reports whether the parameter counts are equal.

FLOPs are counted analytically from the built model's layers: the
multiply-adds of every Conv2D, DepthwiseConv2D and Dense layer at batch size 1
(output positions x kernel size x input channels per group x output channels).
This is the convention of the EfficientNet paper's "FLOPs" column (B0: 0.39B);
batch norm, activations, squeeze-excitation scaling, pooling and residual adds
are left out. Not a timing benchmark.
"""

import gc
import json
import sys

import keras

from noisy_student_tf.models import VARIANTS, build_efficientnet
from noisy_student_tf.models.weights import KERAS_BUILDERS


def _spatial(shape):
    return shape[1] * shape[2]


def count_multiply_adds(model):
    """Multiply-adds of conv and dense layers for one image.

    Args:
        model: a built functional keras.Model with static input size.

    Returns:
        int, multiply-adds per image.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, channels, multiplier = layer.kernel.shape
            total += _spatial(layer.output.shape) * kh * kw * channels * multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            total += _spatial(layer.output.shape) * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += cin * cout
    return total


def measure(name):
    width, depth, resolution, dropout = VARIANTS[name]
    model = build_efficientnet(name, num_classes=1000)
    row = {
        "variant": name,
        "width": width,
        "depth": depth,
        "params": model.count_params(),
        "flops": count_multiply_adds(model),
        "resolution": resolution,
        "dropout": dropout,
        "keras_params": None,
    }
    del model
    if name in KERAS_BUILDERS:
        reference = KERAS_BUILDERS[name](weights=None, classifier_activation=None)
        row["keras_params"] = reference.count_params()
        del reference
    keras.backend.clear_session()
    gc.collect()
    return row


def markdown(rows):
    lines = [
        "| variant | width | depth | params | FLOPs (multiply-adds) | "
        "default resolution | default dropout | = keras.applications params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = (
            "n/a"
            if r["keras_params"] is None
            else "yes"
            if r["keras_params"] == r["params"]
            else f"no ({r['keras_params']:,})"
        )
        lines.append(
            f"| {r['variant']} | {r['width']} | {r['depth']} | "
            f"{r['params']:,} ({r['params'] / 1e6:.1f}M) | "
            f"{r['flops'] / 1e9:.2f}B | {r['resolution']} | {r['dropout']} | "
            f"{same} |"
        )
    return "\n".join(lines)


def main(argv):
    names = argv[1:] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variant(s) {unknown}; valid: {list(VARIANTS)}")
    rows = [measure(name) for name in names]
    print(markdown(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv)
