"""Multi-channel inputs: PdCR and KernelSHAP replace / remove every channel of a block or a
supervoxel together and return one map per voxel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet, wrap

from seg_explain import InputMismatchError, explain


@pytest.fixture
def two_channel():
    return wrap(make_unet(2, in_channels=2, seed=5), 2, in_channels=2)


def test_multichannel_pdcr_and_kernel_shap_keep_channels(two_channel):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[12:20, 12:20] = True
    bank = [rng.standard_normal((2, 40, 40)).astype(np.float32) for _ in range(2)]
    e = explain(two_channel, x, "pdcr", target=1, roi=roi, bank=bank, block_size=8, n_screen=1, n_draws=2,
                tau=0.0)
    a = e.attribution
    blocks = a.reshape(4, 8, 4, 8)                 # one value per 8x8 block (both channels replaced together)
    assert np.array_equal(blocks, np.broadcast_to(blocks[:, :1, :, :1], blocks.shape))
    assert not a[roi].any()                        # RoI blocks are never perturbed
    ate = {tuple(k["index"]): k["ate_points"] for k in e.extras["blocks"] if k["status"] != "roi"}
    assert all(a[i * 8, j * 8] == pytest.approx(v) for (i, j), v in ate.items())
    ks = explain(two_channel, x, "kernel_shap", target=1, roi=roi, grid=2, n_samples=14)
    assert ks.attribution.shape == (32, 32) and ks.per_channel is None   # one feature spans both channels
    # removing a supervoxel removes both of its channels: Σφ = f̂(x) − f̂(both channels at their minimum)
    with torch.no_grad():
        def fh(a):
            return float(two_channel.network(torch.as_tensor(a)[None])[0, 1][torch.as_tensor(roi)].sum())
        base = np.stack([np.full((32, 32), x[0].min()), np.full((32, 32), x[1].min())]).astype(np.float32)
        assert sum(ks.extras["phi"]) == pytest.approx(fh(x) - fh(base), rel=1e-4, abs=1e-3)
    with pytest.raises(InputMismatchError, match="bank"):
        explain(two_channel, x, "pdcr", target=1, roi=roi, bank=[rng.standard_normal((40, 40)).astype(np.float32)])
