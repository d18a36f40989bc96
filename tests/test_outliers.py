"""Outlier images from Agg2Exp importance vectors (outliers.py)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from seg_explain import agg2exp
from seg_explain.outliers import OutlierDetector, detect_outliers, dice_correlation


def synthetic(n_clean=12, L=3, R=4, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.dirichlet(np.ones(L), size=L)          # (L, L) rows sum to 1
    local = np.stack([np.abs(base + 0.02 * rng.standard_normal((L, L))) for _ in range(n_clean)])
    local = local / local.sum(-1, keepdims=True)
    extra = 0.1 + 0.01 * rng.standard_normal((n_clean, L, R - L))
    return np.concatenate([local, extra], -1)


def test_corrupted_vector_has_highest_score():
    X = synthetic()
    bad = X[0].copy()
    bad[:, :3] = np.roll(bad[:, :3], 1, axis=1)      # evidence moved to the wrong regions
    bad[:, 3] = 0.6
    Xall = np.concatenate([X, bad[None]])
    res = detect_outliers(Xall)
    assert res.scores.shape == (13, 3)
    for a in range(3):
        assert int(np.nanargmax(res.scores[:, a])) == 12
    assert res.ranking(0)[0][0] == "image_12"


def test_absent_class_and_missing_extra_values():
    X = synthetic()
    X[3, 1] = np.nan              # class 1 absent in image 3
    X[5, :, 3] = np.nan           # extra RoI missing for image 5
    res = detect_outliers(X)
    assert np.isnan(res.scores[3, 1])
    assert np.isfinite(res.scores[5]).all() and np.isfinite(np.delete(res.scores[:, 1], 3)).all()


def test_fit_on_one_set_score_another():
    ref = synthetic(seed=1)
    new = synthetic(n_clean=5, seed=2)
    new[2, :, 3] = 0.9
    det = OutlierDetector(n_estimators=100, seed=0).fit(ref)
    res = det.score(new)
    assert int(np.argmax(res.mean_score)) == 2
    # seeded: refitting gives identical scores
    np.testing.assert_array_equal(OutlierDetector(seed=0).fit(ref).score(new).scores, res.scores)
    from seg_explain import InputMismatchError

    with pytest.raises(InputMismatchError, match="do not match the fitted"):
        det.score(new[:, :, :3])


def test_dice_correlation_per_class_per_image_mean_and_pooled():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    decision = rng.standard_normal((10, 2))
    dice = 0.5 + 0.1 * decision + 0.01 * rng.standard_normal((10, 2))   # unusual (low) -> low Dice
    dice[:, 1] += 0.3 * rng.standard_normal(10)
    c = dice_correlation(decision, dice, ["a", "b"])
    assert c["a"][0] > 0.9 and c["pooled"][2] == 20
    # the paper's image-level test: per image, both averaged over the classes
    ref = spearmanr(decision.mean(1), dice.mean(1))
    assert c["mean"][0] == pytest.approx(ref.statistic) and c["mean"][1] == pytest.approx(ref.pvalue)
    assert c["mean"][2] == 10
    decision[0, 0] = np.nan
    assert dice_correlation(decision, dice)["0"][2] == 9
    # an image with one class missing is averaged over the classes it has
    ref = spearmanr(np.r_[decision[0, 1], decision[1:].mean(1)], np.r_[dice[0, 1], dice[1:].mean(1)])
    assert dice_correlation(decision, dice)["mean"][0] == pytest.approx(ref.statistic)


def test_decision_function_is_sklearns_and_the_reverse_ranking():
    from sklearn.ensemble import IsolationForest

    X = synthetic(n_clean=20, seed=4)
    res = detect_outliers(X, seed=0)
    f = IsolationForest(n_estimators=100, random_state=0).fit(X[:, 1, :])
    np.testing.assert_allclose(res.decision[:, 1], f.decision_function(X[:, 1, :]))
    np.testing.assert_allclose(res.scores[:, 1], -f.score_samples(X[:, 1, :]))
    assert (np.argsort(res.decision[:, 1]) == np.argsort(-res.scores[:, 1])).all()


def test_corrupted_image_end_to_end(unet3d, tmp_path):
    """A corrupted volume among smooth clean ones is the most anomalous for every class."""
    rng = np.random.default_rng(0)
    clean = [(3 * gaussian_filter(rng.standard_normal((16, 16, 16)), 1.0)).astype(np.float32) for _ in range(8)]
    bad = clean[0].copy()
    bad[:8] = 5.0                                     # half the volume saturated
    res = agg2exp(unet3d, clean + [bad], method="gradient", ground_truth=[unet3d.predict(im) for im in clean + [bad]])
    out = detect_outliers(res)
    present = np.isfinite(out.scores).all(0)
    assert present.any()
    assert int(np.argmax(out.mean_score)) == 8
    for a in np.flatnonzero(present):
        assert out.ranking(a)[0][0] == "image_8"
    out.to_csv(tmp_path / "o.csv")
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert list(rows[0]) == ["image", "explained_class", "anomaly_score", "decision_function", "outlier",
                             "rank", "dice"]
    bad_rows = [r for r in rows if r["image"] == "image_8" and r["decision_function"]]
    assert bad_rows and all(float(r["decision_function"]) < 0 and r["outlier"] == "1" for r in bad_rows)
    assert len(rows) == 9 * len(unet3d.class_names)
