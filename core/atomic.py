"""Atomic writes: a file appears whole or not at all (see docs/design.md, "Atomic writes")."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator


#: the name :func:`atomic_path` gives its temporary file: ``.{final name}.{random}.tmp{ext}`` in the target's folder
TEMP_NAME_RE = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]+\.tmp(?:\.[A-Za-z0-9]+)?$")


def temp_target(name: str) -> str | None:
    """The final file name a temporary file named ``name`` (of :func:`atomic_path`) was for, or None when
    ``name`` is not such a temporary file (used to find what a killed run left behind)."""
    m = TEMP_NAME_RE.match(name)
    return None if m is None else m["final"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory (for writers that need a file name: ffmpeg, tarfile,
    np.savez; it keeps ``path``'s extension, or ``suffix``), fsynced and renamed onto ``path`` on success; on an
    exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else "".join(path.suffixes[-1:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{ext}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the usual permissions (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """``open()`` replacement whose file only appears at ``path`` once closed successfully."""
    if not any(m in mode for m in "wx"):
        raise ValueError("atomic_open is for writing; mode must contain 'w'")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Atomically write ``obj`` as JSON (keys sorted, so output is deterministic)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """The output-directory check of every command: create ``path`` if needed and create an unnamed temporary
    file in it (nothing left behind, even by a killed process). Raises ``OSError`` (a file in the way,
    ``PermissionError``, a read-only or full file system)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=p):
        pass
    return p
