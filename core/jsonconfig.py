"""Flat dataclass configurations that round-trip through JSON and take command-line strings.

The model's architecture (:class:`model.config.LavimoConfig`) and the run's settings
(:class:`training.config.TrainConfig`) are two such dataclasses; this base gives both the same behaviour:
``from_dict`` (unknown names raise ``ValueError``), ``to_dict`` / ``to_json`` (tuples become lists),
``replace(**overrides)`` and the conversion of CLI strings (``"0.1"``, ``"true"``, ``"none"``, JSON objects) to
each field's declared type. Subclasses implement ``validate()`` (raise ``ValueError`` naming the field).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="JsonConfig")

_HINTS: dict[type, dict[str, Any]] = {}


class JsonConfig:
    """Mixin for ``@dataclass`` configs: JSON round trip, strict field names, typed CLI-string overrides."""

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
        are converted to the field's type (:func:`coerce`)."""
        names = cls.field_names()
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**{k: coerce(cls, k, v) for k, v in d.items()})

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied (converted and validated)."""
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
    there is neither, ``ValueError`` when the file is not a JSON object."""
    s = os.fspath(source)
    path = Path(s)
    if not path.suffix and (preset_dir / f"{s}.json").is_file():
        path = preset_dir / f"{s}.json"
    if not path.is_file():
        names = sorted(p.stem for p in preset_dir.glob("*.json"))
        raise FileNotFoundError(f"no preset or config file {s!r}; bundled presets: {names} (or pass a JSON file "
                                "path)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of configuration fields")
    data = dict(data)
    data.pop("_comment", None)
    return path, data
