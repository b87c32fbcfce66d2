"""The error types the library raises for input a user must fix.

A plain module (no absl, no TensorFlow) so every layer of the library can
raise them without importing the command line; the scripts' `cli` module
turns them into one `error: ...` line and exit status 2.
"""


class ConfigError(ValueError):
    """A flag, config value or input file that the user must fix."""
