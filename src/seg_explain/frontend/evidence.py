"""The 3D view's evidence: two surfaces (supports / opposes the RoI) instead of a signed cloud.

:func:`evidence_surfaces` turns a shown map (+ = supports) into at most two bounded
volumes with their iso thresholds, colours and names; a viewer adds each as an iso-surface
layer / model. No viewer imports.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVIDENCE_TOP = 5.0                      # 3D surfaces: the strongest 5 % of each sign
EVIDENCE_SMOOTH = 1.5                   # σ (voxels) that turns speckled voxel maps into regions in 3D
EVIDENCE_MAX_VOXELS = 48 ** 3           # an evidence volume drawn in 3D holds at most about this many voxels


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


def cropped_to_surface(arr: np.ndarray, threshold: float, scale, translate, margin: int = 2):
    """``(volume, scale, translate)`` cut to the box around the voxels at or above
    ``threshold`` (plus ``margin`` voxels), the geometry moved with it: the iso-surface is
    the same, and a ray-caster only covers the box on screen (a temporal-lobe result is a
    small part of the head), while :func:`bounded_volume` then has fewer voxels to pool."""
    a = np.asarray(arr)
    idx = np.nonzero(a >= threshold)
    if not idx[0].size:
        return a, tuple(scale), tuple(translate)
    lo = [max(0, int(i.min()) - margin) for i in idx]
    hi = [min(n, int(i.max()) + 1 + margin) for i, n in zip(idx, a.shape)]
    tr = tuple(float(t) + v * float(s) for t, v, s in zip(translate, lo, scale))
    return a[tuple(slice(x, y) for x, y in zip(lo, hi))], tuple(scale), tr


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


def closed_at_the_edge(arr: np.ndarray, scale, translate):
    """``(volume, scale, translate)`` with one voxel of zeros around it: an iso-surface that
    reaches the volume's edge closes there instead of being cut flat and open (a CAM that
    fills a corner of the volume)."""
    a = np.pad(np.asarray(arr), 1, constant_values=0)
    return a, tuple(scale), tuple(float(t) - float(s) for t, s in zip(translate, scale))


@dataclass
class Surface:
    """One evidence surface: a non-negative volume drawn as an iso-surface at ``threshold``."""

    data: np.ndarray
    scale: tuple
    translate: tuple
    threshold: float
    colour: str          # "red" (supports) or "blue" (opposes)
    name: str


def evidence_surfaces(shown: np.ndarray, spec, params: dict, name: str, scale, translate) -> list[Surface]:
    """The surfaces of a shown map (+ = supports) of ``spec``'s method named ``name``: the
    strongest :data:`EVIDENCE_TOP` % supporting (red) and, for two-sided maps, opposing (blue)
    evidence; voxel maps smoothed with σ = :data:`EVIDENCE_SMOOTH` first; each volume cut to
    the box around its surface and bounded in size (software OpenGL ray-casts every voxel of
    every iso layer per frame). A sign with no evidence has no surface."""
    sigma = EVIDENCE_SMOOTH if spec.caps.map_kind == "voxel" else 0.0
    sup, opp, t_sup, t_opp = evidence_volumes(np.asarray(shown), False, EVIDENCE_TOP, smooth=sigma)
    parts = [(sup, t_sup, "red", "supports")]
    if not spec.is_one_sided(params):
        parts.append((opp, t_opp, "blue", "opposes"))
    out = []
    for arr, thr, colour, what in parts:
        if not np.any(arr > 0):
            continue
        arr, sc, tr = closed_at_the_edge(*bounded_volume(*cropped_to_surface(arr, thr, scale, translate)))
        out.append(Surface(arr, sc, tr, thr, colour, f"{name} · strongest {EVIDENCE_TOP:g} % {what} the RoI"))
    return out
