"""`noisy-student-evaluate` from a clone: same flags (noisy_student_tf/commands/evaluate.py).

python tools/evaluate.py --help
"""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student_evaluate()
