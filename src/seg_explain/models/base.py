"""SegModel: one wrapper for every model format.

The public methods (``predict``, ``logits``) take raw images; explainers use the lower
level pieces, which all live in *model space* (the preprocessed network input on the
model's grid):

- ``prepare(image) -> Prepared``: validate, reorient/resample to the model grid, apply the
  bundle's intensity preprocessing; ``Prepared.x`` is a ``(C, *S)`` float tensor and
  ``Prepared.to_image`` / ``Prepared.roi_to_model`` map arrays between the grids.
- ``forward(x)``: differentiable logits of a ``(B, C, *S)`` batch, padded to the network's
  size divisor and cropped back; no sliding window (callers window with ``windows.py``).
- ``logits_tensor(x)``: inference-mode logits of one prepared image, sliding windows when
  it is larger than the model patch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputMismatchError, MethodError
from ..grid import GridMap, model_shape_for, orientation_transform
from ..io import LoadedImage


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


@dataclass
class Prepared:
    """An image made ready for the network (model space) and the way back."""

    x: torch.Tensor                    # (C, *S) preprocessed, model grid, on CPU
    grid: GridMap
    image_shape: tuple[int, ...]       # spatial shape of the image passed in

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def to_image(self, arr, order: int = 1) -> np.ndarray:
        """Model-grid array ``(..., *S)`` -> image grid ``(..., *image_shape)``."""
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().cpu().numpy()
        return self.grid.to_image(arr, order)

    def roi_to_model(self, mask: np.ndarray) -> np.ndarray:
        """Image-grid mask -> boolean model-grid mask (nearest neighbour)."""
        return self.grid.to_model(np.asarray(mask).astype(np.uint8), order=0).astype(bool)


class SegModel:
    """A segmentation network plus what is needed to run it on raw images."""

    def __init__(self, network: torch.nn.Module, *, spatial_dims: int, in_channels: int,
                 class_names: Sequence[str], patch_size: Sequence[int] | None = None,
                 spacing: Sequence[float] | None = None, axcodes: Sequence[str] | None = None,
                 preprocess: Sequence[Callable] = (), divisor: int = 1,
                 overlap: float = 0.25, sw_batch_size: int = 1, blend: str = "gaussian",
                 name: str = "", source: str = "", device: str | torch.device = "auto",
                 hookable: bool = True, meta: dict[str, Any] | None = None):
        self.device = resolve_device(device)
        self.network = network.to(self.device) if hasattr(network, "to") else network
        try:
            self.network.eval()
        except (AttributeError, NotImplementedError):  # torch.export modules
            pass
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.class_names = [str(c) for c in class_names]
        self.patch_size = tuple(int(p) for p in patch_size) if patch_size else None
        self.spacing = tuple(float(s) for s in spacing) if spacing else None
        self.axcodes = tuple(axcodes) if axcodes else None
        self.preprocess = list(preprocess)
        self.divisor = max(1, int(divisor))
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.blend = blend
        self.name = name
        self.source = source
        self.hookable = hookable
        self.meta = dict(meta or {})
        for p in getattr(self.network, "parameters", lambda: [])():
            p.requires_grad_(False)

    # ---------------------------------------------------------------- description --
    @property
    def out_channels(self) -> int:
        """Number of logit channels: 1 for sigmoid models, else ``len(class_names)``."""
        return 1 if self.sigmoid else len(self.class_names)

    @property
    def sigmoid(self) -> bool:
        return bool(self.meta.get("sigmoid", False))

    def __repr__(self) -> str:
        return (f"SegModel({self.name or self.source!r}, {self.spatial_dims}D, in={self.in_channels}, "
                f"classes={self.class_names}, patch={self.patch_size}, spacing={self.spacing}, "
                f"device={self.device})")

    def class_index(self, target: int | str) -> int:
        """A class name or index -> index into ``class_names`` (clear error if unknown)."""
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            if 0 <= int(target) < len(self.class_names):
                return int(target)
        elif isinstance(target, str):
            if target in self.class_names:
                return self.class_names.index(target)
            if target.isdigit():
                return self.class_index(int(target))
        raise InputMismatchError(
            f"Unknown target class {target!r}; the model's classes are "
            + ", ".join(f"{i}={n}" for i, n in enumerate(self.class_names)))

    # -------------------------------------------------------------------- geometry --
    def _as_channels_first(self, image) -> tuple[np.ndarray, tuple[float, ...] | None]:
        if isinstance(image, LoadedImage):
            arr, spacing, sd = image.data, image.spacing, image.spatial_dims
            if sd != self.spatial_dims:
                raise InputMismatchError(
                    f"This is a {self.spatial_dims}D model but the image is {sd}D"
                    + ("; pick a 2D slice or use a 3D model" if sd == 3 else ""))
            if image.channels == 1 and arr.ndim == sd:
                arr = arr[None]
        else:
            arr, spacing = np.asarray(image), None
            sd = self.spatial_dims
            if arr.ndim == sd:
                arr = arr[None]
            elif arr.ndim != sd + 1:
                raise InputMismatchError(
                    f"This is a {self.spatial_dims}D model: expected an image of shape "
                    f"{'(Y, X)' if sd == 2 else '(Z, Y, X)'} or with a leading channel axis, "
                    f"got shape {arr.shape}")
        if arr.shape[0] != self.in_channels:
            if self.in_channels == 1 and arr.shape[0] == 3 and self.spatial_dims == 2:
                arr = arr.astype(np.float32).mean(0, keepdims=True)  # RGB photo -> grey
            else:
                raise InputMismatchError(
                    f"The model expects {self.in_channels} channel(s) but the image has {arr.shape[0]}")
        if min(arr.shape[1:]) < 1:
            raise InputMismatchError(f"Empty image of shape {arr.shape}")
        return arr, spacing

    def prepare(self, image) -> Prepared:
        """Raw image (ndarray or LoadedImage) -> :class:`Prepared` in model space."""
        if isinstance(image, Prepared):
            return image
        arr, spacing = self._as_channels_first(image)
        ornt = orientation_transform(self.axcodes) if self.spatial_dims == 3 else None
        mshape = model_shape_for(arr.shape[1:], spacing, self.spacing, ornt)
        grid = GridMap(tuple(arr.shape[1:]), mshape, ornt)
        x = grid.to_model(arr.astype(np.float32), order=1)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        for tf in self.preprocess:
            t = tf(t)
        t = torch.as_tensor(t, dtype=torch.float32).contiguous()
        if hasattr(t, "as_tensor"):
            t = t.as_tensor()
        return Prepared(t, grid, tuple(arr.shape[1:]))

    # --------------------------------------------------------------------- forward --
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a ``(B, C, *S)`` batch (differentiable; padded to the size divisor)."""
        spatial = x.shape[2:]
        pads = []
        for n in reversed(spatial):
            extra = (-n) % self.divisor
            pads += [extra // 2, extra - extra // 2]
        xp = F.pad(x, pads) if any(pads) else x
        out = self.network(xp.to(self.device))
        if isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if any(pads):
            sl = [slice(None), slice(None)]
            for d, n in enumerate(spatial):
                lo = pads[2 * (len(spatial) - 1 - d)]
                sl.append(slice(lo, lo + n))
            out = out[tuple(sl)]
        return out

    def needs_windows(self, shape: Sequence[int]) -> bool:
        return self.patch_size is not None and any(s > p for s, p in zip(shape, self.patch_size))

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Inference-mode logits ``(L, *S)`` of one prepared image ``(C, *S)`` (CPU tensor)."""
        with torch.inference_mode():
            xb = x[None].to(self.device)
            if self.needs_windows(x.shape[1:]):
                from monai.inferers import sliding_window_inference

                out = sliding_window_inference(
                    xb, self.patch_size, self.sw_batch_size, self.forward,
                    overlap=self.overlap, mode=self.blend)
            else:
                out = self.forward(xb)
            return out[0].float().cpu()

    def labels_from_logits(self, logits):
        """Label map from logits ``(L, *S)``: argmax, or ``logit > 0`` for one channel."""
        if isinstance(logits, np.ndarray):
            return (logits[0] > 0).astype(np.int64) if logits.shape[0] == 1 else logits.argmax(0)
        return (logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)

    # ------------------------------------------------------------------ public API --
    def logits(self, image) -> np.ndarray:
        """Logits ``(L, *spatial)`` float32 on the grid of ``image``."""
        prep = self.prepare(image)
        lg = self.logits_tensor(prep.x).numpy()
        return prep.to_image(lg, order=1).astype(np.float32)

    def predict(self, image) -> np.ndarray:
        """Label map (int) with the spatial shape of ``image``."""
        return self.labels_from_logits(self.logits(image)).astype(np.int16 if len(self.class_names) < 32000 else np.int32)

    def check_hookable(self, method: str) -> None:
        if not self.hookable:
            raise MethodError(
                f"{method} needs to hook a layer inside the network, but this model "
                f"({self.source or 'compiled'}) is a compiled TorchScript/exported program with no "
                "hookable layers; use a gradient method (gradient, smoothgrad, integrated_gradients) "
                "or load it as a MONAI bundle with a network_def")
