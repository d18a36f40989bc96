"""Arrays <-> napari layers: geometry, attribution colormaps, outlines, label tables.

Nothing here runs a model. Heavy numpy work meant for a worker thread (limits, outlines)
is plain functions of arrays; functions that take a layer must run on the main thread.

Layer metadata written by this plugin:

- ``metadata["loaded_image"]``: a geometry-only :class:`~seg_explain.io.LoadedImage`
  (spacing, affine, original header; ``data`` is empty) so the writer can save a layer
  with the affine of the file it came from;
- ``metadata["seg_explain"]``: a dict with ``kind`` (``"image"``, ``"prediction"``,
  ``"attribution"``, ``"roi_outline"``, ``"roi"``) and what made the layer (method,
  parameters, timings, model, target, RoI ...).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

GEOMETRY_KEY = "loaded_image"
META_KEY = "seg_explain"
RAW_KEY = "seg_explain_raw"   # metadata: the raw map of a result whose display differs (saved instead)

# ----------------------------------------------------------------------- geometry --


def geometry_only(li):
    """A copy of a LoadedImage without its voxels (kept in layer metadata)."""
    from ..io import LoadedImage

    meta = dict(li.meta)
    if li.data.size:
        meta["grid_shape"] = tuple(int(s) for s in li.spatial_shape)
    return LoadedImage(np.zeros((0,) * max(1, li.spatial_dims), np.float32),
                       tuple(li.spacing), np.array(li.affine, float), li.path, li.spatial_dims, meta)


def layer_kwargs_for(li, name: str, **extra) -> dict[str, Any]:
    """napari layer kwargs (scale, translate, metadata) for data on ``li``'s grid."""
    lead = (1.0,) * (li.data.ndim - li.spatial_dims) if li.data.size else ()
    meta = {GEOMETRY_KEY: geometry_only(li), META_KEY: {"kind": "image", "path": li.path}}
    meta[META_KEY].update(extra.pop("seg_explain", {}))
    kw = {"name": name, "scale": lead + tuple(float(s) for s in li.spacing),
          "translate": tuple(0.0 for _ in lead) + tuple(float(t) for t in li.origin), "metadata": meta}
    kw.update(extra)
    return kw


def make_loaded(data: np.ndarray, spacing: Sequence[float], translate: Sequence[float],
                spatial_dims: int, path: str | None = None):
    """A LoadedImage for an array shown with napari ``scale``/``translate`` (project
    convention: 3D arrays are LPS ``(Z, Y, X)``; the affine's origin equals ``translate``)."""
    from ..io import AXES_PERM, LPS_TO_RAS, LoadedImage

    sp = tuple(float(abs(s)) or 1.0 for s in spacing)
    tr = np.asarray(translate, float)
    if spatial_dims == 3:
        aff = LPS_TO_RAS @ np.diag([sp[2], sp[1], sp[0], 1.0]) @ AXES_PERM
        dirs = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0, keepdims=True)
        aff[:3, 3] = dirs @ tr
        return LoadedImage(data, sp, aff, path, 3, {"format": "array"})
    aff = np.diag([sp[0], sp[1], 1.0, 1.0])
    aff[:2, 3] = tr
    return LoadedImage(data, sp, aff, path, 2, {"format": "array", "origin2d": tuple(float(t) for t in tr)})


def spatial_dims_of(layer) -> int:
    """2 or 3: from the kept geometry, else from the layer's shape (RGB = 2D)."""
    li = layer.metadata.get(GEOMETRY_KEY) if isinstance(layer.metadata, dict) else None
    if li is not None and getattr(li, "spatial_dims", None) in (2, 3):
        return int(li.spatial_dims)
    if getattr(layer, "rgb", False):
        return 2
    return 2 if layer.ndim == 2 else 3


def spatial_shape_of(layer) -> tuple[int, ...]:
    shape = tuple(int(s) for s in np.shape(layer.data))
    if getattr(layer, "rgb", False):
        return shape[:-1]
    return shape[-spatial_dims_of(layer):]


def image_from_layer(layer, spatial_dims: int | None = None):
    """Copy an Image layer's voxels and geometry into a LoadedImage (main thread only).

    The copy is what a worker may touch; the layer itself is never handed to a thread."""
    data = np.array(layer.data, copy=True)
    sd = spatial_dims or spatial_dims_of(layer)
    if getattr(layer, "rgb", False):
        data = np.moveaxis(data[..., :3], -1, 0)
        sd = 2
    if data.ndim not in (sd, sd + 1):
        raise ValueError(f"Layer '{layer.name}' has shape {data.shape}: expected a {sd}D image "
                         "(optionally with a leading channel axis)")
    li = layer.metadata.get(GEOMETRY_KEY) if isinstance(layer.metadata, dict) else None
    if li is not None and getattr(li, "spatial_dims", None) == sd:
        return li.with_data(data)
    scale = tuple(layer.scale)[-sd:]
    translate = tuple(layer.translate)[-sd:]
    return make_loaded(data, scale, translate, sd, layer.metadata.get(META_KEY, {}).get("path")
                       if isinstance(layer.metadata, dict) else None)


def current_index(viewer, layer, axis: int = 0) -> int:
    """The layer's data index along ``axis`` at the viewer's current slice."""
    pt = layer.world_to_data(viewer.dims.point[-layer.ndim:]) if viewer.dims.ndim >= layer.ndim \
        else [0] * layer.ndim
    n = int(np.shape(layer.data)[axis])
    return int(min(max(int(round(float(pt[axis]))), 0), n - 1))


# ---------------------------------------------------------------------- colormaps --

def _ramp(a: np.ndarray, lo, hi) -> np.ndarray:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return lo[None, :] + a[:, None] * (hi - lo)[None, :]


def diverging_colors(n: int = 129, reverse: bool = False, dead_zone: float = 0.06,
                     full_at: float = 0.9, max_alpha: float = 0.95, power: float = 1.2
                     ) -> tuple[np.ndarray, np.ndarray]:
    """RGBA control points of the attribution colormap over ``[0, 1]``.

    The middle (value 0 when the contrast limits are symmetric) is fully transparent;
    alpha ramps with |value| (0 inside ``dead_zone`` of the half-range, then
    ``((|v| - dead_zone) / (full_at - dead_zone)) ** power``, ``max_alpha`` from ``full_at``
    on), so weak evidence stays see-through and the anatomy shows under it. Positive = red -> yellow,
    negative = blue -> cyan (``reverse`` swaps
    them, for maps whose negative values are the supporting evidence, e.g. PdCR's ATE).
    """
    n = n if n % 2 else n + 1
    t = np.linspace(0.0, 1.0, n)
    v = 2 * t - 1
    a = np.abs(v)
    alpha = np.clip((a - dead_zone) / max(full_at - dead_zone, 1e-6), 0, 1) ** power * max_alpha
    warm = _ramp(a, (0.85, 0.05, 0.05), (1.0, 0.92, 0.25))
    cool = _ramp(a, (0.05, 0.25, 1.0), (0.3, 0.95, 1.0))
    pos, neg = (cool, warm) if reverse else (warm, cool)
    rgb = np.where((v >= 0)[:, None], pos, neg)
    rgba = np.concatenate([rgb, alpha[:, None]], 1)
    rgba[n // 2] = (0.0, 0.0, 0.0, 0.0)
    return rgba.astype(np.float32), t


def one_sided_colors(n: int = 129, dead_zone: float = 0.06, full_at: float = 0.9, max_alpha: float = 0.95,
                     power: float = 1.2, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """RGBA control points for a one-sided map (e.g. a CAM after ReLU) over ``[0, 1]``:
    transparent at 0, dark red -> yellow with rising opacity; ``reverse=True`` for maps whose
    evidence is negative (PdCR without a reference: transparent at 1, strongest at 0)."""
    t = np.linspace(0.0, 1.0, n)
    alpha = np.clip((t - dead_zone) / max(full_at - dead_zone, 1e-6), 0, 1) ** power * max_alpha
    rgb = _ramp(t, (0.85, 0.05, 0.05), (1.0, 0.92, 0.25))
    rgba = np.concatenate([rgb, alpha[:, None]], 1)
    rgba[0] = (0.0, 0.0, 0.0, 0.0)
    if reverse:
        rgba = rgba[::-1].copy()
    return rgba.astype(np.float32), t


# 3D volume rendering composites every voxel along a ray, so weak evidence that is faint
# in a 2D slice adds up to a fog in 3D: the 3D variant hides the weak third of the range.
VOLUME_ALPHA = {"dead_zone": 0.3, "full_at": 1.0, "power": 1.6, "max_alpha": 0.9}
CMAP_PREFIX = "attribution"
CMAP_NAMES = {("signed", False): "attribution ±", ("signed", True): "attribution ∓",
              ("one", False): "attribution +", ("one", True): "attribution −"}


def attribution_colormap(reverse: bool = False, volume: bool = False, one_sided: bool = False):
    """napari Colormap: diverging and transparent at the centre (:func:`diverging_colors`), or
    one-sided and transparent at 0 (:func:`one_sided_colors`); ``volume=True`` is the variant
    for the 3D view (weak values fully transparent). Short names, so that the layer
    controls show them whole."""
    from napari.utils.colormaps import Colormap

    kw = VOLUME_ALPHA if volume else {}
    if one_sided:
        colors, controls = one_sided_colors(reverse=reverse, **kw)
        name = CMAP_NAMES[("one", bool(reverse))]
    else:
        colors, controls = diverging_colors(reverse=reverse, **kw)
        name = CMAP_NAMES[("signed", bool(reverse))]
    return Colormap(colors=colors, controls=controls, name=name + (" 3D" if volume else ""),
                    interpolation="linear")


def attribution_limits(lim: float, one_sided: bool, red_is_negative: bool) -> tuple[float, float]:
    """Contrast limits that go with :func:`attribution_colormap`: symmetric for signed maps,
    from 0 towards the evidence's sign for one-sided ones."""
    if not one_sided:
        return (-lim, lim)
    return (-lim, 0.0) if red_is_negative else (0.0, lim)


def sync_attribution_colormaps(viewer, layers=None) -> None:
    """Give this plugin's attribution layers the 2D or 3D variant of their colormap to
    match ``viewer.dims.ndisplay`` (layers whose colormap the user changed are left alone)."""
    volume = int(viewer.dims.ndisplay) == 3
    for ly in (layers if layers is not None else list(viewer.layers)):
        if not is_result_layer(ly, ("attribution",)):
            continue
        name = getattr(ly.colormap, "name", "")
        if not name.startswith(CMAP_PREFIX) or name.endswith(" 3D") == volume:
            continue
        lim = tuple(ly.contrast_limits)
        kind = next(k for k, v in CMAP_NAMES.items() if name.startswith(v))
        ly.colormap = attribution_colormap(reverse=kind[1], volume=volume, one_sided=kind[0] == "one")
        ly.contrast_limits = lim


def symmetric_limits(a: np.ndarray, robust: bool = True, percentile: float = 99.5
                     ) -> tuple[float, float]:
    """``(lim, max_abs)``: contrast limits are ``(-lim, lim)``; ``lim`` is the
    ``percentile`` of |a| over non-zero voxels (robust) or max |a|."""
    a = np.asarray(a)
    absa = np.abs(a[np.isfinite(a)])
    nz = absa[absa > 0]
    if nz.size == 0:
        return 1.0, 1.0
    mx = float(nz.max())
    lim = float(np.percentile(nz, percentile)) if robust and nz.size >= 100 else mx
    if not np.isfinite(lim) or lim <= 0:
        lim = mx
    return lim, mx


def display_limits(a: np.ndarray, map_kind: str) -> tuple[float, float]:
    """Contrast limits for a map: a robust percentile for voxel maps and heat maps (a few
    extreme voxels would wash the rest out), the maximum for block maps (few values)."""
    return symmetric_limits(a, robust=map_kind != "block")


# ----------------------------------------------------------------- display helpers --
def display_map(raw: np.ndarray, smooth: float = 0.0, top_percent: float = 100.0,
                mask: np.ndarray | None = None, spatial_dims: int | None = None) -> np.ndarray:
    """What the viewer shows of a raw map (the raw values are kept): Gaussian smoothing
    (σ in voxels; in-plane only for volumes, so a slice is not mixed with its neighbours'
    speckle), masking to a region (e.g. the body), then only the strongest ``top_percent``
    of the voxels (by |value|; the rest set to 0). Signs are kept."""
    from scipy import ndimage

    a = np.asarray(raw, np.float32)
    if smooth and smooth > 0:
        sig = (0.0, float(smooth), float(smooth)) if a.ndim == 3 and (spatial_dims or 3) == 3 else float(smooth)
        a = ndimage.gaussian_filter(a, sig, mode="nearest").astype(np.float32)
    if mask is not None:
        a = np.where(np.asarray(mask, bool), a, 0).astype(np.float32)
    if top_percent < 100:
        nz = np.abs(a[a != 0])
        if nz.size:
            thr = np.percentile(nz, 100.0 - max(float(top_percent), 0.0))
            a = np.where(np.abs(a) >= thr, a, 0).astype(np.float32)
    return a


def body_mask(image: np.ndarray, prediction: np.ndarray | None = None) -> np.ndarray:
    """The body (or head): the predicted foreground when there is a prediction, else the
    voxels above Otsu's threshold of the image, holes filled, largest component."""
    from scipy import ndimage

    if prediction is not None and np.any(prediction > 0):
        m = np.asarray(prediction) > 0
    else:
        x = np.asarray(image, np.float32)
        if x.ndim > 3:
            x = x.mean(0)
        hist, edges = np.histogram(x[np.isfinite(x)], bins=256)
        p = hist / max(hist.sum(), 1)
        w = np.cumsum(p)
        mu = np.cumsum(p * edges[:-1])
        between = (mu[-1] * w - mu) ** 2 / np.maximum(w * (1 - w), 1e-12)
        m = x > edges[int(np.argmax(between))]
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(m)


def evidence_volumes(attr: np.ndarray, red_is_negative: bool = False, top_percent: float = 5.0,
                     smooth: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """For the 3D view: the supporting and the opposing evidence as two non-negative volumes
    and the iso thresholds that enclose the strongest ``top_percent`` of each (as many voxels
    as ``top_percent`` of the voxels of that sign), so that two surfaces (red: supports the
    RoI, blue: speaks against it) read where a signed cloud of interleaved voxels does not.
    ``smooth`` (σ in voxels, isotropic) first turns speckled voxel maps (gradients) into
    regions; each sign is smoothed on its own, so opposite evidence never cancels."""
    from scipy import ndimage

    a = np.asarray(attr, np.float32)
    sup, opp = (np.clip(-a, 0, None), np.clip(a, 0, None)) if red_is_negative else \
        (np.clip(a, 0, None), np.clip(-a, 0, None))
    counts = [int(np.count_nonzero(sup)), int(np.count_nonzero(opp))]
    if smooth and smooth > 0:
        sup, opp = (ndimage.gaussian_filter(v, float(smooth), mode="constant").astype(np.float32)
                    for v in (sup, opp))

    def thr(v, n):
        k = int(np.ceil(n * top_percent / 100.0))
        if k <= 0 or not np.any(v > 0):
            return 1.0
        flat = v.ravel()
        t = float(np.partition(flat, flat.size - k)[flat.size - k])
        return t if t > 0 else float(flat[flat > 0].min())

    return sup, opp, thr(sup, counts[0]), thr(opp, counts[1])


# ----------------------------------------------------------------------- outlines --

def roi_outline(mask: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Boundary voxels of a mask, traced in-plane (per axial slice in 3D) so every 2D
    slice shows a closed contour; returns uint8 (1 on the outline)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    if spatial_dims == 3 and m.ndim == 3:
        st = np.zeros((3, 3, 3), bool)
        st[1] = ndimage.generate_binary_structure(2, 1)
    else:
        st = ndimage.generate_binary_structure(m.ndim, 1)
    inner = ndimage.binary_erosion(m, structure=st, border_value=0)
    return (m & ~inner).astype(np.uint8)


# -------------------------------------------------------------------------- labels --

def class_features(class_names: Sequence[str]) -> dict[str, list]:
    """A Labels ``features`` table so the status bar shows the class name under the cursor."""
    return {"index": list(range(len(class_names))), "class": [str(c) for c in class_names]}


def is_result_layer(layer, kinds=("attribution", "roi_outline")) -> bool:
    md = layer.metadata if isinstance(layer.metadata, dict) else {}
    return isinstance(md.get(META_KEY), dict) and md[META_KEY].get("kind") in kinds


def model_grid_shape(img, info: dict | None) -> tuple[int, ...] | None:
    """The model-grid spatial shape an image layer gets for a loaded model (``info``: the
    picker's model info), or None when they do not fit (a 2D model on a volume: one slice)."""
    from ..model_grid import model_shape_for, orientation_transform

    if info is None or img is None:
        return None
    isd, msd = spatial_dims_of(img), info["spatial_dims"]
    shape = spatial_shape_of(img)
    spacing = tuple(img.scale)[-isd:]
    if isd == 3 and msd == 2:
        shape, spacing = shape[1:], spacing[1:]
    elif isd != msd:
        return None
    ornt = orientation_transform(info.get("axcodes")) if msd == 3 else None
    li = img.metadata.get(GEOMETRY_KEY) if isinstance(img.metadata, dict) else None
    has_spacing = li is not None or any(abs(s - 1.0) > 1e-6 for s in spacing)
    return model_shape_for(shape, spacing if has_spacing else None, info.get("spacing"), ornt)


EVIDENCE_MAX_VOXELS = 48 ** 3     # an evidence volume drawn in 3D holds at most about this many voxels


def bounded_volume(arr: np.ndarray, scale, translate, max_voxels: int = EVIDENCE_MAX_VOXELS):
    """``(volume, scale, translate)`` with at most about ``max_voxels`` voxels: max-pooled by
    an integer factor per axis (a thin region above an iso threshold stays above it), the
    geometry moved to the pooled voxels' centres. Software OpenGL ray-casts every voxel of an
    iso-surface layer for every frame: the full-resolution volumes took minutes per frame."""
    a = np.asarray(arr)
    f = max(1, int(np.ceil((a.size / max(int(max_voxels), 1)) ** (1.0 / a.ndim))))
    if f == 1:
        return a, tuple(scale), tuple(translate)
    pad = [(0, (-n) % f) for n in a.shape]
    p = np.pad(a, pad, constant_values=0)
    shp = [v for n in p.shape for v in (n // f, f)]
    out = p.reshape(shp).max(axis=tuple(range(1, 2 * a.ndim, 2)))
    sc = tuple(float(s) * f for s in scale)
    tr = tuple(float(t) + 0.5 * (f - 1) * float(s) for t, s in zip(translate, scale))
    return out.astype(a.dtype), sc, tr
