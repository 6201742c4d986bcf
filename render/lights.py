"""The four lighting setups of LAVIMO's supplementary Table 1 (``assets/lights.json``).

The file keeps the paper's numbers verbatim. They are point-light positions in a camera-centred frame
with OpenCV axes (x right, y down, z forward into the scene) in centimetres; this module converts them to
pyrender's OpenGL camera frame (x right, y up, the camera looks down -z) in metres: ``(x, -y, -z) / 100``.
With that reading every setup lights the subject from the viewer's side (z = -300 is behind the camera),
``y = -300`` is above and ``x = -300`` to the left — see the README.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from lavimo import assets
from lavimo.core.errors import BadInputError

DEFAULT_LIGHTS = assets.LIGHTS  # installed with the package (assets/__init__.py)
_FRAMES = {
    # source frame -> matrix taking source camera coords to OpenGL camera coords
    "opencv_camera": np.diag([1.0, -1.0, -1.0]),
    "opengl_camera": np.eye(3),
}
_UNITS = {"centimetres": 0.01, "metres": 1.0, "millimetres": 0.001}


@dataclass(frozen=True)
class Light:
    """One point light.

    Attributes:
        position: (3,) as written in the file (source frame and units).
        color: (3,) RGB radiance at the subject (0..1 per channel).
        position_gl: (3,) position in the OpenGL camera frame, metres (x right, y up, camera looks down -z).
    """

    position: tuple[float, float, float]
    color: tuple[float, float, float]
    position_gl: tuple[float, float, float]


@dataclass(frozen=True)
class LightSetup:
    """One lighting setup: an index (0-based, the paper's number minus one), a name and its lights."""

    index: int
    name: str
    lights: tuple[Light, ...]
    radiance_scale: float
    ambient: float
    reference_gl: tuple[float, float, float] = (0.0, 0.0, 3.0)

    def to_dict(self) -> dict:
        """JSON-ready description for sidecars (paper numbers and the pyrender frame)."""
        return {
            "index": self.index,
            "number": self.index + 1,
            "name": self.name,
            "ambient": self.ambient,
            "radiance_scale": self.radiance_scale,
            "lights": [{"position": list(l.position), "color": list(l.color),
                        "position_gl_m": [round(v, 6) for v in l.position_gl]} for l in self.lights],
        }

    def pyrender_intensity(self, light: Light, target_gl: np.ndarray) -> float:
        """pyrender point-light intensity (the same for every light of every setup).

        pyrender attenuates point lights by 1/d^2 (d in metres). The intensity is ``radiance_scale * d_ref^2``
        with d_ref the distance from the reference light position to ``target_gl`` (the look-at point, camera
        frame), so a light at the reference position gives radiance ``radiance_scale`` x colour at the subject
        and every other light falls off physically with its own distance. The colour is passed separately.
        """
        d = float(np.linalg.norm(np.asarray(self.reference_gl) - np.asarray(target_gl, dtype=np.float64)))
        return self.radiance_scale * d * d


def _vec3(path: str, field: str, value: object) -> tuple[float, float, float]:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadInputError(path, field, f"expected 3 numbers, got {value!r}") from e
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise BadInputError(path, field, f"expected 3 finite numbers, got {value!r}")
    return (float(a[0]), float(a[1]), float(a[2]))


def load_lights(path: str | os.PathLike | None = None) -> list[LightSetup]:
    """Read the lighting setups (default ``assets/lights.json``).

    Raises:
        BadInputError: naming the file and field when it is missing or malformed.
    """
    path = os.fspath(path or DEFAULT_LIGHTS)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError as e:
        raise BadInputError(path, None, "lights file not found") from e
    except (OSError, json.JSONDecodeError) as e:
        raise BadInputError(path, None, f"unreadable lights file ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("setups"), list) or not doc["setups"]:
        raise BadInputError(path, "setups", "expected a non-empty list of setups")
    frame = doc.get("frame", "opencv_camera")
    if frame not in _FRAMES:
        raise BadInputError(path, "frame", f"unknown frame {frame!r} (expected one of {sorted(_FRAMES)})")
    units = doc.get("units", "centimetres")
    if units not in _UNITS:
        raise BadInputError(path, "units", f"unknown units {units!r} (expected one of {sorted(_UNITS)})")
    to_gl, scale = _FRAMES[frame], _UNITS[units]
    radiance_scale = float(doc.get("radiance_scale", 2.4))
    ambient = float(doc.get("ambient", 0.1))
    ref = _vec3(path, "reference_position", doc.get("reference_position", [0, 0, -300]))
    ref_gl = tuple(float(v) for v in (to_gl @ np.asarray(ref)) * scale)
    setups = []
    for i, s in enumerate(doc["setups"]):
        where = f"setups[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("lights"), list) or not s["lights"]:
            raise BadInputError(path, where, "expected {name, lights: [...]} with at least one light")
        lights = []
        for j, l in enumerate(s["lights"]):
            if not isinstance(l, dict):
                raise BadInputError(path, f"{where}.lights[{j}]", "expected {position, color}")
            pos = _vec3(path, f"{where}.lights[{j}].position", l.get("position"))
            col = _vec3(path, f"{where}.lights[{j}].color", l.get("color"))
            gl = tuple(float(v) for v in (to_gl @ np.asarray(pos)) * scale)
            lights.append(Light(position=pos, color=col, position_gl=gl))  # type: ignore[arg-type]
        setups.append(LightSetup(index=i, name=str(s.get("name", f"setup{i + 1}")), lights=tuple(lights),
                                 radiance_scale=radiance_scale, ambient=ambient,
                                 reference_gl=ref_gl))  # type: ignore[arg-type]
    return setups
