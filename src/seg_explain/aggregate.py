"""Agg2Exp: aggregate voxel attributions into class-to-region importance matrices.

For every image, every predicted class ``a`` is explained (its RoI = its predicted
voxels, the shared target f̂_a) with one attribution method; the attribution ``e_a``
(image grid, signed) is then summed inside every region ``b``:

    local[a, b]      = Σ_{v∈b} |e_a(v)|     / Σ_v |e_a(v)|     ("mass accuracy", eq. 7)
    local_pos[a, b]  = Σ_{v∈b} max(e_a, 0)  / Σ_v max(e_a, 0)
    local_neg[a, b]  = Σ_{v∈b} max(−e_a, 0) / Σ_v max(−e_a, 0)
    local_per_voxel[a, b] = local[a, b] · p / |b|   (relative mean, ``relative_mean_abs``: the
                       mean |e_a| in b relative to the mean over the whole image; 1 = as dense
                       as average; comparable across images and methods)
    local_mean_abs[a, b]  = Σ_{v∈b} |e_a(v)| / |b|   (raw mean, ``mean_abs``: the mean |e_a| in
                       b in the attribution's own units — the authors' per-region "mean",
                       ``aggregate_explanations.py``; scales with the attribution)

``e_a`` is the attribution on the grid of the image passed in (``Explanation.attribution``;
summed over channels for multi-channel inputs). Regions (columns) are the model's classes
as *predicted* in that image (they partition the image, so each row sums to 1 over the
class columns, background included), followed by any extra RoI masks (a lesion mask, a
painted layer, another model's output). Extra columns share the row's denominator (the
whole image), so they read "share of the evidence that lies in the lesion"; they overlap
the class columns and are *not* part of the sum-to-1.

Missing values (NaN):

- a class that is not predicted in an image has no RoI, so nothing to explain: its row
  is NaN for that image (its *column* is 0: an empty region holds no mass; its two mean
  columns are NaN);
- a row whose attribution is identically 0 (or has no positive / negative part, for
  ``local_pos`` / ``local_neg``) is NaN (0/0);
- an extra RoI that is not given for an image is a NaN column for that image.

``global_importance`` is the mean over images ignoring NaN (``nanmean``), so a class is
averaged over the images where it was predicted; ``n_present`` says over how many.

Work is done one image at a time (every class's attribution from shared forward passes via
:func:`seg_explain.explainers.multiclass.explain_classes_iter`); only the small matrices are
kept, so memory does not grow with the number of images (the peak is one image's
attributions, one per explained class). With ``classes=[...]`` only those classes are
explained (the others are NaN rows); the regions are always every class. :func:`agg2exp_iter` is the
generator form for the GUI: it yields ``(done, total)`` (per-mille of the whole run) and can
be closed between steps; :class:`Agg2ExpRun` also gives the partial result of what has
finished so far.

Seeds: image ``name`` is explained with ``image_seed(seed, name)`` (:func:`seg_explain.dataset.image_seed`),
a seed that depends on the image, not on the order in which images are computed, so a run
split over processes, machines or resumed runs gives the same tables as one serial run.
:func:`agg2exp_image_iter` is that per-image computation; :class:`Agg2ExpRun` (serial, in
memory) and :mod:`seg_explain.dataset` (resumable, Dask workers) both call it, and
:func:`assemble_result` builds the result from its rows. ``agg2exp(..., client=..., out=...)``
runs through :mod:`seg_explain.dataset`.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputMismatchError
from .files import write_csv
from .io import LoadedImage, as_loaded, image_stem, load_image


# ---------------------------------------------------------------------- the matrices --
def region_masses(attribution: np.ndarray, labels: np.ndarray, n_classes: int,
                  extra_masks: Sequence[np.ndarray | None] = ()) -> dict[str, np.ndarray]:
    """One row of every matrix: the mass of ``attribution`` in each region.

    ``labels`` is the predicted label map (image grid), ``extra_masks`` boolean masks (or
    None: NaN). Returns ``mass``, ``mass_pos``, ``mass_neg``, ``mass_per_voxel`` (relative
    mean), ``mean_abs`` (raw mean |attribution| per region) of length
    ``n_classes + len(extra_masks)`` and ``volume`` (voxels per region).
    """
    e = np.asarray(attribution, dtype=np.float64).ravel()
    lab = np.asarray(labels).ravel().astype(np.int64)
    if e.shape != lab.shape:
        raise InputMismatchError(f"attribution shape {np.shape(attribution)} does not match the "
                                 f"label map {np.shape(labels)}")
    parts = {"mass": np.abs(e), "mass_pos": np.clip(e, 0, None), "mass_neg": np.clip(-e, 0, None)}
    R = n_classes + len(extra_masks)
    vol = np.zeros(R)
    vol[:n_classes] = np.bincount(lab, minlength=n_classes)[:n_classes]
    flat_masks = []
    for j, m in enumerate(extra_masks):
        if m is None:
            vol[n_classes + j] = np.nan
            flat_masks.append(None)
        else:
            fm = np.asarray(m, dtype=bool).ravel()
            if fm.shape != lab.shape:
                raise InputMismatchError(f"extra RoI shape {np.shape(m)} does not match the image "
                                         f"{np.shape(labels)}")
            vol[n_classes + j] = fm.sum()
            flat_masks.append(fm)
    out: dict[str, np.ndarray] = {"volume": vol}
    for key, w in parts.items():
        total = w.sum()
        row = np.full(R, np.nan)
        if total > 0:
            row[:n_classes] = np.bincount(lab, weights=w, minlength=n_classes)[:n_classes] / total
            for j, fm in enumerate(flat_masks):
                if fm is not None:
                    row[n_classes + j] = w[fm].sum() / total
        out[key] = row
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = out["mass"] * lab.size / vol
    dens[~(vol > 0)] = np.nan
    out["mass_per_voxel"] = dens
    sums = np.full(R, np.nan)
    sums[:n_classes] = np.bincount(lab, weights=parts["mass"], minlength=n_classes)[:n_classes]
    for j, fm in enumerate(flat_masks):
        if fm is not None:
            sums[n_classes + j] = parts["mass"][fm].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = sums / vol
    raw[~(vol > 0)] = np.nan
    out["mean_abs"] = raw
    return out


def dice_per_class(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of every class between two label maps -> ``(n_classes,)``; empty vs empty = 1."""
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(truth).ravel().astype(np.int64)
    if p.shape != t.shape:
        raise InputMismatchError(f"ground truth shape {np.shape(truth)} does not match the "
                                 f"prediction {np.shape(pred)}")
    inter = np.bincount(p[p == t], minlength=n_classes)[:n_classes].astype(float)
    ps = np.bincount(p, minlength=n_classes)[:n_classes].astype(float)
    ts = np.bincount(t[(t >= 0) & (t < n_classes)], minlength=n_classes)[:n_classes].astype(float)
    den = ps + ts
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(den > 0, 2 * inter / den, 1.0)
    return d


# ------------------------------------------------------------------------- the result --
@dataclass
class Agg2ExpResult:
    """Local and global Agg2Exp matrices (rows: explained classes, columns: regions).

    Arrays are ``(n_images, L, R)`` with ``L = len(row_names)`` (every model class) and
    ``R = len(col_names)`` (every class, then the extra RoIs). See the module docstring
    for the definitions and the NaN conventions.
    """

    local: np.ndarray
    local_pos: np.ndarray
    local_neg: np.ndarray
    local_per_voxel: np.ndarray
    row_names: list[str]
    col_names: list[str]
    image_names: list[str]
    volumes: np.ndarray                    # (n_images, R) voxels per region (image grid)
    present: np.ndarray                    # (n_images, L) class predicted (row explained)
    method: str = "smoothgrad"
    params: dict[str, Any] = field(default_factory=dict)
    elapsed_s: np.ndarray | None = None    # (n_images,) wall seconds per image
    n_forward: np.ndarray | None = None    # (n_images,)
    n_backward: np.ndarray | None = None   # (n_images,)
    dice: np.ndarray | None = None         # (n_images, L) vs ground truth, when given
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    local_mean_abs: np.ndarray | None = None   # (n_images, L, R) raw mean |e_a| per region (NaN: unknown)

    def __post_init__(self):
        if self.local_mean_abs is None:
            self.local_mean_abs = np.full(self.local.shape, np.nan)

    # ---- shapes / names
    @property
    def n_images(self) -> int:
        return int(self.local.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.row_names)

    @property
    def extra_names(self) -> list[str]:
        return self.col_names[self.n_classes:]

    # ---- global view
    @staticmethod
    def _nanmean(a: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=0) if a.shape[0] else np.full(a.shape[1:], np.nan)

    @property
    def global_importance(self) -> np.ndarray:
        """``(L, R)`` mean over images of ``local`` (NaN rows of absent classes ignored)."""
        return self._nanmean(self.local)

    @property
    def global_pos(self) -> np.ndarray:
        return self._nanmean(self.local_pos)

    @property
    def global_neg(self) -> np.ndarray:
        return self._nanmean(self.local_neg)

    @property
    def global_per_voxel(self) -> np.ndarray:
        return self._nanmean(self.local_per_voxel)

    @property
    def local_relative_mean_abs(self) -> np.ndarray:
        """``(n_images, L, R)`` mean |e_a| in region b ÷ mean |e_a| over the image
        (the same numbers as ``local_per_voxel``, named for what they are)."""
        return self.local_per_voxel

    @property
    def global_relative_mean_abs(self) -> np.ndarray:
        return self.global_per_voxel

    @property
    def global_mean_abs(self) -> np.ndarray:
        """``(L, R)`` mean over images of the raw mean |e_a| per region (attribution units)."""
        return self._nanmean(self.local_mean_abs)

    @property
    def global_std(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanstd(self.local, axis=0)

    @property
    def n_present(self) -> np.ndarray:
        """``(L, R)`` number of images each global cell averages over."""
        return np.isfinite(self.local).sum(0)

    @property
    def context_mass(self) -> np.ndarray:
        """``(n_images, L)``: share of class a's evidence inside its own region (diagonal)."""
        L = self.n_classes
        return self.local[:, np.arange(L), np.arange(L)]

    def matrix(self, image: int | str | None = None, kind: str = "mass") -> np.ndarray:
        """The ``(L, R)`` matrix of one image (index or name), or the global one (None).

        ``kind``: ``mass`` | ``mass_pos`` | ``mass_neg`` | ``relative_mean_abs`` (also
        ``mass_per_voxel``) | ``mean_abs``."""
        arr = {"mass": self.local, "mass_pos": self.local_pos, "mass_neg": self.local_neg,
               "mass_per_voxel": self.local_per_voxel, "relative_mean_abs": self.local_per_voxel,
               "mean_abs": self.local_mean_abs}[kind]
        if image is None:
            return self._nanmean(arr)
        i = self.image_names.index(image) if isinstance(image, str) else int(image)
        return arr[i]

    # ---- tables
    def records(self) -> list[dict[str, Any]]:
        """Long table, one dict per (image, explained class, region).

        Every cell is listed, NaN included (absent classes), so ``len == n·L·R``. (The
        per-image means: ``local_mean_abs`` / ``local_relative_mean_abs``.)"""
        out = []
        for i, name in enumerate(self.image_names):
            for a, an in enumerate(self.row_names):
                for b, bn in enumerate(self.col_names):
                    out.append({"image": name, "explained_class": an, "region": bn,
                                "mass": float(self.local[i, a, b]),
                                "mass_pos": float(self.local_pos[i, a, b]),
                                "mass_neg": float(self.local_neg[i, a, b])})
        return out

    def global_records(self) -> list[dict[str, Any]]:
        """Long table of the global matrices (mean over images, sd, and how many images).

        ``relative_mean_abs`` (= the older name ``mass_per_voxel``): mean |e_a| in the region
        ÷ the image mean; ``mean_abs``: the raw mean |e_a| in the region (the authors')."""
        g, gp, gn, gm, sd, n = (self.global_importance, self.global_pos, self.global_neg,
                                self.global_per_voxel, self.global_std, self.n_present)
        raw = self.global_mean_abs
        return [{"explained_class": an, "region": bn, "mass": float(g[a, b]),
                 "mass_pos": float(gp[a, b]), "mass_neg": float(gn[a, b]),
                 "mass_per_voxel": float(gm[a, b]), "relative_mean_abs": float(gm[a, b]),
                 "mean_abs": float(raw[a, b]), "mass_sd": float(sd[a, b]), "n_images": int(n[a, b])}
                for a, an in enumerate(self.row_names) for b, bn in enumerate(self.col_names)]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`records` (image, explained_class, region, mass, mass_pos, mass_neg)."""
        return write_csv(path, self.records(),
                          ["image", "explained_class", "region", "mass", "mass_pos", "mass_neg"])

    def global_to_csv(self, path: str | os.PathLike) -> Path:
        return write_csv(path, self.global_records(),
                          ["explained_class", "region", "mass", "mass_pos", "mass_neg",
                           "mass_per_voxel", "relative_mean_abs", "mean_abs", "mass_sd", "n_images"])

    def summary(self) -> str:
        s = (f"Agg2Exp ({self.method}): {self.n_images} image(s), {self.n_classes} classes, "
             f"{len(self.extra_names)} extra RoI(s)")
        if self.skipped:
            s += f"; skipped {len(self.skipped)}: " + "; ".join(f"{n} ({m})" for n, m in self.skipped)
        return s


# ------------------------------------------------------------------ inputs, extra RoIs --
def _mask_array(spec, shape: tuple[int, ...], what: str, like: LoadedImage | None = None) -> np.ndarray:
    """An RoI spec (array, LoadedImage, path) -> boolean mask of ``shape`` (nonzero voxels).

    A mask file must be on the image's grid (same shape and, when both files carry geometry,
    the same affine); NaN/Inf voxels are refused."""
    from .checks import require_finite
    from .files import require_same_grid

    if isinstance(spec, (str, os.PathLike)):
        spec = load_image(spec)
    if isinstance(spec, LoadedImage) and isinstance(like, LoadedImage):
        require_same_grid(like, spec, what)
    arr = spec.data if isinstance(spec, LoadedImage) else np.asarray(spec)
    arr = np.squeeze(arr) if arr.ndim > len(shape) else arr
    require_finite(arr, what)
    if tuple(arr.shape) != tuple(shape):
        raise InputMismatchError(f"{what}: shape {tuple(arr.shape)} does not match the image "
                                 f"{tuple(shape)}")
    return arr != 0


class ExtraRois:
    """Normalises the ``extra_rois`` argument: names + a per-image getter.

    Accepted forms:

    - ``None``;
    - ``{name: spec}`` where spec is a mask (ndarray, LoadedImage, file path) used for every
      image, a path containing ``{stem}`` / ``{name}`` / ``{index}`` (formatted per image),
      a list with one spec (or None) per image, or a callable ``(index, image_name) -> spec``;
    - a list (one per image) of ``{name: mask}`` dicts;
    - a single mask / path / list of per-image masks (named after the file, or ``roi``).

    A mask is its nonzero voxels (a label map becomes one region: pass each label
    separately to get one column per label).
    """

    def __init__(self, extra, n_images: int):
        self.per_image: list[dict] | None = None
        self.specs: dict[str, Any] = {}
        if extra is None:
            self.names: list[str] = []
            return
        if isinstance(extra, dict):
            self.specs = dict(extra)
        elif (isinstance(extra, (list, tuple)) and extra and all(isinstance(e, dict) or e is None
                                                                   for e in extra)):
            if len(extra) != n_images:
                raise InputMismatchError(f"extra_rois: got {len(extra)} per-image dicts for {n_images} images")
            self.per_image = [dict(e or {}) for e in extra]
            names: list[str] = []
            for e in self.per_image:
                names += [k for k in e if k not in names]
            self.names = [str(n) for n in names]
            return
        else:
            name = image_stem(extra) if isinstance(extra, (str, os.PathLike)) else "roi"
            self.specs = {name: extra}
        self.names = [str(k) for k in self.specs]
        for k, v in self.specs.items():
            if isinstance(v, (list, tuple)) and len(v) != n_images:
                raise InputMismatchError(f"extra RoI {k!r}: {len(v)} masks for {n_images} images")

    def spec(self, i: int, image_name: str, n: str):
        """Image ``i``'s spec of RoI ``n`` (a mask, LoadedImage, path, or None): callables are
        called, lists indexed, ``{stem}`` templates formatted."""
        spec = (self.per_image[i].get(n) if self.per_image is not None else self.specs[n])
        if callable(spec):
            spec = spec(i, image_name)
        elif isinstance(spec, (list, tuple)):
            spec = spec[i]
        elif isinstance(spec, str) and "{" in spec:
            spec = spec.format(stem=image_name, name=image_name, index=i)
        return spec

    def masks(self, i: int, image_name: str, shape, like=None) -> list[np.ndarray | None]:
        return extra_masks([self.spec(i, image_name, n) for n in self.names], self.names, shape, like)


def extra_masks(specs: Sequence, names: Sequence[str], shape, like=None) -> list[np.ndarray | None]:
    """RoI specs (mask, LoadedImage, path or None), one per extra column -> boolean masks."""
    return [None if spec is None else _mask_array(spec, shape, f"extra RoI {n!r}", like)
            for spec, n in zip(specs, names)]


# ---------------------------------------------------------------------- one image --
def agg2exp_image_iter(model, image, name: str, method: str = "smoothgrad", *, params: dict | None = None,
                       classes: Sequence[int] | None = None, seed: int = 0, batch_size: int | None = None,
                       extra: Sequence | Callable = (), extra_names: Sequence[str] | None = None,
                       ground_truth=None, on_image: Callable | None = None,
                       labels_fn: Callable | None = None, precision: str | None = None
                       ) -> Iterator[tuple[int, int]]:
    """Agg2Exp rows of one image: yields the explainer's ``(done, total)``, returns a dict.

    The single per-image computation behind :class:`Agg2ExpRun` (serial) and
    :mod:`seg_explain.dataset` (resumable, Dask workers), so both give identical rows.

    ``image``: ndarray, LoadedImage or path (loaded here); ``classes``: class indices to
    explain (None: every predicted class); ``seed`` is used as given (callers pass
    ``image_seed(base_seed, name)``); ``extra``: one RoI spec per extra column (mask,
    LoadedImage, path or None) or a callable ``(shape, loaded_image) -> masks``;
    ``ground_truth``: a label map (array, LoadedImage or path) for Dice, or None;
    ``on_image(name, explanations, labels)`` is called with the image's maps (the only
    place voxel maps exist; they are not returned). Returns ``name``, the ``(L, R)`` rows
    ``mass``/``mass_pos``/``mass_neg``/``mass_per_voxel``/``mean_abs``, ``present`` (L,), ``volume`` (R,),
    ``dice`` ((L,) or None), ``elapsed``, ``n_forward``, ``n_backward``. ``precision``: see
    :mod:`seg_explain.precision` (None: the model's own).
    """
    from .explainers.multiclass import explain_classes_iter

    model = model.with_precision(precision)
    t0 = time.perf_counter()
    params = dict(params or {})
    L = len(model.class_names)
    image = as_loaded(image)
    gen = explain_classes_iter(model, image, method, classes=classes, seed=seed, batch_size=batch_size, **params)
    exps = []
    try:
        exps = yield from gen
    except InputMismatchError:
        if classes is None:
            raise
        # none of the requested classes is predicted here: all rows NaN
    if exps:
        shape = tuple(exps[0].attribution.shape)
        # the clean label map the explanations were made on (carried by them)
        labels = (labels_fn or labels_of)(image, exps, shape)
        if on_image is not None:
            on_image(name, exps, labels)
    else:
        labels = np.asarray(model.predict(image)).astype(np.int64)
        shape = labels.shape
    if callable(extra):
        masks = extra(shape, image)
    else:
        names = list(extra_names) if extra_names is not None else [f"roi_{j}" for j in range(len(extra))]
        masks = extra_masks(list(extra), names, shape, image)
    R = L + len(masks)
    rows = {k: np.full((L, R), np.nan) for k in ("mass", "mass_pos", "mass_neg", "mass_per_voxel", "mean_abs")}
    present = np.zeros(L, bool)
    vol = region_masses(np.zeros(shape), labels, L, masks)["volume"]
    for e in exps:
        m = region_masses(e.attribution, labels, L, masks)
        for k in rows:
            rows[k][e.target] = m[k]
        present[e.target] = True
    dice = None
    if ground_truth is not None:
        from .checks import require_finite
        from .files import require_same_grid

        gt = load_image(ground_truth) if isinstance(ground_truth, (str, os.PathLike)) else ground_truth
        if isinstance(gt, LoadedImage) and isinstance(image, LoadedImage):
            require_same_grid(image, gt, f"ground truth of {name}")
        gt = gt.data if isinstance(gt, LoadedImage) else np.asarray(gt)
        require_finite(gt, f"ground truth of {name}")
        dice = dice_per_class(labels, np.squeeze(gt) if np.ndim(gt) > len(shape) else gt, L)
    nf = sum(int(e.n_forward) for e in exps)
    nb = sum(int(e.n_backward) for e in exps)
    shared = [e.extras.get("shared_passes") for e in exps if isinstance(e.extras, dict)]
    if shared and all(isinstance(s, dict) for s in shared):   # engine reports image totals
        nf, nb = int(shared[0].get("n_forward", nf)), int(shared[0].get("n_backward", nb))
    return {"name": name, **rows, "present": present, "volume": vol, "dice": dice,
            "elapsed": time.perf_counter() - t0, "n_forward": nf, "n_backward": nb}


def assemble_result(rows: Sequence[dict], row_names: Sequence[str], col_names: Sequence[str], *,
                    method: str, params: dict, with_dice: bool = False,
                    skipped: Sequence[tuple[str, str]] = ()) -> Agg2ExpResult:
    """An :class:`Agg2ExpResult` from per-image rows (:func:`agg2exp_image_iter`), in order."""
    L, R = len(row_names), len(col_names)
    from .checks import require_finite_row  # the NaN policy for outputs: no NaN/Inf table cell
    [require_finite_row(r, f"the Agg2Exp row of image {r['name']!r}") for r in rows]

    def stack(key, shape, fill=np.nan):
        return np.stack([r[key] for r in rows]) if rows else np.full((0, *shape), fill)

    dice = None
    if with_dice and rows:
        dice = np.stack([r["dice"] if r.get("dice") is not None else np.full(L, np.nan) for r in rows])
    return Agg2ExpResult(
        local=stack("mass", (L, R)), local_pos=stack("mass_pos", (L, R)),
        local_neg=stack("mass_neg", (L, R)), local_per_voxel=stack("mass_per_voxel", (L, R)),
        row_names=list(row_names), col_names=list(col_names),
        image_names=[r["name"] for r in rows],
        volumes=stack("volume", (R,)), present=stack("present", (L,), False).astype(bool),
        method=method, params=dict(params),
        elapsed_s=np.array([r["elapsed"] for r in rows], dtype=float),
        n_forward=np.array([r["n_forward"] for r in rows], dtype=np.int64),
        n_backward=np.array([r["n_backward"] for r in rows], dtype=np.int64),
        dice=dice, skipped=list(skipped),
        local_mean_abs=(np.stack([r["mean_abs"] if r.get("mean_abs") is not None else np.full((L, R), np.nan)
                                  for r in rows]) if rows else np.full((0, L, R), np.nan)))


def labels_of(image, exps, shape) -> np.ndarray:
    """The clean label map the explanations were made on (computed once, carried by them)."""
    pred = exps[0].prediction
    if pred is not None:
        return np.asarray(pred).astype(np.int64)
    labels = np.full(shape, -1, np.int64)   # pragma: no cover - every Explanation carries it
    for e in exps:
        labels[np.asarray(e.roi, bool)] = e.target
    return labels


# The data-set runner (serial, resumable or on Dask) lives in seg_explain.dataset; these names
# were defined here before and stay importable from here (looked up when first used, so this
# module never imports the runner that imports it).
_MOVED = ("agg2exp", "agg2exp_iter", "Agg2ExpRun")


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("seg_explain.dataset.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
