"""PdCR against a plain re-implementation of the reference code's loop (lcmmai/PdCR,
``occlusion_sensitivity_optimized`` and ``zero_occlusion_sensitivity``), fed the same draws.

The re-implementation below follows the reference code's semantics, written independently:
full blocks only, row by row; blocks touching the RoI are skipped; S screening copies, the
block is irrelevant if every |Dice x 100 - M0 x 100| < tau; else N copies and the mean,
irrelevant if |mean| < tau. Dice = 2 I / (|pred| + |ref| + 1e-10), in points (x 100).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet, wrap
from scipy import ndimage as ndi

from seg_explain import explain
from seg_explain.explainers.pdcr import block_histogram, draw_indices, histogram_bins

SHAPE = (40, 48)          # multiples of the block size: every block is a full block
B = 8


def smooth(shape, seed, scale=4.0):
    r = np.random.default_rng(seed).random(shape)
    return (ndi.gaussian_filter(r, 2) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    model = wrap(make_unet(2, seed=3), 2)
    img = smooth(SHAPE, 0)
    pred = model.predict(img)
    target = int(np.bincount(pred.ravel()).argmax())
    roi = np.zeros(SHAPE, bool)
    roi[16:32, 16:32] = True                     # a 16² square RoI, as the reference code's
    # a "ground truth" that differs from the prediction in the RoI: M0 < 100, both signs
    gt = pred.copy()
    gt[16:24, 16:32] = np.where(gt[16:24, 16:32] == target, (target + 1) % 4, target)
    bank = [smooth((24, 24), s) for s in (1, 2, 3)]
    return model, img, roi, target, gt, bank


def dice_points(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(K, n) and (n,) binary -> (K,) Dice x 100 with the reference code's epsilon."""
    inter = (pred * ref).sum(1)
    return 100 * 2 * inter / (pred.sum(1) + ref.sum() + 1e-10)


def reference_loop(model, x, roi, target, ref_mask, blocks, screen, ate, tau, n_screen, n_draws):
    """The reference loop on ``x`` (model space), given the draws -> {(i, j): map value}."""
    roi_t = torch.from_numpy(roi)
    ref = torch.from_numpy(ref_mask[roi]).double()

    def dice(xs):
        with torch.no_grad():
            lab = model.forward(xs).argmax(1)
        return dice_points((lab[:, roi_t] == target).double(), ref)

    base = float(dice(x[None])[0])
    h, w = x.shape[1:]
    n_cols = -(-w // B)
    out = {}
    for i in range(0, h - B + 1, B):
        for j in range(0, w - B + 1, B):
            if roi[i:i + B, j:j + B].any():
                continue
            k = (i // B) * n_cols + j // B
            out[(i // B, j // B)] = 0.0
            xs = x[None].repeat(n_screen, 1, 1, 1)
            xs[:, :, i:i + B, j:j + B] = blocks[screen[k]]
            if ((dice(xs) - base).abs() < tau).all():
                continue
            xs = x[None].repeat(n_draws, 1, 1, 1)
            xs[:, :, i:i + B, j:j + B] = blocks[ate[k]]
            avg = float((dice(xs) - base).mean())
            if abs(avg) < tau:
                continue
            out[(i // B, j // B)] = avg
    return out


@pytest.mark.parametrize("with_gt, tau", [(True, 1.0), (False, 2.0)])
def test_ates_equal_the_reference_loop_given_the_same_draws(case, with_gt, tau):
    """tau (Dice points) is chosen so that this case has screened-out, below-tau and
    relevant blocks; M0 < 100 with ground truth (both signs), 100 without (ATE <= 0)."""
    model, img, roi, target, gt, bank = case
    n_screen, n_draws, seed = 3, 12, 7
    e = explain(model, img, "pdcr", target=target, roi=roi, bank=bank, seed=seed, tau=tau,
                n_screen=n_screen, n_draws=n_draws, reference=gt if with_gt else None)
    from seg_explain.bank import resolve_bank

    x = model.prepare(img).x
    blocks = resolve_bank(bank, model, B, seed=seed).for_block_size(B, seed)
    n_blocks = e.extras["n_blocks"]
    screen, ate = draw_indices(seed, len(blocks), n_blocks, n_screen, n_draws)
    ref_mask = (gt == target) if with_gt else (model.predict(img) == target)
    want = reference_loop(model, x, roi, target, ref_mask, blocks, screen, ate, tau, n_screen, n_draws)
    got = {tuple(b["index"]): b for b in e.extras["blocks"] if b["status"] != "roi"}
    assert set(got) == set(want)
    for idx, v in want.items():
        assert got[idx]["ate_points"] == pytest.approx(v, abs=1e-6), idx
        assert np.allclose(e.attribution[idx[0] * B:(idx[0] + 1) * B, idx[1] * B:(idx[1] + 1) * B], v, atol=1e-4)
    # the case exercises both thresholds and (with ground truth) both signs
    ex = e.extras
    assert ex["n_relevant"] == sum(v != 0 for v in want.values()) > 0
    assert sum(b["screened_out"] for b in got.values()) > 0
    assert ex["n_below_tau"] > 0 and all(abs(b["ate_raw_points"]) < tau for b in got.values() if b["below_tau"])
    if with_gt:
        assert ex["m0_points"] < 100 and ex["n_negative"] > 0 and ex["n_positive"] > 0
        assert ex["negative_measurable"] and ex["share_negative"] == ex["n_negative"] / ex["n_perturbable"]
    else:
        assert ex["m0_points"] == 100 and ex["share_negative"] is None
        assert all(v <= 0 for v in want.values())
    # the histogram is numpy's over the reference code's bins, one count per block
    vals = [v for v in want.values()]
    hist = np.histogram(vals, bins=ex["histogram"]["edges_points"])[0].tolist()
    counts, edges = ex["histogram"]["counts"], ex["histogram"]["edges_points"]
    c = edges.index(-tau)               # the central bin [-tau, tau)
    assert edges[c + 1] == tau and counts[c] == hist[c] > 0
    assert counts[:c + 1] == hist[:c + 1]
    assert counts[c + 1:] == (hist[c + 1:] if with_gt else [None] * (len(hist) - c - 1))


def test_zero_occlusion_equals_the_reference_zero_loop(case):
    """bank="zero": one pass per block, the block set to 0 in model space, |ITE| < tau -> 0."""
    model, img, roi, target, gt, _ = case
    tau = 0.5
    e = explain(model, img, "pdcr", target=target, roi=roi, bank="zero", tau=tau, reference=gt)
    x = model.prepare(img).x
    ref = torch.from_numpy((gt == target)[roi]).double()
    roi_t = torch.from_numpy(roi)
    with torch.no_grad():
        base = float(dice_points((model.forward(x[None]).argmax(1)[:, roi_t] == target).double(), ref)[0])
    ex = e.extras
    n_pert = ex["n_perturbable"]
    assert e.n_forward == n_pert + 1 and ex["n_forward_ate"] == n_pert and ex["n_forward_screen"] == 0
    assert ex["occlusion"] == "zero" and "zero occlusion" in ex["report"]
    for b in ex["blocks"]:
        if b["status"] == "roi":
            continue
        i, j = b["origin"]
        xo = x.clone()
        xo[:, i:i + B, j:j + B] = 0
        with torch.no_grad():
            d = float(dice_points((model.forward(xo[None]).argmax(1)[:, roi_t] == target).double(), ref)[0])
        want = d - base if abs(d - base) >= tau else 0.0
        assert b["ate_points"] == pytest.approx(want, abs=1e-6) and b["n_draws"] == 1
    assert ex["n_relevant"] > 0


def test_histogram_bins_follow_the_reference_code():
    edges, labels = histogram_bins(0.02)
    assert edges == [-np.inf, -3, -1, -0.3, -0.02, 0.02, 0.3, 1, 3, np.inf]
    assert labels[0] == "< -3" and labels[4].startswith("-0.02 to 0.02") and labels[-1] == ">= 3"
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 2, 500), [-3, -1, -0.3, -0.02, 0.02, 0.3, 1, 3, 0, 0]])
    assert block_histogram(v, 0.02) == np.histogram(v, bins=edges)[0].tolist()
    # tau = 0: the central bin is exactly the zeros; tau >= 0.3 drops the inner edges
    e0, _ = histogram_bins(0.0)
    assert block_histogram([0.0, 0.0, 1e-9, -1e-9, 0.5], 0.0) == [0, 0, 0, 1, 2, 1, 1, 0, 0]
    assert e0[4] == e0[5] == 0.0
    e5, _ = histogram_bins(0.5)
    assert e5 == [-np.inf, -3, -1, -0.5, 0.5, 1, 3, np.inf]


def test_repeated_and_unchanged_draws_run_once_with_the_same_ates(case):
    """A bank with many identical (background) blocks and an image with a background strip:
    each distinct perturbed image goes through the network once (screening and ATE draws
    share), a paste equal to the block it replaces costs no pass, and every ATE is still
    the reference loop's, which runs every draw."""
    model, img, roi, target, _gt, _bank = case
    img = img.copy()
    img[:, :16] = 0.0                                     # background: blocks of zeros
    bank = [np.where(np.arange(24)[:, None] < 12, 0.0, smooth((24, 24), s)).astype(np.float32) for s in (1, 2, 3)]
    n_screen, n_draws, seed, tau = 3, 12, 7, 0.02
    rows: list[torch.Tensor] = []
    hook = model.network.register_forward_pre_hook(lambda _m, a: rows.append(a[0].detach().clone()))
    try:
        e = explain(model, img, "pdcr", target=target, roi=roi, bank=bank, seed=seed, tau=tau,
                    n_screen=n_screen, n_draws=n_draws)
    finally:
        hook.remove()
    from seg_explain.bank import resolve_bank

    x = model.prepare(img).x
    blocks = resolve_bank(bank, model, B, seed=seed).for_block_size(B, seed)
    assert float(blocks.flatten(1).std(1).eq(0).float().mean()) > 0.3    # many identical blocks
    screen, ate = draw_indices(seed, len(blocks), e.extras["n_blocks"], n_screen, n_draws)
    want = reference_loop(model, x, roi, target, model.predict(img) == target, blocks, screen, ate, tau,
                          n_screen, n_draws)
    got = {tuple(b["index"]): b for b in e.extras["blocks"] if b["status"] != "roi"}
    assert set(got) == set(want) and sum(v != 0 for v in want.values()) > 0
    for idx, v in want.items():
        assert got[idx]["ate_points"] == pytest.approx(v, abs=1e-6), idx
    # every network row is a distinct image; the clean image went through once (M0)
    seen = torch.cat(rows).flatten(1)
    assert len(seen) == e.n_forward and torch.unique(seen, dim=0).shape[0] == len(seen)
    drawn = e.extras["n_perturbable"] * n_screen + e.extras["n_screened_in"] * n_draws
    assert e.extras["passes_reused"] == drawn - (e.n_forward - 1) > 0.3 * drawn
    assert "no pass" in e.extras["report"]
