"""The optional last stage: fine-tuning the final student at test resolution.

Paper, section 3.1: after training at 475 px, EfficientNet-L0/L1/L2 were
"finetuned with a larger resolution for 1.5 epochs on unaugmented labeled
images" with the shallow layers fixed (FixRes, Touvron et al. 2019). The
official main.py did it with --init_model_path (start from the student),
--remove_aug (train images get the eval center crop), --fix_layer_num=K (the
stem and the first K blocks frozen, their batch norm in inference mode) and
--train_last_step_num (the learning rate continues as the last steps of the
main schedule). The `fine_tune` config block holds those settings.

Here: the student's architecture is rebuilt at `fine_tune.image_size`, takes
the student's weights (an EfficientNet's weights do not depend on the input
size), the stem and the first `frozen_blocks` blocks are frozen, and it
trains on the labeled images only, decoded at the new size with the eval
view. Frozen layers run in inference mode even in a training step, as the
official frozen blocks were called with training=False: a frozen Keras 3
BatchNormalization uses its moving statistics, and a frozen StochasticDepth
keeps every branch (models/layers.py).
"""

from __future__ import annotations

import copy

import keras

from noisy_student_tf.errors import ConfigError


def enabled(config) -> bool:
    block = config.get("fine_tune")
    return block is not None and bool(block.enabled)


def validate(config, streamed: bool) -> None:
    """Raises ConfigError for a fine_tune block the loop cannot run."""
    if not enabled(config):
        return
    block = config.fine_tune
    if block.image_size < 1:
        raise ConfigError(f"fine_tune.image_size must be >= 1, got {block.image_size}")
    if block.epochs <= 0:
        raise ConfigError(f"fine_tune.epochs must be > 0, got {block.epochs}")
    if block.frozen_blocks < 0:
        raise ConfigError(f"fine_tune.frozen_blocks must be >= 0, got {block.frozen_blocks}")
    if block.get("unlabeled_ratio", 0):
        raise ConfigError(
            "fine_tune.unlabeled_ratio must be 0: the stage trains on labeled images only "
            "(paper section 3.1)"
        )
    if not streamed:
        raise ConfigError(
            "fine_tune needs stream mode (data.labeled, data.test): the labeled images are "
            f"decoded again at fine_tune.image_size={block.image_size}, which in-memory "
            "arrays at data.image_size cannot give"
        )


def model_config(config):
    """The student's model block with the fine-tuning stage's input view (no augmentation)."""
    block = copy.deepcopy(config.student)
    block.preprocess = config.fine_tune.preprocess
    block.randaugment_magnitude = 0
    return block


def block_prefixes(model: keras.Model) -> list[str]:
    """The MBConv blocks' layer-name prefixes ("block1a_", ...), in network order."""
    prefixes = []
    for layer in model.layers:
        name = layer.name
        if name.startswith("block") and "_" in name:
            prefix = name.split("_", 1)[0] + "_"
            if prefix not in prefixes:
                prefixes.append(prefix)
    return prefixes


def freeze_shallow_layers(model: keras.Model, frozen_blocks: int) -> int:
    """Freezes the stem and the first `frozen_blocks` blocks; returns how many layers.

    Official --fix_layer_num semantics: the stem and the first K blocks keep
    their weights and run in inference mode (batch norm on its moving
    statistics, no stochastic depth) during training steps.
    """
    blocks = block_prefixes(model)
    if frozen_blocks > len(blocks):
        raise ConfigError(
            f"fine_tune.frozen_blocks={frozen_blocks} but the model has {len(blocks)} blocks"
        )
    frozen = tuple(blocks[:frozen_blocks])
    count = 0
    for layer in model.layers:
        if layer.name.startswith("stem") or (frozen and layer.name.startswith(frozen)):
            layer.trainable = False
            count += 1
    return count
