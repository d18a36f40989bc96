"""napari-seg-explain: explain medical image segmentation models.

Viewer-agnostic core (no napari/Qt imports here); the napari wing lives in ``_napari``.
"""
from .errors import (Cancelled, ImageLoadError, InputMismatchError, MethodError, ModelLoadError,
                     SegExplainError, UnsafeConfigError)
from .explainers.base import Explanation, explain, explain_iter, methods
from .io import LoadedImage, load_image, save_image
from .models import SegModel, load_model

__version__ = "0.1.0"


def agg2exp(model, images, method="smoothgrad", extra_rois=None, **params):
    """Agg2Exp class-to-class importance over images (see :mod:`seg_explain.aggregate`)."""
    from .aggregate import agg2exp as _agg2exp

    return _agg2exp(model, images, method=method, extra_rois=extra_rois, **params)


__all__ = ["load_model", "load_image", "save_image", "explain", "explain_iter", "agg2exp", "methods",
           "SegModel", "LoadedImage", "Explanation", "SegExplainError", "ImageLoadError",
           "ModelLoadError", "UnsafeConfigError", "InputMismatchError", "MethodError", "Cancelled"]
