"""`noisy-student-label` from a clone: same flags (noisy_student_tf/commands/label.py).

python tools/label.py --help
"""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student_label()
