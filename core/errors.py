"""The one exception type for bad input, and how every command reports an error: one line on stderr
(see docs/design.md, "Errors")."""

from __future__ import annotations

import errno
import os
import sys

#: errno values that mean "the output file system is full"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT} if hasattr(errno, "EDQUOT") else {errno.ENOSPC})


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


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it was raised from is an OSError for a full disk / quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def one_line(text: object) -> str:
    """``text`` on one line: its non-blank lines joined with ``"; "``, runs of blanks as one space."""
    return "; ".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip())


def print_error(prog: str | None, message: object, code: int = 2) -> int:
    """Every command's error report: ``PROG: error: MESSAGE`` (``error: MESSAGE`` without ``prog``) as one line on
    stderr; returns the exit status ``code`` (2 usage or set-up error, 1 some items failed)."""
    print(f"{prog}: error: " if prog else "error: ", one_line(message), sep="", file=sys.stderr, flush=True)
    return code


def os_error_text(exc: OSError, default: str | os.PathLike | None = None, disk_full_hint: str = "") -> str:
    """One line for an OSError: ``FILE: what happened`` (``default`` when the error names no file; a full disk
    says so and adds ``disk_full_hint``)."""
    where = exc.filename if exc.filename is not None else default
    full = is_disk_full(exc)
    what = "no space left on device" if full else (exc.strerror or str(exc))
    text = f"{what}{disk_full_hint if full else ''}"
    return text if where is None else f"{os.fspath(where)}: {text}"


class SetupError(RuntimeError):
    """A usage or set-up problem that stops the whole command before (or instead of) any item: a missing input, an
    unwritable output, a flag that does not fit. The message says what to fix; every command reports it with
    :func:`print_error` and exits 2 (docs/design.md, "Errors")."""
