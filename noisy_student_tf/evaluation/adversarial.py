"""White-box attacks through a model's gradients: FGSM and PGD, eps in 0-255 pixels.

Noisy Student, section 3.3 / Figure 7: FGSM (Goodfellow et al. 2015,
arXiv 1412.6572) at eps = 1 ... 16 on 0-255 pixels, and PGD (Madry et al.
2018, arXiv 1706.06083) with 10 iterations. Both maximise the cross-entropy
of the true label inside the L-inf ball of radius eps around the image,
clipped to valid pixels [0, 255]. The images stay float (not re-rounded to
uint8) so the attack sees exactly the pixels it optimised.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from noisy_student_tf.errors import ConfigError

PAPER_EPS = (1, 2, 4, 8, 16)  # Figure 7 of the paper
PGD_STEPS = 10  # paper, section 3.3 ("PGD with 10 iterations")
PGD_STEP_FACTOR = 2.5  # step = 2.5 eps / steps (Madry et al., appendix), when not given


def check_eps(eps) -> list[float]:
    values = [float(e) for e in eps]
    bad = [e for e in values if not 0 <= e <= 255]
    if bad:
        raise ConfigError(f"--eps values must be pixel units in [0, 255]; got {bad}")
    return values


def _gradient_sign(logits_fn, images, labels):
    with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.keras.losses.sparse_categorical_crossentropy(
            labels, logits_fn(images), from_logits=True
        )
    gradient = tape.gradient(loss, images)
    if gradient is None:
        raise ConfigError(
            "the model's gradient does not reach its input pixels, so it cannot be attacked; "
            "export a signature without rounding (see docs/evaluation.md) or pass --eps= "
        )
    return tf.sign(gradient)


def fgsm(logits_fn, images, labels, eps: float) -> tf.Tensor:
    """x + eps * sign(grad_x CE(f(x), y)), clipped to [0, 255]; float32 [B, H, W, 3]."""
    x = tf.cast(images, tf.float32)
    if eps == 0:
        return x
    return tf.clip_by_value(x + eps * _gradient_sign(logits_fn, x, labels), 0.0, 255.0)


def pgd(logits_fn, images, labels, eps: float, steps=PGD_STEPS, step_size=None, seed=0):
    """Projected gradient ascent from a random start in the eps-ball; float32 images.

    `step_size` in pixels; None uses 2.5 * eps / steps. The start is drawn
    with a stateless key from `seed` (an int or an int pair), so a rerun
    gives the same images.
    """
    x = tf.cast(images, tf.float32)
    if eps == 0 or steps < 1:
        return x
    step = PGD_STEP_FACTOR * eps / steps if not step_size else float(step_size)
    key = [seed, 0] if np.ndim(seed) == 0 else seed
    noise = tf.random.stateless_uniform(tf.shape(x), key, -eps, eps)
    adv = tf.clip_by_value(x + noise, 0.0, 255.0)
    for _ in range(steps):
        adv = adv + step * _gradient_sign(logits_fn, adv, labels)
        adv = tf.clip_by_value(tf.clip_by_value(adv, x - eps, x + eps), 0.0, 255.0)
    return adv


def attack_accuracy(
    logits_fn, images, labels, eps_list, attack="fgsm", batch_size=128, seed=0, **pgd_options
) -> dict:
    """{eps: accuracy on the attacked images} for FGSM or PGD.

    Args:
      logits_fn: float32 pixels [B, S, S, 3] -> logits [B, C], differentiable.
      images: uint8 or float [N, S, S, 3]; labels int [N].
      eps_list: radii in 0-255 pixel units.
      attack: "fgsm" or "pgd"; `pgd_options` (steps, step_size) go to `pgd`.
      seed: PGD's random starts; batch b uses the key (seed, b's first index).
    """
    if attack not in ("fgsm", "pgd"):
        raise ConfigError(f"attack must be 'fgsm' or 'pgd', got {attack!r}")
    result = {}
    for eps in check_eps(eps_list):
        correct = 0
        for start in range(0, len(images), batch_size):
            x = tf.convert_to_tensor(images[start : start + batch_size])
            y = tf.convert_to_tensor(np.asarray(labels[start : start + batch_size], np.int64))
            if attack == "fgsm":
                adv = fgsm(logits_fn, x, y, eps)
            else:
                adv = pgd(logits_fn, x, y, eps, seed=[seed, start], **pgd_options)
            predicted = tf.argmax(logits_fn(adv), axis=1)
            correct += int(tf.reduce_sum(tf.cast(predicted == y, tf.int32)))
        result[eps] = correct / max(len(images), 1)
    return result
