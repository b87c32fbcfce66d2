"""`--config=experiments/configs/svhn.py[:ARG]`: the packaged config `noisy_student_tf/configs/svhn.py`.

Kept so the file paths the docs use keep working; the config, its
docstring (command, expected result, runtime) and presets live in the package.
"""

from noisy_student_tf.configs.svhn import get_config

__all__ = ["get_config"]
