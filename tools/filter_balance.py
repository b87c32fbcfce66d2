"""`noisy-student-filter-balance` from a clone: same flags (noisy_student_tf/commands/filter_balance.py).

python tools/filter_balance.py --help
"""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student_filter_balance()
