"""The command line: the main job and each tool, as commands installed with the package.

  noisy-student                 the Noisy Student loop (main_job.py)
  noisy-student-make-records    image folders / tfds splits -> source shards
  noisy-student-label           source shards -> pseudo-labeled shards
  noisy-student-filter-balance  pseudo-labeled shards -> the student's shards
  noisy-student-evaluate        SavedModels: accuracy, calibration, robustness
  noisy-student-convert         official checkpoints -> Keras files

`python -m noisy_student_tf` is `noisy-student`, and the scripts of a clone
(experiments/noisy_student.py, tools/*.py) call these same functions, so
the flags, the one-line errors and the exit codes are the same everywhere.
`--version` prints the version. The library below never imports this
package (tests/test_package.py); each command module defines its flags when
imported, so a process imports exactly one of them.
"""

from __future__ import annotations

import importlib
import sys

import noisy_student_tf

# console script -> the module here that holds its flags and main; setup.cfg's
# [options.entry_points] names the functions below, one per entry.
COMMANDS = {
    "noisy-student": "main_job",
    "noisy-student-make-records": "make_records",
    "noisy-student-label": "label",
    "noisy-student-filter-balance": "filter_balance",
    "noisy-student-evaluate": "evaluate",
    "noisy-student-convert": "convert_checkpoint",
}


def _run(command: str) -> None:
    """Runs one command: `--version` answered first, then its module's flags and main.

    The version needs none of the command's modules (Beam, the evaluation
    stack), and a process that only asks for it defines no flags. absl's
    `--help` prints the `__main__` module's docstring and the flags it
    defines, while here they live in the command module (the entry point's
    `__main__` is pip's generated script or a thin tools/ wrapper), so the
    command's docstring and flags are handed to `__main__` for the help.
    """
    own_args = sys.argv[1 : sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if "--version" in own_args:
        print(f"{command} {noisy_student_tf.__version__}")
        return
    module = importlib.import_module(f"{__name__}.{COMMANDS[command]}")
    from absl import flags

    sys.modules["__main__"].__doc__ = module.__doc__
    # cli.define_config_file defines --config on the command's behalf.
    for source in (module.__name__, "noisy_student_tf.cli"):
        for flag in flags.FLAGS.get_flags_for_module(source):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    module.run()


def noisy_student() -> None:
    """`noisy-student` and `python -m noisy_student_tf`: the Noisy Student loop."""
    _run("noisy-student")


def noisy_student_make_records() -> None:
    """`noisy-student-make-records`: image folders or tfds splits as source shards."""
    _run("noisy-student-make-records")


def noisy_student_label() -> None:
    """`noisy-student-label`: a teacher's labels for source shards."""
    _run("noisy-student-label")


def noisy_student_filter_balance() -> None:
    """`noisy-student-filter-balance`: the confidence filter and class balancing (Beam)."""
    _run("noisy-student-filter-balance")


def noisy_student_evaluate() -> None:
    """`noisy-student-evaluate`: accuracy, calibration and robustness of SavedModels."""
    _run("noisy-student-evaluate")


def noisy_student_convert() -> None:
    """`noisy-student-convert`: an official checkpoint as `.keras` and `.weights.h5` files."""
    _run("noisy-student-convert")
