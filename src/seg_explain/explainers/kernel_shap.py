"""KernelSHAP on supervoxels (Agg2Exp §3.1, appendix B.1; METHODS.md "KernelSHAP").

Explains the shared target f̂_c (``ctx.f_hat``: sum of class-c logits over the RoI fixed
from the clean image) with Shapley values of a few interpretable features:

- ``features="cubes"``: an even grid of cuboids over the model grid, ``grid`` cells per
  axis (default 4×4×4 in 3D, 8×8 in 2D; an int or one int per axis);
- ``features="semantic"``: the segments of the clean prediction (one feature per
  predicted class label, as in the paper).

A removed feature is set to the ``baseline`` (``"min"``: the per-channel minimum of the
preprocessed image — the default; ``"zero"``; ``"mean"``; a number; or an array of the
prepared image's shape ``(C, *S)`` / ``(*S)`` in model space).

Estimation (our own weighted least squares, not Captum): coalitions are enumerated exactly
when ``2^M − 2 <= n_samples`` (exact Shapley values, kernel weights), otherwise sampled
from the Shapley kernel — subset size ``k`` with probability ∝ ``(M−1)/(k(M−k))``, then
a uniform subset of that size, in complementary pairs (antithetic sampling). The
regression is solved with the efficiency constraint ``Σφ = f̂(x) − f̂(baseline)``
imposed exactly (one coefficient eliminated), so the efficiency axiom holds up to
rounding whatever the sample size. Many coalitions go through the network per forward
pass (``batch_size``, auto by default) under ``torch.inference_mode``; models larger
than their patch use MONAI sliding windows for each batch. Several classes of one image
(:mod:`.multiclass`, Agg2Exp) share the coalitions and every forward pass: f̂ of all the
classes is read from the same logits, so K classes cost one set of passes, not K.

Returned map (model grid, then the image grid by nearest neighbour): every voxel of a
feature gets that feature's Shapley value φ — the convention of the paper (Captum
``KernelShap`` with a ``feature_mask``), on which its Agg2Exp masses and Table-1 metrics are
computed. ``density=True`` paints φ / (feature's voxel count) instead, so that the map sums
to ``f̂(x) − f̂(baseline)`` (like Integrated Gradients' completeness) and a region's Agg2Exp
mass is not inflated by its size. The raw values are in the extras: ``phi``,
``feature_sizes``, ``feature_labels`` (semantic: the class label of each feature),
``f_x``, ``f_baseline``, ``efficiency_gap`` (Σφ − (f̂(x) − f̂(baseline))), ``n_features``,
``n_coalitions``, ``exact``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import MethodError
from .base import Context
from .engine import baseline_tensor, f_hats_batch
from .registry import Capabilities, Cost, CostInput, MethodSpec, Param, register

DEFAULT_GRID = {2: 8, 3: 4}
DEFAULT_SAMPLES = {"cubes": 1000, "semantic": 200}


def cube_features(shape: tuple[int, ...], grid=None) -> tuple[np.ndarray, tuple[int, ...]]:
    """Even grid of cuboids over ``shape`` -> (int feature map of ``shape``, cells per axis)."""
    sd = len(shape)
    if grid is None:
        grid = DEFAULT_GRID[sd]
    g = [int(grid)] * sd if np.isscalar(grid) else [int(v) for v in grid]
    if len(g) != sd or min(g) < 1:
        raise MethodError(f"grid must be a positive int or {sd} ints, got {grid!r}")
    g = [min(gi, s) for gi, s in zip(g, shape)]
    idx = [np.arange(s) * gi // s for s, gi in zip(shape, g)]
    mesh = np.meshgrid(*idx, indexing="ij")
    fmap = np.ravel_multi_index(tuple(mesh), tuple(g))
    return fmap.astype(np.int64), tuple(g)


def semantic_features(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Segments of a label map -> (feature map 0..M-1, label of each feature)."""
    uniq, inv = np.unique(np.asarray(labels), return_inverse=True)
    return inv.reshape(np.shape(labels)).astype(np.int64), [int(u) for u in uniq]


def shapley_kernel_weight(M: int, k: np.ndarray) -> np.ndarray:
    """Shapley kernel π(z) for coalitions of size ``k`` among ``M`` features (0 < k < M)."""
    k = np.asarray(k, dtype=np.float64)
    comb = np.array([math.comb(M, int(v)) for v in k.ravel()], dtype=np.float64).reshape(k.shape)
    return (M - 1) / (comb * k * (M - k))


def coalitions(M: int, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """Coalition matrix ``(n, M)`` bool, regression weights ``(n,)``, and whether exact."""
    if M <= 1:
        return np.zeros((0, max(M, 0)), bool), np.zeros(0), True
    if M < 30 and 2 ** M - 2 <= n_samples:
        ints = np.arange(1, 2 ** M - 1, dtype=np.int64)
        Z = ((ints[:, None] >> np.arange(M)[None]) & 1).astype(bool)
        return Z, shapley_kernel_weight(M, Z.sum(1)), True
    ks = np.arange(1, M)
    p = (M - 1) / (ks * (M - ks))
    p = p / p.sum()
    n_pairs = max(1, n_samples // 2)
    sizes = rng.choice(ks, size=n_pairs, p=p)
    Z = np.zeros((2 * n_pairs, M), bool)
    for i, k in enumerate(sizes):
        on = rng.choice(M, size=int(k), replace=False)
        Z[2 * i, on] = True
        Z[2 * i + 1] = ~Z[2 * i]
    if n_samples % 2 == 0 or n_samples < 2:
        return Z[:max(n_samples, 2)], np.ones(min(len(Z), max(n_samples, 2))), False
    extra = np.zeros((1, M), bool)
    extra[0, rng.choice(M, size=int(rng.choice(ks, p=p)), replace=False)] = True
    return np.concatenate([Z, extra]), np.ones(len(Z) + 1), False


def solve_shap(Z: np.ndarray, w: np.ndarray, fz: np.ndarray, f0: float, f1: float) -> np.ndarray:
    """Weighted least squares ``fz − f0 ≈ Z φ`` subject to ``Σφ = f1 − f0``."""
    M = Z.shape[1]
    delta = f1 - f0
    if M == 1:
        return np.array([delta])
    Zf = Z.astype(np.float64)
    X = Zf[:, :-1] - Zf[:, -1:]
    t = (np.asarray(fz, np.float64) - f0) - Zf[:, -1] * delta
    sw = np.sqrt(np.asarray(w, np.float64))
    phi_head, *_ = np.linalg.lstsq(X * sw[:, None], t * sw, rcond=None)
    return np.concatenate([phi_head, [delta - phi_head.sum()]])


# -------------------------------------------------------------------- explainer --
def kernel_shap_multi(ctxs, features: str = "cubes", grid=None, n_samples=None,
                      baseline="min", density=False) -> Iterator[tuple[int, int]]:
    """KernelSHAP of several classes of one image from the *same* coalitions: each batch of
    perturbed images goes through the network once and f̂ of every class is read from it
    (used by :mod:`.multiclass`; identical to explaining the classes one by one)."""
    if not ctxs:
        raise MethodError("nothing to explain: no class given")
    ctx0 = ctxs[0]
    if any(c.prep.x is not ctx0.prep.x for c in ctxs[1:]):
        raise MethodError("classes explained together must share one prepared image")
    density = bool(density)   # features, density, n_samples: checked by the registry
    x = ctx0.x
    shape = ctx0.shape
    if features == "cubes":
        fmap, g = cube_features(shape, grid)
        labels_of = None
    else:
        fmap, labels_of = semantic_features(ctx0.clean_labels.numpy())
        g = None
    M = int(fmap.max()) + 1
    n = int(n_samples) if n_samples is not None else DEFAULT_SAMPLES[features]
    rng = np.random.default_rng(int(ctx0.seed))
    Z, w, exact = coalitions(M, n, rng)
    base = baseline_tensor(x, baseline, "kernel_shap: baseline")
    fmap_t = torch.from_numpy(fmap)
    sizes = np.bincount(fmap.ravel(), minlength=M).astype(np.float64)

    bs = ctx0.auto_batch(per_item_bytes=float(np.prod(shape)) * 4 * 40 * max(1, x.shape[0]), cap=32)
    total = len(Z) + 2
    # the two anchors: everything on (x) and everything off (baseline)
    f_anchor = f_hats_batch(ctxs, torch.stack([x, base])).numpy()
    f1, f0 = f_anchor[0], f_anchor[1]                             # (K,)
    done = 2
    yield (done, total)
    fz = np.empty((len(Z), len(ctxs)), np.float64)
    for s in range(0, len(Z), bs):
        zb = torch.from_numpy(Z[s:s + bs])
        keep = zb[:, fmap_t]                                   # (B, *S) voxel on/off
        xb = torch.where(keep[:, None], x[None], base[None])    # (B, C, *S)
        fz[s:s + len(zb)] = f_hats_batch(ctxs, xb).numpy()
        done += len(zb)
        yield (done, total)
    out = []
    for k in range(len(ctxs)):
        phi = solve_shap(Z, w, fz[:, k], f0[k], f1[k]) if M > 1 else np.array([f1[k] - f0[k]])
        per_voxel = phi / np.maximum(sizes, 1) if density else phi
        attr = torch.from_numpy(per_voxel[fmap].astype(np.float32))
        extras = {"phi": phi.tolist(), "feature_sizes": sizes.astype(int).tolist(),
                  "feature_labels": labels_of if labels_of is not None else list(range(M)),
                  "grid": list(g) if g is not None else None, "f_x": float(f1[k]),
                  "f_baseline": float(f0[k]), "efficiency_gap": float(phi.sum() - (f1[k] - f0[k])),
                  "n_features": M, "n_coalitions": int(len(Z)), "exact": bool(exact),
                  "batch_size": bs, "features": features,
                  "painted": "phi / feature voxels (density)" if density else "phi on every voxel of the feature"}
        out.append((attr, extras))
    return out


def kernel_shap(ctx: Context, features: str = "cubes", grid=None, n_samples=None,
                baseline="min", density=False) -> Iterator[tuple[int, int]]:
    res = yield from kernel_shap_multi([ctx], features=features, grid=grid, n_samples=n_samples,
                                       baseline=baseline, density=density)
    return res[0]


def _cost(info: CostInput, params: dict) -> Cost:
    """Two anchors plus one pass per coalition, all forward (inference); each pass is the
    whole image (every window of it when it exceeds the patch)."""
    n = params.get("n_samples") or DEFAULT_SAMPLES[params.get("features", "cubes")]
    if params.get("features", "cubes") == "cubes":
        g = params.get("grid") or DEFAULT_GRID[info.spatial_dims]
        cells = int(np.prod([min(int(v), s) for v, s in zip([g] * info.spatial_dims if np.isscalar(g) else g,
                                                              info.shape)]))
        if cells < 30 and 2 ** cells - 2 <= n:
            n = 2 ** cells - 2
    return Cost(forward=(int(n) + 2) * max(1, info.n_windows_all), backward=0)


register(MethodSpec(
    "kernel_shap", kernel_shap, title="KernelSHAP (supervoxels)", multi=kernel_shap_multi, source="Agg2Exp §3.1",
    question="the Shapley value of each supervoxel (a cube, or a predicted region) for the RoI's summed logit, "
             "removing supervoxels to a baseline",
    params=(Param("features", "choice", "cubes", "cubes: an even grid; semantic: one feature per predicted region",
                  choices=("cubes", "semantic")),
            Param("grid", "auto_ints", None, "cubes per axis, e.g. 4 or 4,6,6 (auto: 4 per axis in 3D, 8 in 2D)",
                  lo=1, hi=64),
            Param("n_samples", "auto_int", None, "coalitions evaluated (auto: 1000 cubes / 200 semantic; all "
                  "of them when there are fewer)", lo=1, hi=10_000_000, gui_default_3d=200),
            Param("baseline", "baseline", "min", "value of a removed supervoxel: min / zero / mean (per channel), "
                  "blur (Gaussian blur), or a number", choices=("min", "zero", "mean", "blur"), blur_sigma=True),
            Param("density", "bool", False, "paint φ / supervoxel size (the map then sums to f̂(x) − f̂(baseline)) "
                  "instead of φ on every voxel of the supervoxel (the paper's convention)")),
    caps=Capabilities(dims=(2, 3), gradients=False, hooks=False, multiclass=True, map_kind="block",
                      clean_segments=True),
    unit="logit-sum units (Shapley value φ of the supervoxel)",
    positive="supervoxels whose presence raises {cls}'s RoI logit sum", negative="supervoxels that lower it",
    summary_fields=("n_features", "n_coalitions", "exact", "efficiency_gap", "f_x", "f_baseline"),
    cost=_cost, cost_class="expensive",
    cheaper=lambda p, sd: {"n_samples": 100} if (p.get("n_samples") or 1000) > 100 else {}))
