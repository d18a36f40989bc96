"""Evaluation metrics (metrics.py): faithfulness, sensitivity, complexity, the driver and table."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_kernel_shap import additive_case

from seg_explain.metrics import EvaluatedMethod, complexity, evaluate, faithfulness, normalise, sensitivity


def linear_f(w):
    wt = torch.as_tensor(w, dtype=torch.float32)
    return lambda xb: (xb[:, 0] * wt).flatten(1).sum(1).double().numpy()


def test_faithfulness_perfect_vs_shuffled():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 24))
    x = torch.as_tensor(rng.random((1, 24, 24)) + 1.0, dtype=torch.float32)
    b = float(x.min())
    perfect = w * (x[0].numpy() - b)          # exact contribution of each pixel vs the "min" baseline
    r, info = faithfulness(linear_f(w), x, perfect, n=100, subset=50, rng=np.random.default_rng(1))
    assert r == pytest.approx(1.0, abs=1e-4)
    assert info["subset"] == 50 and len(info["deltas"]) == 100
    shuffled = rng.permutation(perfect.ravel()).reshape(perfect.shape)
    rs = [faithfulness(linear_f(w), x, rng.permutation(perfect.ravel()).reshape(perfect.shape), n=100,
                       subset=50, rng=np.random.default_rng(k))[0] for k in range(5)]
    assert abs(np.mean(rs)) < 0.15
    r_sh, _ = faithfulness(linear_f(w), x, shuffled, n=100, subset=50, rng=np.random.default_rng(1))
    assert abs(r_sh) < 0.35
    # scale invariance (normalised first) and reproducibility
    r2, _ = faithfulness(linear_f(w), x, 7 * perfect, n=100, subset=50, rng=np.random.default_rng(1))
    assert r2 == pytest.approx(r)


def test_complexity_and_normalise():
    a = np.zeros((6, 7, 8))
    a[1, 2, 3] = -4.0
    assert complexity(a) == pytest.approx(1 / a.size)
    assert complexity(np.zeros(10)) == 0.0
    assert complexity(np.linspace(0, 1, 11), theta=0.1) == pytest.approx(9 / 11)
    assert np.abs(normalise(a)).max() == 1.0


def test_sensitivity():
    x = torch.rand(1, 8, 8)
    a = np.arange(64.0).reshape(8, 8)
    assert sensitivity(lambda xt: a * 3, x, a, n=3) == 0.0            # input-independent map
    s = sensitivity(lambda xt: xt[0].numpy(), x, x[0].numpy(), n=3, noise=0.1, rng=np.random.default_rng(0))
    assert 0 < s < 1


def test_evaluate_end_to_end_reproducible(unet2d, rng):
    imgs = [rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2)]
    methods = ["gradient", ("KS cubes", "kernel_shap", {"n_samples": 20, "grid": 3})]
    kw = dict(n_faithfulness=20, n_sensitivity=1, classes=[0, 1])
    res = evaluate(unet2d, imgs, methods, **kw)
    res2 = evaluate(unet2d, imgs, methods, **kw)
    assert res.labels == ["gradient", "KS cubes"]
    assert {r["method"] for r in res.rows} == {"gradient", "KS cubes"}
    for r, r2 in zip(res.rows, res2.rows):
        for k in ("faithfulness", "sensitivity", "complexity", "n_forward", "n_backward"):
            assert r[k] == r2[k] or (np.isnan(r[k]) and np.isnan(r2[k]))
    ks = [r for r in res.rows if r["method"] == "KS cubes"]
    assert all(r["n_backward"] == 0 and r["n_forward"] == 22 for r in ks)  # 2 anchors + 20
    assert all(r["n_backward"] >= 1 for r in res.rows if r["method"] == "gradient")
    table = res.table()
    assert "faithfulness" in table and "KS cubes" in table and "±" in table


def test_evaluate_exact_attribution_on_additive_model_is_faithful():
    # one KernelSHAP feature per pixel (grid 8 on 8x8) with the metric's own "min" baseline:
    # on a linear model the map is exactly |R|·w·(x − min), so Σ_S a = f̂(x) − f̂(x_S).
    model, w, fg, x = additive_case((8, 8))
    res = evaluate(model, [x], [("ks", "kernel_shap", {"grid": 8, "n_samples": 200, "baseline": "min"})],
                   classes=["fg"], n_faithfulness=50, subset=8, n_sensitivity=0)
    assert res.rows[0]["faithfulness"] == pytest.approx(1.0, abs=1e-3)
    assert np.isnan(res.rows[0]["sensitivity"])


def test_method_spec_parsing():
    s = EvaluatedMethod.parse("kernel_shap:features=semantic:n_samples=50")
    assert s.method == "kernel_shap" and s.params == {"features": "semantic", "n_samples": 50}
    assert EvaluatedMethod.parse(("x", "gradient")).params == {}
    assert EvaluatedMethod.parse({"method": "pdcr", "params": {"block_size": 4}}).label == "pdcr"


def test_evaluate_reports_a_failing_method_and_goes_on(unet2d, rng):
    from seg_explain import InputMismatchError

    img = rng.standard_normal((32, 32)).astype(np.float32)
    methods = ["gradient", ("bad", "kernel_shap", {"baseline": np.zeros((3, 3))})]
    res = evaluate(unet2d, [img, np.zeros((4, 4, 4))], methods, classes=[0], n_faithfulness=10,
                   n_sensitivity=0, on_error="skip")
    assert [r["method"] for r in res.rows] == ["gradient"]
    assert [f[2] for f in res.settings["failed"]] == ["bad"]
    assert [s[0] for s in res.settings["skipped"]] == ["image_1"]
    with pytest.raises(InputMismatchError, match=r"baseline array of shape \(3, 3\)"):
        evaluate(unet2d, [img], methods, classes=[0], n_faithfulness=10, n_sensitivity=0)
