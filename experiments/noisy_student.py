"""Runs the full Noisy Student loop: teacher, then students, on one config.

  python experiments/noisy_student.py [--config=experiments/configs/digits.py]
      [--config.seed=1] [--workdir=runs/digits]

Prints a table of test accuracy per model and writes results.json,
accuracy.png, per-iteration checkpoints and selection manifests, and the
final model's SavedModel into --workdir.
"""

import os
import time

from absl import flags, logging

from noisy_student_tf import cli
from noisy_student_tf.data import load_source
from noisy_student_tf.training import get_strategy, loop

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "digits.py")
_CONFIG = cli.define_config_file("config", _DEFAULT_CONFIG, "ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/noisy_student", "Output folder.")


def main(argv):
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    start = time.time()
    loop.validate_config(config)  # fail on bad settings before loading data
    strategy = get_strategy(config.strategy, config.tpu_address)  # before other TF ops
    loop.validate_config(config, strategy.num_replicas_in_sync)
    data = load_source(config.data)
    results = loop.run(config, _WORKDIR.value, data, strategy)
    print()
    print(loop.format_table(results["models"]))
    print(
        f"\nwrote {os.path.join(_WORKDIR.value, 'results.json')} "
        f"({time.time() - start:.0f} s in all)"
    )


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    cli.run(main)
