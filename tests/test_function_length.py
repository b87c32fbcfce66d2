"""Issue 19: no library function is over 100 lines (STYLE.md aims at ~80).

A function's length is its full source, docstring included
(`end_lineno - lineno + 1`); nested functions and methods count on their own.
"""

from __future__ import annotations

import ast
import pathlib

MAX_LINES = 100  # issue 19's limit
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "noisy_student_tf"  # read, not imported


def long_functions(root: pathlib.Path, max_lines: int) -> dict[str, int]:
    """{`module path:name`: lines} for every function under `root` over `max_lines`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    found[f"{path.relative_to(root).as_posix()}:{node.name}"] = lines
    return found


def test_no_library_function_is_over_100_lines():
    offenders = long_functions(PACKAGE, MAX_LINES)
    assert not offenders, f"functions over {MAX_LINES} lines: " + "; ".join(
        f"{name} ({n} lines)" for name, n in sorted(offenders.items())
    )


def test_the_check_sees_a_long_method(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(5))
    (tmp_path / "mod.py").write_text(
        f"class A:\n    def long(self):\n{body}\n\n\ndef short():\n    pass\n"
    )
    assert long_functions(tmp_path, 5) == {"mod.py:long": 6}
    assert long_functions(tmp_path, 6) == {}
