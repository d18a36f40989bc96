"""nnU-Net's sliding windows: ``compute_steps_for_sliding_window`` and the float16 Gaussian
(``compute_gaussian``) its predictor blends with. :class:`NnUNetModel` windows and blends
with these (``seg_explain.models.nnunet_model``)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def nnunet_gaussian(patch: tuple[int, ...], sigma_scale: float = 1. / 8,
                    value_scaling_factor: float = 10) -> torch.Tensor:
    """nnU-Net's ``compute_gaussian`` (float16, as its predictor uses it)."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(patch)
    tmp[tuple(i // 2 for i in patch)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in patch], 0, mode="constant", cval=0)
    g /= (np.max(g) / value_scaling_factor)
    g = torch.from_numpy(g).to(dtype=torch.float16)
    mask = g == 0
    g[mask] = torch.min(g[~mask])
    return g


def sliding_window_steps(image_size, tile_size, tile_step_size: float) -> list[list[int]]:
    """nnU-Net's ``compute_steps_for_sliding_window``."""
    target = [i * tile_step_size for i in tile_size]
    num = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size)]
    steps = []
    for d in range(len(tile_size)):
        top = image_size[d] - tile_size[d]
        size = top / (num[d] - 1) if num[d] > 1 else 99999999999
        steps.append([int(np.round(size * i)) for i in range(num[d])])
    return steps
