"""Sliding-window explanations: window geometry, accumulation, and windowed == whole."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet, wrap

from seg_explain import explain
from seg_explain.explainers.multiclass import explain_classes
from seg_explain.windows import (WindowAccumulator, iter_windows, model_windows, overlap_count,
                                 windows_touching)


def close(a, b, rtol=1e-4):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


# --------------------------------------------------------------------- geometry --
@pytest.mark.parametrize("shape,patch", [((40, 70), (16, 32)), ((20, 33, 17), (16, 16, 16)),
                                         ((16, 50, 9), (16, 16, 16))])
def test_iter_windows_matches_monai_sliding_window(shape, patch):
    """Same windows as monai.inferers.sliding_window_inference: record the slices it runs."""
    from monai.inferers import sliding_window_inference

    wins = iter_windows(shape, patch, 0.25)
    patch_c = tuple(min(s, p) for s, p in zip(shape, patch))
    seen = []
    img = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape((1, 1) + shape)

    def record(xb):
        for b in xb:  # find where this patch sits: its first value is a flat index
            start = np.unravel_index(int(b.flatten()[0]), shape)
            seen.append(tuple(slice(int(s0), int(s0) + p) for s0, p in zip(start, b.shape[1:])))
        return xb
    sliding_window_inference(img, patch_c, 1, record, overlap=0.25)
    assert sorted(map(str, wins)) == sorted(map(str, seen))
    cnt = overlap_count(shape, wins)
    assert (cnt >= 1).all()
    assert all(tuple(s.stop - s.start for s in w) == patch_c for w in wins)


def test_single_window_when_it_fits_and_touching():
    assert iter_windows((10, 12), (16, 16)) == [(slice(0, 10), slice(0, 12))]
    assert iter_windows((10, 12), None) == [(slice(0, 10), slice(0, 12))]
    wins = iter_windows((40, 40), (16, 16), 0.25)
    m = np.zeros((40, 40), bool)
    m[0, 0] = True
    assert windows_touching(wins, m) == [0]
    with pytest.raises(ValueError):
        iter_windows((40, 40), (16, 16), 1.0)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_accumulator_mean_over_covering_windows(blend, rng):
    shape = (37, 45)
    wins = iter_windows(shape, (16, 20), 0.25)
    field = torch.as_tensor(rng.normal(size=(2,) + shape).astype(np.float32))
    acc = WindowAccumulator(shape, wins, lead=(2,), blend=blend)
    for w in wins:  # every window reports the same underlying field: the mean is that field
        acc.add(w, field[(slice(None),) + w])
    close(acc.result(), field, 1e-5)
    # a window that adds nothing still counts (its contribution is zero)
    acc = WindowAccumulator(shape, wins)
    acc.add(wins[0], torch.ones(tuple(s.stop - s.start for s in wins[0])))
    cnt = overlap_count(shape, wins)
    close(acc.result()[wins[0]], 1.0 / cnt[wins[0]])


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


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("method,params", [
    ("gradient", {}), ("smoothgrad", {"n_samples": 3}),
    ("integrated_gradients", {"steps": 5, "baseline": "blur"}), ("seg_hires_grad_cam", {"layer": "b"})])
def test_windowed_equals_whole_for_a_pointwise_network(sd, method, params, rng):
    shape = (40, 52) if sd == 2 else (20, 26, 23)
    patch = (16, 24) if sd == 2 else (12, 12, 16)
    net = Pointwise(sd).eval()
    whole = wrap(net, sd, n_classes=3, divisor=1)
    windowed = wrap(net, sd, n_classes=3, divisor=1, patch=patch)
    assert windowed.needs_windows(shape) and not whole.needs_windows(shape)
    x = rng.normal(size=shape).astype(np.float32)
    pred = whole.predict(x)
    c = int(np.bincount(pred.ravel()).argmax())
    ew = explain(windowed, x, method, target=c, seed=2, **params)
    e1 = explain(whole, x, method, target=c, seed=2, **params)
    assert np.abs(e1.attribution).max() > 0
    close(ew.attribution, e1.attribution, 1e-5)
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


def test_unet_windows_equal_an_independent_window_loop(rng):
    """Anisotropic volume, UNet, 3D: our windows vs a loop written here on MONAI's slices."""
    from monai.data.utils import dense_patch_slices

    net = make_unet(3)
    patch = (16, 16, 16)
    model = wrap(net, 3, patch=patch)
    shape = (16, 28, 36)
    x = rng.normal(size=shape).astype(np.float32)
    pred = model.predict(x)
    c = int(np.bincount(pred.ravel()).argmax())
    roi = pred == c
    e = explain(model, x, "gradient", target=c)

    interval = [p if p == s else int(p * 0.75) for s, p in zip(shape, patch)]
    acc = np.zeros(shape)
    cnt = np.zeros(shape)
    xt = torch.as_tensor(x)
    passes = 0
    for sl in dense_patch_slices(shape, patch, interval):
        cnt[sl] += 1
        r = torch.as_tensor(roi[sl], dtype=torch.float32)
        if not r.any():
            continue
        xw = xt[sl][None, None].clone().requires_grad_(True)
        (net(xw)[0, c] * r).sum().backward()
        acc[sl] += xw.grad[0, 0].numpy()
        passes += 1
    close(e.attribution, acc / cnt)
    assert e.n_forward == 1 + passes and e.n_backward == passes
