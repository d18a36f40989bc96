"""The cost the docks show before running: only what the RoI can reach, adaptive on its own."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import make_unet, wrap

from seg_explain import explain
from seg_explain.explainers.cost import estimate
from seg_explain.explainers.registry import block_reach, cost_input, get_spec
from seg_explain.windows import model_tiling


def _corner_case():
    model = wrap(make_unet(2), 2, patch=(16, 16))
    shape = (48, 40)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    roi = np.zeros(shape, bool)
    roi[2:7, 3:9] = True             # a corner: most of the image lies in no RoI window
    return model, shape, x, roi


def test_block_reach_counts_blocks_and_window_rows_like_an_independent_loop():
    """Reachable blocks and rows per draw, against a plain loop over blocks x RoI windows."""
    model, shape, _, roi = _corner_case()
    info = cost_input(model, shape, roi)
    tiling = model_tiling(model, shape)
    wins = [tiling.inner(w)[0] for w in tiling.windows]
    wins = [w for w in wins if roi[w].any()]
    b = 8
    n_reach = rows = n_roi = 0
    for i in range(0, shape[0], b):
        for j in range(0, shape[1], b):
            blk = (slice(i, min(i + b, shape[0])), slice(j, min(j + b, shape[1])))
            if roi[blk].any():
                n_roi += 1
                continue
            hits = sum(all(max(s.start, w.start) < min(s.stop, w.stop) for s, w in zip(blk, win)) for win in wins)
            n_reach += hits > 0
            rows += hits
    r = block_reach(info, b)
    assert (r.n_roi, r.n_reachable, r.rows) == (n_roi, n_reach, rows)
    assert r.n_reachable < r.n_perturbable          # the corner RoI does not see the whole image


def test_pdcr_estimate_equals_the_passes_a_windowed_run_makes():
    """Zero occlusion (one draw per block): the estimate is exact, blocks no RoI window sees
    cost nothing (the old model charged every perturbable block)."""
    model, shape, x, roi = _corner_case()
    e = explain(model, x, "pdcr", target=1, roi=roi, bank="zero", block_size=8)
    est = estimate(model, "pdcr", {"bank": "zero", "block_size": 8}, shape, roi)
    assert e.extras["n_outside_window"] > 0
    assert est.forward == e.n_forward            # both count the clean prediction as one pass
    # screening and draws: the run lies within the estimate's range
    rng = np.random.default_rng(1)
    bank = [rng.random(shape).astype(np.float32) for _ in range(3)]
    e = explain(model, x, "pdcr", target=1, roi=roi, bank=bank, block_size=8, n_screen=1, n_draws=2)
    est = estimate(model, "pdcr", {"bank": bank, "block_size": 8, "n_screen": 1, "n_draws": 2}, shape, roi)
    assert est.forward_min <= e.n_forward <= est.forward_max


def test_adaptive_has_its_own_estimate_and_the_warning_quotes_it():
    model, shape, _, roi = _corner_case()
    model.meta["pass_s"] = {"forward": 1e-2, "backward": 2e-2, "voxels": 256.0}   # a slow machine
    full = estimate(model, "pdcr", {"block_size": 8}, shape, roi)
    ada = estimate(model, "pdcr", {"block_size": 8, "adaptive": True}, shape, roi)
    assert ada.forward_min == full.forward_min and ada.forward_max == full.forward_max
    assert full.forward_min < ada.forward < 0.5 * full.forward
    assert full.cheaper == {"adaptive": True} and "adaptive=true would take about" in full.warning
    said = re.search(r"adaptive=true would take about ([\d.]+) (s|min|h)", full.warning)
    scale = {"s": 1, "min": 60, "h": 3600}[said.group(2)]
    assert abs(float(said.group(1)) * scale - ada.seconds) <= 0.05 * ada.seconds + 60
    assert ada.seconds < 0.5 * full.seconds


def test_long_runs_warn_even_without_a_cheaper_setting():
    model, shape, _, roi = _corner_case()
    model.meta["pass_s"] = {"forward": 1.0, "backward": 2.0, "voxels": 256.0}
    est = estimate(model, "gradient", {}, shape, roi)
    assert est.cheaper is None and est.warning.startswith("this may take about")
    assert get_spec("gradient").cheaper is None


def test_perturbed_copies_are_priced_at_the_batched_forward():
    """Forwards without a backward (perturbed copies, which methods batch) cost
    ``forward_batched``; gradient passes and the clean prediction cost batch-1 ``forward``."""
    model, shape, _, roi = _corner_case()
    ps = {"forward": 1e-3, "backward": 2e-3, "voxels": 256.0, "forward_batched": 4e-4}
    model.meta["pass_s"] = ps
    info = cost_input(model, shape, roi)
    wv, clean = info.window_voxels, info.n_windows_all
    pd = estimate(model, "pdcr", {"block_size": 8, "bank": "zero"}, shape, roi)
    copies = pd.forward - 1                          # (the estimate counts the clean prediction as one pass)
    assert pd.seconds == pytest.approx((copies * ps["forward_batched"] + clean * ps["forward"]) * wv)
    g = estimate(model, "gradient", {}, shape, roi)
    assert g.seconds == pytest.approx(((g.forward - 1) * ps["forward"] + g.backward * ps["backward"]
                                       + clean * ps["forward"]) * wv)
    del ps["forward_batched"]                        # measured before this probe existed: batch-1 price
    assert estimate(model, "pdcr", {"block_size": 8, "bank": "zero"}, shape, roi).seconds == pytest.approx(
        (copies * ps["forward"] + clean * ps["forward"]) * wv)


def test_measure_pass_times_probes_a_batch():
    from seg_explain.explainers.job import measure_pass_times

    model, *_ = _corner_case()
    ps = measure_pass_times(model, repeat=1)
    assert set(ps) == {"forward", "backward", "voxels", "forward_batched"}
    assert 0 < ps["forward_batched"] <= ps["forward"] and ps["voxels"] == 16 * 16


def test_kernel_shap_counts_window_passes_as_estimated():
    """A windowed image: every coalition runs every window (the blended output), and
    ``n_forward`` counts window passes as the estimate does (it used to count images)."""
    model, shape, x, roi = _corner_case()
    info = cost_input(model, shape, roi)
    assert info.n_windows_all > 1
    e = explain(model, x, "kernel_shap", target=1, roi=roi, n_samples=10)
    est = estimate(model, "kernel_shap", {"n_samples": 10}, shape, roi)
    assert e.n_forward == est.forward == (10 + 2) * info.n_windows_all + 1
