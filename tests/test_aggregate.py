"""Agg2Exp aggregation (aggregate.py): normalisation, hand-recomputed rows, a planted cause,
extra RoIs, absent classes, the generator form and bad images."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from seg_explain import InputMismatchError, agg2exp, explain
from seg_explain.aggregate import dice_per_class, region_masses
from seg_explain.dataset import Agg2ExpRun, agg2exp_iter
from seg_explain.models import SegModel

N_CLASSES = 5


# ------------------------------------------------------------------- planted model --
def planted_layout(shape=(16, 16, 16)) -> np.ndarray:
    """Five fixed regions: background shell, four slabs (classes 1..4)."""
    lay = np.zeros(shape, np.int64)
    z = shape[0]
    inner = (slice(2, -2),) * (len(shape) - 1)
    for k in range(4):
        lay[(slice(2 + k * (z - 4) // 4, 2 + (k + 1) * (z - 4) // 4),) + inner] = k + 1
    return lay


class PlantedCause(torch.nn.Module):
    """A real nn.Module whose predicted regions are the fixed layout and whose class-2
    logits depend *only* on the intensities inside class 4's region (their mean, through a
    1×1 convolution); every other class looks at its own voxels. ``x`` ≥ 0.3 inside class
    3's region turns it into background (to make class 3 absent on demand)."""

    def __init__(self, layout: np.ndarray):
        super().__init__()
        lay = torch.as_tensor(layout)
        self.register_buffer("bias", 10.0 * torch.nn.functional.one_hot(lay, N_CLASSES).movedim(-1, 0).float())
        self.register_buffer("own", torch.stack([(lay == c).float() for c in range(N_CLASSES)]))
        self.register_buffer("m4", (lay == 4).float())
        self.register_buffer("m3", (lay == 3).float())
        self.local = torch.nn.Conv3d(1, N_CLASSES, 1, bias=False)
        with torch.no_grad():
            self.local.weight.fill_(0.5)

    def forward(self, x):
        out = self.bias[None] + self.local(x) * self.own[None]
        out = out.clone()
        s4 = (x[:, 0] * self.m4).flatten(1).sum(1) / self.m4.sum()
        out[:, 2] = self.bias[2][None] + 3.0 * s4.view(-1, 1, 1, 1)
        out[:, 0] = out[:, 0] + 100.0 * x[:, 0] * self.m3        # kills class 3 when x ≥ 0.3 there
        return out


def planted_model(shape=(16, 16, 16)):
    lay = planted_layout(shape)
    net = PlantedCause(lay)
    names = ["background", "a", "b", "c", "d"]
    return SegModel(net, spatial_dims=3, in_channels=1, class_names=names, divisor=1, device="cpu"), lay


def planted_image(seed=0, shape=(16, 16, 16), kill3=False):
    rng = np.random.default_rng(seed)
    x = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if kill3:
        x[planted_layout(shape) == 3] = 1.0
    return x


# ------------------------------------------------------------------------------ tests --
def test_rows_sum_to_one_and_extra_column(unet3d, rng):
    imgs = [rng.standard_normal((16, 16, 16)).astype(np.float32) for _ in range(2)]
    lesion = np.zeros((16, 16, 16), bool)
    lesion[3:9, 3:9, 3:9] = True
    res = agg2exp(unet3d, imgs, method="gradient", extra_rois={"lesion": lesion})
    L = len(unet3d.class_names)
    assert res.local.shape == (2, L, L + 1)
    assert res.col_names == unet3d.class_names + ["lesion"]
    assert res.row_names == unet3d.class_names
    for i in range(2):
        for a in range(L):
            if res.present[i, a]:
                for arr in (res.local, res.local_pos, res.local_neg):
                    assert np.nansum(arr[i, a, :L]) == pytest.approx(1.0, abs=1e-9)
                assert 0 <= res.local[i, a, L] <= 1
            else:
                assert np.isnan(res.local[i, a]).all()
    np.testing.assert_allclose(res.global_importance, np.nanmean(res.local, 0))
    assert res.context_mass.shape == (2, L)
    np.testing.assert_allclose(res.context_mass[0], np.diagonal(res.local[0, :, :L]))


def test_row_matches_explain_and_predict(unet3d, rng):
    img = rng.standard_normal((16, 16, 16)).astype(np.float32)
    lesion = np.zeros(img.shape, bool)
    lesion[:, :5] = True
    res = agg2exp(unet3d, [img], method="gradient", extra_rois={"lesion": lesion})
    pred = unet3d.predict(img)
    L = len(unet3d.class_names)
    assert res.present[0].tolist() == [bool((pred == c).any()) for c in range(L)]
    for c in np.unique(pred):
        e = explain(unet3d, img, "gradient", target=int(c)).attribution.astype(np.float64)
        ab, pos, neg = np.abs(e), np.clip(e, 0, None), np.clip(-e, 0, None)
        want = [ab[pred == b].sum() / ab.sum() for b in range(L)] + [ab[lesion].sum() / ab.sum()]
        np.testing.assert_allclose(res.local[0, c], want, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(res.local_pos[0, c, :L], [pos[pred == b].sum() / pos.sum() for b in range(L)],
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(res.local_neg[0, c, :L], [neg[pred == b].sum() / neg.sum() for b in range(L)],
                                   rtol=1e-4, atol=1e-7)
        dens = [ab[pred == b].mean() / ab.mean() if (pred == b).any() else np.nan for b in range(L)]
        np.testing.assert_allclose(res.local_per_voxel[0, c, :L], dens, rtol=1e-4)
        np.testing.assert_array_equal(res.local_relative_mean_abs, res.local_per_voxel)
        # the authors' raw per-region mean |e| (attribution units), extra RoIs included
        raw = [ab[pred == b].mean() if (pred == b).any() else np.nan for b in range(L)] + [ab[lesion].mean()]
        np.testing.assert_allclose(res.local_mean_abs[0, c], raw, rtol=1e-4)
        np.testing.assert_allclose(res.matrix(0, "mean_abs")[c], raw, rtol=1e-4)


def test_planted_cause_puts_class2_mass_on_region4():
    model, lay = planted_model()
    imgs = [planted_image(s) for s in range(2)]
    assert (model.predict(imgs[0]) == lay).all()
    res = agg2exp(model, imgs, method="gradient")
    g = res.global_importance
    assert g[2, 4] > 0.99
    assert int(np.argmax(g[2])) == 4
    # every other class relies on itself (context mass ~ 1)
    for c in (1, 3, 4):
        assert g[c, c] > 0.99
    # the same through KernelSHAP on semantic supervoxels (model-agnostic)
    res_ks = agg2exp(model, imgs[:1], method="kernel_shap", features="semantic", classes=[2])
    assert res_ks.local[0, 2, 4] > 0.99


def test_absent_class_is_nan_row_and_nanmean():
    model, lay = planted_model()
    imgs = [planted_image(0), planted_image(1, kill3=True)]
    assert 3 not in np.unique(model.predict(imgs[1]))
    res = agg2exp(model, imgs, method="gradient")
    assert res.present[:, 3].tolist() == [True, False]
    assert np.isnan(res.local[1, 3]).all()
    assert res.local[1, :, 3][res.present[1]].max() == 0      # empty region: zero mass
    np.testing.assert_allclose(res.global_importance[3], res.local[0, 3])
    assert res.n_present[3, 0] == 1 and res.n_present[1, 0] == 2
    recs = res.records()
    assert len(recs) == 2 * 5 * 5
    assert set(recs[0]) == {"image", "explained_class", "region", "mass", "mass_pos", "mass_neg"}


def test_extra_roi_forms(unet3d, rng, tmp_path):
    from seg_explain import save_image

    imgs = [rng.standard_normal((16, 16, 16)).astype(np.float32) for _ in range(2)]
    m1 = np.zeros((16, 16, 16), np.uint8)
    m1[:4] = 1
    m2 = np.zeros_like(m1)
    m2[-4:] = 2
    p = save_image(tmp_path / "m1.npy", m1)
    res = agg2exp(unet3d, imgs, method="gradient",
                  extra_rois={"per_image": [m1, None], "file": str(p), "fn": lambda i, name: m2})
    L = len(unet3d.class_names)
    assert res.col_names[L:] == ["per_image", "file", "fn"]
    assert np.isnan(res.local[1, :, L]).all() and np.isnan(res.volumes[1, L])
    np.testing.assert_allclose(res.local[0, :, L], res.local[0, :, L + 1])   # same mask twice
    # a list of per-image dicts
    res2 = agg2exp(unet3d, imgs, method="gradient", extra_rois=[{"x": m1}, {"x": m2}])
    assert res2.col_names[L:] == ["x"]
    with pytest.raises(InputMismatchError):
        agg2exp(unet3d, imgs, method="gradient", extra_rois={"bad": np.zeros((4, 4, 4))})


def test_generator_progress_partial_result_and_skip(unet3d, rng, tmp_path):
    imgs = [rng.standard_normal((16, 16, 16)).astype(np.float32) for _ in range(2)]
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    gen = agg2exp_iter(unet3d, [imgs[0], str(bad), np.zeros((5, 5)), imgs[1]], method="gradient",
                       on_error="skip")
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    done = [d for d, _ in steps]
    assert done == sorted(done) and steps[-1][0] == steps[-1][1]
    assert res.n_images == 2 and res.image_names == ["image_0", "image_3"]
    assert [n for n, _ in res.skipped] == ["broken", "image_2"]
    # stop after the first image: the run keeps what finished
    run = Agg2ExpRun(unet3d, imgs, "gradient")
    it = run.run_iter()
    for d, _t in it:
        if d >= 1000:
            break
    it.close()
    part = run.result()
    assert part.n_images == 1
    with pytest.raises(InputMismatchError):
        agg2exp(unet3d, [np.zeros((5, 5))], method="gradient")


def test_csv_and_dice(unet3d, rng, tmp_path):
    img = rng.standard_normal((16, 16, 16)).astype(np.float32)
    pred = unet3d.predict(img)
    res = agg2exp(unet3d, [img], method="gradient", ground_truth=[pred], names=["case1"])
    np.testing.assert_allclose(res.dice[0], 1.0)
    res.to_csv(tmp_path / "local.csv")
    res.global_to_csv(tmp_path / "global.csv")
    rows = list(csv.DictReader(open(tmp_path / "local.csv")))
    assert list(rows[0]) == ["image", "explained_class", "region", "mass", "mass_pos", "mass_neg"]
    assert rows[0]["image"] == "case1"
    g = list(csv.DictReader(open(tmp_path / "global.csv")))
    assert len(g) == len(unet3d.class_names) ** 2
    assert {"mass_per_voxel", "relative_mean_abs", "mean_abs"} <= set(g[0])
    for r, want in zip(g, res.global_mean_abs.ravel()):
        assert r["relative_mean_abs"] == r["mass_per_voxel"]
        assert (r["mean_abs"] == "") if np.isnan(want) else float(r["mean_abs"]) == pytest.approx(want, rel=1e-6)


def test_raw_region_means_survive_a_resumed_data_set_run(unet3d, rng, tmp_path):
    imgs = [rng.standard_normal((16, 16, 16)).astype(np.float32) for _ in range(2)]
    first = agg2exp(unet3d, imgs, method="gradient", names=["a", "b"], out=tmp_path / "run")
    again = agg2exp(unet3d, imgs, method="gradient", names=["a", "b"], out=tmp_path / "run")   # read back
    assert np.isfinite(first.local_mean_abs[first.present]).any()
    np.testing.assert_array_equal(again.local_mean_abs, first.local_mean_abs)


def test_region_masses_and_dice_helpers():
    e = np.array([1.0, -1.0, 2.0, 0.0])
    lab = np.array([0, 0, 1, 2])
    m = region_masses(e, lab, 3, [np.array([1, 0, 0, 1], bool), None])
    np.testing.assert_allclose(m["mass"][:3], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(m["mass"][3], 0.25)
    assert np.isnan(m["mass"][4])
    np.testing.assert_allclose(m["mass_pos"][:3], [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(m["mass_neg"][:3], [1, 0, 0])
    np.testing.assert_allclose(m["mass_per_voxel"][:3], [0.5 * 4 / 2, 0.5 * 4 / 1, 0.0])
    np.testing.assert_allclose(m["mean_abs"][:4], [(1 + 1) / 2, 2 / 1, 0 / 1, (1 + 0) / 2])
    assert np.isnan(m["mean_abs"][4])
    np.testing.assert_allclose(dice_per_class([0, 1, 1, 2], [0, 1, 2, 2], 4), [1, 2 / 3, 2 / 3, 1])


def test_2d_random_unet(unet2d, rng):
    img = rng.standard_normal((32, 32)).astype(np.float32)
    res = agg2exp(unet2d, img, method="kernel_shap", n_samples=30)
    L = len(unet2d.class_names)
    for a in np.flatnonzero(res.present[0]):
        assert np.sum(res.local[0, a, :L]) == pytest.approx(1.0)


def test_classes_subset_absent_everywhere_and_shared_pass_counts():
    model, lay = planted_model()
    imgs = [planted_image(0), planted_image(1, kill3=True)]
    res = agg2exp(model, imgs, method="smoothgrad", n_samples=4, classes=["c"])
    assert res.present.tolist() == [[False, False, False, True, False], [False] * 5]
    assert np.isnan(res.local[1]).all() and np.isfinite(res.local[0, 3]).all()
    np.testing.assert_array_equal(res.volumes[1], np.bincount(model.predict(imgs[1]).ravel(), minlength=5))
    res = agg2exp(model, imgs[:1], method="smoothgrad", n_samples=4)
    assert res.n_forward[0] == 1 + 4          # clean prediction + 4 noisy copies, shared by 5 classes
    assert res.n_backward[0] == 5 * 4
    assert res.global_importance[2, 4] > 0.99


def test_moved_runner_names_still_import_from_their_old_modules():
    """agg2exp/evaluate and their generator forms moved to seg_explain.dataset (one runner);
    the old import paths keep working and give the very same objects."""
    from seg_explain import aggregate, dataset, metrics

    assert aggregate.agg2exp is dataset.agg2exp and aggregate.Agg2ExpRun is dataset.Agg2ExpRun
    assert aggregate.agg2exp_iter is dataset.agg2exp_iter
    assert metrics.evaluate is dataset.evaluate and metrics.evaluate_iter is dataset.evaluate_iter
    with pytest.raises(AttributeError):
        aggregate.no_such_name  # noqa: B018
