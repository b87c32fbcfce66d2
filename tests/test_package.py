"""The library's layering: it stands on its own floor, below the command line."""

import ast
import pathlib

from conftest import run_script

LIBRARY = pathlib.Path(__file__).resolve().parent.parent / "noisy_student_tf"
COMMAND_LINE = {"absl.app", "absl.flags", "ml_collections.config_flags", "noisy_student_tf.cli"}

LIBRARY_PACKAGES = (
    "noisy_student_tf",
    "noisy_student_tf.augment",
    "noisy_student_tf.data",
    "noisy_student_tf.evaluation",
    "noisy_student_tf.labeling",
    "noisy_student_tf.loop",
    "noisy_student_tf.models",
    "noisy_student_tf.training",
)


def test_the_library_never_imports_the_command_line():
    """Every library package imported in a fresh process leaves `noisy_student_tf.cli` unloaded."""
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY_PACKAGES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'noisy_student_tf.cli'))\n"
    )
    proc = run_script("-c", code, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_config_error_is_one_type_for_library_and_scripts():
    from noisy_student_tf import cli, errors

    assert cli.ConfigError is errors.ConfigError
    assert issubclass(errors.ConfigError, ValueError)


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
            names.add(node.module)
    return names


def test_no_library_module_imports_flags_or_the_cli():
    """TensorFlow loads absl.app itself, so the rule is checked on our sources, not sys.modules.

    The command line itself (cli.py, commands/, __main__.py) is above the library.
    """
    offenders = {
        str(path.relative_to(LIBRARY)): sorted(_imported_modules(path) & COMMAND_LINE)
        for path in LIBRARY.rglob("*.py")
        if path.name not in ("cli.py", "__main__.py") and "commands" not in path.parts
    }
    assert {k: v for k, v in offenders.items() if v} == {}
