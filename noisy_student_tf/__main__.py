"""`python -m noisy_student_tf`: the main job, as the `noisy-student` command."""

from noisy_student_tf import commands

if __name__ == "__main__":
    commands.noisy_student()
