"""napari-seg-explain: explain medical image segmentation models.

Viewer-agnostic core (no napari/Qt imports here); the napari wing lives in ``_napari``.
``import seg_explain`` is cheap: torch, MONAI and the explainers are imported on first use
of the names below.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    Cancelled,
    ImageLoadError,
    InputMismatchError,
    MethodError,
    ModelLoadError,
    SegExplainError,
    UnsafeConfigError,
)
from .version import __version__  # noqa: E402,F401 (public: seg_explain.__version__)

# public name -> module that defines it (imported lazily, PEP 562)
_LAZY = {
    "load_model": ".models.loader", "SegModel": ".models.segmodel",
    "load_image": ".io", "save_image": ".io", "LoadedImage": ".io",
    "explain": ".explainers.base", "explain_iter": ".explainers.base", "methods": ".explainers.base",
    "Explanation": ".explainers.base",
}

if TYPE_CHECKING:  # pragma: no cover
    from .explainers.base import Explanation, explain, explain_iter, methods
    from .io import LoadedImage, load_image, save_image
    from .models.loader import load_model
    from .models.segmodel import SegModel


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'seg_explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def agg2exp(model, images, method="smoothgrad", extra_rois=None, **params):
    """Agg2Exp class-to-class importance over images (see :mod:`seg_explain.dataset.api`)."""
    from .dataset.api import agg2exp as _agg2exp

    return _agg2exp(model, images, method=method, extra_rois=extra_rois, **params)


__all__ = ["load_model", "load_image", "save_image", "explain", "explain_iter", "agg2exp", "methods",
           "SegModel", "LoadedImage", "Explanation", "SegExplainError", "ImageLoadError",
           "ModelLoadError", "UnsafeConfigError", "InputMismatchError", "MethodError", "Cancelled"]
