"""The shared RoI target f̂_c (METHODS.md "Shared target"), written once.

f̂_c(x) = Σ_{v ∈ R} f(x)[c, v]: the sum of class-c logits over the RoI voxels R, with R
fixed from the clean image. Every gradient method, both CAMs, KernelSHAP and Agg2Exp
explain this scalar. For a one-channel (sigmoid) model class 1 is the logit itself and
class 0 (background) its negation.
"""
from __future__ import annotations

import numpy as np
import torch

from .checks import require_finite
from .errors import InputMismatchError

ROI_MODES = ("mask", "intersection", "prediction")


def class_logit(logits: torch.Tensor, c: int, sigmoid: bool) -> torch.Tensor:
    """Class-c logit map from a ``(B, L, *S)`` batch -> ``(B, *S)``."""
    if sigmoid:
        return logits[:, 0] if c == 1 else -logits[:, 0]
    return logits[:, c]


def roi_sum(logits: torch.Tensor, c: int, roi: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """f̂_c for a batch: ``(B, L, *S)`` logits, boolean ``roi`` of shape ``S`` -> ``(B,)``."""
    m = class_logit(logits, c, sigmoid)
    r = roi.to(device=m.device, dtype=m.dtype)
    return (m * r).flatten(1).sum(1)


def roi_sums(logits: torch.Tensor, classes, rois, sigmoid: bool = False) -> torch.Tensor:
    """f̂ for several (class, RoI) pairs at once -> ``(B, K)`` (shared forward pass)."""
    return torch.stack([roi_sum(logits, c, r, sigmoid) for c, r in zip(classes, rois)], dim=1)


def resolve_roi(roi, predicted: np.ndarray, target: int, mode: str | None = None,
                label: int | None = None) -> np.ndarray:
    """The RoI as a boolean mask on the image grid.

    ``roi=None``: the voxels predicted as ``target``. A user mask (bool or labels; with
    ``label`` only that value) is used as given (``mode="mask"``) or intersected with the
    prediction (``mode="intersection"``). Raises InputMismatchError on a wrong shape or an
    empty RoI (an empty target would explain nothing).
    """
    if mode is not None and mode not in ROI_MODES:
        raise InputMismatchError(f"roi_mode must be one of {ROI_MODES}, got {mode!r}")
    pred_mask = np.asarray(predicted) == target
    if roi is None or mode == "prediction":
        r = pred_mask
        if not r.any():
            raise InputMismatchError(
                f"Empty RoI: the model predicts no voxel of class {target} in this image; "
                "paint an RoI or choose a class that is present")
        return r
    m = np.asarray(roi)
    require_finite(m, "The RoI mask")   # NaN != 0 would silently make every voxel RoI
    if m.shape != pred_mask.shape:
        raise InputMismatchError(
            f"RoI shape {m.shape} does not match the image's spatial shape {pred_mask.shape}")
    r = (m == label) if label is not None else (m != 0)
    if mode == "intersection":
        r = r & pred_mask
    if not r.any():
        raise InputMismatchError(
            "Empty RoI: the mask has no voxel" + (f" with label {label}" if label is not None else "")
            + (" inside the predicted class" if mode == "intersection" else "")
            + "; paint a region first")
    return r
