"""Maps keep their meaning on the image grid: the adjoint of the resampling for gradient
maps (checked against autograd through an independent resampling), nearest neighbour for
block maps, IG completeness on the image grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import close, make_unet, wrap

from seg_explain import explain
from seg_explain.explainers.registry import REGISTRY, Capabilities, MethodSpec, register
from seg_explain.io import LoadedImage
from seg_explain.model_grid import ModelGrid, orientation_transform

RAS = orientation_transform(("R", "A", "S"))


@pytest.mark.parametrize("image_shape,model_shape,ornt", [
    ((20, 26), (11, 37), None), ((9, 8), (9, 8), None), ((12, 10, 14), (7, 13, 9), None),
    ((12, 10, 14), (9, 13, 5), RAS), ((6, 5, 4), (4, 5, 6), RAS)],
    ids=["2d", "2d-identity", "3d", "3d-ras", "3d-ras-same-size"])
def test_adjoint_is_the_transpose_of_to_model(image_shape, model_shape, ornt, rng):
    """<A x, y> = <x, Aᵀ y> for random x (image grid) and y (model grid), with a channel axis."""
    g = ModelGrid(image_shape, model_shape, ornt)
    x = rng.normal(size=(2,) + image_shape)
    y = rng.normal(size=(2,) + model_shape)
    ax = g.to_model(x.astype(np.float32), order=1).astype(np.float64)
    aty = g.adjoint_to_image(y).astype(np.float64)
    assert ax.shape == y.shape and aty.shape == x.shape
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-5 * float(np.abs(x).sum()))
    # linear interpolation reproduces constants (A 1 = 1), so the adjoint keeps sums
    assert float(aty.sum()) == pytest.approx(float(y.sum()), rel=1e-5, abs=1e-4)
    if g.identity:
        assert np.array_equal(aty, y.astype(np.float32))


def test_image_grid_gradient_is_autograd_through_the_resampling(rng):
    """2D image at 1 mm, model at 2 mm: ∂f̂/∂X through F.interpolate written here."""
    net = make_unet(2)
    model = wrap(net, 2, spacing=(2.0, 2.0))
    X = rng.normal(size=(64, 80)).astype(np.float32)
    img = LoadedImage(X, (1.0, 1.0), np.eye(4), spatial_dims=2)
    roi_img = np.zeros(X.shape, bool)
    roi_img[16:48, 20:60] = True                # model grid: [8:24, 10:30] exactly
    c = 2
    e = explain(model, img, "gradient", target=c, roi=roi_img)
    roi_m = torch.zeros(32, 40)
    roi_m[8:24, 10:30] = 1
    Xt = torch.as_tensor(X)[None, None].clone().requires_grad_(True)
    xm = F.interpolate(Xt, size=(32, 40), mode="bilinear", align_corners=False)
    (net(xm)[0, c] * roi_m).sum().backward()
    assert e.attribution.shape == X.shape
    close(e.attribution, Xt.grad[0, 0].numpy())


def test_image_grid_gradient_with_reorientation_3d(rng):
    """3D image (S, P, L) at 1 mm, model in RAS at 2 mm: permute, flip and resample written here."""
    net = make_unet(3)
    model = wrap(net, 3, spacing=(2.0, 2.0, 2.0), axcodes=("R", "A", "S"))
    X = rng.normal(size=(16, 24, 32)).astype(np.float32)          # (S, P, L)
    img = LoadedImage(X, (1.0, 1.0, 1.0), np.eye(4), spatial_dims=3)
    assert model.prepare(img).shape == (16, 12, 8)
    c = 1
    roi = np.ones(X.shape, bool)
    e = explain(model, img, "gradient", target=c, roi=roi)
    Xt = torch.as_tensor(X).clone().requires_grad_(True)
    ras = Xt.permute(2, 1, 0).flip(0, 1)                          # (L, P, S) -> (R, A, S)
    xm = F.interpolate(ras[None, None], size=(16, 12, 8), mode="trilinear", align_corners=False)
    net(xm)[0, c].sum().backward()
    close(e.attribution, Xt.grad.numpy())


def test_integrated_gradients_completeness_on_the_image_grid(rng):
    """Σ of the image-grid IG map = f̂(x) − f̂(x') up to the Riemann error (Captum's delta
    on the model grid); f̂ computed here. Before the adjoint transfer the sum was 4× off."""
    from captum.attr import IntegratedGradients

    net = make_unet(2)
    model = wrap(net, 2, spacing=(2.0, 2.0))
    X = rng.normal(size=(64, 80)).astype(np.float32)
    img = LoadedImage(X, (1.0, 1.0), np.eye(4), spatial_dims=2)
    roi_img = np.zeros(X.shape, bool)
    roi_img[16:48, 20:60] = True
    roi_m = torch.zeros(32, 40)
    roi_m[8:24, 10:30] = 1
    c, steps = 2, 16
    e = explain(model, img, "integrated_gradients", target=c, roi=roi_img, steps=steps, baseline="zero")
    xm = F.interpolate(torch.as_tensor(X)[None, None], size=(32, 40), mode="bilinear", align_corners=False)

    def f(xb):
        return (net(xb)[:, c] * roi_m).flatten(1).sum(1)

    with torch.no_grad():
        fx, fb = float(f(xm)), float(f(torch.zeros_like(xm)))
    _, delta = IntegratedGradients(f).attribute(xm, baselines=torch.zeros_like(xm), n_steps=steps,
                                                method="riemann_right", return_convergence_delta=True)
    total = float(e.attribution.astype(np.float64).sum())
    assert abs(total - (fx - fb)) <= abs(float(delta)) + 1e-4 * abs(fx - fb)
    assert total == pytest.approx(e.extras["ig_sum"], rel=1e-5)
    assert e.extras["f_x"] == pytest.approx(fx, rel=1e-4) and e.extras["f_baseline"] == pytest.approx(fb, rel=1e-4)


@pytest.mark.parametrize("kind", ["block", "heatmap"])
def test_block_maps_nearest_heat_maps_linear(kind):
    """A 4×5 block map on the model grid (one block is the RoI block, value 0) shown on a
    2× finer image: block maps keep their values and edges, CAMs are interpolated."""
    blocks = torch.arange(1, 21, dtype=torch.float32).reshape(4, 5)
    blocks[1, 2] = 0.0                                           # the RoI block
    block_map = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)   # model grid 16×20, 4×4 blocks

    def block_fn(ctx):
        yield (0, 1)
        return block_map.clone()

    register(MethodSpec("_test_block_map", block_fn, title="test", question="test", source="test",
                        caps=Capabilities(map_kind=kind), unit="a.u."))
    try:
        model = wrap(make_unet(2), 2, spacing=(2.0, 2.0))
        img = LoadedImage(np.zeros((32, 40), np.float32), (1.0, 1.0), np.eye(4), spatial_dims=2)
        roi = np.zeros((32, 40), bool)
        roi[8:16, 16:24] = True                                  # the RoI block on the image grid
        a = explain(model, img, "_test_block_map", target=1, roi=roi).attribution
    finally:
        REGISTRY.pop("_test_block_map", None)
    expect = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()   # 8×8 image blocks
    if kind == "heatmap":
        ref = F.interpolate(block_map[None, None], size=(32, 40), mode="bilinear", align_corners=False)[0, 0]
        close(a, ref.numpy(), 1e-6)
        assert not np.array_equal(a, expect)
    else:
        assert np.array_equal(a, expect)
        assert (a[roi] == 0).all()
