"""The shared target f̂ and RoI resolution (:mod:`seg_explain.targets`): sigmoid (one-channel)
models end to end against autograd, the target logit and RoI sum by hand, RoI modes and
``roi_label``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet

from seg_explain import InputMismatchError, explain
from seg_explain.targets import class_logit, resolve_roi, roi_sum


# ---------------------------------------------------------------------- sigmoid --
@pytest.fixture
def sigmoid2d():
    """A one-channel MONAI UNet: foreground where its logit > 0."""
    from seg_explain.models import SegModel

    net = make_unet(2, out_channels=1, seed=4)
    return SegModel(net, spatial_dims=2, in_channels=1, class_names=["background", "lesion"], divisor=4,
                    device="cpu", meta={"sigmoid": True})


def test_sigmoid_model_prediction_and_gradient_against_autograd(sigmoid2d):
    x = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    logits = sigmoid2d.logits(x)
    assert logits.shape == (1, 32, 32)
    pred = sigmoid2d.predict(x)
    np.testing.assert_array_equal(pred, (logits[0] > 0).astype(pred.dtype))
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
def test_sigmoid_model_every_method(sigmoid2d, method, params):
    x = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[10:18, 10:18] = True
    e = explain(sigmoid2d, x, method, target="lesion", roi=roi, **params)
    assert e.target == 1 and e.attribution.shape == (32, 32) and np.isfinite(e.attribution).all()


# ---------------------------------------------------------------------- targets --
def test_class_logit_and_roi_sum_by_hand():
    lg = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    roi = torch.zeros(3, 4, dtype=torch.bool)
    roi[1, 2] = roi[2, 0] = True
    assert float(roi_sum(lg, 1, roi)) == float(lg[0, 1, 1, 2] + lg[0, 1, 2, 0])
    one = lg[:, :1]
    np.testing.assert_array_equal(class_logit(one, 0, True), -one[:, 0])
    np.testing.assert_array_equal(class_logit(one, 1, True), one[:, 0])


def test_resolve_roi_modes_and_labels():
    pred = np.zeros((6, 6), int)
    pred[1:4, 1:4] = 2
    np.testing.assert_array_equal(resolve_roi(None, pred, 2), pred == 2)
    mask = np.zeros((6, 6), int)
    mask[0:2, 0:6] = 1
    mask[3:6, 3:6] = 2
    np.testing.assert_array_equal(resolve_roi(mask, pred, 2), mask != 0)
    np.testing.assert_array_equal(resolve_roi(mask, pred, 2, label=2), mask == 2)
    np.testing.assert_array_equal(resolve_roi(mask, pred, 2, mode="intersection"), (mask != 0) & (pred == 2))
    with pytest.raises(InputMismatchError, match="no voxel with label 7"):
        resolve_roi(mask, pred, 2, label=7)
    with pytest.raises(InputMismatchError, match="predicts no voxel of class 5"):
        resolve_roi(None, pred, 5)
    with pytest.raises(InputMismatchError, match="roi_mode must be one of"):
        resolve_roi(mask, pred, 2, mode="union")


def test_roi_label_picks_one_label_of_a_label_map(unet2d):
    x = np.random.default_rng(2).standard_normal((32, 32)).astype(np.float32)
    labels = np.zeros((32, 32), np.uint8)
    labels[2:10, 2:10] = 1
    labels[20:30, 20:30] = 3
    a = explain(unet2d, x, "gradient", target=1, roi=labels, roi_label=3)
    b = explain(unet2d, x, "gradient", target=1, roi=labels == 3)
    np.testing.assert_array_equal(a.roi, labels == 3)
    np.testing.assert_allclose(a.attribution, b.attribution)
