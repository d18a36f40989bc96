"""The anatomy a result is read against: the body (or head) mask, and the 3D context volume
(the anatomy inside the body, as a faint attenuated MIP under the evidence surfaces, so the
surfaces are not buried in a translucent volume and the labels need not be shown). No viewer
imports."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTEXT_OPACITY = 0.45          # the 3D context: a faint attenuated MIP under the evidence
CONTEXT_ATTENUATION = 0.15


def body_mask(image: np.ndarray, prediction: np.ndarray | None = None) -> np.ndarray:
    """The body (or head): the predicted foreground when there is a prediction, else the
    voxels above Otsu's threshold of the image, holes filled, largest component."""
    from scipy import ndimage

    if prediction is not None and np.any(prediction > 0):
        m = np.asarray(prediction) > 0
    else:
        x = np.asarray(image, np.float32)
        if x.ndim > 3:
            x = x.mean(0)
        hist, edges = np.histogram(x[np.isfinite(x)], bins=256)
        p = hist / max(hist.sum(), 1)
        w = np.cumsum(p)
        mu = np.cumsum(p * edges[:-1])
        between = (mu[-1] * w - mu) ** 2 / np.maximum(w * (1 - w), 1e-12)
        m = x > edges[int(np.argmax(between))]
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(m)


@dataclass
class ContextVolume:
    """The 3D context of a result: ``data`` (float32, 0 outside the body, the body's 1st
    percentile at 0) shown with ``contrast_limits`` as an attenuated MIP."""

    data: np.ndarray
    contrast_limits: tuple[float, float]
    name: str


def context_volume(image: np.ndarray, prediction: np.ndarray | None = None, name: str = "anatomy"
                   ) -> ContextVolume:
    """The anatomy inside :func:`body_mask` (channels averaged), shifted so the body's 1st
    percentile is 0 (CT's negative values included) and everything outside the body is 0,
    with contrast limits up to the body's 99th percentile."""
    x = np.asarray(image, np.float32)
    if prediction is not None and x.ndim == np.ndim(prediction) + 1:
        x = x.mean(0)
    elif prediction is None and x.ndim == 4:
        x = x.mean(0)
    m = body_mask(x, prediction)
    inside = x[m & np.isfinite(x)]
    lo, hi = (float(np.percentile(inside, 1)), float(np.percentile(inside, 99))) if inside.size else (0.0, 1.0)
    data = np.where(m & np.isfinite(x), np.clip(x - lo, 0, None), 0).astype(np.float32)
    top = hi - lo if hi > lo else 1.0
    return ContextVolume(data, (0.0, top), f"{name} · 3D context")
