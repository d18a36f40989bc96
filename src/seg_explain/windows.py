"""MONAI's sliding-window geometry and blend weights (METHODS.md "Gradient family").

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

- :class:`WindowWeights` the blending weights ``w_k / Σw`` of a tiling, from the model's
  importance map (:meth:`SegModel.importance_map`)

Every method that evaluates a model asks the model for its tiling and weights
(:meth:`SegModel.tiling`, :meth:`SegModel.window_weights`); nothing here decides them for a
model. A model that windows otherwise answers with its own :class:`Tiling` and importance
map (nnU-Net: ``models/nnunet_model.py``, its step rule and float16 Gaussian), and the
explainers blend with whatever the model answered. MONAI is imported only when MONAI's
geometry or importance map is asked for.
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
    the model's own answer (:meth:`SegModel.tiling <seg_explain.models.segmodel.SegModel.tiling>`;
    MONAI's windows by default, nnU-Net's steps for nnU-Net models)."""
    return model.tiling(tuple(int(s) for s in shape))


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


# -------------------------------------------------------------------- blend weights --
BLEND_MODES = ("constant", "gaussian")
DEFAULT_SIGMA_SCALE = 0.125   # sliding_window_inference's default


def check_blend(blend: str) -> str:
    mode = str(blend or "constant").lower()
    if mode not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    return mode


def monai_importance_map(patch: Sequence[int], blend: str = "constant",
                         sigma_scale: float = DEFAULT_SIGMA_SCALE) -> torch.Tensor:
    """``monai.data.utils.compute_importance_map`` for a window of shape ``patch`` (float32,
    CPU): ones (``"constant"``) or a Gaussian with σ = ``sigma_scale`` · patch."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(p) for p in patch), mode=check_blend(blend),
                                  sigma_scale=sigma_scale, device="cpu", dtype=torch.float32)


class WindowWeights:
    """The blending weights of a :class:`Tiling`: the blended output is
    ``Σ_k w_k · out_k / Σw`` (as ``sliding_window_inference`` and nnU-Net blend).

    :meth:`of` gives ``w / Σw`` on one window (``None`` when there is a single window: the
    weight is 1 everywhere). ``importance`` is the window's importance map, ``norm`` the
    per-voxel sum of the importance maps of all windows (padded grid), both float32.
    Built by the model (:meth:`SegModel.window_weights`); ``importance`` may be given, else
    MONAI's map for ``blend`` / ``sigma_scale`` is used.
    """

    def __init__(self, tiling: Tiling, blend: str = "constant", sigma_scale: float = DEFAULT_SIGMA_SCALE,
                 importance: torch.Tensor | None = None):
        mode = check_blend(blend)
        self.tiling = tiling
        self.single = len(tiling.windows) == 1
        self.importance = None
        self.norm = None
        if not self.single:
            self.importance = (importance.detach().to("cpu", torch.float32) if importance is not None else
                               monai_importance_map(tiling.patch, mode, sigma_scale))
            self.norm = torch.zeros(tiling.padded_shape, dtype=torch.float32)
            for w in tiling.windows:
                self.norm[w] += self.importance

    @classmethod
    def for_model(cls, model, shape) -> WindowWeights:
        """The weights ``model`` blends with on a prepared image of spatial ``shape``
        (:meth:`SegModel.window_weights`)."""
        return model.window_weights(tuple(int(s) for s in shape))

    def of(self, win: Window) -> torch.Tensor | None:
        """``w / Σw`` on window ``win`` (window shape, float32), or None for weight 1."""
        if self.single:
            return None
        return self.importance / self.norm[win]
