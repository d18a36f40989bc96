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

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import require_finite
from ..errors import InputMismatchError, MethodError
from ..io import LoadedImage
from ..model_grid import ModelGrid, model_shape_for, orientation_transform
from ..precision import autocast, check_precision
from ..windows import Tiling, WindowWeights, monai_importance_map, tile, whole


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
    grid: ModelGrid
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
                 sigma_scale: float = 0.125,
                 name: str = "", source: str = "", device: str | torch.device = "auto",
                 hookable: bool = True, meta: dict[str, Any] | None = None,
                 owns_network: bool = False):
        self.device = resolve_device(device)
        # explainers differentiate w.r.t. the input only: parameters must not require grad
        # (else every pass keeps activations for weight gradients) and the network must be in
        # eval mode on our device. A network we loaded is ours to change; a user's own module
        # that would need any of that is used as a copy and left as it is.
        params = list(getattr(network, "parameters", lambda: [])())
        if not owns_network and isinstance(network, torch.nn.Module) and (
                any(p.requires_grad for p in params) or network.training
                or any(p.device != self.device for p in params)):
            network = copy.deepcopy(network)
        self.network = network.to(self.device) if hasattr(network, "to") else network
        for p in getattr(self.network, "parameters", lambda: [])():
            p.requires_grad_(False)
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
        self.sigma_scale = float(sigma_scale)   # Gaussian blending: sigma = sigma_scale * patch
        self.name = name
        self.source = source
        self.hookable = hookable
        self.meta = dict(meta or {})
        self.min_size = max(1, int(self.meta.get("min_size") or 1))
        fixed = self.meta.get("fixed_shape")
        self.fixed_shape = tuple(int(v) for v in fixed) if fixed else None
        br = self.meta.get("batch_range")
        self.batch_range = (max(1, int(br[0])), max(1, int(br[1]))) if br else None

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
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
            raise InputMismatchError(f"The image holds {arr.dtype} values, not numbers")
        require_finite(arr, "The image")
        if spacing is not None:
            sp = np.asarray(spacing, float)
            if sp.shape != (self.spatial_dims,) or not (np.isfinite(sp).all() and (sp > 0).all()):
                raise InputMismatchError(f"The image's voxel spacing {tuple(spacing)} is not {self.spatial_dims} "
                                         "positive sizes in mm; fix its header")
        return arr, spacing

    def prepare(self, image) -> Prepared:
        """Raw image (ndarray or LoadedImage) -> :class:`Prepared` in model space."""
        if isinstance(image, Prepared):
            return image
        arr, spacing = self._as_channels_first(image)
        ornt = orientation_transform(self.axcodes) if self.spatial_dims == 3 else None
        mshape = model_shape_for(arr.shape[1:], spacing, self.spacing, ornt)
        grid = ModelGrid(tuple(arr.shape[1:]), mshape, ornt)
        x = grid.to_model(arr.astype(np.float32), order=1)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        for tf in self.preprocess:
            t = tf(t)
        t = torch.as_tensor(t, dtype=torch.float32).contiguous()
        if hasattr(t, "as_tensor"):
            t = t.as_tensor()
        if any(n < self.min_size for n in t.shape[1:]):
            raise InputMismatchError(
                f"The image is too small for this model: {tuple(t.shape[1:])} voxels on the model grid, "
                f"the network needs at least {self.min_size} along each axis")
        require_finite(t, "The preprocessed image (after the model's intensity preprocessing)")
        return Prepared(t, grid, tuple(arr.shape[1:]))

    # --------------------------------------------------------------------- forward --
    def pads_for(self, spatial: Sequence[int]) -> list[tuple[int, int]]:
        """(low, high) zero padding per spatial axis that :meth:`forward` applies: up to the
        size divisor, or up to the fixed input shape of a static exported program."""
        out = []
        for d, n in enumerate(spatial):
            n = int(n)
            if self.fixed_shape is not None:
                if n > self.fixed_shape[d]:
                    raise InputMismatchError(
                        f"input of {tuple(spatial)} voxels exceeds the program's fixed input shape "
                        f"{self.fixed_shape}; it must be windowed")
                extra = self.fixed_shape[d] - n
            else:
                extra = (-n) % self.divisor
            out.append((extra // 2, extra - extra // 2))
        return out

    precision = "fp32"   # network precision of forward (seg_explain.precision); see with_precision

    def with_precision(self, precision: str | None) -> SegModel:
        """This model, or a shallow view of it (same network, same settings) whose
        :meth:`forward` runs the network under autocast at ``precision`` ("fp32", "bf16",
        "fp16"; see :mod:`seg_explain.precision`) and returns float32 logits. ``None``
        keeps the model's own precision."""
        p = self.precision if precision is None else check_precision(precision, self.device)
        if p == self.precision:
            return self
        view = copy.copy(self)
        view.precision = p
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a ``(B, C, *S)`` batch (differentiable; padded to the size divisor)."""
        spatial = x.shape[2:]
        per_axis = self.pads_for(spatial)
        pads = [v for lo_hi in reversed(per_axis) for v in lo_hi]
        xp = F.pad(x, pads) if any(pads) else x
        with autocast(self.device, self.precision):
            out = self._run(xp.to(self.device))
        if self.precision != "fp32":
            out = out.float()
        if any(pads):
            sl = [slice(None), slice(None)]
            for (lo, _), n in zip(per_axis, spatial):
                sl.append(slice(lo, lo + n))
            out = out[tuple(sl)]
        return out

    def _call(self, xb: torch.Tensor) -> torch.Tensor:
        out = self.network(xb)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out

    def _run(self, xp: torch.Tensor) -> torch.Tensor:
        """The network on a padded batch, in chunks an exported program accepts."""
        if self.batch_range is None:
            return self._call(xp)
        lo, hi = self.batch_range
        outs = []
        for i in range(0, xp.shape[0], hi):
            chunk = xp[i:i + hi]
            n = chunk.shape[0]
            if n < lo:  # a program exported for a fixed batch: fill with copies, drop them after
                chunk = torch.cat([chunk, chunk[-1:].expand(lo - n, *chunk.shape[1:])])
            outs.append(self._call(chunk)[:n])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # ------------------------------------------------------------ the model contract --
    # Everything a method may ask of a model, with the defaults of a MONAI-style model
    # (sliding_window_inference). Models that window, blend, slice or hook their own way
    # (nnU-Net) override these; no method decides any of it for a model.
    def needs_windows(self, shape: Sequence[int]) -> bool:
        """Whether an image of model-grid ``shape`` exceeds the patch (sliding windows)."""
        return self.patch_size is not None and any(s > p for s, p in zip(shape, self.patch_size))

    def tiling(self, shape: Sequence[int]) -> Tiling:
        """The windows (and the padding they need) of a prepared image of spatial ``shape``:
        MONAI's sliding windows when it exceeds the patch, else the whole image."""
        shape = tuple(int(s) for s in shape)
        if not self.needs_windows(shape):
            return whole(shape)
        return tile(shape, self.patch_size, self.overlap)

    def importance_map(self) -> torch.Tensor:
        """The blending weight of one window (patch shape, float32): MONAI's
        ``compute_importance_map`` for ``blend`` and ``sigma_scale``."""
        return monai_importance_map(self.patch_size, self.blend, self.sigma_scale)

    def window_weights(self, shape: Sequence[int]) -> WindowWeights:
        """The weights ``w_k / Σw`` the model blends its windows with on ``shape``."""
        t = self.tiling(shape)
        return WindowWeights(t, self.blend, self.sigma_scale,
                             None if len(t.windows) == 1 else self.importance_map())

    def blended_logits(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, *S)`` of a batch of prepared images as the model outputs them:
        one pass when the image fits the patch, else MONAI's sliding-window blend with the
        model's windows, overlap, blend mode and ``sigma_scale``. Differentiable unless
        called under inference mode."""
        if self.needs_windows(tuple(xb.shape[2:])):
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(xb.to(self.device), self.patch_size, self.sw_batch_size,
                                            self.forward, overlap=self.overlap, mode=self.blend,
                                            sigma_scale=self.sigma_scale)
        return self.forward(xb.to(self.device))

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Inference-mode logits ``(L, *S)`` of one prepared image ``(C, *S)`` (CPU tensor)."""
        with torch.inference_mode():
            return self.blended_logits(x[None])[0].float().cpu()

    def labels_from_logits(self, logits):
        """Label map from logits ``(L, *S)``: argmax, or ``logit > 0`` for one channel."""
        if isinstance(logits, np.ndarray):
            return (logits[0] > 0).astype(np.int64) if logits.shape[0] == 1 else logits.argmax(0)
        return (logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)

    def image_logits(self, prep: Prepared, logits) -> np.ndarray:
        """Model-grid logits ``(L, *S)`` of ``prep`` -> the image's grid (linear), float32."""
        return prep.to_image(logits, order=1).astype(np.float32)

    def image_labels(self, prep: Prepared, logits) -> np.ndarray:
        """THE prediction: model-grid logits -> the image's grid -> labels (as nnU-Net and
        MONAI export a segmentation). ``predict`` and every explanation's ``prediction``
        (and so the RoI "voxels predicted as c") come from here."""
        dtype = np.int16 if len(self.class_names) < 32000 else np.int32
        return self.labels_from_logits(self.image_logits(prep, logits)).astype(dtype)

    def cam_networks(self) -> list[torch.nn.Module]:
        """The networks whose layers a CAM hooks: one, or one per ensemble member (nnU-Net
        folds). A layer is named relative to each; the CAM is their mean."""
        return [self.network]

    # -------------------------------------------------------- a 2D model on a volume --
    def n_slices(self, image) -> int:
        """How many 2D slices :meth:`volume_slice` can take from a 3D ``image``."""
        return int(_volume_shape_of(self, image)[0])

    def volume_slice(self, image, index: int):
        """Slice ``index`` of a 3D image as the 2D image this 2D model sees (default: the
        first spatial axis, the axial slice of a volume from load_image)."""
        k = int(index)
        if isinstance(image, LoadedImage):
            data = image.data[k] if image.data.ndim == 3 else image.data[:, k]
            origin = tuple(image.origin)[1:]
            aff = np.diag([image.spacing[1], image.spacing[2], 1.0, 1.0])
            aff[:2, 3] = origin
            return LoadedImage(np.ascontiguousarray(data), tuple(image.spacing[1:]), aff, image.path, 2,
                               {"format": "array", "origin2d": origin})
        arr = np.asarray(image)
        return arr[k] if arr.ndim == 3 else arr[:, k]

    def slice_of(self, arr, image, index: int) -> np.ndarray:
        """The slice ``index`` of a volume-grid array ``(..., *volume)`` (an RoI, a label map)
        as :meth:`volume_slice` cuts the image."""
        a = np.asarray(arr)
        if isinstance(image, LoadedImage):
            return self.volume_slice(image.with_data(a), index).data
        return a[..., int(index), :, :]

    def embed_slice(self, arr, image, index: int, fill=0) -> np.ndarray:
        """A map on :meth:`volume_slice` ``(..., Y, X)`` -> the volume's grid, ``fill`` on
        every other voxel."""
        a = np.asarray(arr)
        vol = _volume_shape_of(self, image)
        out = np.full(a.shape[:-2] + tuple(vol), fill, dtype=a.dtype)
        out[..., int(index), :, :] = a
        return out

    def volume_logits(self, image) -> np.ndarray:
        """A 2D model's logits ``(L, *volume)`` of a whole volume, slice by slice
        (:meth:`volume_slice`, :meth:`embed_slice`)."""
        vol = _volume_shape_of(self, image)
        out = None
        for k in range(self.n_slices(image)):
            prep = self.prepare(self.volume_slice(image, k))
            lg = self.image_logits(prep, self.logits_tensor(prep.x))
            if out is None:
                out = np.zeros((lg.shape[0],) + vol, np.float32)
            out[:, k] = lg          # the default slicing: the first spatial axis
        return out

    # ------------------------------------------------------------------ public API --
    def logits(self, image) -> np.ndarray:
        """Logits ``(L, *spatial)`` float32 on the grid of ``image`` (a 2D model given a 3D
        volume from load_image: slice by slice, :meth:`volume_logits`)."""
        if self.is_volume_for_2d(image):
            return self.volume_logits(image)
        prep = self.prepare(image)
        return self.image_logits(prep, self.logits_tensor(prep.x))

    def predict(self, image) -> np.ndarray:
        """Label map (int) with the spatial shape of ``image``: the logits on the image's
        grid, then argmax (:meth:`image_labels`); a 2D model given a 3D volume from
        load_image predicts it slice by slice."""
        dtype = np.int16 if len(self.class_names) < 32000 else np.int32
        if self.is_volume_for_2d(image):
            return self.labels_from_logits(self.volume_logits(image)).astype(dtype)
        prep = self.prepare(image)
        return self.image_labels(prep, self.logits_tensor(prep.x))

    def is_volume_for_2d(self, image) -> bool:
        """A 3D image from load_image given to a 2D model (predicted slice by slice)."""
        return self.spatial_dims == 2 and isinstance(image, LoadedImage) and image.spatial_dims == 3

    def check_hookable(self, method: str) -> None:
        if not self.hookable:
            raise MethodError(
                f"{method} needs to hook a layer inside the network, but this model "
                f"({self.source or 'compiled'}) is a compiled TorchScript/exported program with no "
                "hookable layers; use a gradient method (gradient, smoothgrad, integrated_gradients) "
                "or load it as a MONAI bundle with a network_def")


def _volume_shape_of(model: SegModel, image) -> tuple[int, ...]:
    """Spatial shape of a volume given to a 2D model (clear error otherwise)."""
    if model.spatial_dims != 2:
        raise InputMismatchError("slice_index is for a 2D model on a 3D volume; this model is 3D")
    if isinstance(image, LoadedImage):
        if image.spatial_dims != 3:
            raise InputMismatchError("slice_index needs a 3D volume")
        return tuple(image.spatial_shape)
    arr = np.asarray(image)
    if arr.ndim == 3 and model.in_channels == 1:
        return tuple(arr.shape)
    if arr.ndim == 4 and arr.shape[0] == model.in_channels:
        return tuple(arr.shape[1:])
    raise InputMismatchError(f"slice_index needs a volume (Z, Y, X) or (C, Z, Y, X), got shape {arr.shape}")
