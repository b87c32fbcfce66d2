"""`--config=experiments/configs/digits.py[:ARG]`: the packaged config `noisy_student_tf/configs/digits.py`.

Kept so the file paths the docs use keep working; the config, its
docstring (command, expected result, runtime) and presets live in the package.
"""

from noisy_student_tf.configs.digits import get_config

__all__ = ["get_config"]
