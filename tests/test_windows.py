"""Sliding-window explanations: MONAI's geometry and blending, and gradients that are the
gradients of the model's blended output (autograd through ``sliding_window_inference``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import close, make_unet, wrap

from seg_explain import explain
from seg_explain.explainers.engine import WindowAccumulator, WindowWeights
from seg_explain.explainers.multiclass import explain_classes
from seg_explain.windows import model_tiling, model_windows, tile, window_slices, windows_touching


def rel_l2(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def swi(model, xt):
    """The model's own blended output: MONAI sliding_window_inference, as logits_tensor runs it."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(xt, model.patch_size, 1, model.forward, overlap=model.overlap,
                                    mode=model.blend)


def swi_f_hat(model, c, roi):
    r = torch.as_tensor(roi, dtype=torch.float32)

    def f(xt):
        return (swi(model, xt)[:, c] * r).flatten(1).sum(1)
    return f


def grad_of(f, x):
    xt = torch.as_tensor(x)[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xt).sum(), xt)
    return g[0].numpy()


def largest_class(model, x):
    pred = model.predict(x)
    c = int(np.bincount(pred.ravel()).argmax())
    return c, pred == c


# --------------------------------------------------------------------- geometry --
@pytest.mark.parametrize("shape,patch", [((40, 70), (16, 32)), ((20, 33, 17), (16, 16, 16)),
                                         ((16, 50, 9), (16, 16, 16)), ((10, 45), (16, 16))])
def test_tiling_is_what_monai_sliding_window_runs(shape, patch):
    """Every patch MONAI feeds the predictor (padding included, in order) is our crop."""
    from monai.inferers import sliding_window_inference

    t = tile(shape, patch, 0.25)
    img = torch.arange(1, int(np.prod(shape)) + 1, dtype=torch.float32).reshape((1, 1) + shape)
    seen = []

    def record(xb):
        seen.extend(b.clone() for b in xb)
        return xb
    sliding_window_inference(img, patch, 1, record, overlap=0.25)
    assert len(seen) == len(t.windows) > 1
    for b, w in zip(seen, t.windows):
        assert torch.equal(b, t.crop(img[0], w))
    assert all(tuple(s.stop - s.start for s in w) == tuple(patch) for w in t.windows)
    assert window_slices(shape, patch) == list(t.windows)


def test_single_window_when_it_fits_and_touching():
    model = wrap(make_unet(2), 2, patch=(16, 16))
    assert model_windows(model, (10, 12)) == [(slice(0, 10), slice(0, 12))]   # not windowed: no padding
    assert model_tiling(model, (10, 12)).padded is False
    assert window_slices((10, 12), None) == [(slice(0, 10), slice(0, 12))]
    wins = window_slices((40, 40), (16, 16), 0.25)
    m = np.zeros((40, 40), bool)
    m[0, 0] = True
    assert windows_touching(wins, m) == [0]
    with pytest.raises(ValueError):
        window_slices((40, 40), (16, 16), 1.0)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("shape", [(37, 45), (12, 45)])
def test_blend_weights_reproduce_monai_blending(blend, shape):
    """Per-window outputs blended with our weights == sliding_window_inference's output,
    for a predictor whose output depends on the whole window (a UNet with instance norm)."""
    model = wrap(make_unet(2), 2, patch=(16, 20), blend=blend)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(1, 1) + shape).astype(np.float32))
    with torch.no_grad():
        ref = swi(model, x)[0]
        weights = WindowWeights.for_model(model, shape)
        acc = WindowAccumulator(weights, lead=(ref.shape[0],))
        for w in weights.tiling.windows:
            acc.add(w, model.forward(weights.tiling.crop(x[0], w)[None])[0])
    assert len(weights.tiling.windows) > 2
    close(acc.result(), ref, 1e-5)


# -------------------------------------- gradients of the blended output, exactly --
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("shape", [(48, 56, 40), (48, 56, 20)], ids=["48x56x40", "z-padded"])
def test_windowed_gradient_is_autograd_through_sliding_window_inference(blend, shape):
    """3D UNet with instance norm, 32³ patch; 56 and 40 are not multiples of the scan
    interval (24); the second volume is shorter than the patch along x (MONAI pads it)."""
    model = wrap(make_unet(3), 3, patch=(32, 32, 32), blend=blend)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    c, roi = largest_class(model, x)
    e = explain(model, x, "gradient", target=c)
    ref = grad_of(swi_f_hat(model, c, roi), x[None])[0]
    assert len(model_windows(model, shape)) == (8 if shape[2] > 32 else 4)
    assert rel_l2(e.attribution, ref) <= 1e-3
    assert e.n_backward == len(model_tiling(model, shape).touching(torch.as_tensor(roi)))


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_windowed_ig_and_smoothgrad_are_autograd_through_sliding_window_inference(blend):
    """2D, one axis shorter than the patch (padded), blended f̂ for IG completeness, noise
    only on the image (MONAI pads the noisy image with zeros)."""
    model = wrap(make_unet(2), 2, patch=(32, 32), blend=blend)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 70)).astype(np.float32)
    c, roi = largest_class(model, x)
    f = swi_f_hat(model, c, roi)
    n = 4
    # IG from a random baseline: a right Riemann sum of autograd through SWI
    base = rng.normal(size=x.shape).astype(np.float32)
    e = explain(model, x, "integrated_gradients", target=c, steps=n, baseline=base)
    g = np.mean([grad_of(f, (base + (i / n) * (x - base))[None])[0] for i in range(1, n + 1)], 0)
    ref = (x - base) * g
    assert rel_l2(e.attribution, ref) <= 1e-3
    with torch.no_grad():
        fx = float(f(torch.as_tensor(x)[None, None]))
        fb = float(f(torch.as_tensor(base)[None, None]))
    assert e.extras["f_x"] == pytest.approx(fx, rel=1e-4)
    assert e.extras["f_baseline"] == pytest.approx(fb, rel=1e-4)
    assert e.extras["ig_sum"] == pytest.approx(float(ref.sum()), rel=1e-3, abs=1e-3 * float(np.abs(ref).sum()))
    # SmoothGrad: the documented noise (per sample, over the whole image)
    seed, level = 2, 0.1
    s = explain(model, x, "smoothgrad", target=c, n_samples=2, noise_level=level, seed=seed, batch_size=1)
    sigma = level * (x.max() - x.min())
    grads = [grad_of(f, (torch.as_tensor(x)[None] + sigma * torch.randn(
        (1,) + x.shape, generator=torch.Generator().manual_seed(seed * 1000003 + i))).numpy())[0]
        for i in range(2)]
    assert rel_l2(s.attribution, np.mean(grads, 0)) <= 1e-3


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_windowed_cam_blends_window_maps_like_sliding_window_inference(blend, rng):
    """Reference: sliding_window_inference itself blends a per-window CAM computed with
    plain hooks on the window (its RoI voxels), so the blending is MONAI's own."""
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    net = make_unet(2)
    model = wrap(net, 2, patch=(16, 32), blend=blend)
    x = rng.normal(size=(24, 50)).astype(np.float32)
    c, roi = largest_class(model, x)
    e = explain(model, x, "seg_hires_grad_cam", target=c)
    layer = dict(net.named_modules())[e.extras["layer"]]
    diff = [max(p - s, 0) for s, p in zip(x.shape, model.patch_size)]
    roi_p = np.pad(roi, [(d // 2, d - d // 2) for d in diff])

    def cam(xw, coords):
        (sl,) = coords
        r = torch.as_tensor(roi_p[tuple(sl[2:])], dtype=torch.float32)
        keep = {}
        h = layer.register_forward_hook(lambda m, i, o: keep.__setitem__("A", o))
        try:
            xw = xw.clone().requires_grad_(True)
            out = net(xw)
        finally:
            h.remove()
        (G,) = torch.autograd.grad((out[:, c] * r).sum(), keep["A"])
        m = torch.relu((G * keep["A"]).sum(1, keepdim=True))
        return F.interpolate(m, size=xw.shape[2:], mode="bilinear", align_corners=False).detach()

    ref = sliding_window_inference(torch.as_tensor(x)[None, None], model.patch_size, 1, cam,
                                   overlap=model.overlap, mode=blend, with_coord=True)[0, 0]
    assert e.extras["n_windows"] > 2 and float(ref.max()) > 0
    close(e.attribution, ref.numpy(), 1e-4)


# -------------------------------------------------- windowed == whole, exactly --
class Pointwise(torch.nn.Module):
    """1×1 convolutions only: each voxel's logits depend on that voxel alone."""

    def __init__(self, sd, n_classes=3, in_channels=1):
        super().__init__()
        conv = torch.nn.Conv2d if sd == 2 else torch.nn.Conv3d
        torch.manual_seed(0)
        self.a = conv(in_channels, 6, 1)
        self.b = conv(6, 6, 1)
        self.c = conv(6, n_classes, 1)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("sd,shape,patch", [(2, (40, 52), (16, 24)), (2, (40, 20), (16, 24)),
                                            (3, (20, 26, 23), (12, 12, 16))])
@pytest.mark.parametrize("method,params", [
    ("gradient", {}), ("smoothgrad", {"n_samples": 3}),
    ("integrated_gradients", {"steps": 5, "baseline": "blur"}), ("seg_hires_grad_cam", {"layer": "b"})])
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_windowed_equals_whole_for_a_pointwise_network(sd, shape, patch, method, params, blend, rng):
    net = Pointwise(sd).eval()
    whole = wrap(net, sd, n_classes=3, divisor=1)
    windowed = wrap(net, sd, n_classes=3, divisor=1, patch=patch, blend=blend)
    assert windowed.needs_windows(shape) and not whole.needs_windows(shape)
    x = rng.normal(size=shape).astype(np.float32)
    pred = whole.predict(x)
    c = int(np.bincount(pred.ravel()).argmax())
    ew = explain(windowed, x, method, target=c, seed=2, **params)
    e1 = explain(whole, x, method, target=c, seed=2, **params)
    assert np.abs(e1.attribution).max() > 0
    close(ew.attribution, e1.attribution, 1e-5)
    if method == "integrated_gradients":
        assert ew.extras["f_x"] == pytest.approx(e1.extras["f_x"], rel=1e-5)
        assert ew.extras["f_baseline"] == pytest.approx(e1.extras["f_baseline"], rel=1e-5)
    n_win = len(model_windows(windowed, shape))
    assert n_win > 1 and ew.extras.get("n_windows", n_win) == n_win
    assert ew.n_forward > e1.n_forward  # one pass per window holding RoI voxels


def test_windowed_multiclass_equals_whole(rng):
    net = Pointwise(2, in_channels=2).eval()
    whole = wrap(net, 2, in_channels=2, n_classes=3, divisor=1)
    windowed = wrap(net, 2, in_channels=2, n_classes=3, divisor=1, patch=(16, 16))
    x = rng.normal(size=(2, 30, 41)).astype(np.float32)
    a = explain_classes(windowed, x, "smoothgrad", n_samples=2)
    b = explain_classes(whole, x, "smoothgrad", n_samples=2)
    assert [e.target for e in a] == [e.target for e in b] and len(a) > 1
    for ea, eb in zip(a, b):
        close(ea.per_channel, eb.per_channel, 1e-5)


def test_unet_one_window_equals_whole(rng):
    net = make_unet(3)
    x = rng.normal(size=(16, 24, 20)).astype(np.float32)
    whole = wrap(net, 3)
    one = wrap(net, 3, patch=(16, 24, 20))
    big = wrap(net, 3, patch=(32, 32, 32))
    assert len(model_windows(one, x.shape)) == 1
    c = int(np.bincount(whole.predict(x).ravel()).argmax())
    for method in ("gradient", "integrated_gradients", "seg_grad_cam"):
        ref = explain(whole, x, method, target=c, steps=4) if method == "integrated_gradients" \
            else explain(whole, x, method, target=c)
        for m in (one, big):
            got = explain(m, x, method, target=c, steps=4) if method == "integrated_gradients" \
                else explain(m, x, method, target=c)
            close(got.attribution, ref.attribution, 1e-5)
