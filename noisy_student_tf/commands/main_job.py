r"""Runs the full Noisy Student loop: teacher, then students, on one config.

  noisy-student [--config=digits] [--config.seed=1] [--workdir=runs/digits]
  noisy-student --config=cifar10_4k:cpu --workdir=runs/cifar10_4k_cpu
  # a config file of your own (get_config(arg) -> ConfigDict), or a clone's:
  noisy-student --config=my_config.py:arg --workdir=...

  # streamed: labeled, unlabeled and test sets as shard folders/globs or tfds splits
  noisy-student --config.data.labeled=/data/in1k/train-* \
      --config.data.unlabeled=/data/pool --config.data.test=tfds:imagenet2012:validation \
      --config.data.num_classes=1000 --config.data.image_size=224 --workdir=runs/at_scale
  # one student from labeled shards + a noisy-student-filter-balance output folder
  noisy-student --config.data.labeled=... --config.data.test=... \
      --config.data.pseudo_labeled=/data/pseudo --config.num_iterations=1 --workdir=...

--config takes a packaged config by name (`digits`, `cifar10_4k:cpu`,
`imagenet:l2,smoke`; noisy_student_tf/configs/) or a config file path
(`experiments/configs/digits.py:smoke`). From a clone,
`python experiments/noisy_student.py` and `python -m noisy_student_tf` take
the same flags. `--version` prints the version.

Prints a table of test accuracy per model and writes results.json,
accuracy.png, per-iteration checkpoints and selection manifests, and the
final model's SavedModel into --workdir. Rerunning the same command with the
same --workdir resumes a killed run (finished stages are reused, a model
killed in fit() continues from its last checkpoint, train.save_every_steps).
"""

import os
import time

from absl import flags, logging

from noisy_student_tf import cli, loop
from noisy_student_tf.data import sources
from noisy_student_tf.loop import config_checks
from noisy_student_tf.training import get_strategy
from noisy_student_tf.training.strategy import worker_failures_reported

_CONFIG = cli.define_config_file(
    "config", "digits", "A packaged config's name[:arg] or a config file's path[:arg]."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/noisy_student", "Output folder.")


def main(argv):
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    start = time.time()
    config_checks.validate_config(config)  # fail on bad settings before loading data
    strategy = get_strategy(config.strategy, config.tpu_address)  # before other TF ops
    config_checks.validate_config(config, strategy.num_replicas_in_sync)
    data = sources.load(config.data)  # arrays, or streams with data.labeled
    with worker_failures_reported(strategy):  # a dead worker: one clear error, not a hang
        results = loop.run(config, _WORKDIR.value, data, strategy)
    print()
    print(loop.format_table(results["models"]))
    if strategy.extended.should_checkpoint:  # only the chief writes into --workdir
        print(
            f"\nwrote {os.path.join(_WORKDIR.value, 'results.json')} "
            f"({time.time() - start:.0f} s in all)"
        )


def run() -> None:
    """The command's entry point (noisy_student_tf.commands)."""
    logging.set_verbosity(logging.WARNING)
    cli.run(main)
