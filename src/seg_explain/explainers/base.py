"""The explainer protocol: a shared context, one result type, the explain entry points.

Every explainer is a generator function registered in :mod:`.registry` with a
:class:`~.registry.MethodSpec`::

    def my_method(ctx: Context, **params):
        ...                       # work; `yield (done, total)` between steps
        return attr               # model-grid array (C, *S) or (*S), or (attr, extras)

    register(MethodSpec("my_method", my_method, title=..., params=(...), caps=..., ...))

It receives a :class:`Context` (model, prepared image in model space, target class, RoI on
the model grid, counters, seed) and returns the attribution on the **model grid**.
:func:`explain_iter` validates the parameters against the registry, maps the result back to
the image grid (by the spec's ``map_kind``), sums channels and wraps it in an
:class:`Explanation`, which also carries the clean prediction. The generator form is what
the GUI runs in a worker (:mod:`seg_explain.jobs`); :func:`explain` drives it to the end.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checks import as_int
from ..errors import InputMismatchError
from ..models.segmodel import Prepared, SegModel
from ..targets import resolve_roi, roi_sum
from .registry import REGISTRY, get_spec, methods, register, resolve_params  # noqa: F401 (re-exported)

Progress = tuple[int, int]


@dataclass
class Context:
    """What an explainer needs, computed once: everything in model space."""

    model: SegModel
    prep: Prepared
    target: int
    roi: torch.Tensor                  # bool (*S) on the model grid
    seed: int = 0
    batch_size: int | None = None
    n_forward: int = 0                 # images pushed through the network (batch rows)
    n_backward: int = 0                # backward passes (per image row)
    _clean_logits: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        """The prepared image ``(C, *S)``."""
        return self.prep.x

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.prep.x.shape[1:])

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed))

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits of a batch (counted). Differentiable unless called under inference_mode."""
        self.n_forward += int(xb.shape[0])
        return self.model.forward(xb)

    def f_hat(self, logits: torch.Tensor, c: int | None = None, roi: torch.Tensor | None = None) -> torch.Tensor:
        """The shared target for a batch of logits -> ``(B,)``."""
        return roi_sum(logits, self.target if c is None else c, self.roi if roi is None else roi,
                       self.model.sigmoid)

    @property
    def clean_logits(self) -> torch.Tensor:
        """Logits ``(L, *S)`` of the clean image (computed once; sliding windows if needed)."""
        if self._clean_logits is None:
            self.n_forward += 1
            self._clean_logits = self.model.logits_tensor(self.prep.x)
        return self._clean_logits

    @property
    def clean_labels(self) -> torch.Tensor:
        return self.model.labels_from_logits(self.clean_logits)

    def auto_batch(self, per_item_bytes: float | None = None, cap: int = 64) -> int:
        """Batch size from free memory (or the user's ``batch_size``)."""
        if self.batch_size:
            return max(1, int(self.batch_size))
        n_vox = int(np.prod(self.shape))
        # activations + grads of a small UNet: ~ 60 floats per voxel per item is generous
        per = per_item_bytes or n_vox * 4 * 60 * max(1, self.model.in_channels)
        free = _free_memory(self.model.device)
        return int(max(1, min(cap, (0.25 * free) // max(per, 1))))


def _free_memory(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover
        return 4e9


@dataclass
class Explanation:
    """One attribution map on the grid of the image that was explained."""

    attribution: np.ndarray            # float32, image spatial shape, raw values, sign kept
    method: str
    target: int
    target_name: str
    roi: np.ndarray                    # bool, image grid
    params: dict[str, Any]
    elapsed_s: float
    n_forward: int
    n_backward: int
    per_channel: np.ndarray | None = None   # (C, *spatial) for multi-channel inputs
    extras: dict[str, Any] = field(default_factory=dict)
    prediction: np.ndarray | None = None    # the clean label map (image grid) that fixed the RoI
    slice_index: int | None = None          # a 2D model on a volume: the axial slice explained

    @property
    def spec(self):
        """The method's registry entry (unit, sign convention, summary fields ...)."""
        return get_spec(self.method)

    def summary(self) -> dict[str, Any]:
        a = self.attribution
        return {"method": self.method, "target": self.target_name, "elapsed_s": round(self.elapsed_s, 3),
                "n_forward": self.n_forward, "n_backward": self.n_backward, "unit": self.spec.unit,
                "min": float(a.min()), "max": float(a.max()), **{k: v for k, v in self.extras.items()
                                                                 if isinstance(v, (int, float, str))}}

    @property
    def warnings(self) -> list[str]:
        """One-line warnings the method raised (e.g. an IG completeness gap)."""
        w = self.extras.get("warnings") if isinstance(self.extras, dict) else None
        return [str(x) for x in w] if w else []


def make_context(model: SegModel, image, target, roi=None, roi_mode: str | None = None,
                 roi_label: int | None = None, seed: int = 0, batch_size: int | None = None,
                 prep: Prepared | None = None, clean_logits: torch.Tensor | None = None
                 ) -> tuple[Context, np.ndarray, np.ndarray]:
    """Prepare the image, fix the RoI from the clean prediction -> (ctx, roi_img, pred_img)."""
    c = model.class_index(target)
    prep = prep or model.prepare(image)
    ctx = Context(model, prep, c, torch.zeros(()), seed=seed, batch_size=batch_size)
    if clean_logits is not None:
        ctx._clean_logits = clean_logits
    pred_img = model.image_labels(prep, ctx.clean_logits)    # THE prediction (model.predict's)
    if roi is not None and np.asarray(roi).shape != tuple(prep.image_shape):
        raise InputMismatchError(
            f"RoI shape {np.asarray(roi).shape} does not match the image's spatial shape {tuple(prep.image_shape)}")
    roi_img = resolve_roi(roi, pred_img, c, roi_mode, roi_label)
    roi_m = prep.roi_to_model(roi_img)
    if not roi_m.any():
        raise InputMismatchError("Empty RoI on the model grid: the painted region is smaller than one model voxel")
    ctx.roi = torch.from_numpy(roi_m)
    return ctx, roi_img, pred_img


def explain_iter(model: SegModel, image, method: str, target=1, roi=None, seed: int = 0,
                 batch_size: int | None = None, roi_mode: str | None = None,
                 roi_label: int | None = None, slice_index: int | None = None,
                 precision: str | None = None, **params) -> Iterator[Progress]:
    """Generator form of :func:`explain`: yields ``(done, total)``, returns the Explanation.

    Close it (``gen.close()``) or stop iterating to cancel between steps.
    """
    model = model.with_precision(precision)   # every pass, clean one included (seg_explain.precision)
    spec, full = resolve_params(method, params)
    seed = as_int("seed", seed, 0, 2 ** 31 - 1)
    if batch_size is not None:
        batch_size = as_int("batch_size", batch_size, 1)
    if model.spatial_dims not in spec.caps.dims:
        raise InputMismatchError(f"{spec.title} does not work on {model.spatial_dims}D models")
    if spec.caps.hooks:
        model.check_hookable(method)
    t0 = time.perf_counter()
    vol_image = None
    if slice_index is not None:
        vol_image = image
        image, roi, full, slice_index = _take_slice(model, spec, image, roi, full, slice_index)
    ctx, roi_img, pred_img = make_context(model, image, target, roi, roi_mode, roi_label, seed, batch_size)
    result = yield from spec.fn(ctx, **full)
    extras: dict[str, Any] = {}
    if isinstance(result, tuple):
        result, extras = result
    run = {**full, "seed": seed, "batch_size": batch_size}
    if model.precision != "fp32":
        run["precision"] = model.precision
    exp = finalize(ctx, spec.name, result, roi_img, run, t0, extras)
    exp.prediction = pred_img
    if vol_image is not None:
        _embed(exp, model, vol_image, slice_index)
    return exp


def _take_slice(model, spec, image, roi, params, k: int):
    """Slice ``k`` of a volume as the model slices it (:meth:`SegModel.volume_slice`), with
    the RoI and any label-map parameters given for the volume cut the same way."""
    k = as_int("slice_index", k, 0, model.n_slices(image) - 1)
    volume = tuple(np.asarray(image.data if hasattr(image, "data") else image).shape[-3:])
    if roi is not None and np.asarray(roi).shape != volume:
        raise InputMismatchError(f"RoI shape {np.asarray(roi).shape} does not match the volume {volume}")
    params = dict(params)
    for p in spec.params:           # label maps given for the volume (PdCR's reference)
        v = params.get(p.name)
        if p.kind == "label_map" and isinstance(v, np.ndarray) and v.shape == volume:
            params[p.name] = model.slice_of(v, image, k)
    cut_roi = None if roi is None else model.slice_of(np.asarray(roi) != 0, image, k)
    return model.volume_slice(image, k), cut_roi, params, k


def _embed(exp: Explanation, model, image, k: int) -> None:
    """Put a slice's results back into the volume (other slices: 0 / False)."""
    def up(a, fill=0):
        return None if a is None else model.embed_slice(np.asarray(a), image, k, fill)

    exp.attribution = up(exp.attribution)
    exp.per_channel = up(exp.per_channel)
    exp.roi = up(exp.roi, False)
    exp.prediction = up(exp.prediction)
    if isinstance(exp.extras.get("block_labels"), np.ndarray):
        exp.extras["block_labels"] = up(exp.extras["block_labels"])
    exp.slice_index = k


NOT_SCALAR = object()


def json_scalar(v, default=NOT_SCALAR):
    """``v`` as a JSON scalar (numpy scalars unwrapped, paths as strings), else ``default``."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return default


def _plain(v):
    """A parameter as stored on the Explanation: JSON-safe (arrays, banks, images and other
    objects as ``<TypeName>``)."""
    return json_scalar(v, f"<{type(v).__name__}>")


def to_image_grid(ctx: Context, arr: np.ndarray, map_kind: str) -> np.ndarray:
    """A model-grid map ``(..., *S)`` -> the grid of the image the user gave, by map kind.

    - ``"voxel"`` (gradient, SmoothGrad, IG: additive attributions of f̂ with respect to
      the input): the adjoint of the image -> model resampling
      (:meth:`~seg_explain.model_grid.ModelGrid.adjoint_to_image`), i.e. the gradient with respect
      to the image the user gave; sums are preserved, so IG completeness
      (Σ map = f̂(x) − f̂(x′)) holds on the image grid;
    - ``"block"`` (PdCR, KernelSHAP): nearest neighbour, so a block's value is never
      interpolated across its edges (nor into RoI blocks);
    - ``"heatmap"`` (CAMs): linear interpolation. A CAM is a heat map on a layer's grid, not
      an additive attribution, so it is resampled like an image.

    Identical grids leave the array unchanged.
    """
    if ctx.prep.grid.identity:
        return arr
    if map_kind == "voxel":
        return ctx.prep.grid.adjoint_to_image(arr)
    if map_kind == "block":
        return ctx.prep.to_image(arr, order=0)
    return ctx.prep.to_image(arr, order=1)


def finalize(ctx: Context, method: str, attr_model, roi_img, params, t0, extras) -> Explanation:
    """Model-grid attribution -> image grid Explanation (channels summed, per-channel kept).

    The transfer depends on the method's registered map kind (:func:`to_image_grid`)."""
    a = attr_model.detach().cpu().numpy() if isinstance(attr_model, torch.Tensor) else np.asarray(attr_model)
    a = a.astype(np.float32)
    from ..checks import require_finite_result  # the NaN policy for outputs: a NaN map is never returned
    require_finite_result(a, f"the {method} map of {ctx.model.class_names[ctx.target]!r}", ctx.model)
    map_kind = get_spec(method).caps.map_kind
    sd = ctx.model.spatial_dims
    per_channel = None
    a_img = to_image_grid(ctx, a, map_kind).astype(np.float32)
    if a.ndim == sd + 1:
        if a.shape[0] > 1:
            per_channel = a_img
        a_img = a_img.sum(0)
    return Explanation(a_img, method, ctx.target, ctx.model.class_names[ctx.target], roi_img,
                       {k: _plain(v) for k, v in params.items()},
                       time.perf_counter() - t0, ctx.n_forward, ctx.n_backward, per_channel, extras)


def explain(model: SegModel, image, method: str, target=1, roi=None, seed: int = 0,
            progress: Callable[[int, int], Any] | None = None, **params) -> Explanation:
    """Explain ``model``'s segmentation of ``target`` in ``roi`` with ``method``.

    ``image``: an ndarray on the model grid (raw intensities) or what ``load_image``
    returns; ``roi``: a mask of the image's spatial shape (default: voxels predicted as
    ``target``; ``roi_mode="intersection"`` intersects a mask with the prediction,
    ``roi_label=k`` picks one label of a label mask); ``slice_index=k``: a 2D model explains
    axial slice ``k`` of a volume (results come back on the volume, other slices 0);
    ``precision="bf16"`` runs the network under autocast (opt-in, :mod:`seg_explain.precision`;
    default None: the model's own, fp32 unless it is a ``with_precision`` view).
    Returns an :class:`Explanation` whose ``attribution`` lives on the image grid, raw and
    signed, and which carries the clean ``prediction``.
    """
    from ..jobs import drive

    return drive(explain_iter(model, image, method, target, roi, seed, **params), progress)


def drive(gen, callback=None):
    """Run a ``(done, total)`` generator to its end (see :func:`seg_explain.jobs.drive`)."""
    from ..jobs import drive as _drive

    return _drive(gen, callback)
