"""One-channel (sigmoid) models end to end: the prediction is ``logit > 0``, class 1 is the
logit and class 0 its negation, and every method explains a sigmoid model exactly as it
explains the equivalent two-channel model whose channels are ``(-logit, logit)``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet

from seg_explain import explain
from seg_explain.models import SegModel

NAMES = ["background", "lesion"]


class NegLogit(torch.nn.Module):
    """(N, 1, ...) -> (N, 2, ...): the two class logits a sigmoid model's one channel stands for."""

    def forward(self, z):
        return torch.cat([-z, z], 1)


@pytest.fixture
def sigmoid2d():
    """A one-channel MONAI UNet: foreground where its logit > 0."""
    net = make_unet(2, out_channels=1, seed=4)
    return SegModel(net, spatial_dims=2, in_channels=1, class_names=NAMES, divisor=4,
                    device="cpu", meta={"sigmoid": True})


@pytest.fixture
def two_channel_twin(sigmoid2d):
    """The same network with its logit spelled out as two class channels (no sigmoid flag)."""
    return SegModel(torch.nn.Sequential(sigmoid2d.network, NegLogit()).eval(), spatial_dims=2, in_channels=1,
                    class_names=NAMES, divisor=4, device="cpu")


def test_sigmoid_model_prediction_and_gradient_against_autograd(sigmoid2d):
    x = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    logits = sigmoid2d.logits(x)
    with torch.no_grad():
        np.testing.assert_allclose(logits, sigmoid2d.network(torch.as_tensor(x)[None, None])[0].numpy(),
                                   rtol=1e-5, atol=1e-6)
    pred = sigmoid2d.predict(x)
    np.testing.assert_array_equal(pred, (logits[0] > 0).astype(pred.dtype))
    assert 0 < pred.sum() < pred.size          # both classes present: the threshold is exercised
    roi = np.zeros((32, 32), bool)
    roi[8:20, 8:20] = True
    for target, sign in ((1, 1.0), (0, -1.0)):      # class 0 of a sigmoid model = the negated logit
        e = explain(sigmoid2d, x, "gradient", target=target, roi=roi)
        xt = torch.as_tensor(x)[None, None].requires_grad_(True)
        out = sigmoid2d.network(xt)[0, 0]
        (g,) = torch.autograd.grad(sign * out[torch.as_tensor(roi)].sum(), xt)
        np.testing.assert_allclose(e.attribution, g[0, 0].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method, params", [("smoothgrad", {"n_samples": 2}), ("integrated_gradients", {"steps": 3}),
                                            ("seg_grad_cam", {}), ("kernel_shap", {"n_samples": 10, "grid": 2}),
                                            ("pdcr", {"bank": "zero", "block_size": 8})])
@pytest.mark.parametrize("target", ["lesion", "background"])
def test_sigmoid_model_every_method_equals_its_two_channel_twin(sigmoid2d, two_channel_twin, method, params, target):
    x = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[10:18, 10:18] = True
    e = explain(sigmoid2d, x, method, target=target, roi=roi, seed=0, **params)
    ref = explain(two_channel_twin, x, method, target=target, roi=roi, seed=0, **params)
    assert e.target == NAMES.index(target) and e.attribution.shape == (32, 32)
    assert np.abs(ref.attribution).max() > 0
    np.testing.assert_allclose(e.attribution, ref.attribution, rtol=1e-4, atol=1e-6 * np.abs(ref.attribution).max())
