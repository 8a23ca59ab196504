"""One error type for bad input. The CLI turns it into one line and exit code 2."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad or unsupported input. Always names the file (or folder) and the field at fault."""

    def __init__(self, path: str | os.PathLike | None, field: str | None, message: str):
        self.path = None if path is None else str(path)
        self.field = field
        self.message = message
        where = ": ".join(p for p in (self.path, self.field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class EnvironmentProblem(Exception):
    """The machine, not the input: a full disk, a read-only or forbidden folder, an output another command is
    writing. The CLI turns it into one line naming the path and exit code 3 (README, 'Bad input')."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
