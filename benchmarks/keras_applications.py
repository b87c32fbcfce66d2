r"""Our EfficientNet-B0 against keras.applications' EfficientNetB0, forward and train step.

  python benchmarks/keras_applications.py               # 32 and 224 px, 12 rounds
  python benchmarks/keras_applications.py --quick       # 32 px, 3 rounds: a smoke check

Same variant (B0, 1000 classes as keras.applications builds it, random
weights), same batch of uint8-range float images, same optimizer (SGD with
momentum), plain softmax cross-entropy, both compiled the same way
(graph mode, no XLA: on CPU XLA runs this step about 10x slower). At 32 px
ours is built as the standard variant too (not `small_image`), so the two
networks compute the same shapes. Per round each model runs one forward
pass (`predict_on_batch`) and one train step (`train_on_batch`), so load
from other processes hits both alike; the ratios are ours over
keras.applications' time per call, median and interquartile range over
the rounds (benchmarks/rounds.py), with the load average beside them.
Below 1 means ours is faster. Issue 22's target: within +-5% (median).

Prints one JSON line.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rounds  # noqa: E402  (benchmarks/rounds.py: the script's folder is on sys.path)

_SIZES = flags.DEFINE_list("sizes", ["32", "224"], "Image sides.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 12, "Timed rounds (at least rounds.MIN_ROUNDS).")
_QUICK = flags.DEFINE_bool("quick", False, "32 px, 3 rounds after 1 warm-up: a smoke check.")

CLASSES = 1000  # keras.applications' EfficientNetB0 head


def _compiled(model):
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def _models(size: int):
    """(ours, keras.applications'), both B0 with logits out and random weights."""
    import keras

    from noisy_student_tf.models import build_efficientnet

    keras.utils.set_random_seed(0)
    ours = build_efficientnet("efficientnet-b0", CLASSES, input_shape=(size, size, 3))
    theirs = keras.applications.EfficientNetB0(
        weights=None, input_shape=(size, size, 3), classes=CLASSES, classifier_activation=None
    )
    return _compiled(ours), _compiled(theirs)


def compare(size: int, batch: int, num_rounds: int, warmup: int) -> dict:
    """Forward and train-step ratios (ours / keras.applications') at one size."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, CLASSES, batch)
    ours, theirs = _models(size)
    times = rounds.alternate(
        {
            "ours_forward": lambda: ours.predict_on_batch(images),
            "keras_forward": lambda: theirs.predict_on_batch(images),
            "ours_train": lambda: ours.train_on_batch(images, labels),
            "keras_train": lambda: theirs.train_on_batch(images, labels),
        },
        num_rounds,
        warmup,
    )
    return {
        "params": {"ours": ours.count_params(), "keras": theirs.count_params()},
        "forward_ratio": rounds.ratio(times["ours_forward"], times["keras_forward"]),
        "train_ratio": rounds.ratio(times["ours_train"], times["keras_train"]),
        "ms": {name: rounds.spread([1000 * t for t in ts], 1) for name, ts in times.items()},
    }


def main(argv):
    del argv
    sizes = [32] if _QUICK.value else [int(s) for s in _SIZES.value]
    num_rounds, warmup = (3, 1) if _QUICK.value else (max(_ROUNDS.value, rounds.MIN_ROUNDS), 2)
    result = {
        "benchmark": "keras_applications",
        "batch_size": _BATCH.value,
        "load_average_before": rounds.load_average(),
        **{f"{size}px": compare(size, _BATCH.value, num_rounds, warmup) for size in sizes},
        "load_average_after": rounds.load_average(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
