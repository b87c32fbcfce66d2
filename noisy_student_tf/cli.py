"""How every command (noisy_student_tf/commands/, the scripts of a clone) reports bad input.

A wrong flag, config value or path is the user's to fix, so it gets one
line on stderr naming the flag/key/file and what was expected, and exit
status 2, never a traceback:

  error: pseudo.threshold must be in [0, 1], got 1.5

The library signals such input with `ConfigError` (a ValueError, so library
callers can keep catching ValueError) or FileNotFoundError. Anything else is
a bug or an environment fault and keeps its full traceback. Set
NOISY_STUDENT_TRACEBACK=1 to see the traceback of a ConfigError too.

Commands call `run(main)` instead of `absl.app.run(main)`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from absl import app, flags

from noisy_student_tf.errors import ConfigError

__all__ = ["ConfigError", "check_ranges", "define_config_file", "fail", "run"]

USAGE_EXIT_STATUS = 2  # the convention of argparse and most Unix tools


def fail(message: str) -> None:
    """Prints `error: message` to stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT_STATUS)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining = flags.FLAGS(argv)
        _check_config_files()
        return remaining
    except flags.IllegalFlagValueError as e:
        lines = str(e).strip().splitlines()
        if not all(line.startswith(("flag --", "flags ")) for line in lines):
            fail(lines[0])  # not absl's validators (e.g. a config file that raised)
        # absl ran every validator and joined their messages, one per line:
        # all bad flags go on the one error line, each without absl's prefix
        # where the message names the flag itself (check_ranges).
        problems = []
        for line in lines:
            rest = line.partition(": ")[2]
            missing = re.fullmatch(r"Flag (--\S+) must have a value other than None\.", rest)
            problems.append(
                f"{missing[1]} is required" if missing else rest if rest.startswith("--") else line
            )
        fail("; ".join(problems))
    except flags.Error as e:
        fail(str(e).strip().splitlines()[0])
    # ml_collections config files raise plain exceptions from inside parsing.
    except (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError) as e:
        if os.environ.get("NOISY_STUDENT_TRACEBACK"):
            raise
        fail(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))


_CONFIG_FLAGS = []  # names of the config-file flags defined through this module


def _plain(error: BaseException) -> str:
    """The innermost message of an exception, on one line."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _is_config_name(argument: str) -> bool:
    """True for a packaged config (`digits`, `cifar10_4k:cpu`), False for a file path.

    A name has no path separator and no `.py`: `experiments/configs/digits.py`
    and `./my.py:arg` stay file paths, as ml_collections reads them.
    """
    head = argument.partition(":")[0]
    return not head.endswith(".py") and os.sep not in head and "/" not in head


def define_config_file(name: str, default: str, help_string: str):
    """`config_flags.DEFINE_config_file` that also takes packaged config names.

    `--config=digits:smoke` gets `noisy_student_tf.configs.get("digits:smoke")`
    (an unknown name: one error line listing the known ones) and a file path
    (`--config=experiments/configs/digits.py:smoke`) is loaded as
    ml_collections does. A `default` name is resolved to its packaged module
    file, since the default is parsed while the flag is defined, by
    ml_collections' own parser; the command line is parsed by ours, set in
    its place. So an installed command's default does not depend on a
    checkout.

    ml_collections applies `--config.a.b=v` overrides while the flag is
    defined (at import of the script), before `run` could catch anything, so
    an unknown key or a wrongly typed value is caught here; a config file
    that does not load is reported once the flags are parsed.
    """
    from ml_collections import config_flags

    from noisy_student_tf import configs

    class NameOrFileParser(config_flags.config_flags.ConfigFileFlagParser):
        def parse(self, argument):
            if not _is_config_name(argument):
                return super().parse(argument)
            config = configs.get(argument)
            config.lock()  # as ml_collections locks a loaded file's config
            return config

    shown = default
    if _is_config_name(default):
        module_name, _, arg = default.partition(":")
        default = configs.module(module_name).__file__ + (f":{arg}" if arg else "")
    try:
        holder = config_flags.DEFINE_config_file(name, default, help_string)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        if os.environ.get("NOISY_STUDENT_TRACEBACK"):
            raise
        detail = _plain(e)
        key = detail.strip("'").split("'")[0]
        overrides = [a for a in sys.argv[1:] if a.startswith(f"--{name}.")]
        named = [a for a in overrides if key and f".{key}" in a.split("=")[0]] or overrides
        if isinstance(e, (AttributeError, KeyError)):
            detail = f"the config has no key {detail}"
        fail(f"{', '.join(named) or '--' + name}: {detail}")
    flags.FLAGS[name].parser = NameOrFileParser(name=name, lock_config=True)
    flags.FLAGS[name].default_as_str = repr(shown)  # --help: the name, not a site-packages path
    _CONFIG_FLAGS.append(name)
    return holder


def _check_config_files() -> None:
    for name in _CONFIG_FLAGS:
        try:
            flags.FLAGS[name].value.keys()
        except OSError as e:
            if os.environ.get("NOISY_STUDENT_TRACEBACK"):
                raise
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            fail(f"--{name}={flags.FLAGS[name].config_filename}: cannot load it ({lines[-1]})")


def _number(text: str):
    """A list flag's entry as an int or float, or the text when it is neither."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_ranges(ranges: dict[str, str]) -> None:
    """Registers a validator per numeric flag: its interval, NaN and infinity refused.

    absl runs the validators while parsing, before `main`, so a bad value
    stops a tool before it opens any file, and every bad flag (a missing
    required one too) is reported on the one error line.

    Args:
      ranges: flag name -> interval as in loop.config_checks.RANGES
        ("[0, 1]", "(0, inf)"); a list flag has each entry checked.
    """
    from noisy_student_tf.loop.config_checks import range_problem

    def validator(name: str, interval: str):
        def check(value) -> bool:
            for item in value if isinstance(value, list) else [value]:
                number = _number(item) if isinstance(item, str) else item
                problem = number is not None and range_problem(f"--{name}", number, interval)
                if problem:
                    raise flags.ValidationError(problem)
            return True

        return check

    for name, interval in ranges.items():
        flags.register_validator(name, validator(name, interval))


def _bad_record(error: Exception) -> str | None:
    """The message of a record the input pipeline refused (data.schema.checked_label), or None.

    The check runs inside tf.data, so it surfaces as TensorFlow's
    InvalidArgumentError wrapped in the op's context; the user's part is the
    text after the marker, up to the bracket that closes it.
    """
    text = str(error)
    marker = "bad record: "  # data.schema.BAD_RECORD (the library is not imported here)
    if type(error).__name__ != "InvalidArgumentError" or marker not in text:
        return None
    return text.split(marker, 1)[1].split("]", 1)[0].replace('\\"', "")


def run(main: Callable[[list[str]], None]) -> None:
    """absl.app.run(main) with user errors reported as one line and exit 2."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except (ConfigError, FileNotFoundError) as e:
            if os.environ.get("NOISY_STUDENT_TRACEBACK"):
                raise
            fail(str(e))
        except Exception as e:
            record = _bad_record(e)
            if record is None or os.environ.get("NOISY_STUDENT_TRACEBACK"):
                raise
            fail(record)

    app.run(guarded, flags_parser=_parse_flags)
