"""Sliding windows for explainers, written once (METHODS.md "Gradient family").

An image larger than the model's patch is explained window by window: the windows are
MONAI's (``monai.data.utils.dense_patch_slices`` with the scan interval
``int(patch · (1 − overlap))`` that ``sliding_window_inference`` uses), each window's
explanation is computed on that window alone (for the shared target: the RoI voxels that
lie in the window), and the per-window maps are summed into the full volume and divided by
the number of windows that cover each voxel (or, with ``blend="gaussian"``, by the summed
Gaussian importance weights of ``monai.data.utils.compute_importance_map``).

So only one window goes through the network at a time (memory bounded by the window), and
where a voxel is covered by several windows its value is their plain (or weighted) mean.

Helpers:

- :func:`iter_windows` ``(shape, patch, overlap) -> [slice tuple, ...]``
- :func:`model_windows` the windows a :class:`~seg_explain.models.base.SegModel` needs for a
  prepared image (one window = the whole image when it fits the patch)
- :func:`windows_touching` the windows that hold any voxel of a mask
- :class:`WindowAccumulator` sum per-window maps, divide by the overlap count
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

Window = tuple  # tuple[slice, ...] over the spatial axes


def clip_patch(shape: Sequence[int], patch: Sequence[int] | None) -> tuple[int, ...]:
    """The window size: ``patch`` clipped to ``shape`` (whole axis where the patch is larger)."""
    if patch is None:
        return tuple(int(s) for s in shape)
    if len(patch) != len(shape):
        raise ValueError(f"patch {tuple(patch)} and shape {tuple(shape)} differ in dimensions")
    return tuple(int(min(s, p)) if p and p > 0 else int(s) for s, p in zip(shape, patch))


def scan_interval(shape: Sequence[int], patch: Sequence[int], overlap: float = 0.25) -> tuple[int, ...]:
    """MONAI's scan interval (``monai.inferers.utils._get_scan_interval``)."""
    out = []
    for s, p in zip(shape, patch):
        if p == s:
            out.append(int(p))
        else:
            out.append(max(1, int(p * (1 - float(overlap)))))
    return tuple(out)


def iter_windows(shape: Sequence[int], patch: Sequence[int] | None, overlap: float = 0.25) -> list[Window]:
    """MONAI sliding windows covering ``shape``: a list of slice tuples (spatial axes only).

    ``patch`` is clipped to ``shape``; an image that fits gives one window (the whole image).
    """
    from monai.data.utils import dense_patch_slices

    shape = tuple(int(s) for s in shape)
    if not 0 <= float(overlap) < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    p = clip_patch(shape, patch)
    if p == shape:
        return [tuple(slice(0, s) for s in shape)]
    return [tuple(slice(int(s.start), int(s.stop)) for s in sl)
            for sl in dense_patch_slices(shape, p, scan_interval(shape, p, overlap), return_slice=True)]


def model_windows(model, shape: Sequence[int]) -> list[Window]:
    """Windows ``model`` needs for a prepared image of spatial ``shape`` (model grid)."""
    shape = tuple(int(s) for s in shape)
    if not model.needs_windows(shape):
        return [tuple(slice(0, s) for s in shape)]
    return iter_windows(shape, model.patch_size, getattr(model, "overlap", 0.25))


def window_shape(win: Window) -> tuple[int, ...]:
    return tuple(int(s.stop - s.start) for s in win)


def windows_touching(windows: Sequence[Window], mask) -> list[int]:
    """Indices of the windows that contain at least one True voxel of ``mask``."""
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    return [i for i, w in enumerate(windows) if bool(m[w].any())]


def overlap_count(shape: Sequence[int], windows: Sequence[Window]) -> torch.Tensor:
    """Per-voxel number of windows covering it (float32 tensor of ``shape``)."""
    cnt = torch.zeros(tuple(shape), dtype=torch.float32)
    for w in windows:
        cnt[w] += 1
    return cnt


class WindowAccumulator:
    """Sum per-window maps into a volume and divide by the per-voxel window weight.

    ``shape`` is the spatial shape, ``lead`` extra leading axes of every map (e.g. the
    channels: ``(C,)``). The normaliser is computed from **all** ``windows`` (also those
    that never get an :meth:`add`, e.g. windows without RoI voxels, whose contribution is
    zero), so the result is the mean over every window that covers a voxel.
    ``blend="gaussian"`` weights each window by MONAI's Gaussian importance map instead.

    >>> acc = WindowAccumulator((64, 64), windows, lead=(1,))
    >>> for w in windows: acc.add(w, window_map)      # window_map: (1, *window_shape(w))
    >>> full = acc.result()                             # (1, 64, 64)
    """

    def __init__(self, shape: Sequence[int], windows: Sequence[Window], lead: Sequence[int] = (),
                 blend: str = "constant", sigma_scale: float = 0.125, dtype=torch.float32):
        self.shape = tuple(int(s) for s in shape)
        self.lead = tuple(int(n) for n in lead)
        self.windows = list(windows)
        self.blend = str(blend)
        if self.blend not in ("constant", "gaussian"):
            raise ValueError(f"blend must be 'constant' or 'gaussian', got {blend!r}")
        self.sigma_scale = sigma_scale
        self.sum = torch.zeros(self.lead + self.shape, dtype=dtype)
        self._wmaps: dict[tuple[int, ...], torch.Tensor] = {}
        self.norm = torch.zeros(self.shape, dtype=torch.float32)
        for w in self.windows:
            self.norm[w] += self.weight(w)

    def weight(self, win: Window):
        """The blending weight of one window (1, or its Gaussian importance map)."""
        if self.blend == "constant":
            return 1.0
        ws = window_shape(win)
        if ws not in self._wmaps:
            from monai.data.utils import compute_importance_map

            self._wmaps[ws] = compute_importance_map(ws, mode="gaussian", sigma_scale=self.sigma_scale,
                                                     device="cpu").float()
        return self._wmaps[ws]

    def add(self, win: Window, value) -> None:
        """Add the map of window ``win`` (shape ``(*lead, *window_shape(win))``)."""
        v = value.detach().to("cpu", self.sum.dtype) if isinstance(value, torch.Tensor) \
            else torch.as_tensor(np.asarray(value), dtype=self.sum.dtype)
        w = self.weight(win)
        idx = (slice(None),) * len(self.lead) + tuple(win)
        self.sum[idx] += v * w if self.blend == "gaussian" else v

    def result(self) -> torch.Tensor:
        """``sum / weight`` (0 where no window covers a voxel)."""
        n = self.norm
        return torch.where(n > 0, self.sum / n.clamp_min(1e-12), torch.zeros((), dtype=self.sum.dtype))
