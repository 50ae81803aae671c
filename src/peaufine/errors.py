"""The one family of user-facing errors, each naming what the user can fix."""

# The CLI catches `PeaufineError`, prints its message and exits non-zero, so a user never sees a traceback
# from deep inside a library for a mistake in their recipe or data.

from __future__ import annotations

from pathlib import Path


class PeaufineError(Exception):
    """An error the user can fix; its message says where (file, line, key) and how."""


class RecipeError(PeaufineError):
    """A recipe key is unknown, or its value is not allowed."""


class DataError(PeaufineError):
    """An input data file cannot be used as it is."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f", line {line}"
            if field is not None:
                where += f", field '{field}'"
            where += ": "
        text = where + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.path = path
        self.line = line
        self.field = field


class RunDirError(PeaufineError):
    """The output directory cannot be used for this run (it holds another run, or none to resume)."""


class TrainingError(PeaufineError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class ModelError(PeaufineError):
    """A model source, preset or configuration cannot be used."""
