"""`noisy-student-convert` from a clone: same flags (noisy_student_tf/commands/convert_checkpoint.py).

python tools/convert_checkpoint.py --help
"""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student_convert()
