"""Progressive perturbation (progressive.py, PdCR paper §4.3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_explain import InputMismatchError, MethodError, explain
from seg_explain.explainers.roi_dice import make_blocks
from seg_explain.models import SegModel
from seg_explain.progressive import progressive_iter, progressive_perturbation

SHAPE = (40, 40)
# three planted causes, each switching off a share of the RoI when destroyed
CAUSES = {(0, 0): 0.6, (4, 0): 0.3, (0, 4): 0.1}


class Graded(torch.nn.Module):
    """RoI voxel v is foreground iff the cause block owning v still holds its planted
    value (mean > 3; bank blocks are in [0, 1]). Cause (0,0) owns 60 % of the RoI,
    (4,0) 30 %, (0,4) 10 %."""

    def __init__(self, roi):
        super().__init__()
        self.roi = torch.as_tensor(roi)
        flat = torch.nonzero(self.roi.flatten()).flatten()
        owner = torch.full(self.roi.shape, -1).flatten()
        n = len(flat)
        bounds = np.cumsum([0] + [int(round(s * n)) for s in CAUSES.values()])
        for j in range(len(CAUSES)):
            owner[flat[bounds[j]:bounds[j + 1]]] = j
        self.owner = owner.view(self.roi.shape)

    def forward(self, x):
        b = x.shape[0]
        fg = torch.zeros((b,) + tuple(x.shape[2:]), dtype=torch.bool)
        for j, (i, k) in enumerate(CAUSES):
            on = x[:, 0, 8 * i:8 * i + 8, 8 * k:8 * k + 8].flatten(1).mean(1) > 3
            fg |= (self.owner == j)[None] & on.view(b, 1, 1)
        logit = torch.where(fg, 1.0, -1.0)
        return torch.stack([-logit, logit], 1)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    img = rng.random(SHAPE).astype(np.float32)
    roi = np.zeros(SHAPE, bool)
    roi[18:30, 17:27] = True
    for (i, k) in CAUSES:
        img[8 * i:8 * i + 8, 8 * k:8 * k + 8] = 5.0
    model = SegModel(Graded(roi), spatial_dims=2, in_channels=1, class_names=["background", "fg"],
                     divisor=1, device="cpu")
    bank = [rng.random((24, 24)).astype(np.float32) for _ in range(2)]
    return model, img, roi, bank


def block_map(values: dict) -> np.ndarray:
    a = np.zeros(SHAPE, np.float32)
    for (i, k), v in values.items():
        a[8 * i:8 * i + 8, 8 * k:8 * k + 8] = v
    return a


def test_cause_first_gives_largest_drop(case):
    model, img, roi, bank = case
    good = block_map({(0, 0): 3.0, (4, 0): 2.0, (0, 4): 1.0})
    res = progressive_perturbation(model, img, good, target=1, roi=roi, bank=bank, n_draws=3)
    assert res.order[:3] == [0, 20, 4]           # block ids of (0,0), (4,0), (0,4) on a 5x5 grid
    # the drop after k blocks is 1 - Dice(kept, RoI) = 1 - 2 kept / (kept + 1)
    assert res.drops[0] == pytest.approx(1 - 2 * 0.4 / 1.4)
    assert res.drops[1] == pytest.approx(1 - 2 * 0.1 / 1.1)
    assert res.drops[0] == max(np.diff(np.r_[0.0, res.drops]))
    assert res.drops[2] == pytest.approx(1.0) and np.all(res.drops[2:] == res.drops[2])
    assert res.m0 == 1.0 and len(res.ks) == 10
    # the same map with the weakest cause first: smaller first step
    weak_first = block_map({(0, 4): 3.0, (4, 0): 2.0, (0, 0): 1.0})
    res2 = progressive_perturbation(model, img, weak_first, target=1, roi=roi, bank=bank, n_draws=3)
    assert res2.drops[0] < res.drops[0] and res2.score < res.score


def test_good_map_beats_random_maps(case):
    model, img, roi, bank = case
    good = block_map({(0, 0): 3.0, (4, 0): 2.0, (0, 4): 1.0})
    score = progressive_perturbation(model, img, good, target=1, roi=roi, bank=bank, n_draws=2).score
    rng = np.random.default_rng(5)
    rand = [progressive_perturbation(model, img, rng.normal(size=SHAPE).astype(np.float32), target=1,
                                     roi=roi, bank=bank, n_draws=2, k_max=10).score for _ in range(4)]
    assert score > np.mean(rand) + 1.0 and score > max(rand)


def test_pdcr_map_ranked_by_minus_ate(case):
    model, img, roi, bank = case
    exp = explain(model, img, "pdcr", target=1, roi=roi, bank=bank, n_draws=4)
    # strongest cause; PdCR maps are in Dice points
    assert exp.attribution[:8, :8].max() == pytest.approx(-100 * (1 - 2 * 0.4 / 1.4))
    res = progressive_perturbation(model, img, exp, bank=bank, n_draws=2)
    assert res.rank == "negative" and res.order[:3] == [0, 20, 4]
    # ranking a PdCR map by |value| would also work here, by +value would not
    res_pos = progressive_perturbation(model, img, exp.attribution, target=1, roi=roi, bank=bank,
                                       n_draws=2, rank="positive")
    assert res_pos.score < res.score


def test_gradient_like_map_abs_pooling_and_sign_free(case):
    model, img, roi, bank = case
    signed = block_map({(0, 0): -3.0, (4, 0): 2.0, (0, 4): -1.0})
    res = progressive_perturbation(model, img, signed, target=1, roi=roi, bank=bank, n_draws=2)
    assert res.rank == "abs" and res.order[:3] == [0, 20, 4]


def test_roi_blocks_never_perturbed_and_generator(case):
    model, img, roi, bank = case
    a = np.zeros(SHAPE, np.float32)
    a[roi] = 100.0                    # a map that puts everything on the RoI
    gen = progressive_iter(model, img, a, target=1, roi=roi, bank=bank, n_draws=2, batch_size=4)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as s:
            res = s.value
            break
    assert len(steps) > 2 and steps[-1][0] == steps[-1][1]
    grid = make_blocks(SHAPE, 8)
    for k in res.order:
        assert not roi[grid.slices(grid.indices()[k])].any()
    import json

    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d and len(d["drops"]) == 10   # JSON-safe, written as is


def test_bad_input(case):
    model, img, roi, bank = case
    with pytest.raises(InputMismatchError, match="attribution"):
        progressive_perturbation(model, img, np.zeros((5, 5)), target=1, roi=roi, bank=bank)
    with pytest.raises(MethodError):
        progressive_perturbation(model, img, np.zeros(SHAPE), target=1, roi=roi, bank=bank, rank="nope")
    with pytest.raises(MethodError):
        progressive_perturbation(model, img, np.zeros(SHAPE), roi=roi, bank=bank)


def test_zero_occlusion_one_draw_per_k_and_exact_drops(case):
    """bank="zero": the perturbed blocks are all 0 (mean < 3, so a cause is destroyed), every
    draw is the same, so one pass per k; the drops are the known ones."""
    model, img, roi, _ = case
    good = block_map({(0, 0): 3.0, (4, 0): 2.0, (0, 4): 1.0})
    res = progressive_perturbation(model, img, good, target=1, roi=roi, bank="zero", n_draws=7)
    assert res.n_forward == 10 and res.params["n_draws"] == 1 and res.params["occlusion"] == "zero"
    assert res.drops[0] == pytest.approx(1 - 2 * 0.4 / 1.4) and res.drops[2] == pytest.approx(1.0)
    assert "fraction" in res.unit and res.to_dict()["unit"] == res.unit


def test_parameters_checked_by_name(case):
    model, img, roi, bank = case
    a = np.zeros(SHAPE, np.float32)
    for kw, name in (({"k_max": 2.5}, "k_max"), ({"n_draws": 0}, "n_draws"), ({"rank": "best"}, "rank"),
                     ({"block_size": 7.9}, "block_size")):
        with pytest.raises(MethodError, match=name):
            progressive_perturbation(model, img, a, target=1, roi=roi, bank=bank, **kw)
    a[0, 0] = np.nan
    with pytest.raises(InputMismatchError, match="attribution map has 1 non-finite"):
        progressive_perturbation(model, img, a, target=1, roi=roi, bank=bank)
