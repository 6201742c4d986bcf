"""Keyids are names, never paths (see docs/design.md, "Untrusted input", and docs/security.md).

Every reader of third-party input (annotations.json keys, HumanML3D ``new_name`` and split files, render
sidecars, shard members, ``--keyids``) passes each keyid through :func:`check_keyid`, and every place that
joins a directory with a keyid or a member name uses :func:`child_path`, which refuses anything that would
land outside the directory.

The rule: a keyid is 1 to 128 characters of ASCII letters, digits, ``_`` and ``-``. No ``.`` (WebDataset
splits a tar member name at its first dot into key and extension, so a dot would break a sample apart, and
it rules out ``.``/``..``/hidden names), no ``/`` or ``\\``, no spaces, no control characters. HumanML3D
(``000123``, ``M000123``), KIT-ML (``00001``), BABEL and the synthetic corpus all fit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lavimo.core.errors import BadInputError

KEYID_MAX_LEN = 128
KEYID_RULE = "1-128 characters of ASCII letters, digits, '_' and '-'"
_KEYID_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % KEYID_MAX_LEN)

__all__ = ["KEYID_RULE", "KEYID_MAX_LEN", "is_keyid", "check_keyid", "child_path", "check_member_name", "shown"]


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (ending in ``...``) for messages."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def is_keyid(value: object) -> bool:
    """True when ``value`` is a string that follows the keyid rule."""
    return isinstance(value, str) and _KEYID_RE.fullmatch(value) is not None


def check_keyid(value: object, path: str | os.PathLike | None = None, field: str | None = "keyid") -> str:
    """Return ``value`` if it is a valid keyid, else raise :class:`BadInputError` naming ``path`` and ``field``,
    quoting the value and stating the rule (``'../x' is not a valid keyid (1-128 characters of ...)``)."""
    if is_keyid(value):
        return value  # type: ignore[return-value]
    if not isinstance(value, str):
        msg = f"{shown(value)} is not a valid keyid: expected a string, got {type(value).__name__}"
    else:
        msg = f"{shown(value)} is not a valid keyid ({KEYID_RULE})"
    raise BadInputError(path, field, msg)


def child_path(directory: str | os.PathLike, name: str) -> Path:
    """``directory / name``, guaranteed to stay directly inside ``directory``: ``name`` must be one plain file name
    (no separator, not ``.``/``..``, no NUL), else :class:`BadInputError`, so a crafted keyid or member name never
    makes a writer touch a file outside its directory (symlinks inside it are the user's own business)."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.sep in name or (os.altsep and os.altsep in name)):
        raise BadInputError(directory, "name", f"{name!r} is not a plain file name")
    d = Path(directory)
    p = d / name
    if p.parent != d:  # belt and braces: pathlib never normalises '..', but keep the invariant explicit
        raise BadInputError(directory, "name", f"{name!r} escapes the directory")
    return p


def check_member_name(name: object, path: str | os.PathLike | None = None) -> str:
    """A tar member name as the shard readers accept it, ``<keyid>.<ext>`` with no ``/`` and no ``..``; else
    :class:`BadInputError` naming the shard ``path`` and the member."""
    if not isinstance(name, str) or "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise BadInputError(path, "member", f"{name!r}: member names must be '<keyid>.<ext>' without '/' or '..'")
    key, dot, ext = name.partition(".")
    if not dot or not ext or not is_keyid(key):
        raise BadInputError(path, "member", f"{name!r}: member names must be '<keyid>.<ext>' ({KEYID_RULE})")
    return name
