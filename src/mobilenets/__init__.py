"""MobileNet V1, V2 and V3: build, count, train, export and benchmark them."""

from .cost import profile
from .registry import DETECTORS, MODELS, ModelArgs, create_model, list_models
from .weights import load_weights, save_weights

__version__ = "0.1.0"
__all__ = ["DETECTORS", "MODELS", "ModelArgs", "create_model", "list_models", "load_weights", "profile", "save_weights"]
