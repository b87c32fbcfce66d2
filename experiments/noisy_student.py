r"""`noisy-student` from a clone: the Noisy Student loop (noisy_student_tf/commands/main_job.py).

  python experiments/noisy_student.py --config=experiments/configs/digits.py:smoke \
      --workdir=runs/smoke
  python experiments/noisy_student.py --config=cifar10_4k:cpu --workdir=runs/c10
"""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student()
