"""PdCR (explainers/pdcr.py): planted causes in 2D and 3D, seeds, adaptive N, bad input.

ATEs and tau are in Dice points (0-100): a block that switches the whole RoI off has ATE -100."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet, wrap

from seg_explain import InputMismatchError, SegExplainError, explain, explain_iter
from seg_explain.bank import content_ids, resolve_bank
from seg_explain.explainers.pdcr import draw_indices
from seg_explain.explainers.roi_dice import make_blocks
from seg_explain.models import SegModel
from seg_explain.paths import sample_path


# ------------------------------------------------------------------ planted model --
class Planted(torch.nn.Module):
    """Foreground exactly on the RoI iff (a) the *cause* block still holds its planted
    value (mean > 3; bank blocks are in [0, 1]) and (b) the RoI content is untouched
    (every RoI voxel == 2), so any perturbation of the RoI would show. A *suppressor*
    block holding its planted value switches off the ``half`` part of the RoI.
    Every input row is recorded."""

    def __init__(self, roi, cause, suppressor=None, half=None):
        super().__init__()
        self.roi = torch.as_tensor(roi, dtype=torch.bool)
        self.cause, self.suppressor = cause, suppressor
        self.half = None if half is None else torch.as_tensor(half, dtype=torch.bool)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        b = x.shape[0]
        view = (b,) + (1,) * (x.ndim - 2)
        on = x[(slice(None), 0) + self.cause].flatten(1).mean(1) > 3
        on &= (x[:, 0][:, self.roi] == 2).all(1)
        fg = self.roi[None] & on.view(view)
        if self.suppressor is not None:
            sup = x[(slice(None), 0) + self.suppressor].flatten(1).mean(1) > 3
            fg = fg & ~(self.half[None] & sup.view(view))
        logit = torch.where(fg, 1.0, -1.0)
        return torch.stack([-logit, logit], 1)


def planted_case(shape, cause, suppressor=None, seed=0):
    """Image, irregular (disc) RoI and model; returns (model, net, image, roi, half)."""
    rng = np.random.default_rng(seed)
    img = rng.random(shape).astype(np.float32)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 for s in shape]
    roi = sum((g - c) ** 2 for g, c in zip(grids, centre)) <= (min(shape) / 5) ** 2
    half = roi & (grids[-1] < centre[-1])
    img[cause] = 5.0
    if suppressor is not None:
        img[suppressor] = 5.0
    img[roi] = 2.0
    net = Planted(roi, cause, suppressor, half).eval()   # eval: SegModel uses it as is (no copy)
    model = SegModel(net, spatial_dims=len(shape), in_channels=1, class_names=["background", "fg"],
                     divisor=1, device="cpu")
    return model, net, img, roi, half


def bank_for(shape, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.random(shape).astype(np.float32) for _ in range(n)]


def block_values(exp):
    return {tuple(b["index"]): b for b in exp.extras["blocks"]}


# ------------------------------------------------------------------------- 2D / 3D --
def test_planted_cause_2d_and_roi_untouched():
    shape = (44, 38)                      # not a multiple of 8: partial edge blocks
    cause = (slice(0, 8), slice(8, 16))   # block (0, 1)
    model, net, img, roi, _ = planted_case(shape, cause)
    exp = explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((32, 32)), n_draws=12)
    a = exp.attribution
    assert a.shape == shape and a.dtype == np.float32
    assert np.allclose(a[cause], -100.0)           # Dice points: the RoI is lost entirely
    mask = np.zeros(shape, bool)
    mask[cause] = True
    assert np.all(a[~mask] == 0)
    blocks = block_values(exp)
    assert blocks[(0, 1)]["status"] == "relevant" and blocks[(0, 1)]["n_draws"] == 12
    assert blocks[(0, 1)]["contribution"] == "positive"
    # RoI-overlapping blocks: status roi, never perturbed in any forward pass
    grid = make_blocks(shape, 8)
    roi_blocks = np.zeros(shape, bool)
    for idx in grid.indices():
        if roi[grid.slices(idx)].any():
            roi_blocks[grid.slices(idx)] = True
            assert blocks[idx]["status"] == "roi" and blocks[idx]["ate_points"] is None
    x0 = torch.from_numpy(img)
    rows = torch.cat(net.seen)[:, 0]
    assert rows.shape[0] == exp.n_forward
    assert torch.equal(rows[:, torch.from_numpy(roi_blocks)],
                       x0[torch.from_numpy(roi_blocks)].expand(rows.shape[0], -1))
    # every non-RoI block was perturbed at least once (screening)
    changed = (rows != x0).any(0).numpy()
    assert changed[~roi_blocks].mean() > 0.9
    # summary for the UI
    ex = exp.extras
    n_pert = ex["n_perturbable"]
    assert ex["n_blocks"] == len(grid) == 6 * 5
    assert ex["share_positive"] == pytest.approx(1 / n_pert) and ex["n_positive"] == 1
    assert ex["share_irrelevant"] == pytest.approx(1 - 1 / n_pert)
    # against its own prediction (M0 = 100) no block can raise the Dice: not "0 %", unknown
    assert ex["share_negative"] is None and ex["n_negative"] is None and ex["negative_measurable"] is False
    assert "not measurable without a reference segmentation" in ex["negative_note"]
    assert "not measurable" in ex["report"] and "0.0 %" not in ex["report"].split("Negative")[1].split("\n")[0]
    assert ex["ate_min_points"] == pytest.approx(-100.0) and ex["ate_max_points"] == 0.0
    assert ex["unit"] == "Dice points (0-100)" and ex["tau_points"] == 0.02
    assert ex["m0"] == 1.0 and ex["m0_points"] == 100.0 and ex["block_grid"]["grid_shape"] == [6, 5]
    assert ex["block_labels"].shape == shape and ex["block_labels"].max() == 30
    # one pass per distinct perturbed image: the cause's 12 ATE draws minus those whose
    # bank content its screening draws (or an earlier ATE draw) already pasted there
    bk = resolve_bank(bank_for((32, 32)), model, 8, seed=0, exclude=torch.from_numpy(img)[None])
    blocks8 = bk.for_block_size(8, 0)
    ids = content_ids(blocks8).tolist()
    screen_idx, ate_idx = draw_indices(0, len(blocks8), len(grid), 3, 12)
    k = grid.indices().index((0, 1))
    seen = {ids[i] for i in screen_idx[k].tolist()}
    new = {ids[i] for i in ate_idx[k].tolist()} - seen
    assert 0 < len(new) <= 12
    assert ex["n_forward_screen"] == 3 * n_pert and ex["n_forward_ate"] == len(new)
    assert exp.n_forward == 3 * n_pert + len(new) + 1   # + the clean pass
    assert "positive contribution" in ex["convention"] and exp.elapsed_s > 0
    # histogram: the cause in "< -3", every other perturbed block in the central bin, the
    # ATE > 0 bins unknown (None), not 0
    h = ex["histogram"]
    assert h["edges_points"] == [-np.inf, -3, -1, -0.3, -0.02, 0.02, 0.3, 1, 3, np.inf]
    assert h["counts"] == [1, 0, 0, 0, n_pert - 1, None, None, None, None]


def test_planted_cause_3d_with_improving_block():
    shape = (20, 18, 22)
    cause = (slice(0, 8), slice(0, 8), slice(8, 16))        # cube (0, 0, 1)
    supp = (slice(16, 20), slice(16, 18), slice(16, 22))    # partial edge cube (2, 2, 2)
    model, net, img, roi, half = planted_case(shape, cause, supp)
    gt = roi.astype(np.uint8)          # ground truth: the whole RoI is foreground
    exp = explain(model, img, "pdcr", target="fg", roi=roi, bank=bank_for((12, 12, 12), 2),
                  n_draws=10, reference=gt)
    r, h = roi.sum(), half.sum()
    m0 = 2 * (r - h) / (2 * r - h)
    assert exp.extras["m0"] == pytest.approx(m0)
    a = exp.attribution
    assert np.allclose(a[cause], -100 * m0)                 # cause: Dice -> 0 (points)
    assert np.allclose(a[supp], 100 * (1 - m0)) and 100 * (1 - m0) > 0.02   # replacing it improves the RoI
    other = np.ones(shape, bool)
    other[cause] = other[supp] = False
    assert np.all(a[other] == 0)
    b = block_values(exp)
    assert b[(2, 2, 2)]["contribution"] == "negative" and b[(2, 2, 2)]["size"] == [4, 2, 6]
    ex = exp.extras
    assert ex["negative_measurable"] is True and ex["negative_note"] is None
    assert ex["share_negative"] == ex["share_positive"] == pytest.approx(1 / ex["n_perturbable"])
    assert ex["ate_max_points"] == pytest.approx(100 * (1 - m0)) and ex["m0_points"] == pytest.approx(100 * m0)
    # 100 (1 - m0) = 20 points -> ">= 3"; -100 m0 -> "< -3"
    assert ex["histogram"]["counts"][0] == 1 and ex["histogram"]["counts"][-1] == 1


@pytest.mark.slow
def test_same_seed_identical_different_seed_correlates(sample_or_unet):
    model, img, roi, target, bank = sample_or_unet
    kw = dict(target=target, roi=roi, bank=bank, n_draws=50)
    e1 = explain(model, img, "pdcr", seed=0, **kw)
    e1b = explain(model, img, "pdcr", seed=0, **kw)
    e2 = explain(model, img, "pdcr", seed=1, **kw)
    assert np.array_equal(e1.attribution, e1b.attribution)
    assert np.abs(e1.attribution).max() > 5       # Dice points
    r = np.corrcoef(e1.attribution.ravel(), e2.attribution.ravel())[0, 1]
    assert r > 0.9, r


@pytest.mark.slow
def test_adaptive_close_to_full_with_fewer_passes(sample_or_unet):
    model, img, roi, target, bank = sample_or_unet
    kw = dict(target=target, roi=roi, bank=bank, n_draws=50, seed=0)
    full = explain(model, img, "pdcr", **kw)
    ada = explain(model, img, "pdcr", adaptive=True, **kw)
    r = np.corrcoef(full.attribution.ravel(), ada.attribution.ravel())[0, 1]
    assert r > 0.97, r
    assert ada.n_forward < 0.8 * full.n_forward       # a crop: every block is near the RoI
    drawn = lambda e: e.n_forward + e.extras["passes_reused"]   # noqa: E731  (passes without reuse)
    assert ada.extras["passes_saved"] == drawn(full) - drawn(ada) > 0
    assert ada.extras["adaptive_rel"] == 0.1 and ada.extras["adaptive_half_width_points"] > 0.02
    # the same draws (a prefix of the full run's), the same blocks relevant
    fb, ab = block_values(full), block_values(ada)
    for idx, b in ab.items():
        if b["n_draws"] == 50:
            assert b["ate_points"] == fb[idx]["ate_points"]
        assert (b["status"] == "roi") == (fb[idx]["status"] == "roi")


class Rare(torch.nn.Module):
    """The RoI is foreground unless block (0, 0) holds a *trigger* (mean > 8): a rare,
    large effect (-100 points) that only the trigger blocks of the bank cause."""

    def __init__(self, roi):
        super().__init__()
        self.roi = torch.as_tensor(roi)

    def forward(self, x):
        off = x[:, 0, :8, :8].flatten(1).mean(1) > 8
        fg = self.roi[None] & ~off.view(-1, 1, 1)
        logit = torch.where(fg, 1.0, -1.0)
        return torch.stack([-logit, logit], 1)


def test_adaptive_does_not_zero_a_rare_large_effect():
    """The old rule stopped a block after 10 ATE draws that were all 0 (variance 0) with
    ATE = 0. Here the screening sees the trigger, the first 10 ATE draws miss it and a few
    of the 50 hit it: the adaptive ATE must be the full-N one (-100 x hits / 50), not 0."""
    from seg_explain.explainers.pdcr import draw_indices

    shape, seed, n_bank = (24, 24), 3, 40
    roi = np.zeros(shape, bool)
    roi[12:20, 12:20] = True
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    model = SegModel(Rare(roi), spatial_dims=2, in_channels=1, class_names=["background", "fg"],
                     divisor=1, device="cpu")
    screen, ate = draw_indices(seed, n_bank, 9, 3, 50)
    trig = {int(screen[0, 0]), int(ate[0, 20]), int(ate[0, 35])}
    assert not trig & set(ate[0, :10].tolist())        # the first 10 ATE draws all miss it
    hits = sum(int(v) in trig for v in ate[0])
    assert hits >= 2 and sum(int(v) in trig for v in screen[0]) >= 1
    bank = np.random.default_rng(1).random((n_bank, 8, 8)).astype(np.float32)
    bank[sorted(trig)] = 10.0
    kw = dict(target=1, roi=roi, bank=[], n_draws=50, seed=seed)
    from seg_explain.bank import Bank

    kw["bank"] = Bank(torch.from_numpy(bank[:, None]))
    full = explain(model, img, "pdcr", **kw)
    ada = explain(model, img, "pdcr", adaptive=True, **kw)
    f0, a0 = block_values(full)[(0, 0)], block_values(ada)[(0, 0)]
    assert f0["ate_points"] == pytest.approx(-100 * hits / 50)
    assert a0["ate_points"] == pytest.approx(-100 * hits / 50) and a0["n_draws"] == 50
    # every other block never changes anything: screened out, no ATE draws at all
    assert all(b["n_draws"] == 0 for k, b in block_values(ada).items() if k != (0, 0))


def test_adaptive_draws_rule_is_unbiased_where_stopping_on_the_draws_is_not():
    """Simulated blocks whose ITE is -a with probability p (else 0), relevant when a
    screening draw hits. Draw counts from the screening only (adaptive_draws) leave the
    mean of the ATE draws unbiased; stopping on the ATE draws themselves (the old rule:
    rounds of 10, stop when the 95 % half-width < target) biases it towards 0."""
    from seg_explain.explainers.pdcr import adaptive_draws

    rng = np.random.default_rng(0)
    a, p, n_max, target = 50.0, 0.05, 50, 0.5
    k = 20000
    screen = -a * (rng.random((k, 3)) < p)
    keep = (screen != 0).any(1)                                   # passed screening
    draws = -a * (rng.random((k, n_max)) < p)
    n_new = adaptive_draws(torch.from_numpy(screen[keep]), target, 10, n_max).numpy()
    new = np.array([d[:n].mean() for d, n in zip(draws[keep], n_new)])
    old = []
    for d in draws[keep]:
        n = 10
        while n < n_max and 1.96 * d[:n].std(ddof=1) / np.sqrt(n) >= target:
            n += 10
        old.append(d[:n].mean())
    truth, se = -a * p, draws[keep].std() / np.sqrt(keep.sum() * 10)
    assert abs(new.mean() - truth) < 4 * se, (new.mean(), truth, se)
    assert np.mean(old) > truth + 8 * se, (np.mean(old), truth, se)      # pulled towards 0
    # known values: one screening hit of -50 with a 0.5-point target needs the maximum;
    # a block whose screening barely moved needs the minimum; no screening: the maximum
    n = adaptive_draws(torch.tensor([[-50.0, 0, 0], [0.0, 0, -0.1], [-5.0, -5, -5]]), 0.5, 10, 50)
    sd3 = float(np.std([-5, -5, -5, 0, -5], ddof=1))
    assert n.tolist() == [50, 10, min(50, int(np.ceil((1.96 * sd3 / 0.5) ** 2)))]
    assert adaptive_draws(torch.zeros(2, 0), 0.5, 10, 50).tolist() == [50, 50]


@pytest.fixture(scope="module")
def sample_or_unet():
    """The trained 2D sample model on a 48² crop of its sample slice around the shipped
    painted RoI (``colin27_axial_roi_frontal_L``, explained for class frontal_L) with the
    shipped bank, when it is installed; else a small random MONAI UNet on a smooth random
    image (RoI: a 12x10 rectangle explained for the majority class)."""
    from scipy import ndimage as ndi

    try:
        from seg_explain import load_image, load_model
        from seg_explain.bank import resolve_bank

        model = load_model(sample_path("models", "brain2d"), device="cpu")
        full = load_image(sample_path("brain2d", "colin27_axial_t1.tif")).data.astype(np.float32)
        roi = load_image(sample_path("brain2d", "colin27_axial_roi_frontal_L.tif")).data > 0
        crop = (slice(4, 52), slice(42, 90))
        return (model, np.ascontiguousarray(full[crop]), roi[crop], "frontal_L",
                resolve_bank(None, model, 8))
    except (SegExplainError, FileNotFoundError, OSError):
        pass
    model = wrap(make_unet(2, seed=3), 2)

    def smooth(shape, seed):
        r = np.random.default_rng(seed).random(shape)
        return ndi.gaussian_filter(r, 2).astype(np.float32) * 4

    img = smooth((40, 40), 0)
    pred = model.predict(img)
    roi = np.zeros((40, 40), bool)
    roi[14:26, 15:25] = True
    return model, img, roi, int(np.bincount(pred.ravel()).argmax()), [smooth((40, 40), s) for s in (1, 2, 3)]


# ------------------------------------------------------------------- generator etc --
def test_generator_yields_and_can_stop():
    model, net, img, roi, _ = planted_case((32, 32), (slice(0, 8), slice(0, 8)))
    gen = explain_iter(model, img, "pdcr", target=1, roi=roi, bank=bank_for((16, 16)), batch_size=4)
    steps = [next(gen) for _ in range(3)]
    assert all(0 <= d <= t for d, t in steps) and steps[-1][0] > 0
    n_before = len(net.seen)
    gen.close()
    assert len(net.seen) == n_before   # nothing runs after closing


def test_batch_size_does_not_change_the_map():
    model, _, img, roi, _ = planted_case((24, 24), (slice(16, 24), slice(0, 8)))
    bank = bank_for((16, 16))
    a = explain(model, img, "pdcr", target=1, roi=roi, bank=bank, n_draws=5, batch_size=3).attribution
    b = explain(model, img, "pdcr", target=1, roi=roi, bank=bank, n_draws=5, batch_size=64).attribution
    assert np.array_equal(a, b)


def test_sliding_windows_exact_on_roi_when_image_exceeds_patch():
    """Image > patch: only the RoI windows run, and the RoI Dice of each perturbed copy
    equals that of a full MONAI sliding-window pass of the perturbed image."""
    from seg_explain.bank import resolve_bank
    from seg_explain.explainers.base import make_context
    from seg_explain.explainers.roi_dice import RoIDiceEngine, reference_positive

    model = wrap(make_unet(2, seed=1), 2, patch=(32, 32))
    rng = np.random.default_rng(0)
    img = rng.random((64, 56)).astype(np.float32)
    roi = np.zeros((64, 56), bool)
    roi[4:10, 26:34] = True
    ctx, _, _ = make_context(model, img, 1, roi)
    grid = make_blocks(ctx.shape, 8)
    bank = resolve_bank([rng.random((32, 32)).astype(np.float32) for _ in range(2)], model, 8)
    eng = RoIDiceEngine(ctx, grid, bank.blocks, reference_positive(ctx, None), batch_size=5)
    # windows start at 0/24/32 (rows) and 0/24 (cols); the RoI lies in 2 of them
    assert eng.sliding and eng.n_windows == 2 and eng.m0 == 1.0
    assert torch.allclose(eng.clean_roi_logits, ctx.clean_logits.flatten(1)[:, ctx.roi.flatten()], atol=1e-5)
    ids = [k for k in range(len(grid)) if eng.reachable(k) and not ctx.roi[grid.slices(grid.indices()[k])].any()]
    assert len(ids) == 4 * 7 - 4                    # rows 0..31, all columns, minus the RoI blocks
    jobs = [[(k, 3 * k % len(bank))] for k in ids[:8]] + [[(ids[0], 1), (ids[-1], 2)]]
    got = torch.empty(len(jobs), dtype=torch.float64)
    list(eng.run(jobs, got))
    ref = ctx.clean_labels[ctx.roi] == 1
    for job, d in zip(jobs, got):
        x = ctx.x.clone()
        for blk, k in job:
            sl = grid.slices(grid.indices()[blk])
            x[(slice(None),) + sl] = bank.blocks[k]
        pred = model.labels_from_logits(model.logits_tensor(x))[ctx.roi] == 1
        want = 1.0 if pred.sum() + ref.sum() == 0 else float(2 * (pred & ref).sum() / (pred.sum() + ref.sum()))
        assert abs(float(d) - want) < 1e-6
    # through explain(): unreachable blocks are 0 and cost nothing
    exp = explain(model, img, "pdcr", target=1, roi=roi, bank=bank, n_screen=1, n_draws=2, tau=0.0)
    out = [b for b in exp.extras["blocks"] if b["outside_window"]]
    assert len(out) == 8 * 7 - 4 - len(ids) and all(b["ate_points"] == 0 and b["n_draws"] == 0 for b in out)
    assert np.all(exp.attribution[32:] == 0)
    assert exp.extras["sliding_windows"] and exp.extras["n_roi_windows"] == 2


# ----------------------------------------------------------------------- bad input --
@pytest.fixture
def small():
    model, _, img, roi, _ = planted_case((24, 24), (slice(0, 8), slice(0, 8)))
    return model, img, roi


def test_empty_roi(small):
    model, img, roi = small
    with pytest.raises(InputMismatchError, match="Empty RoI"):
        explain(model, img, "pdcr", target=1, roi=np.zeros_like(roi), bank=bank_for((16, 16)))


def test_roi_covering_everything(small):
    model, img, roi = small
    with pytest.raises(InputMismatchError, match="overlaps every block"):
        explain(model, img, "pdcr", target=1, roi=np.ones_like(roi), bank=bank_for((16, 16)))


def test_bank_with_wrong_channels(small):
    model, img, roi = small
    with pytest.raises(InputMismatchError, match="channel"):
        explain(model, img, "pdcr", target=1, roi=roi, bank=[np.zeros((2, 16, 16), np.float32)])


def test_block_larger_than_image(small):
    model, img, roi = small
    with pytest.raises(InputMismatchError, match="block_size 32 is larger"):
        explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((40, 40)), block_size=32)


def test_bad_parameters(small):
    model, img, roi = small
    bad = [({"n_draws": 0}, "n_draws"), ({"n_screen": -1}, "n_screen"), ({"tau": float("inf")}, "tau"),
           ({"tau": 101.0}, "tau"), ({"tau": -0.1}, "tau"), ({"tau": "two"}, "tau"),
           ({"block_size": 0}, "block_size"), ({"block_size": 7.9}, "block_size"),
           ({"n_draws": 12.5}, "n_draws"), ({"adaptive": "maybe"}, "adaptive"), ({"adaptive": 1.5}, "adaptive"),
           ({"adaptive": True, "n_screen": 0}, "n_screen"), ({"nonsense": 1}, "nonsense")]
    for kw, name in bad:
        with pytest.raises(SegExplainError, match=name):
            explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((16, 16)), **kw)
    # tau is in Dice points: 2.0 (2 points) is a valid, if coarse, threshold; text from the CLI works
    e = explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((16, 16)), tau="2", block_size="8.0",
                n_draws=2, adaptive="false")
    assert e.extras["tau_points"] == 2.0 and e.extras["block_grid"]["block_size"] == 8


def test_reference_shape_checked_and_paths(small, tmp_path):
    model, img, roi = small
    with pytest.raises(InputMismatchError, match="reference"):
        explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((16, 16)), reference=np.zeros((5, 5)))
    nan_ref = np.zeros(roi.shape)
    nan_ref[3, 4] = np.nan
    with pytest.raises(InputMismatchError, match="reference segmentation has 1 non-finite"):
        explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((16, 16)), reference=nan_ref)
    gt = roi.copy()
    gt[: gt.shape[0] // 2] = False          # half the RoI: M0 = 2/3
    np.save(tmp_path / "gt.npy", gt.astype(np.uint8))
    kw = dict(target=1, roi=roi, bank=bank_for((16, 16)), n_draws=2)
    a = explain(model, img, "pdcr", reference=gt, **kw)
    b = explain(model, img, "pdcr", reference=str(tmp_path / "gt.npy"), **kw)
    assert a.extras["m0"] == b.extras["m0"] == pytest.approx(2 * gt.sum() / (gt.sum() + roi.sum()))
    assert np.array_equal(a.attribution, b.attribution)


def test_bank_identical_to_image_refused(small):
    model, img, roi = small
    with pytest.raises(InputMismatchError, match="image being explained"):
        explain(model, img, "pdcr", target=1, roi=roi, bank=[bank_for((16, 16))[0], img.copy()])


def test_registry_entry_units_parsing_and_cost_estimate():
    """What the CLI help and the GUI read: units in Dice points, typed parsing, a cost
    estimate close to the passes a run makes (zero occlusion: one per block) and an upper
    bound with bank blocks."""
    from seg_explain.explainers.registry import cost_input, get_spec

    spec = get_spec("pdcr")
    assert spec.unit == "Dice points (0-100)" and spec.red_is_negative and spec.rank == "negative"
    tau = spec.param("tau")
    assert tau.unit == "Dice points" and tau.describe() == "tau=0.02 [0..100] Dice points"
    assert tau.parse("2") == 2.0 and spec.param("adaptive").parse("0.3") == 0.3
    assert spec.param("adaptive").parse("true") is True and spec.param("bank").parse("Zero") == "zero"
    for name, bad in (("tau", "inf"), ("block_size", "7.9"), ("adaptive", "2")):
        with pytest.raises(SegExplainError, match=f"pdcr: {name}"):
            spec.param(name).parse(bad, "pdcr")
    shape, cause = (44, 38), (slice(0, 8), slice(8, 16))
    model, _, img, roi, _ = planted_case(shape, cause)
    info = cost_input(model, shape, roi)
    e = explain(model, img, "pdcr", target=1, roi=roi, bank="zero")
    est = spec.estimate(info, {"bank": "zero"}).forward
    assert e.n_forward - 1 == e.extras["n_perturbable"] and abs(est - (e.n_forward - 1)) <= 0.3 * e.n_forward
    e = explain(model, img, "pdcr", target=1, roi=roi, bank=bank_for((16, 16)), n_draws=4)
    c = spec.estimate(info, {"n_draws": 4})
    assert e.n_forward - 1 + e.extras["passes_reused"] == 3 * e.extras["n_perturbable"] + 4 <= c.forward_max
    assert spec.cheaper({"adaptive": False, "block_size": 8}, 3) == {"adaptive": True, "block_size": 16}


def test_multichannel_pdcr_uses_both_channels_of_the_bank(two_channel):
    """A bank block replaces both channels of the image's block: the map is one ATE per block
    (in Dice points), and changing only the bank's second channel changes the ATEs."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[12:20, 12:20] = True
    bank = [rng.standard_normal((2, 40, 40)).astype(np.float32) for _ in range(2)]
    kw = dict(target=1, roi=roi, block_size=8, n_screen=1, n_draws=2, seed=0)
    e = explain(two_channel, x, "pdcr", bank=bank, **kw)
    a, labels = e.attribution, e.extras["block_labels"]
    assert a.shape == labels.shape == (32, 32) and np.isfinite(a).all()
    for b in np.unique(labels):                         # one value per block
        assert np.unique(a[labels == b]).size == 1
    assert np.abs(a).max() > 0 and np.abs(a).max() <= 100
    other = [np.stack([im[0], rng.standard_normal((40, 40)).astype(np.float32)]) for im in bank]
    assert not np.array_equal(explain(two_channel, x, "pdcr", bank=other, **kw).attribution, a)
    with pytest.raises(InputMismatchError, match="bank"):
        explain(two_channel, x, "pdcr", target=1, roi=roi, bank=[rng.standard_normal((40, 40)).astype(np.float32)])

