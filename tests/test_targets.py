"""Target classes and RoIs (seg_explain.targets): the class logit a method differentiates
(sigmoid models included), the RoI sum, and how a mask, a label map and the prediction
become the RoI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_explain import InputMismatchError, explain
from seg_explain.targets import class_logit, resolve_roi, roi_sum


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
