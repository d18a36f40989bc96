"""The model's grid for an image: mapping arrays between an image's grid and a model's grid
(orientation + spacing; :class:`ModelGrid`).

Written once and used by inference, every explainer (attributions go back to the image
grid) and RoI masks (which come from the image grid).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# torch is imported inside the methods: io (and napari's reader) import this module for
# invert_ornt and must stay cheap

PROJECT_AXCODES = ("S", "P", "L")  # what load_image returns for 3D, axes (Z, Y, X)


@dataclass
class ModelGrid:
    """Image grid -> model grid: an orientation change (3D) then a resampling.

    ``image_shape`` / ``model_shape`` are spatial shapes. ``ornt`` is a nibabel orientation
    transform from the project's axes to the model's axes (None = identity).
    """

    image_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    ornt: np.ndarray | None = None

    @property
    def identity(self) -> bool:
        return self.ornt is None and tuple(self.image_shape) == tuple(self.model_shape)

    @property
    def oriented_shape(self) -> tuple[int, ...]:
        if self.ornt is None:
            return tuple(self.image_shape)
        return tuple(int(self.image_shape[int(a)]) for a in np.argsort(self.ornt[:, 0]))

    # ---- numpy / torch helpers -------------------------------------------------------
    def reorient(self, arr: np.ndarray, inverse: bool = False) -> np.ndarray:
        if self.ornt is None:
            return arr
        from nibabel import orientations as o

        t = invert_ornt(self.ornt) if inverse else self.ornt
        lead = arr.ndim - len(self.image_shape)
        moved = np.moveaxis(arr, list(range(lead)), list(range(arr.ndim - lead, arr.ndim)))
        out = o.apply_orientation(moved, t)
        return np.ascontiguousarray(np.moveaxis(out, list(range(arr.ndim - lead, arr.ndim)),
                                                list(range(lead))))

    @staticmethod
    def _resize(arr, shape: tuple[int, ...], order: int):
        """Resize the trailing spatial axes of ``arr`` (numpy or torch) to ``shape``."""
        import torch
        import torch.nn.functional as F
        sd = len(shape)
        if tuple(arr.shape[-sd:]) == tuple(shape):
            return arr
        is_np = isinstance(arr, np.ndarray)
        t = torch.as_tensor(arr) if is_np else arr
        lead = t.shape[:-sd]
        dtype = t.dtype
        x = t.reshape(1, -1, *t.shape[-sd:]).float()
        mode = "nearest" if order == 0 else ("bilinear" if sd == 2 else "trilinear")
        kw = {} if order == 0 else {"align_corners": False}
        y = F.interpolate(x, size=tuple(shape), mode=mode, **kw).reshape(*lead, *shape)
        if order == 0:
            y = y.to(dtype)
        return y.numpy() if is_np else y

    def to_model(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """Image-grid array (leading axes allowed) -> model grid. order 0 for masks."""
        a = self.reorient(np.asarray(arr), inverse=False)
        return self._resize(a, self.model_shape, order)

    def to_image(self, arr, order: int = 1):
        """Model-grid array (numpy) -> image grid by interpolation. order 0 for label maps
        and block maps (nearest neighbour), 1 for heat maps (linear)."""
        a = self._resize(arr, self.oriented_shape, order)
        return self.reorient(np.asarray(a), inverse=True)

    def adjoint_to_image(self, arr) -> np.ndarray:
        """Model-grid array ``(..., *model_shape)`` -> image grid by the **adjoint** of
        :meth:`to_model` (``order=1``), numpy float32 out.

        ``to_model`` is ``A = resize ∘ reorient``, a linear map of the image; a gradient
        ``∂f/∂x`` on the model grid becomes ``∂f/∂X = Aᵀ ∂f/∂x`` on the image grid (the chain
        rule through the resampling). ``reorient`` is a permutation with flips, so its adjoint
        is its inverse; ``resize`` is ``F.interpolate`` (bi/trilinear, ``align_corners=False``),
        whose adjoint is the vector-Jacobian product through that very call (float64). Its
        weights sum to 1 for every model voxel, so sums are preserved exactly:
        ``Σ Aᵀ y = ⟨A 1, y⟩ = Σ y``. Identity grids return the array unchanged.
        """
        import torch
        import torch.nn.functional as F
        a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if self.identity:
            return a.astype(np.float32, copy=False)
        sd = len(self.model_shape)
        src = self.oriented_shape
        if tuple(a.shape[-sd:]) != tuple(self.model_shape):
            raise ValueError(f"array of shape {a.shape} is not on the model grid {tuple(self.model_shape)}")
        if tuple(src) != tuple(self.model_shape):
            lead = a.shape[:-sd]
            y = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).reshape(1, -1, *self.model_shape)
            z = torch.zeros((1, y.shape[1]) + tuple(src), dtype=torch.float64, requires_grad=True)
            mode = "bilinear" if sd == 2 else "trilinear"
            with torch.enable_grad():
                out = F.interpolate(z, size=tuple(self.model_shape), mode=mode, align_corners=False)
                (g,) = torch.autograd.grad(out, z, y)
            a = g.reshape(*lead, *src).numpy()
        return self.reorient(a, inverse=True).astype(np.float32)


def invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (axis permutation + flips)."""
    inv = np.zeros_like(ornt)
    for i, (j, flip) in enumerate(ornt):
        inv[int(j)] = [i, flip]
    return inv


def orientation_transform(model_axcodes) -> np.ndarray | None:
    """nibabel transform from the project's (S, P, L) axes to a model's axcodes."""
    if not model_axcodes:
        return None
    from nibabel import orientations as o

    codes = tuple(str(c).upper() for c in model_axcodes)
    if codes == PROJECT_AXCODES:
        return None
    return o.ornt_transform(o.axcodes2ornt(PROJECT_AXCODES), o.axcodes2ornt(codes))


def model_shape_for(image_shape, image_spacing, model_spacing, ornt) -> tuple[int, ...]:
    """Spatial shape on the model grid for an image of ``image_shape`` at ``image_spacing``."""
    shape = list(image_shape)
    spacing = list(image_spacing) if image_spacing is not None else None
    if ornt is not None:
        order = np.argsort(ornt[:, 0])
        shape = [shape[int(a)] for a in order]
        if spacing is not None:
            spacing = [spacing[int(a)] for a in order]
    if spacing is None or model_spacing is None:
        return tuple(shape)
    out = []
    for n, s, ms in zip(shape, spacing, model_spacing):
        if abs(s - ms) / ms < 0.01:
            out.append(n)
        else:
            out.append(max(1, int(round(n * s / ms))))
    return tuple(out)
