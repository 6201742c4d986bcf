"""LAVIMO model: presets, the tri-modal model, losses and checkpoints.

    from lavimo.model import load_preset, build_model, load_checkpoint, save_checkpoint
"""

from .checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from .config import LavimoConfig, list_presets, load_preset
from .lavimo import LavimoModel, build_model
from .weights import MissingWeightsError

__all__ = [
    "LavimoConfig",
    "LavimoModel",
    "MissingWeightsError",
    "build_model",
    "list_presets",
    "load_checkpoint",
    "load_preset",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
