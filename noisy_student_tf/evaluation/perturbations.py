"""ImageNet-P style stability: how often a prediction flips along a short sequence.

Hendrycks & Dietterich (ICLR 2019), section 3 and their CIFAR-10-P generator
(hendrycks/robustness, ImageNet-P/create_p/make_cifar_p.py): `translate`
shifts the image one pixel per frame (there 16 frames, -7 ... +8 px,
horizontally, zeros shifted in); `brightness` adds 0.015 per frame to the
HSV value (there 31 frames, -0.225 ... +0.225). We keep those per-frame
steps and use shorter sequences centered on the clean image (`frames`,
default 9: -4 ... +4 px, -0.06 ... +0.06), because the flip rate is a mean
over consecutive pairs and a few frames per image estimate it well on a
small sample. Sequences are deterministic (no RNG).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from noisy_student_tf.errors import ConfigError

TRANSLATE_STEP = 1  # pixels per frame, make_cifar_p.py
BRIGHTNESS_STEP = 0.015  # HSV value per frame, make_cifar_p.py: (i - 15) * 1.5 / 100
FRAMES = 9


def _shift(images, dx):
    """Horizontal shift by dx pixels, zeros shifted in (torchvision affine's fill)."""
    if dx == 0:
        return images
    width = images.shape[2]
    zeros = tf.zeros_like(images[:, :, : abs(dx)])
    if dx > 0:
        return tf.concat([zeros, images[:, :, : width - dx]], axis=2)
    return tf.concat([images[:, :, -dx:], zeros], axis=2)


def _brighten(images, delta):
    hsv = tf.image.rgb_to_hsv(tf.cast(images, tf.float32) / 255.0)
    value = tf.clip_by_value(hsv[..., 2:] + delta, 0.0, 1.0)
    rgb = tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], -1))
    return tf.cast(tf.round(rgb * 255.0), tf.uint8)


def _offsets(frames):
    return [i - (frames - 1) // 2 for i in range(frames)]


def translate(images, frames: int = FRAMES) -> list[tf.Tensor]:
    """`frames` uint8 batches [B, H, W, 3]: shifts -k ... +k pixels."""
    images = tf.convert_to_tensor(images)
    return [_shift(images, TRANSLATE_STEP * o) for o in _offsets(frames)]


def brightness(images, frames: int = FRAMES) -> list[tf.Tensor]:
    """`frames` uint8 batches: HSV value -k ... +k steps of 0.015."""
    images = tf.convert_to_tensor(images)
    return [images if o == 0 else _brighten(images, BRIGHTNESS_STEP * o) for o in _offsets(frames)]


PERTURBATIONS = {"translate": translate, "brightness": brightness}


def check_names(names) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise ConfigError(
            f"unknown perturbation(s) {unknown}; expected names from {list(PERTURBATIONS)}"
        )
    return names


def sequence_predictions(predict, images, name: str, frames: int = FRAMES, batch_size: int = 128):
    """Predicted classes [N, frames] of each image's perturbation sequence.

    Args:
      predict: uint8 images [B, H, W, 3] -> logits [B, C] (numpy).
      images: uint8 [N, H, W, 3].
    """
    check_names([name])
    if frames < 2:
        raise ConfigError(f"perturbation frames must be >= 2, got {frames}")
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        sequence = PERTURBATIONS[name](batch, frames)
        out.append(np.stack([predict(frame).argmax(axis=1) for frame in sequence], axis=1))
    return np.concatenate(out)
