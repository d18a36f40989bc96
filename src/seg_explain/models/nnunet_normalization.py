"""nnU-Net's preprocessing before resampling: cropping to the nonzero region and per-channel
normalisation.

- **Cropping** to the nonzero region (:func:`crop_to_nonzero`: any channel != 0, holes
  filled); outside it the network is never run and the label is background, as in nnU-Net.
- **Normalisation** per channel as ``plans.json`` says, with the stored intensity
  properties (:func:`intensity_properties`): ``CTNormalization``, ``ZScoreNormalization``
  (also inside the nonzero mask), ``NoNormalization``, ``RescaleTo01Normalization``,
  ``RGBTo01Normalization``; the same numpy operations in float32, before resampling
  (nnU-Net's order).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputMismatchError, ModelLoadError
from .nnunet_plans import quote_key


def normalize_channel(img: np.ndarray, scheme: str, use_mask: bool, props: dict, mask: np.ndarray) -> np.ndarray:
    """One channel, as nnU-Net's ``ImageNormalization.run`` (float32 numpy)."""
    eps = 1e-8
    if scheme == "ZScoreNormalization":
        image = img.astype(np.float32, copy=False)
        if use_mask:
            mean = image[mask].mean()
            std = image[mask].std()
            image[mask] = (image[mask] - mean) / (max(std, eps))
        else:
            mean = image.mean()
            std = image.std()
            image -= mean
            image /= (max(std, eps))
        return image
    if scheme == "CTNormalization":
        image = img.astype(np.float32, copy=False)
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], eps)
        return image
    if scheme == "NoNormalization":
        return img.astype(np.float32, copy=False)
    if scheme == "RescaleTo01Normalization":
        image = img.astype(np.float32, copy=False)
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
        return image
    if scheme == "RGBTo01Normalization":
        if img.min() < 0 or img.max() > 255:
            raise InputMismatchError("this nnU-Net model normalises RGB images (0..255); the image has "
                                     f"values in [{img.min()}, {img.max()}]")
        image = img.astype(np.float32, copy=False)
        image /= 255.
        return image
    raise AssertionError(scheme)  # pragma: no cover - validated at load


NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")


def intensity_properties(props: Any, scheme: str, key: str) -> dict:
    if scheme != "CTNormalization":
        return {}
    need = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if not isinstance(props, dict) or not all(
            isinstance(props.get(k), (int, float)) and not isinstance(props.get(k), bool)
            and math.isfinite(props[k]) for k in need):
        raise ModelLoadError(f"{quote_key(key)}: CTNormalization needs finite {', '.join(need)}")
    return {k: float(props[k]) for k in need}


def crop_to_nonzero(data: np.ndarray) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """nnU-Net's ``crop_to_nonzero``: (bbox, nonzero mask inside it) of a (C, *S) array."""
    from scipy.ndimage import binary_fill_holes

    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    mask = binary_fill_holes(mask)
    bbox = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        bbox.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[ax]))
    sl = tuple(slice(a, b) for a, b in bbox)
    return tuple(bbox), mask[sl]
