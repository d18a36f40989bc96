"""Model loading: every format becomes one :class:`SegModel`."""
from .loader import load_model
from .segmodel import Prepared, SegModel, resolve_device

__all__ = ["SegModel", "Prepared", "load_model", "resolve_device"]
