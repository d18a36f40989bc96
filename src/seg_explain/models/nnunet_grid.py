"""The image grid <-> an nnU-Net model's grid (:class:`NnUNetGrid`): reorientation to the
array nnU-Net reads, ``transpose_forward``, the crop to the nonzero box and nnU-Net's
resampling, each way, and the adjoint for gradient maps."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model_grid import ModelGrid
from .nnunet_resampling import Resampling


@dataclass
class NnUNetGrid(ModelGrid):
    """Image grid <-> nnU-Net's model grid: reorientation to the array nnU-Net reads,
    ``transpose_forward``, crop to the nonzero box, nnU-Net's resampling.

    Internally every array is 3D in nnU-Net's (transposed) axes; a 2D model's images are
    one slice ``(1, Y, X)``."""

    transpose: tuple[int, ...] | None = None
    two_d: bool = False
    t_shape: tuple[int, ...] = ()
    bbox: tuple[tuple[int, int], ...] = ()
    data_rs: Resampling | None = None        # cropped -> model (image data)
    prob_rs: Resampling | None = None        # model -> cropped (nnU-Net's probability resampling)

    @property
    def cropped(self) -> bool:
        return any(a != 0 or b != n for (a, b), n in zip(self.bbox, self.t_shape))

    @property
    def identity(self) -> bool:
        tr = self.transpose is None or tuple(self.transpose) == tuple(range(len(self.transpose)))
        return self.ornt is None and tr and not self.cropped and self.data_rs.identity

    # -- image grid <-> nnU-Net's full (transposed) array
    def _to_t(self, arr: np.ndarray) -> np.ndarray:
        a = self.reorient(np.asarray(arr), inverse=False)
        lead = a.ndim - len(self.image_shape)
        if self.two_d:
            return a[(slice(None),) * lead + (None,)]
        return a.transpose(list(range(lead)) + [lead + t for t in self.transpose])

    def _from_t(self, arr: np.ndarray) -> np.ndarray:
        lead = arr.ndim - 3
        if self.two_d:
            a = arr[(slice(None),) * lead + (0,)]
        else:
            back = np.argsort(self.transpose)
            a = arr.transpose(list(range(lead)) + [lead + int(t) for t in back])
        return self.reorient(np.ascontiguousarray(a), inverse=True)

    def _crop(self, arr: np.ndarray) -> np.ndarray:
        lead = arr.ndim - 3
        return arr[(slice(None),) * lead + tuple(slice(a, b) for a, b in self.bbox)]

    def _uncrop(self, arr: np.ndarray, fill=0.0) -> np.ndarray:
        lead = arr.shape[:arr.ndim - 3]
        out = np.empty(lead + tuple(self.t_shape), dtype=arr.dtype)
        f = np.asarray(fill, dtype=arr.dtype)
        out[...] = f.reshape(f.shape + (1, 1, 1)) if f.ndim else f
        out[(slice(None),) * len(lead) + tuple(slice(a, b) for a, b in self.bbox)] = arr
        return out

    def _model3(self, arr: np.ndarray) -> np.ndarray:
        a = np.asarray(arr)
        return a[(slice(None),) * (a.ndim - 2) + (None,)] if self.two_d else a

    def _model_out(self, arr: np.ndarray) -> np.ndarray:
        return arr[(slice(None),) * (arr.ndim - 3) + (0,)] if self.two_d else arr

    @staticmethod
    def _each(rs: Resampling, arr: np.ndarray, fn: str) -> np.ndarray:
        lead = arr.shape[:arr.ndim - 3]
        flat = arr.reshape((-1,) + arr.shape[-3:])
        out = getattr(rs, fn)(flat)
        return out.reshape(lead + out.shape[-3:])

    # -- ModelGrid interface
    def to_model(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """Image-grid array (leading axes allowed) -> model grid; ``order`` 0 for masks,
        1 for maps, 3 for image data (nnU-Net's data resampling)."""
        dtype = np.asarray(arr).dtype
        c = self._crop(self._to_t(arr))
        rs = self.data_rs if order == self.data_rs.order else self.data_rs.with_order(order)
        out = self._each(rs, c, "apply") if not rs.identity else c
        out = self._model_out(out)
        if order == 0:   # nearest neighbour copies values: back to the input's type exactly
            return np.ascontiguousarray(out.astype(dtype))
        return np.ascontiguousarray(out.astype(np.float32) if out.dtype == np.float64 else out)

    def to_image(self, arr, order: int = 1, fill=0.0) -> np.ndarray:
        """Model-grid array -> image grid: nnU-Net's probability resampling (``order`` >= 1;
        order 1 by its plans) or nearest neighbour (``order=0``), then the crop undone with
        ``fill`` (a scalar, or one value per leading channel)."""
        a = self._model3(arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr))
        dtype = a.dtype
        rs = self.prob_rs if order > 0 else self.prob_rs.with_order(0)
        out = self._each(rs, a, "apply") if not rs.identity else a
        if order == 0:   # nearest neighbour copies values: back to the input's type exactly
            out = out.astype(dtype)
        elif out.dtype == np.float64:   # nnU-Net keeps the input's float type
            out = out.astype(dtype if np.issubdtype(dtype, np.floating) else np.float32)
        return self._from_t(self._uncrop(out, fill))

    def adjoint_to_image(self, arr) -> np.ndarray:
        """Adjoint of :meth:`to_model` for image data: gradients w.r.t. the model input ->
        gradients w.r.t. the image the user gave (exact for the linear part of nnU-Net's
        resampling; zeros outside the crop, which the network never sees)."""
        a = self._model3(arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr))
        out = self._each(self.data_rs, a, "adjoint") if not self.data_rs.identity else a.astype(np.float64)
        return self._from_t(self._uncrop(out, 0.0)).astype(np.float32)
