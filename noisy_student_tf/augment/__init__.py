"""RandAugment with the official Noisy Student op set and level mapping.

See docs/augment.md for the op table, the level mapping, the image-size
rule, and the "corrected" and "official" variants.
"""

from noisy_student_tf.augment.randaugment import (
    MAX_MAGNITUDE,
    OPS,
    VARIANTS,
    RandAugment,
    apply_op,
    op_names,
    size_constants,
)

__all__ = [
    "MAX_MAGNITUDE",
    "OPS",
    "VARIANTS",
    "RandAugment",
    "apply_op",
    "op_names",
    "size_constants",
]
