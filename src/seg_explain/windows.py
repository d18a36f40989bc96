"""Sliding-window geometry, written once (METHODS.md "Gradient family").

An image larger than the model's patch goes through the network window by window, exactly
as ``monai.inferers.sliding_window_inference`` does it (what :meth:`SegModel.logits_tensor`
runs):

1. every axis shorter than the patch is zero-padded to the patch (``cval=0``, ``diff // 2``
   before, the rest after);
2. the windows are ``monai.data.utils.dense_patch_slices`` of the padded shape with the
   scan interval ``int(patch · (1 − overlap))`` (the whole axis where the padded axis equals
   the patch), so every window has the patch's shape;
3. the blended output is ``Σ_k w_k · out_k / Σ_k w_k`` (weights in
   :mod:`seg_explain.explainers.engine`), cropped back to the image.

:class:`Tiling` holds that geometry; windows are slice tuples in the **padded** grid and
:meth:`Tiling.crop` / :meth:`Tiling.add_to` move arrays between the image grid and a window
(the padding reads as zeros and is dropped on the way back). An image that fits the patch
is not windowed at all (one window: the whole image, no padding), as in ``logits_tensor``.

Helpers:

- :func:`tile` ``(shape, patch, overlap) -> Tiling`` MONAI's geometry
- :func:`model_tiling` the tiling a :class:`~seg_explain.models.segmodel.SegModel` uses for a
  prepared image of a given shape
- :func:`window_slices`, :func:`model_windows` the window slices alone
- :func:`windows_touching` the windows that hold any voxel of a mask

Blending weights and the accumulator that uses them live in
:mod:`seg_explain.explainers.engine`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Window = tuple  # tuple[slice, ...] over the spatial axes (padded grid)


def scan_interval(shape: Sequence[int], patch: Sequence[int], overlap: float = 0.25) -> tuple[int, ...]:
    """MONAI's scan interval (``monai.inferers.utils._get_scan_interval``) on the padded shape."""
    out = []
    for s, p in zip(shape, patch):
        if p == s:
            out.append(int(p))
        else:
            out.append(max(1, int(p * (1 - float(overlap)))))
    return tuple(out)


def window_shape(win: Window) -> tuple[int, ...]:
    return tuple(int(s.stop - s.start) for s in win)


@dataclass(frozen=True)
class Tiling:
    """MONAI's sliding-window geometry for an image of spatial ``shape``.

    ``pads``: ``(low, high)`` zero padding per axis; ``windows``: slice tuples in the padded
    grid, each of shape ``patch``.
    """

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    windows: tuple[Window, ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + lo + hi for s, (lo, hi) in zip(self.shape, self.pads))

    @property
    def padded(self) -> bool:
        return any(lo or hi for lo, hi in self.pads)

    def __len__(self) -> int:
        return len(self.windows)

    def inner(self, win: Window) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The part of ``win`` inside the image: ``(image slices, window slices)``."""
        src, dst = [], []
        for s, n, (lo, _) in zip(win, self.shape, self.pads):
            a, b = max(s.start, lo), min(s.stop, lo + n)
            src.append(slice(a - lo, max(a, b) - lo))
            dst.append(slice(a - s.start, max(a, b) - s.start))
        return tuple(src), tuple(dst)

    def crop(self, t: torch.Tensor, win: Window) -> torch.Tensor:
        """Window ``win`` of an image-grid tensor ``(..., *shape)``, zeros in the padding."""
        sd = len(self.shape)
        lead = (slice(None),) * (t.ndim - sd)
        if not self.padded:
            return t[lead + tuple(win)]
        src, dst = self.inner(win)
        out = torch.zeros(tuple(t.shape[:-sd]) + window_shape(win), dtype=t.dtype, device=t.device)
        out[lead + dst] = t[lead + src]
        return out

    def add_to(self, acc: torch.Tensor, win: Window, value: torch.Tensor) -> None:
        """``acc[..., image part of win] += value[..., same part]`` (padding dropped)."""
        sd = len(self.shape)
        lead = (slice(None),) * (acc.ndim - sd)
        src, dst = self.inner(win)
        acc[lead + src] += value[(slice(None),) * (value.ndim - sd) + dst].to(acc.device, acc.dtype)

    def touching(self, mask: torch.Tensor) -> list[int]:
        """Indices of the windows holding at least one True voxel of an image-grid ``mask``."""
        out = []
        for i, w in enumerate(self.windows):
            src, _ = self.inner(w)
            if bool(mask[src].any()):
                out.append(i)
        return out


def whole(shape: Sequence[int]) -> Tiling:
    """One window: the whole image, no padding (an image that fits the patch)."""
    shape = tuple(int(s) for s in shape)
    return Tiling(shape, shape, tuple((0, 0) for _ in shape), (tuple(slice(0, s) for s in shape),))


def tile(shape: Sequence[int], patch: Sequence[int] | None, overlap: float = 0.25) -> Tiling:
    """``sliding_window_inference``'s padding and windows for ``shape`` and ``patch``.

    ``patch=None`` (or non-positive entries) means the whole axis, as in MONAI.
    """
    from monai.data.utils import dense_patch_slices

    shape = tuple(int(s) for s in shape)
    if not 0 <= float(overlap) < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if patch is None:
        return whole(shape)
    if len(patch) != len(shape):
        raise ValueError(f"patch {tuple(patch)} and shape {tuple(shape)} differ in dimensions")
    roi = tuple(int(p) if p and p > 0 else s for s, p in zip(shape, patch))
    pads = tuple(((max(p - s, 0)) // 2, max(p - s, 0) - max(p - s, 0) // 2) for s, p in zip(shape, roi))
    padded = tuple(max(s, p) for s, p in zip(shape, roi))
    wins = tuple(tuple(slice(int(s.start), int(s.stop)) for s in sl)
                 for sl in dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap),
                                              return_slice=True))
    return Tiling(shape, roi, pads, wins)


def model_tiling(model, shape: Sequence[int]) -> Tiling:
    """The tiling ``model`` uses for a prepared image of spatial ``shape`` (model grid):
    MONAI's sliding windows when the image exceeds the patch on some axis, else the whole
    image (what :meth:`SegModel.logits_tensor` does)."""
    shape = tuple(int(s) for s in shape)
    if not model.needs_windows(shape):
        return whole(shape)
    own = getattr(model, "tiling", None)      # a model with its own windows (nnU-Net's steps)
    if callable(own):
        return own(shape)
    return tile(shape, model.patch_size, getattr(model, "overlap", 0.25))


def window_slices(shape: Sequence[int], patch: Sequence[int] | None, overlap: float = 0.25) -> list[Window]:
    """MONAI's sliding windows for ``shape`` (slices in the padded grid, see :func:`tile`)."""
    return list(tile(shape, patch, overlap).windows)


def model_windows(model, shape: Sequence[int]) -> list[Window]:
    """Windows ``model`` needs for a prepared image of spatial ``shape`` (see :func:`model_tiling`)."""
    return list(model_tiling(model, shape).windows)


def windows_touching(windows: Sequence[Window], mask) -> list[int]:
    """Indices of the windows that contain at least one True voxel of ``mask`` (same grid)."""
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    return [i for i, w in enumerate(windows) if bool(m[w].any())]
