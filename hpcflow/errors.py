"""User-facing errors: the command line prints their message, without a traceback, and exits
with a non-zero status. Anything else that escapes is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HpcflowError", "ConfigError", "InputFileError"]


class HpcflowError(Exception):
    """An error in the user's input or environment, with a message that says what to fix."""

    exit_code = 2


class ConfigError(HpcflowError):
    """A configuration value is missing, of the wrong type, or impossible; names the key."""

    def __init__(self, key: str, expected: str):
        self.key = key
        self.expected = expected
        super().__init__(f"config key '{key}': {expected}")


class InputFileError(HpcflowError):
    """A file given by the user is missing, unreadable or corrupt; names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")
