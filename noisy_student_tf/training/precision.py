"""Numeric precision and XLA compilation, resolved per device kind.

`config.precision` and `config.jit_compile` default to "auto", which picks
what each accelerator is fast at:

  device  precision                          jit_compile
  tpu     mixed_bfloat16                     True   (TPUs only run XLA)
  gpu     mixed_float16 + loss scaling       True
  cpu     float32                            False

The TPU row is the official EfficientNet / Noisy Student setting
(tensorflow/tpu models/official/efficientnet main.py and noisystudent
main.py: `use_bfloat16` on TPU). On GPUs float16 needs loss scaling, as
bfloat16 does not: its 5 exponent bits flush small gradients to zero
(Micikevicius et al. 2018, "Mixed Precision Training"). On CPU both XLA and
the 16-bit types slowed the small EfficientNet down several times when
measured here (docs/results.md), so auto keeps float32 without XLA there.

`deterministic=True` (TF op determinism) and XLA do not go together: Keras
quietly compiles without XLA when op determinism is on (`model_supports_jit`
in keras/src/trainers/trainer.py), so "auto" resolves to no XLA there, and
an explicit `jit_compile=True`, or a TPU, is a ConfigError rather than a
setting that is silently dropped.

Under a mixed policy the weights, batch-norm statistics and the moving
average stay float32 (Keras keeps variables in the policy's variable dtype)
and the logits and losses are float32: EfficientNet's classifier is a
float32 layer, and NoisyStudent casts logits and targets before the
cross-entropy, so any student is safe.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from noisy_student_tf.errors import ConfigError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT_CHOICES = ("auto", True, False)
DEVICE_KINDS = ("cpu", "gpu", "tpu")

# device kind -> (precision, jit_compile) that "auto" picks; see module doc.
AUTO = {
    "tpu": ("mixed_bfloat16", True),
    "gpu": ("mixed_float16", True),
    "cpu": ("float32", False),
}


class Precision(NamedTuple):
    """A resolved setting: the Keras dtype policy name and whether to use XLA."""

    policy: str
    jit_compile: bool

    @property
    def loss_scaling(self) -> bool:
        """float16 gradients underflow without a loss scale; bfloat16's do not."""
        return self.policy == "mixed_float16"


def _parse_jit(value) -> bool | str:
    """True/False/"auto", also as the strings a `--config.jit_compile=` flag gives."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[text]
    raise ConfigError(f"jit_compile={value!r} is not one of auto, True, False")


def resolve(
    precision: str = "auto",
    jit_compile="auto",
    device_kind: str = "cpu",
    deterministic: bool = False,
) -> Precision:
    """The policy and XLA choice for `device_kind`; a pure function of its arguments.

    Args:
      precision: one of PRECISIONS; "auto" takes the device's row of AUTO.
      jit_compile: True, False or "auto" (strings "true"/"false" accepted,
        case-insensitive); "auto" takes the device's row of AUTO, or no XLA
        when `deterministic`.
      device_kind: "cpu", "gpu" or "tpu" (see `device_kind`).
      deterministic: whether TF op determinism will be on (config.deterministic).

    Raises:
      ConfigError: an unknown value, jit_compile=False on a TPU (TPUs only
        run XLA-compiled steps), or XLA together with `deterministic`,
        naming the config key.
    """
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"device kind {device_kind!r} is not one of {DEVICE_KINDS}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {PRECISIONS}")
    jit = _parse_jit(jit_compile)
    auto_policy, auto_jit = AUTO[device_kind]
    policy = auto_policy if precision == "auto" else precision
    if deterministic and (jit is True or device_kind == "tpu"):
        raise ConfigError(
            "deterministic=True cannot run XLA-compiled steps (Keras turns XLA off under TF "
            "op determinism, and TPUs only run XLA): set jit_compile=False (or auto) off TPU, "
            "or deterministic=False"
        )
    jit = (False if deterministic else auto_jit) if jit == "auto" else jit
    if device_kind == "tpu" and not jit:
        raise ConfigError("jit_compile=False cannot run on a TPU; use auto or True")
    return Precision(policy, jit)


def resolve_config(config, device_kind: str) -> Precision:
    """`resolve` on a config's keys; keys missing from an older config count as "auto"."""
    return resolve(
        config.get("precision", "auto"),
        config.get("jit_compile", "auto"),
        device_kind,
        bool(config.get("deterministic", False)),
    )


def device_kind(strategy: tf.distribute.Strategy | None = None) -> str:
    """ "tpu", "gpu" or "cpu": where `strategy` (default: the current one) computes."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return "tpu"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TF places ops on a GPU if there is one
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    return "gpu" if any("GPU" in d.upper() for d in devices) else "cpu"


def configure(config, strategy: tf.distribute.Strategy | None = None) -> Precision:
    """Resolves `config.precision` / `config.jit_compile` and sets the global policy.

    Call it before any model is built: a layer takes the global policy when
    it is created. Keys missing from an older config count as "auto".
    """
    resolved = resolve_config(config, device_kind(strategy))
    keras.mixed_precision.set_global_policy(resolved.policy)
    return resolved


def wrap_optimizer(
    optimizer: keras.optimizers.Optimizer, resolved: Precision
) -> keras.optimizers.Optimizer:
    """Adds dynamic loss scaling under mixed_float16; other policies pass through.

    Done explicitly rather than through compile()'s `auto_scale_loss`,
    which only looks at the wrapper's own dtype policy.
    """
    if resolved.loss_scaling and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
