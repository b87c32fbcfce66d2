"""The experiment configs, as importable modules (big_vision's layout).

Each module has `get_config(arg)` returning an `ml_collections.ConfigDict`
and a docstring with its command, expected result and runtime. `digits` is
the base every other config starts from (imported, never loaded by path).

  from noisy_student_tf import configs
  config = configs.get("cifar10_4k:cpu")
"""

from __future__ import annotations

import importlib

from noisy_student_tf.errors import ConfigError

# name -> what it is; the module noisy_student_tf.configs.<name> holds it.
NAMES = {
    "digits": "scikit-learn's bundled digits, the CPU default (`:smoke`)",
    "cifar10_4k": "CIFAR-10 with 4,000 labels (`:cpu`, `:smoke`)",
    "imagenet": "the paper's ImageNet configs (`:b0` ... `:b7`, `:l2`; `,smoke`)",
    "svhn": "SVHN with the official task settings (`:smoke`)",
}


def module(name: str):
    """The config module called `name` (one of NAMES)."""
    if name not in NAMES:
        raise ConfigError(f"unknown config {name!r}; expected one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def get(spec: str):
    """`"name"` or `"name:arg"` -> that config's `get_config(arg)`."""
    name, _, arg = spec.partition(":")
    return module(name).get_config(arg or None)
