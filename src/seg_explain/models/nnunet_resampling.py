"""nnU-Net's resampling (``resample_data_or_seg_to_shape`` with the plans' kwargs), and its
exact adjoint.

The very ``scipy.ndimage.zoom`` / ``map_coordinates`` calls scikit-image's ``resize`` makes
for nnU-Net (order 3, edge mode, clipped to the input range; "separate z" with order 0 along
an axis more than 3x coarser). Logits go back to the image with the plans' probability
resampling (order 1), then nnU-Net's argmax. Gradient maps go back through the exact adjoint
of the data resampling's linear part (sparse per-axis matrices; the final clip to the input
range is not differentiated).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ANISO_THRESHOLD = 3          # nnunetv2.configuration.ANISO_THRESHOLD


def compute_new_shape(old_shape, old_spacing, new_spacing) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``."""
    return tuple(int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape))


def _separate_z(force, current, new, threshold) -> int | None:
    """nnU-Net's ``determine_do_sep_z_and_axis`` -> the axis resampled separately, or None."""
    def lowres(sp):
        sp = np.asarray(sp, float)
        return np.where(max(sp) / sp == 1)[0]

    def aniso(sp):
        return (np.max(sp) / np.min(sp)) > threshold

    if force is not None:
        axis = lowres(current) if force else None
    elif aniso(current):
        axis = lowres(current)
    elif aniso(new):
        axis = lowres(new)
    else:
        axis = None
    if axis is None or len(axis) != 1:
        return None
    return int(axis[0])


def _sk_resize(img: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(img, shape, order, mode="edge", anti_aliasing=False)`` on a
    float64 array: the scipy call it makes, then its clip to the input's range."""
    from scipy import ndimage as ndi

    factors = np.divide(img.shape, shape)
    out = ndi.zoom(img, [1 / f for f in factors], order=order, mode="nearest", cval=0, grid_mode=True)
    if out.shape != tuple(shape):  # pragma: no cover - scipy rounds like skimage expects
        raise RuntimeError(f"zoom gave {out.shape}, expected {tuple(shape)}")
    np.clip(out, np.asarray(np.min(img)), np.asarray(np.max(img)), out=out)
    return out


@lru_cache(maxsize=256)
def _axis_matrix(n_in: int, n_out: int, order: int, separate: bool):
    """Sparse ``(n_out, n_in)`` matrix of one axis of the resampling (without the clip):
    ``ndimage.zoom`` in grid mode (``separate=False``) or nnU-Net's separate-z
    ``map_coordinates`` along that axis. The n-D resampling is the tensor product of these
    (scipy's splines are separable), which is what makes its exact adjoint cheap."""
    from scipy import ndimage as ndi
    from scipy import sparse

    eye = np.eye(n_in)
    cols = []
    for j in range(n_in):
        if separate:
            coords = (float(n_in) / n_out) * (np.arange(n_out) + 0.5) - 0.5
            cols.append(ndi.map_coordinates(eye[j], [coords], order=order, mode="nearest"))
        else:
            cols.append(ndi.zoom(eye[j], n_out / n_in, order=order, mode="nearest", cval=0, grid_mode=True))
    m = np.stack(cols, axis=1)
    m[np.abs(m) < 1e-13 * max(1.0, np.abs(m).max())] = 0.0
    return sparse.csr_matrix(m)


@dataclass(frozen=True)
class Resampling:
    """nnU-Net's ``resample_data_or_seg(is_seg=False)`` from ``in_shape`` to ``out_shape``.

    ``axis`` is the separately resampled ("z") axis or None; ``order`` the in-plane / n-D
    spline order and ``order_z`` the order along ``axis``."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    order: int
    order_z: int
    axis: int | None

    @classmethod
    def plan(cls, in_shape, out_shape, current_spacing, new_spacing, order=3, order_z=0,
             force_separate_z=None, threshold=ANISO_THRESHOLD) -> Resampling:
        axis = _separate_z(force_separate_z, current_spacing, new_spacing, threshold)
        return cls(tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape), int(order),
                   int(order_z), axis)

    @property
    def identity(self) -> bool:
        return self.in_shape == self.out_shape

    def with_order(self, order: int) -> Resampling:
        return Resampling(self.in_shape, self.out_shape, order, min(order, self.order_z), self.axis)

    def apply(self, data: np.ndarray) -> np.ndarray:
        """``(L, *in_shape)`` -> ``(L, *out_shape)`` float64, as nnU-Net computes it."""
        if self.identity:
            return np.asarray(data, np.float64)
        data = np.asarray(data, np.float64)
        out = np.zeros((data.shape[0],) + self.out_shape)
        a = self.axis
        for c in range(data.shape[0]):
            if a is None:
                out[c] = _sk_resize(data[c], self.out_shape, self.order)
                continue
            plane = tuple(s for i, s in enumerate(self.out_shape) if i != a)
            tmp = list(self.out_shape)
            tmp[a] = self.in_shape[a]
            here = np.zeros(tmp)
            for s in range(self.in_shape[a]):
                sl = (slice(None),) * a + (s,)
                here[sl] = _sk_resize(data[c][sl], plane, self.order)
            if self.in_shape[a] == self.out_shape[a]:
                out[c] = here
            elif self.order_z == 0:
                idx = self._z_index()
                out[c] = np.take(here, idx, axis=a)
            else:
                m = _axis_matrix(self.in_shape[a], self.out_shape[a], self.order_z, True)
                out[c] = _along(m, here, a)
        return out

    def _z_index(self) -> np.ndarray:
        from scipy import ndimage as ndi

        n_in, n_out = self.in_shape[self.axis], self.out_shape[self.axis]
        coords = (float(n_in) / n_out) * (np.arange(n_out) + 0.5) - 0.5
        return np.rint(ndi.map_coordinates(np.arange(n_in, dtype=float), [coords], order=0,
                                           mode="nearest")).astype(np.int64)

    def matrices(self) -> list:
        """Per-axis sparse matrices (None: the axis is unchanged)."""
        mats = []
        for i, (n_in, n_out) in enumerate(zip(self.in_shape, self.out_shape)):
            if n_in == n_out:
                mats.append(None)
            elif i == self.axis:
                mats.append(_axis_matrix(n_in, n_out, self.order_z, True))
            else:
                mats.append(_axis_matrix(n_in, n_out, self.order, False))
        return mats

    def linear(self, data: np.ndarray) -> np.ndarray:
        """The linear part (no clip) of :meth:`apply`, from per-axis matrices (float64)."""
        out = np.asarray(data, np.float64)
        if self.identity:
            return out
        for i, m in enumerate(self.matrices()):
            if m is not None:
                out = _along(m, out, out.ndim - len(self.in_shape) + i)
        return out

    def adjoint(self, data: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`linear`: ``(..., *out_shape)`` -> ``(..., *in_shape)``."""
        out = np.asarray(data, np.float64)
        if self.identity:
            return out
        for i, m in enumerate(self.matrices()):
            if m is not None:
                out = _along(m.T.tocsr(), out, out.ndim - len(self.in_shape) + i)
        return out


def _along(m, arr: np.ndarray, axis: int) -> np.ndarray:
    """Sparse matrix ``m`` applied along ``axis`` of ``arr``."""
    moved = np.moveaxis(arr, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    res = np.asarray(m @ flat).reshape((m.shape[0],) + moved.shape[1:])
    return np.moveaxis(res, 0, axis)
