"""Model loading: every format becomes one :class:`SegModel`."""
from .segmodel import Prepared, SegModel, resolve_device
from .loader import load_model

__all__ = ["SegModel", "Prepared", "load_model", "resolve_device"]
