"""RandAugment with the official Noisy Student op set and level mapping.

See docs/augment.md for the op table, the level mapping, the image-size
rule and the clamps at M = 27.
"""

from noisy_student_tf.augment.randaugment import (
    MAX_MAGNITUDE, OPS, RandAugment, apply_op, op_names, size_constants)

__all__ = ["MAX_MAGNITUDE", "OPS", "RandAugment", "apply_op", "op_names",
           "size_constants"]
