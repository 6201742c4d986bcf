"""Flat dataclass configurations (``LavimoConfig``, ``TrainConfig``) that round-trip through JSON and take
command-line strings (:class:`JsonConfig`), and the one parser of JSON state files that may come from elsewhere
(presets, a run directory's ``config.json`` / ``run.json``, checkpoint metadata): :func:`loads_bounded` /
:func:`read_json_file`, size, value count and nesting capped, every failure one
:class:`lavimo.core.errors.BadInputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lavimo.core.errors import BadInputError

C = TypeVar("C", bound="JsonConfig")

log = logging.getLogger(__name__)

#: the largest JSON state file read (bytes): configs, run.json, presets. A run's files are a few KB.
MAX_JSON_FILE_BYTES = 16 * 2**20
#: the deepest nesting of arrays / objects accepted in any JSON state file or checkpoint metadata field (ours are
#: at most 4 deep); deeper input is refused before Python's recursion limit is reached
MAX_JSON_DEPTH = 64


def _depth_ok(value: Any, max_depth: int) -> bool:
    """True when ``value`` (parsed JSON) nests arrays / objects at most ``max_depth`` deep (iterative walk)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if d > max_depth:
            return False
        stack.extend((c, d + 1) for c in children)
    return True


#: the most JSON values (structural ``,`` / ``:`` outside strings) accepted in one document: parsing builds one
#: Python object per value (~50 bytes each), so 98 MB of ``[0,0,...]`` would cost 4.5 GB; real files hold far fewer
#: (a tokenizer.json of a 250k-word vocabulary ~ 0.5 M)
MAX_JSON_ITEMS = 2_000_000
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_items(raw: bytes, limit: int = MAX_JSON_ITEMS) -> int:
    """The number of ``,`` and ``:`` outside JSON strings in ``raw`` (about the number of values it holds), computed
    in C-speed passes without building any value; up to ``limit`` it may count those inside strings too (an upper
    bound already within the limit: no need to copy ``raw`` to strip the strings)."""
    total = raw.count(b",") + raw.count(b":")
    if total <= limit:
        return total
    stripped = _JSON_STRING.sub(b'""', raw)
    return stripped.count(b",") + stripped.count(b":")


def loads_bounded(text: str | bytes, source: str | os.PathLike | None, field: str | None = None, *,
                  max_bytes: int = MAX_JSON_FILE_BYTES, max_depth: int = MAX_JSON_DEPTH,
                  max_items: int = MAX_JSON_ITEMS) -> Any:
    """``json.loads(text)`` for text from a file we may not have written: at most ``max_bytes`` bytes (UTF-8),
    ``max_items`` values (:func:`json_items`, checked before parsing) and ``max_depth`` levels of nesting. Every
    failure (too big, too many values, not UTF-8, not JSON, nested too deep, including the parser's own
    RecursionError) raises :class:`BadInputError` naming ``source`` and ``field``."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > max_bytes:
        raise BadInputError(source, field, f"{len(raw)} bytes of JSON, more than the {max_bytes} accepted")
    items = json_items(raw, max_items)
    if items > max_items:
        raise BadInputError(source, field, f"about {items} JSON values, more than the {max_items} accepted")
    del raw
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise BadInputError(source, field, f"JSON nested deeper than {max_depth} levels") from exc
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadInputError(source, field, f"not valid JSON ({' '.join(str(exc).split())[:120]})") from exc
    if not _depth_ok(value, max_depth):
        raise BadInputError(source, field, f"JSON nested deeper than {max_depth} levels")
    return value


def read_json_file(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_FILE_BYTES,
                   max_depth: int = MAX_JSON_DEPTH, max_items: int = MAX_JSON_ITEMS) -> Any:
    """The JSON value in file ``path`` (:func:`loads_bounded`: size, values and nesting capped; the size is checked before
    the file is read). ``FileNotFoundError`` when it is absent, other OSErrors as raised; anything wrong with the
    content is a :class:`BadInputError` naming the file."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise BadInputError(path, None, f"{size} bytes, more than the {max_bytes} accepted for a JSON file")
        data = fh.read(max_bytes + 1)
    return loads_bounded(data, path, max_bytes=max_bytes, max_depth=max_depth, max_items=max_items)

_HINTS: dict[type, dict[str, Any]] = {}


class JsonConfig:
    """Mixin for ``@dataclass`` configs: JSON round trip, strict field names, typed CLI-string overrides."""

    #: fields that no longer exist, {name: why}: :meth:`from_dict` drops them from saved configs (a warning when
    #: the value is truthy: it is ignored); :meth:`replace` and overrides refuse them as unknown names
    REMOVED_FIELDS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON has no tuples
            if typing.get_origin(_hints(type(self)).get(f.name)) is tuple and isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:  # pragma: no cover - every subclass overrides it
        """Raise ``ValueError`` naming the field when a value is out of range."""

    @classmethod
    def field_names(cls) -> set[str]:
        """The names of the fields (what ``from_dict`` accepts)."""
        return {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field (tuples as lists)."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a dict; missing fields take the defaults, unknown fields raise ``ValueError``; string values
        are converted to the field's type (:func:`coerce`). Names in ``REMOVED_FIELDS`` are dropped (a warning
        says a truthy value is ignored), so files saved before their removal still load."""
        d = dict(d)
        for name, why in cls.REMOVED_FIELDS.items():
            if name in d:
                value = d.pop(name)
                if value not in (False, None, 0, "", "false", "False", "0"):
                    log.warning("%s.%s=%r is ignored: %s", cls.__name__, name, value, why)
        names = cls.field_names()
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**{k: coerce(cls, k, v) for k, v in d.items()})

    @classmethod
    def check_names(cls, names: Any) -> None:
        """ValueError naming the names that are not fields of ``cls`` (a removed one too: only files saved before
        its removal may still hold it, and :meth:`from_dict` drops it there)."""
        unknown = sorted(set(names) - cls.field_names())
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(cls.field_names())}")

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied (converted and validated); an unknown or removed name raises
        ``ValueError``."""
        self.check_names(overrides)
        d = self.to_dict()
        d.update(overrides)
        return type(self).from_dict(d)


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a CLI-style string (``"0.1"``, ``"true"``, ``"none"``, a JSON object) to the declared type of field
    ``name`` of ``cls``; other values pass unchanged. Raises ``ValueError`` naming ``cls.name`` when it cannot."""
    hint = _hints(cls).get(name)
    if not isinstance(value, str) or hint is None:
        return value
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if optional and value.lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            return int(value)
        if base is float:
            return float(value)
        if typing.get_origin(base) is dict or base is dict:
            return json.loads(value)
        if typing.get_origin(base) is tuple:
            return tuple(json.loads(value))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{cls.__name__}.{name}: cannot parse {value!r} as {base}") from exc
    return value


def read_config_json(source: str | os.PathLike, preset_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The JSON object of a bundled preset (``source`` a bare name of a file ``preset_dir/NAME.json``) or of a
    JSON file path, without its ``_comment``. Raises ``FileNotFoundError`` naming the bundled presets when
    there is neither, :class:`BadInputError` (a ``ValueError``) naming the file when it is not a JSON object
    (too big, nested too deep, not JSON: :func:`read_json_file`)."""
    s = os.fspath(source)
    path = Path(s)
    if not path.suffix and (preset_dir / f"{s}.json").is_file():
        path = preset_dir / f"{s}.json"
    if not path.is_file():
        names = sorted(p.stem for p in preset_dir.glob("*.json"))
        raise FileNotFoundError(f"no preset or config file {s!r}; bundled presets: {names} (or pass a JSON file "
                                "path)")
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise BadInputError(path, None, "expected a JSON object of configuration fields")
    data = dict(data)
    data.pop("_comment", None)
    return path, data
