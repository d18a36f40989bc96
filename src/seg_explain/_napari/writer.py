"""npe2 writers: save an Image (e.g. an attribution) or a Labels layer as NIfTI or TIFF.

When the layer (or the image it was computed from) came from a file, its metadata holds a
geometry-only ``LoadedImage`` and :func:`seg_explain.io.save_image` writes the file back
with that file's orientation and affine (NIfTI in -> NIfTI out, same header). Otherwise
the affine is built from the layer's ``scale`` and ``translate`` (project convention:
3D arrays are LPS ``(Z, Y, X)``). TIFF keeps the spacing (ImageJ metadata).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _like(data: np.ndarray, meta: dict[str, Any]):
    from .layers import GEOMETRY_KEY, make_loaded

    md = meta.get("metadata") or {}
    li = md.get(GEOMETRY_KEY) if isinstance(md, dict) else None
    shape = tuple(np.shape(data))
    if li is not None and getattr(li, "spatial_dims", None) in (2, 3):
        sd = li.spatial_dims
        grid = li.meta.get("grid_shape") if isinstance(li.meta, dict) else None
        fits = len(shape) >= sd and (grid is None or tuple(grid) == shape[-sd:])
        if fits:
            return li
    sd = 3 if len(shape) >= 3 else 2
    scale = tuple(meta.get("scale") or (1.0,) * len(shape))[-sd:]
    translate = tuple(meta.get("translate") or (0.0,) * len(shape))[-sd:]
    return make_loaded(np.zeros((0,) * sd), scale, translate, sd)


def _write(path: str, data: Any, meta: dict[str, Any], labels: bool) -> list[str]:
    from ..io import save_image
    from .layers import RAW_KEY

    arr = np.asarray(data)
    md = meta.get("metadata") or {}
    raw = md.get(RAW_KEY) if isinstance(md, dict) else None
    if not labels and raw is not None and np.shape(raw) == arr.shape:
        arr = np.asarray(raw)       # a result is saved with its raw values, whatever its display
    if labels:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        elif not np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.int32)
        elif arr.dtype == np.int64:
            arr = arr.astype(np.int32 if arr.max(initial=0) >= 32768 else np.int16)
    like = _like(arr, meta)
    _refuse_source(path, like, meta)
    out = save_image(path, arr, like=like)   # atomic: a failed write keeps the old file
    return [str(out)]


def _refuse_source(path: str, like, meta: dict[str, Any]) -> None:
    """A result layer (attribution, prediction, outline) must not be saved over the image
    file it was computed from."""
    from ..files import check_output
    from .layers import META_KEY

    md = meta.get("metadata") or {}
    kind = ((md.get(META_KEY) or {}) if isinstance(md, dict) else {}).get("kind")
    src = getattr(like, "path", None)
    if kind not in (None, "image") and src:
        check_output(path, [src])


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Save an Image layer (attribution maps keep their float values and sign)."""
    return _write(path, data, meta, labels=False)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Save a Labels layer (integers)."""
    return _write(path, data, meta, labels=True)
