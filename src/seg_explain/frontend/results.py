"""What a result is called, what it records, and how it is shown (no viewer imports).

- colour limits: :func:`symmetric_limits`, :func:`display_limits` (robust for voxel maps and
  heat maps, the maximum for block maps), :func:`attribution_limits` (symmetric, or from 0
  for one-sided maps);
- display maps: :func:`display_map` (smoothing, body mask, top-k %; the raw values are
  kept), :func:`body_mask`, :func:`shown_map` (the sign flipped so that + = supports);
- outlines: :func:`roi_outline`;
- names: :func:`result_name`, :func:`outline_name`, :func:`prediction_name`;
- records: :func:`result_info` (what a result layer / node keeps: method, parameters,
  timings, legend, unit …), :func:`scalar_items`;
- text: :func:`done_text`, :func:`summary_lines`, :func:`canvas_text`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .anatomy import body_mask  # noqa: F401 (public here too: the display's body mask)
from .evidence import EVIDENCE_TOP
from .messages import range_text
from .reading import legend, legend_short, scale_text, short_unit, shown_sign, shown_unit


# ------------------------------------------------------------------- colour limits --
def attribution_limits(lim: float, one_sided: bool, red_is_negative: bool) -> tuple[float, float]:
    """Contrast limits that go with :func:`attribution_colormap`: symmetric for signed maps,
    from 0 towards the evidence's sign for one-sided ones."""
    if not one_sided:
        return (-lim, lim)
    return (-lim, 0.0) if red_is_negative else (0.0, lim)


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


# -------------------------------------------------------------------- display maps --
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


def shown_map(raw: np.ndarray, spec, smooth: float = 0.0, top_percent: float = 100.0,
              mask: np.ndarray | None = None) -> np.ndarray:
    """What a viewer shows of a raw map of ``spec``'s method: :func:`display_map` with the
    sign of :func:`~seg_explain.frontend.reading.shown_sign` (+ = supports the RoI)."""
    raw = np.asarray(raw, np.float32)
    return shown_sign(spec) * display_map(raw, smooth, top_percent, mask, spatial_dims=raw.ndim)


def shown_limits(shown: np.ndarray, raw: np.ndarray, spec, params: dict) -> tuple[float, float]:
    """Colour limits for a shown map: from the displayed values (smoothing lowers the peaks,
    the map must not turn faint), from the raw ones when nothing is left to show."""
    lim, _ = display_limits(shown if np.any(shown) else raw, spec.caps.map_kind)
    return attribution_limits(lim, spec.is_one_sided(params), False)


# ------------------------------------------------------------------------ outlines --
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


# --------------------------------------------------------------------------- names --
def slice_suffix(slice_index: int | None) -> str:
    """`` · z=<i>`` for a 2D model's result on one slice of a volume, else ''."""
    return f" · z={slice_index}" if slice_index is not None else ""


def result_name(title: str, target_name: str, roi_name: str, slice_index: int | None = None) -> str:
    """``<Method> · <class> · <RoI>``: the class is not repeated when the RoI's name holds
    it (``RoI · frontal_L``), and left out for the predicted class (``roi_name="predicted"``)."""
    z = slice_suffix(slice_index)
    if roi_name == "predicted":
        return f"{title} · {target_name}{z}"
    if target_name in roi_name:
        return f"{title} · {roi_name}{z}"
    return f"{title} · {target_name} in {roi_name}{z}"


def outline_name(roi_name: str, target, slice_index: int | None = None) -> str:
    """``outline · <RoI>`` (``outline · predicted <class>`` for the predicted class)."""
    roi = "predicted " + str(target) if roi_name == "predicted" else roi_name
    return f"outline · {roi}{slice_suffix(slice_index)}"


def prediction_name(model_name: str, slice_index: int | None = None) -> str:
    """``prediction · <model file name>``."""
    from pathlib import Path

    return f"prediction · {Path(model_name).name}{slice_suffix(slice_index)}"


# ------------------------------------------------------------------------- records --
def scalar_items(d: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalar entries of a dict (for layer metadata)."""
    from ..explainers.base import NOT_SCALAR, json_scalar

    out = {k: json_scalar(v) for k, v in d.items()}
    return {k: v for k, v in out.items() if v is not NOT_SCALAR}


def result_info(exp, req, display) -> dict[str, Any]:
    """What a result keeps about itself (``exp``: the Explanation, ``req``: the
    :class:`~seg_explain.frontend.requests.ExplainRequest`, ``display``: its
    :class:`~seg_explain.frontend.requests.ExplainDisplay`): method, class, RoI, model,
    parameters, seed, timings, limits, unit, the legend (long and short) and the unit shown."""
    spec = exp.spec
    return {"kind": "attribution", "method": exp.method, "target": exp.target_name,
            "target_index": exp.target, "roi": req.roi_name, "image": req.image_layer_name,
            "model": req.model_path, "device": display.device, "params": scalar_items(exp.params),
            "seed": req.seed, "elapsed_s": round(exp.elapsed_s, 3), "n_forward": exp.n_forward,
            "n_backward": exp.n_backward, "limit": display.limit, "max_abs": display.max_abs,
            "slice_index": req.slice_index, "extras": scalar_items(exp.extras), "unit": spec.unit,
            "legend": legend(spec, exp.target_name, exp.params),
            "legend_short": legend_short(spec, exp.target_name, exp.params), "shown_unit": shown_unit(spec)}


# ---------------------------------------------------------------------------- text --
def done_text(exp, limits, max_abs: float) -> str:
    """The status line of a finished explanation (time, passes, colour limits, unit)."""
    spec = exp.spec
    return (f"Done: {spec.title} of '{exp.target_name}' in {exp.elapsed_s:.1f} s "
            f"({exp.n_forward} forward / {exp.n_backward} backward passes). "
            f"Colour limits {range_text(limits)} (max |value| {max_abs:.3g}) {spec.unit}.")


def summary_lines(exp) -> tuple[list[str], str | None]:
    """``(lines, report)``: the result's warnings then its report (or the registry's summary
    fields, e.g. the RoI's Dice); ``report`` is the method's own report text, if any."""
    lines = [f"{w}" for w in exp.warnings]
    report = exp.extras.get("report") if isinstance(exp.extras, dict) else None
    if report:
        lines.append(str(report))
    else:
        fields = [(k, exp.extras.get(k)) for k in exp.spec.summary_fields if exp.extras.get(k) is not None]
        if fields:
            lines.append(", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in fields))
    return lines, (str(report) if report else None)


def canvas_text(name: str, info: dict, limits, surfaces: bool = False) -> str:
    """The legend drawn on the canvas: the result's name, the colours in a few words, three
    values of the colour scale (the colour bar's own ticks can be as sparse as a lone "0")
    or, with 3D surfaces, what they enclose, and the unit. Short lines: the text must not
    run under the colour bar."""
    lo, hi = (float(v) for v in limits)
    full = (f"{hi:.3g}" if lo == 0 else f"{lo:.3g}" if hi == 0 else f"±{max(abs(lo), abs(hi)):.3g}")
    shown = f"full colour at {full} · {scale_text(lo, hi)}"
    if surfaces:
        shown = f"3D: surfaces enclose the strongest {EVIDENCE_TOP:g} % of each sign"
    unit = short_unit(info.get("shown_unit", info.get("unit", "")))
    return f"{name}\n{info.get('legend_short', '')}\n{shown}\nvalues: {unit}"
