"""The iterative Noisy Student loop (paper, Algorithm 1) and its stages.

Orchestration sits above the peers it sequences: `training` (one model),
`labeling` (teacher -> pseudo labels, filter, balance) and `evaluation`.
`run` is the loop; `validate_config` checks a config before any work.
"""

from noisy_student_tf.loop.config_checks import iteration_config, validate_config
from noisy_student_tf.loop.results import format_table
from noisy_student_tf.loop.runner import run

__all__ = ["format_table", "iteration_config", "run", "validate_config"]
