"""`noisy-student-make-records` from a clone: same flags (noisy_student_tf/commands/make_records.py).

python tools/make_records.py --help
"""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student_make_records()
