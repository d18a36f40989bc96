"""One model, one truth: on every model format, what each method evaluates is the model's
own output (its windows, blending weights, padding and slicing), checked against
independent computations: autograd through ``model.blended_logits``, a brute-force
``model.logits_tensor`` of each perturbed image, ``model.predict`` and the folds' own CAMs.

Formats: a MONAI bundle with a non-default inferer (Gaussian, sigma_scale=1.0, a small
roi_size), nnU-Net 3d_fullres with 1 fold and with 2 folds, the nnU-Net 2d configuration
(2 folds) on a volume, a TorchScript file and a static torch.export program.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import UNET_DEF, make_unet, write_bundle

from seg_explain import explain, load_image, load_model
from seg_explain.bank import resolve_bank
from seg_explain.explainers.base import make_context
from seg_explain.explainers.engine import f_hat_batch
from seg_explain.explainers.registry import get_spec
from seg_explain.explainers.roi_dice import RoIDiceEngine, make_blocks, reference_positive
from seg_explain.jobs import drive
from seg_explain.targets import roi_sum

HERE = Path(__file__).parent
FIX = HERE / "data" / "nnunet" / "Dataset901_TinyBrain"
T3 = FIX / "nnUNetTrainer__nnUNetPlans__3d_fullres"
T2 = FIX / "nnUNetTrainer__nnUNetPlans__2d"
MNI = HERE / "data" / "nnunet" / "heldout" / "mni152_6x4x4.nii.gz"
needs_dna = pytest.mark.skipif(
    __import__("importlib").util.find_spec("dynamic_network_architectures") is None,
    reason="the [nnunet] extra (dynamic-network-architectures) is not installed")


def _sidecar(path: Path, patch) -> None:
    path.with_suffix(".json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": list(patch)}},
        "outputs": {"pred": {"num_channels": 4, "channel_def": {str(i): f"c{i}" for i in range(4)}}}}}))


def _volume(tmp: Path, shape=(24, 28, 20), seed=0) -> object:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    data = (np.exp(-(zz ** 2 + yy ** 2 + xx ** 2) * 2) + 0.2 * rng.random(shape)).astype(np.float32)
    p = tmp / f"vol{seed}.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), np.diag([1.2, 1.0, 1.1, 1.0])), p)
    return load_image(p)


def _two_fold_3d(tmp: Path) -> Path:
    """A 2-fold copy of the 3d_fullres fixture: fold 1 is fold 0's real nnU-Net checkpoint
    with its weights changed (so the folds disagree)."""
    dst = tmp / "Dataset901_TinyBrain" / T3.name
    shutil.copytree(T3, dst)
    from seg_explain.models.nnunet import load_checkpoint

    ck = load_checkpoint(dst / "fold_0" / "checkpoint_final.pth", dst)   # our weights_only loader
    g = torch.Generator().manual_seed(3)
    ck["network_weights"] = {k: (v * (1 + 0.3 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v)
                             for k, v in ck["network_weights"].items()}
    (dst / "fold_1").mkdir()
    torch.save(ck, dst / "fold_1" / "checkpoint_final.pth")
    return dst


def _case(name: str, tmp: Path):
    """-> (model, image, slice_index) for one format."""
    if name == "bundle_sigma1":
        b = write_bundle(tmp / "b", {**UNET_DEF, "spatial_dims": 3}, make_unet(3, seed=2),
                         ["bg", "a", "b", "c"], (16, 16, 16))
        cfg = json.loads((b / "configs" / "inference.json").read_text())
        cfg["inferer"] = {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "overlap": 0.5,
                          "mode": "gaussian", "sigma_scale": 1.0}
        (b / "configs" / "inference.json").write_text(json.dumps(cfg))
        m = load_model(b, device="cpu")
        assert m.blend == "gaussian" and m.sigma_scale == 1.0 and m.overlap == 0.5
        return m, _volume(tmp), None
    if name == "nnunet3d":
        return load_model(T3, device="cpu"), load_image(MNI), None
    if name == "nnunet3d_2fold":
        m = load_model(_two_fold_3d(tmp), device="cpu")
        assert m.folds == ["0", "1"]
        return m, load_image(MNI), None
    if name == "nnunet2d_volume":
        return load_model(T2, device="cpu"), load_image(MNI), 12
    if name == "torchscript":
        ts = torch.jit.trace(make_unet(3, seed=4), torch.rand(1, 1, 16, 16, 16))
        ts.save(str(tmp / "m.ts"))
        _sidecar(tmp / "m.ts", (16, 16, 16))
        return load_model(tmp / "m.ts", device="cpu"), _volume(tmp), None
    if name == "pt2":
        prog = torch.export.export(make_unet(3, seed=5), (torch.rand(1, 1, 16, 16, 16),))
        torch.export.save(prog, str(tmp / "m.pt2"))
        _sidecar(tmp / "m.pt2", (16, 16, 16))
        m = load_model(tmp / "m.pt2", device="cpu")
        assert m.fixed_shape == (16, 16, 16)
        return m, _volume(tmp), None
    raise AssertionError(name)


NNUNET = {"nnunet3d", "nnunet3d_2fold", "nnunet2d_volume"}
CASES = ["bundle_sigma1", "nnunet3d", "nnunet3d_2fold", "nnunet2d_volume", "torchscript", "pt2"]


def _params(name):
    return [pytest.param(n, marks=needs_dna) if n in NNUNET else n for n in name]


def _context(model, image, k, target, roi=None):
    img = model.volume_slice(image, k) if k is not None else image
    ctx, roi_img, pred_img = make_context(model, img, target, roi)
    return ctx, img, roi_img, pred_img


def _small_roi(pred: np.ndarray, c: int, half: int = 3) -> np.ndarray:
    """The voxels predicted as ``c`` in a small box around one of them."""
    hit = np.argwhere(pred == c)
    centre = hit[len(hit) // 2]
    box = tuple(slice(max(0, int(v) - half), int(v) + half) for v in centre)
    roi = np.zeros(pred.shape, bool)
    roi[box] = pred[box] == c
    return roi


def _target(model, image, k):
    """The predicted foreground class with the most voxels (on the explained slice)."""
    pred = model.predict(model.volume_slice(image, k) if k is not None else image)
    counts = np.bincount(pred.ravel(), minlength=len(model.class_names))
    counts[0] = 0
    return int(counts.argmax())


@pytest.mark.parametrize("name", _params(CASES))
def test_every_evaluation_is_the_models_own_output(name, tmp_path):
    model, image, k = _case(name, tmp_path)
    c = _target(model, image, k)
    ctx, img, roi_img, pred_img = _context(model, image, k, c)
    own = model.logits_tensor(ctx.x)
    assert len(model.tiling(ctx.shape).windows) > 1, "the case must exercise the model's windows"
    # one prediction: predict == the explanation's prediction; the RoI = voxels predicted as c
    np.testing.assert_array_equal(model.predict(img), pred_img)
    np.testing.assert_array_equal(roi_img, pred_img == c)
    # f̂ of a batch (gradients' IG endpoints, KernelSHAP's coalitions) = the model's own output
    want = float(roi_sum(own[None], c, ctx.roi, model.sigmoid)[0])
    assert float(f_hat_batch(ctx, ctx.x[None])[0]) == pytest.approx(want, rel=1e-5, abs=1e-4)
    # a small RoI (part of the prediction) so that blocks outside it reach its windows
    ctx, *_ = _context(model, image, k, c, _small_roi(pred_img, c))
    own = model.logits_tensor(ctx.x)
    # PdCR / progressive perturbation's engine: clean logits are the model's, M0 = 100 points,
    # replacing a block by its own content changes nothing, and perturbed copies give the
    # Dice of a full model.logits_tensor pass of the perturbed image
    grid = make_blocks(ctx.shape, 4)
    rng = np.random.default_rng(1)
    bank = resolve_bank([rng.random(ctx.shape).astype(np.float32) * 3 for _ in range(2)], model, 4)
    eng = RoIDiceEngine(ctx, grid, bank.blocks, reference_positive(ctx, None), batch_size=4)
    torch.testing.assert_close(eng.clean_roi_logits, own.flatten(1)[:, ctx.roi.flatten()], rtol=0, atol=1e-5)
    assert eng.m0 == 1.0
    ids = [b for b in range(len(grid)) if eng.reachable(b)
           and not ctx.roi[grid.slices(grid.indices()[b])].any()]
    near = sorted(ids, key=lambda b: -float(ctx.roi[tuple(slice(max(0, s.start - 4), s.stop + 4)
                                                          for s in grid.slices(grid.indices()[b]))].sum()))[:6]
    blocks = torch.stack([ctx.x[(slice(None),) + grid.slices(grid.indices()[b])] for b in near[:1]])
    same = RoIDiceEngine(ctx, grid, blocks, reference_positive(ctx, None), batch_size=4)
    jobs = [[(near[0], 0)]]
    got = torch.empty(1, dtype=torch.float64)
    list(same.run(jobs, got))
    assert float(got[0]) == pytest.approx(1.0, abs=1e-12)
    jobs = [[(b, i % len(bank))] for i, b in enumerate(near)] + [[(near[0], 1), (near[1], 0), (near[2], 1)]]
    got = torch.empty(len(jobs), dtype=torch.float64)
    list(eng.run(jobs, got))
    ref = model.labels_from_logits(own)[ctx.roi] == c
    for job, d in zip(jobs, got):
        x = ctx.x.clone()
        for blk, kk in job:
            sl = grid.slices(grid.indices()[blk])
            x[(slice(None),) + sl] = bank.blocks[kk][(slice(None),) + tuple(slice(0, s.stop - s.start) for s in sl)]
        pred = model.labels_from_logits(model.logits_tensor(x))[ctx.roi] == c
        want = float(2 * (pred & ref).sum() / (pred.sum() + ref.sum()))
        assert float(d) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("name", _params(CASES))
def test_gradient_is_autograd_through_the_models_blended_output(name, tmp_path):
    model, image, k = _case(name, tmp_path)
    c = _target(model, image, k)
    ctx, *_ = _context(model, image, k, c)
    res = drive(get_spec("gradient").fn(ctx))
    ours = (res[0] if isinstance(res, tuple) else res).double()
    x = ctx.x[None].clone().requires_grad_(True)
    with torch.enable_grad():
        f = roi_sum(model.blended_logits(x), c, ctx.roi, model.sigmoid).sum()
        (g,) = torch.autograd.grad(f, x)
    g = g[0].double()
    assert float((ours - g).norm() / g.norm()) < 1e-5


@pytest.mark.parametrize("method", ["seg_grad_cam", "seg_hires_grad_cam"])
@needs_dna
def test_multi_fold_cam_is_the_mean_of_the_folds_cams(method, tmp_path):
    """Layer named once (no fold prefix); the CAM of a 2-fold model is the mean of each
    fold's own CAM (computed with that fold alone), on the same RoI."""
    from seg_explain.models.nnunet import load_nnunet

    folder = _two_fold_3d(tmp_path)
    both = load_nnunet(folder, device="cpu")
    img = load_image(MNI)
    roi = both.predict(img) == 1
    e = explain(both, img, method, target=1, roi=roi)
    assert not e.extras["layer"].startswith("folds.") and "mean of 2" in e.extras["ensemble"]
    one = [explain(load_nnunet(folder, device="cpu", folds=[f]), img, method, target=1, roi=roi,
                   layer=e.extras["layer"]).attribution for f in (0, 1)]
    assert np.corrcoef(one[0].ravel(), one[1].ravel())[0, 1] < 0.99     # the folds disagree
    np.testing.assert_allclose(e.attribution, (one[0] + one[1]) / 2, rtol=1e-4,
                               atol=1e-5 * float(np.abs(e.attribution).max()))


def test_alpha_pool_image_is_one_alpha_from_the_blended_gradient(tmp_path):
    """Windowed image: "image" pools α from the blended output's gradient (an independent
    computation with autograd through the whole sliding-window output); "window" differs;
    an image that fits one window gets the same map either way."""
    from seg_explain.explainers.cams import find_layer
    from seg_explain.explainers.engine import thread_hooks
    from seg_explain.windows import window_shape

    model, image, _ = _case("bundle_sigma1", tmp_path)
    c = _target(model, image, None)
    a = explain(model, image, "seg_grad_cam", target=c, relu=False)
    b = explain(model, image, "seg_grad_cam", target=c, relu=False, alpha_pool="window")
    assert a.extras["alpha_pool"] == "image" and b.extras["alpha_pool"] == "window"
    assert np.abs(a.attribution - b.attribution).max() > 1e-3 * np.abs(a.attribution).max()
    # independent α: autograd of the blended f̂ w.r.t. every window's layer output
    ctx, *_ = _context(model, image, None, c)
    name, module = find_layer(model)
    acts = []
    with thread_hooks() as hooks:
        def keep(_m, _i, out):
            out.retain_grad()
            acts.append(out)
        hooks.forward(module, keep)
        with torch.enable_grad():
            x = ctx.x[None].clone().requires_grad_(True)
            roi_sum(model.blended_logits(x), c, ctx.roi, model.sigmoid).sum().backward()
    grads = [A.grad for A in acts if A.grad is not None and A.grad.abs().sum() > 0]
    n_pos = float(np.prod(acts[0].shape[2:]))
    alpha = sum(G.sum(dim=tuple(range(2, G.ndim))) for G in grads) / n_pos      # (1, K)
    # our map on one window (away from others' weights) uses this α: compare the combination
    tiling = model.tiling(ctx.shape)
    w = tiling.windows[0]
    with torch.no_grad(), thread_hooks() as hooks:
        store = hooks.capture(module)
        model.forward(tiling.crop(ctx.x, w)[None])
    lin = (alpha[..., None, None, None] * store[0]).sum(1)
    assert window_shape(w) == tuple(model.patch_size) and lin.abs().max() > 0
    ours = drive(get_spec("seg_grad_cam").fn(ctx, relu=False))
    ours_map = ours[0] if isinstance(ours, tuple) else ours
    # the window's own map, blended with w/Σw, is part of ours: rebuild ours from the
    # independent α alone and compare
    from seg_explain.explainers.cams import upsample
    from seg_explain.explainers.engine import WindowAccumulator

    acc = WindowAccumulator(model.window_weights(ctx.shape))
    for wi in range(len(tiling.windows)):
        win = tiling.windows[wi]
        if not ctx.roi[tiling.inner(win)[0]].any():
            continue
        with torch.no_grad(), thread_hooks() as hooks:
            st = hooks.capture(module)
            model.forward(tiling.crop(ctx.x, win)[None])
        acc.add(win, upsample((alpha[..., None, None, None] * st[0]).sum(1), model, window_shape(win))[0])
    torch.testing.assert_close(ours_map.float(), acc.result().float(), rtol=1e-4, atol=1e-5)
