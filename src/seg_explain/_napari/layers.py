"""Arrays <-> napari layers: geometry, attribution colormaps, label tables.

Nothing here runs a model. The numpy work on results (colour limits, display maps,
outlines, 3D evidence volumes) is viewer-agnostic and lives in :mod:`seg_explain.frontend`;
functions here that take a layer must run on the main thread.

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
    from ..io import LoadedImage

    sp = tuple(float(abs(s)) or 1.0 for s in spacing)
    return LoadedImage.from_array(data, sp, spatial_dims=spatial_dims, path=path,
                                  origin=tuple(float(t) for t in translate))


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


# -------------------------------------------------------------------------- labels --

def label_colours(viewer) -> list:
    """The colours the visible Labels layers of ``viewer`` draw (at most 64 labels each)."""
    from napari.layers import Labels

    out = []
    for ly in viewer.layers:
        if not isinstance(ly, Labels) or not ly.visible:
            continue
        vals = np.unique(np.asarray(ly.data))
        for v in vals[vals != 0][:64]:
            out.append(tuple(np.asarray(ly.colormap.map(np.array([v]))).reshape(-1)[:3]))
    return out


def add_roi_layer(viewer, img, target: str):
    """An empty Labels layer ("RoI", "RoI 2", …) on image layer ``img``'s grid, ready to paint
    label 1 of class ``target``, in a colour unlike every visible Labels layer's
    (:func:`~seg_explain.frontend.reading.distinct_colour`), selected."""
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    from ..frontend.reading import distinct_colour

    sd = spatial_dims_of(img)
    colour = (*distinct_colour(label_colours(viewer)), 1.0)     # strokes must show over the labels
    cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: colour})
    n = sum(1 for ly in viewer.layers if isinstance(ly, Labels) and ly.name.startswith("RoI"))
    layer = viewer.add_labels(
        np.zeros(spatial_shape_of(img), np.uint8), name="RoI" if n == 0 else f"RoI {n + 1}",
        scale=tuple(img.scale)[-sd:], translate=tuple(img.translate)[-sd:], colormap=cmap, opacity=0.7,
        metadata={META_KEY: {"kind": "roi", "image": img.name, "target": target}})
    layer.brush_size = 6
    layer.selected_label = 1
    layer.mode = "paint"
    viewer.layers.selection.active = layer
    return layer


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
