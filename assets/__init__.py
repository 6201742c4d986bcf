"""The rendering assets as package data: ``avatars/*.json`` (the 13 avatar specs) and ``lights.json`` (the 4
lighting setups). Installed with the wheel, so the defaults are found from any working directory."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
AVATARS = ROOT / "avatars"
LIGHTS = ROOT / "lights.json"
