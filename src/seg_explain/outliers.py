"""Outlier images from Agg2Exp importance vectors (METHODS.md "Outliers"; Agg2Exp §4, C.1).

For every explained class ``a`` an :class:`sklearn.ensemble.IsolationForest` (100 trees,
seeded) is fitted on the images' importance vectors ``local[i, a, :]`` (one row per image
where ``a`` was predicted; all region columns, extra RoIs included). Classes absent from an
image get NaN. Missing extra-RoI values are filled with the training column mean.

Two scores per image and class, both from the same forest:

- ``decision`` — scikit-learn's ``decision_function`` (``score_samples − offset_``), the
  reference code's score: **lower = more anomalous**, negative = flagged as an outlier;
- ``scores`` (``anomaly_score`` in the CSV) — ``−score_samples`` in (0, 1]: **higher = more
  anomalous** (≈ 0.5 is unremarkable). Within a class the two are the same ranking reversed.

Fit on one set (e.g. a reference cohort, as the paper fits on the training set) and score
another with :class:`OutlierDetector`; :func:`detect_outliers` fits and scores the same set.
With ground-truth label maps (``agg2exp(..., ground_truth=...)`` fills ``result.dice``),
:func:`dice_correlation` gives Spearman's ρ between the **decision function** and Dice, as
in the paper's Table 2 (positive ρ: images whose explanations look unusual are segmented
worse): per class, ``"mean"`` — per image, the decision averaged over its classes against
the Dice averaged over them, the paper's image-level test — and ``"pooled"`` over all
(image, class) pairs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputMismatchError

KINDS = {"mass": "local", "mass_pos": "local_pos", "mass_neg": "local_neg", "mass_per_voxel": "local_per_voxel",
         "relative_mean_abs": "local_per_voxel", "mean_abs": "local_mean_abs"}


def _matrix(result, kind: str) -> np.ndarray:
    if isinstance(result, np.ndarray):
        arr = result
    else:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        arr = getattr(result, KINDS[kind])
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 3:
        raise InputMismatchError(f"expected an (n_images, L, R) array, got shape {arr.shape}")
    return arr


def _present(rows: np.ndarray, L: int) -> np.ndarray:
    """Rows of images where the class was explained (its class columns are not all NaN)."""
    cols = rows[:, :L] if rows.shape[1] >= L else rows
    return ~np.isnan(cols).all(1)


def _names(result, attr: str, n: int, prefix: str) -> list[str]:
    names = getattr(result, attr, None)
    return list(names) if names is not None and len(names) == n else [f"{prefix}{i}" for i in range(n)]


@dataclass
class OutlierResult:
    """Per image and class ``(n_images, L)`` (NaN: class absent or too few training images):
    ``scores`` = anomaly score (higher = more anomalous), ``decision`` = the forest's
    decision function (lower = more anomalous, < 0 = outlier; the reference code's score)."""

    scores: np.ndarray
    image_names: list[str]
    class_names: list[str]
    dice: np.ndarray | None = None
    spearman: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # key -> (rho, p, n)
    decision: np.ndarray | None = None

    def ranking(self, explained_class: int | str) -> list[tuple[str, float]]:
        """Images sorted from most to least anomalous for one class (NaN dropped)."""
        a = self.class_names.index(explained_class) if isinstance(explained_class, str) else int(explained_class)
        s = self.scores[:, a]
        order = [i for i in np.argsort(-np.nan_to_num(s, nan=-np.inf)) if np.isfinite(s[i])]
        return [(self.image_names[i], float(s[i])) for i in order]

    @property
    def mean_score(self) -> np.ndarray:
        """``(n_images,)`` anomaly score averaged over the classes present."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.scores, axis=1)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for a, cn in enumerate(self.class_names):
            col = self.scores[:, a]
            finite = np.isfinite(col)
            ranks = np.full(len(col), np.nan)
            if finite.any():
                order = np.argsort(-col[finite])
                r = np.empty(finite.sum())
                r[order] = np.arange(1, finite.sum() + 1)
                ranks[finite] = r
            dec = self.decision[:, a] if self.decision is not None else np.full(len(col), np.nan)
            for i, im in enumerate(self.image_names):
                row = {"image": im, "explained_class": cn, "anomaly_score": float(col[i]),
                       "decision_function": float(dec[i]),
                       "outlier": "" if not np.isfinite(dec[i]) else int(dec[i] < 0),
                       "rank": float(ranks[i])}
                if self.dice is not None:
                    row["dice"] = float(self.dice[i, a])
                out.append(row)
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        from .files import write_csv

        cols = ["image", "explained_class", "anomaly_score", "decision_function", "outlier", "rank"] + (
            ["dice"] if self.dice is not None else [])
        rows = [{**r, "rank": ("" if not np.isfinite(r["rank"]) else int(r["rank"]))} for r in self.records()]
        return write_csv(path, rows, cols)


class OutlierDetector:
    """One IsolationForest per explained class, fitted on one set of Agg2Exp results."""

    def __init__(self, n_estimators: int = 100, seed: int = 0, kind: str = "mass",
                 contamination="auto"):
        self.n_estimators = int(n_estimators)
        self.seed = int(seed)
        self.kind = kind
        self.contamination = contamination
        self.forests: dict[int, Any] = {}
        self.fill: dict[int, np.ndarray] = {}
        self.n_regions: int | None = None
        self.class_names: list[str] | None = None

    def fit(self, result) -> OutlierDetector:
        from sklearn.ensemble import IsolationForest

        X = _matrix(result, self.kind)
        n, L, R = X.shape
        self.n_regions = R
        self.class_names = _names(result, "row_names", L, "class_")
        self.forests, self.fill = {}, {}
        for a in range(L):
            rows = X[:, a, :]
            rows = rows[_present(rows, L)]
            if len(rows) < 2:
                continue
            with np.errstate(invalid="ignore"):
                fill = np.where(np.isfinite(rows).any(0), np.nanmean(np.where(np.isfinite(rows), rows, np.nan), 0), 0.0)
            rows = np.where(np.isfinite(rows), rows, fill)
            forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed,
                                     contamination=self.contamination)
            forest.fit(rows)
            self.forests[a], self.fill[a] = forest, fill
        return self

    def score(self, result) -> OutlierResult:
        """Anomaly scores of ``result``'s images (same classes and regions as the fit)."""
        if self.n_regions is None:
            raise RuntimeError("fit() the detector first")
        X = _matrix(result, self.kind)
        n, L, R = X.shape
        if R != self.n_regions or L != len(self.class_names or []):
            raise InputMismatchError(f"matrices of shape (L={L}, R={R}) do not match the fitted "
                                     f"(L={len(self.class_names or [])}, R={self.n_regions})")
        scores = np.full((n, L), np.nan)
        decision = np.full((n, L), np.nan)
        for a, forest in self.forests.items():
            rows = X[:, a, :]
            ok = _present(rows, L)
            if not ok.any():
                continue
            filled = np.where(np.isfinite(rows[ok]), rows[ok], self.fill[a])
            scores[ok, a] = -forest.score_samples(filled)
            decision[ok, a] = forest.decision_function(filled)
        dice = getattr(result, "dice", None)
        out = OutlierResult(scores, _names(result, "image_names", n, "image_"), list(self.class_names or []),
                            dice=None if dice is None else np.asarray(dice, float), decision=decision)
        if out.dice is not None:
            out.spearman = dice_correlation(decision, out.dice, out.class_names)
        return out


def detect_outliers(result, n_estimators: int = 100, seed: int = 0, kind: str = "mass",
                    reference=None) -> OutlierResult:
    """Fit on ``reference`` (default: ``result`` itself) and score ``result``."""
    det = OutlierDetector(n_estimators, seed, kind).fit(result if reference is None else reference)
    return det.score(result)


def dice_correlation(decision: np.ndarray, dice: np.ndarray, class_names=None,
                     min_images: int = 3) -> dict[str, tuple[float, float, int]]:
    """Spearman ρ (and p, n) of the decision function vs Dice: per class, ``"mean"`` (per
    image, both averaged over the image's classes: the paper's image-level test) and
    ``"pooled"`` (all image-class pairs). Positive ρ = unusual explanations, lower Dice."""
    from scipy.stats import spearmanr

    decision = np.asarray(decision, float)
    dice = np.asarray(dice, float)
    if decision.shape != dice.shape:
        raise InputMismatchError(f"scores {decision.shape} and dice {dice.shape} differ in shape")
    names = list(class_names) if class_names is not None else [str(a) for a in range(decision.shape[1])]
    out: dict[str, tuple[float, float, int]] = {}

    def corr(s, d):
        ok = np.isfinite(s) & np.isfinite(d)
        k = int(ok.sum())
        if k < min_images or np.ptp(s[ok]) == 0 or np.ptp(d[ok]) == 0:
            return (float("nan"), float("nan"), k)
        r = spearmanr(s[ok], d[ok])
        return (float(r.statistic), float(r.pvalue), k)

    for a, cn in enumerate(names):
        out[cn] = corr(decision[:, a], dice[:, a])
    both = np.isfinite(decision) & np.isfinite(dice)
    with np.errstate(invalid="ignore"):
        cnt = both.sum(1)
        mean_s = np.where(cnt > 0, np.where(both, decision, 0).sum(1) / np.maximum(cnt, 1), np.nan)
        mean_d = np.where(cnt > 0, np.where(both, dice, 0).sum(1) / np.maximum(cnt, 1), np.nan)
    out["mean"] = corr(mean_s, mean_d)
    out["pooled"] = corr(decision.ravel(), dice.ravel())
    return out
