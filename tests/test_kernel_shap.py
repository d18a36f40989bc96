"""KernelSHAP on supervoxels (explainers/kernel_shap.py): efficiency, exact recovery on an
additive model, brute-force Shapley values, batching, baselines, 2D and 3D."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from seg_explain import MethodError, explain, explain_iter
from seg_explain.explainers.kernel_shap import (
    coalitions,
    cube_features,
    semantic_features,
    shapley_kernel_weight,
    solve_shap,
)
from seg_explain.models import SegModel


def f_hat_direct(model, x, c, roi):
    """f̂_c computed independently: the network on (1, C, *S), class-c logits over the RoI."""
    with torch.no_grad():
        out = model.network(torch.as_tensor(x, dtype=torch.float32)[None, None])
    return float(out[0, c][torch.as_tensor(roi)].sum())


class Additive(torch.nn.Module):
    """Class 1 is predicted on a fixed half of the image; its logit at every voxel is
    ``Σ_u w_u x_u`` (a linear, hence additive, function of the input)."""

    def __init__(self, w: np.ndarray, fg: np.ndarray):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))
        self.register_buffer("fg", torch.as_tensor(fg, dtype=torch.float32))

    def forward(self, x):
        s = (x[:, 0] * self.w).flatten(1).sum(1)
        sd = x.ndim - 2
        lin = s.view(-1, *([1] * sd)) * torch.ones_like(x[:, 0])
        l1 = 100.0 * (2 * self.fg - 1) + lin
        return torch.stack([torch.zeros_like(l1), l1], 1)


def additive_case(shape=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    fg = np.zeros(shape, bool)
    fg[: shape[0] // 2] = True
    x = rng.random(shape).astype(np.float32) + 1.0
    model = SegModel(Additive(w, fg), spatial_dims=len(shape), in_channels=1,
                     class_names=["background", "fg"], divisor=1, device="cpu")
    return model, w, fg, x


@pytest.mark.parametrize("features,n_samples", [("cubes", 40), ("semantic", 20)])
def test_efficiency_3d(unet3d, rng, features, n_samples):
    img = rng.standard_normal((16, 16, 16)).astype(np.float32)
    pred = unet3d.predict(img)
    c = int(np.bincount(pred.ravel()).argmax())
    e = explain(unet3d, img, "kernel_shap", target=c, features=features, grid=2, n_samples=n_samples)
    roi = pred == c
    f_x = f_hat_direct(unet3d, img, c, roi)
    f_b = f_hat_direct(unet3d, np.full_like(img, img.min()), c, roi)
    assert sum(e.extras["phi"]) == pytest.approx(f_x - f_b, rel=1e-3, abs=1e-2)
    # the paper's (Captum feature_mask) map: φ_j on every voxel of feature j; the density
    # option spreads φ_j over the feature and so sums to f̂(x) − f̂(baseline)
    d = explain(unet3d, img, "kernel_shap", target=c, features=features, grid=2, n_samples=n_samples,
                density=True)
    assert d.attribution.sum() == pytest.approx(f_x - f_b, rel=1e-3, abs=1e-2)
    assert e.extras["f_x"] == pytest.approx(f_x, rel=1e-4, abs=1e-3)
    if features == "cubes":
        assert e.extras["n_features"] == 8 and not e.extras["exact"]
        assert e.n_forward == 1 + 2 + 40
    else:
        assert e.extras["feature_labels"] == sorted(np.unique(pred).tolist())
    fmap = cube_features(img.shape, 2)[0] if features == "cubes" else semantic_features(pred)[0]
    for j in np.unique(fmap):
        assert np.allclose(e.attribution[fmap == j], e.extras["phi"][j], rtol=1e-5, atol=1e-6)
        assert np.allclose(d.attribution[fmap == j], e.extras["phi"][j] / (fmap == j).sum(), rtol=1e-5,
                           atol=1e-7)


@pytest.mark.parametrize("n_samples", [None, 6])
def test_additive_model_recovers_true_contributions(n_samples):
    model, w, fg, x = additive_case()
    e = explain(model, x, "kernel_shap", target=1, grid=2, n_samples=n_samples, baseline="zero")
    fmap, _ = cube_features(x.shape, 2)
    true = [fg.sum() * (w * x)[fmap == j].sum() for j in range(4)]
    np.testing.assert_allclose(e.extras["phi"], true, rtol=1e-4, atol=1e-3)
    assert e.extras["exact"] == (n_samples is None)
    # the map paints φ_j on every voxel of cube j (Captum feature_mask convention)
    np.testing.assert_allclose(e.attribution[fmap == 0], true[0], rtol=1e-4)


def test_exact_enumeration_matches_brute_force_shapley(unet2d, rng):
    img = rng.standard_normal((32, 32)).astype(np.float32)
    pred = unet2d.predict(img)
    c = int(np.bincount(pred.ravel()).argmax())
    e = explain(unet2d, img, "kernel_shap", target=c, grid=(1, 3), baseline="mean")
    assert e.extras["exact"] and e.extras["n_features"] == 3
    fmap, _ = cube_features(img.shape, (1, 3))
    roi = pred == c
    base = np.full_like(img, img.mean())

    def v(S):
        x = np.where(np.isin(fmap, list(S)), img, base)
        return f_hat_direct(unet2d, x, c, roi)

    M = 3
    phi = []
    for j in range(M):
        tot = 0.0
        others = [k for k in range(M) if k != j]
        for r in range(M):
            for S in itertools.combinations(others, r):
                wgt = math.factorial(len(S)) * math.factorial(M - len(S) - 1) / math.factorial(M)
                tot += wgt * (v(set(S) | {j}) - v(S))
        phi.append(tot)
    np.testing.assert_allclose(e.extras["phi"], phi, rtol=1e-3, atol=1e-2)


def test_batched_forward_passes_and_progress(unet2d, rng):
    img = rng.standard_normal((32, 32)).astype(np.float32)
    calls = []
    h = unet2d.network.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        gen = explain_iter(unet2d, img, "kernel_shap", target=0, n_samples=40, batch_size=16)
        steps = []
        while True:
            try:
                steps.append(next(gen))
            except StopIteration as stop:
                e = stop.value
                break
    finally:
        h.remove()
    # 1 clean pass, 1 pass for the two anchors, ceil(40 / 16) = 3 coalition batches
    assert calls == [1, 2, 16, 16, 8]
    assert steps[-1] == (42, 42) and [d for d, _ in steps] == sorted(d for d, _ in steps)
    assert e.n_forward == 43 and e.n_backward == 0


def test_seeded_and_baselines(unet2d, rng):
    img = rng.standard_normal((32, 32)).astype(np.float32)
    a = explain(unet2d, img, "kernel_shap", target=0, n_samples=30, seed=3).attribution
    b = explain(unet2d, img, "kernel_shap", target=0, n_samples=30, seed=3).attribution
    np.testing.assert_array_equal(a, b)
    for base in ("zero", "mean", 0.5, np.zeros((32, 32), np.float32)):
        e = explain(unet2d, img, "kernel_shap", target=0, n_samples=10, baseline=base)
        assert np.isfinite(e.attribution).all()
    with pytest.raises(MethodError, match="kernel_shap: features must be one of cubes, semantic, got 'slic'"):
        explain(unet2d, img, "kernel_shap", target=0, features="slic")
    from seg_explain import InputMismatchError

    with pytest.raises(InputMismatchError, match=r"baseline array of shape \(3, 3\) does not match"):
        explain(unet2d, img, "kernel_shap", target=0, baseline=np.zeros((3, 3)))


def test_coalition_sampler_and_solver():
    rng = np.random.default_rng(0)
    Z, w, exact = coalitions(4, 100, rng)
    assert exact and Z.shape == (14, 4)
    np.testing.assert_allclose(w, shapley_kernel_weight(4, Z.sum(1)))
    Z, w, exact = coalitions(10, 101, rng)
    assert not exact and Z.shape == (101, 10)
    assert (Z[0] == ~Z[1]).all()                     # complementary pairs
    assert 0 < Z.sum(1).min() and Z.sum(1).max() < 10  # never empty / full
    # a linear game is recovered exactly from a handful of coalitions
    phi_true = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.5, -1.0, 2.0, 0.25, -0.5])
    fz = Z.astype(float) @ phi_true + 7.0
    np.testing.assert_allclose(solve_shap(Z, w, fz, 7.0, 7.0 + phi_true.sum()), phi_true, atol=1e-9)


def test_3d_grid_default_and_clamped():
    fmap, g = cube_features((16, 16, 16))
    assert g == (4, 4, 4) and fmap.max() == 63
    assert np.bincount(fmap.ravel()).tolist() == [64] * 64
    fmap, g = cube_features((3, 32), 8)
    assert g == (3, 8)


def test_several_classes_share_coalitions_and_passes(unet2d, rng):
    from seg_explain.explainers.multiclass import explain_classes

    img = rng.standard_normal((32, 32)).astype(np.float32)
    exps = explain_classes(unet2d, img, "kernel_shap", n_samples=20, grid=3)
    assert len(exps) == len(np.unique(unet2d.predict(img))) > 1
    pred = unet2d.predict(img)
    for e in exps:
        single = explain(unet2d, img, "kernel_shap", target=e.target, n_samples=20, grid=3)
        np.testing.assert_allclose(e.attribution, single.attribution, rtol=1e-4, atol=1e-5)
        # efficiency against f̂ computed here from the network (baseline "min")
        roi = pred == e.target
        delta = f_hat_direct(unet2d, img, e.target, roi) - f_hat_direct(unet2d, np.full_like(img, img.min()),
                                                                       e.target, roi)
        assert sum(e.extras["phi"]) == pytest.approx(delta, rel=1e-4, abs=1e-3)
    assert exps[0].extras["shared_passes"]["n_forward"] == 1 + 2 + 20   # not × classes


def test_map_matches_captum_kernel_shap_with_feature_mask():
    """The painted map is Captum's: KernelShap(feature_mask) puts φ_j on every voxel of feature
    j (the paper's convention, used by its Agg2Exp masses and metrics). On an additive model
    both estimators are exact, so the maps agree voxel for voxel."""
    from captum.attr import KernelShap

    model, w, fg, x = additive_case((8, 8), seed=3)
    e = explain(model, x, "kernel_shap", target=1, grid=2, baseline="zero")
    fmap, _ = cube_features(x.shape, 2)
    roi = torch.as_tensor(fg)

    def f(inp):
        return (model.network(inp)[:, 1] * roi).flatten(1).sum(1)

    ks = KernelShap(f)
    ref = ks.attribute(torch.as_tensor(x)[None, None], baselines=0.0,
                       feature_mask=torch.as_tensor(fmap)[None, None], n_samples=200,
                       perturbations_per_eval=50)[0, 0].numpy()
    np.testing.assert_allclose(e.attribution, ref, rtol=1e-3, atol=1e-2)
    assert len(np.unique(np.round(ref, 3))) == 4   # a real map, one value per cube


def test_multichannel_kernel_shap_removes_a_supervoxel_from_both_channels(two_channel):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[12:20, 12:20] = True
    ks = explain(two_channel, x, "kernel_shap", target=1, roi=roi, grid=2, n_samples=14)
    assert ks.attribution.shape == (32, 32) and ks.per_channel is None   # one feature spans both channels
    # removing a supervoxel removes both of its channels: Σφ = f̂(x) − f̂(both channels at their minimum)
    with torch.no_grad():
        def fh(a):
            return float(two_channel.network(torch.as_tensor(a)[None])[0, 1][torch.as_tensor(roi)].sum())
        base = np.stack([np.full((32, 32), x[0].min()), np.full((32, 32), x[1].min())]).astype(np.float32)
        assert sum(ks.extras["phi"]) == pytest.approx(fh(x) - fh(base), rel=1e-4, abs=1e-3)

