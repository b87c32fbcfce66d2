"""The Noisy Student train step, optimizers, strategies and the iterative loop."""

from noisy_student_tf.training.noisy_student import NoisyStudent
from noisy_student_tf.training.optimization import WarmupSchedule, build_optimizer
from noisy_student_tf.training.strategy import get_strategy

__all__ = ["NoisyStudent", "WarmupSchedule", "build_optimizer", "get_strategy"]
