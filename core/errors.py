"""The one exception type for bad input (see docs/design.md, "Errors")."""

from __future__ import annotations

import os


class BadInputError(ValueError):
    """Malformed or unreadable input.

    Carries the offending file and the field (key, column, member) so batch commands can
    report ``path: field: message`` per item, count it and keep going.
    """

    def __init__(self, path: str | os.PathLike | None, field: str | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.message = message
        where = self.path or "<input>"
        if field:
            where = f"{where}: {field}"
        super().__init__(f"{where}: {message}")

    @property
    def reason(self) -> str:
        """Short one-line reason for reports (field + message, without the path)."""
        return f"{self.field}: {self.message}" if self.field else self.message
