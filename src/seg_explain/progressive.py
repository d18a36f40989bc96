"""Progressive perturbation (PdCR paper §4.3): how faithful is an attribution map?

Given any method's attribution map (image grid), the image is cut into the PdCR block
grid (model grid), the map is pooled per block, the blocks are ranked, and the top-k
blocks (k = 1..``k_max``, default 10) are replaced *together* by random bank blocks
(``n_draws`` draws, seeded; the same draw of block j is reused for every k, common
random numbers, so the curve is smooth). The RoI Dice drop ``M_0 − mean Dice_k`` is
recorded per k. A faithful map puts the blocks the RoI depends on first, so its curve
rises fastest.

Pooling / ranking (``rank``):

- ``"abs"`` (default for every method but PdCR): mean |value| over the block's voxels,
  largest first (gradients, CAMs, SHAP: magnitude = importance);
- ``"negative"`` (``"auto"`` picks the method's registered ranking: this one for PdCR
  maps): mean of −value, largest first, i.e.
  the *most supportive* blocks first (PdCR's ATE < 0 = positive contribution);
- ``"positive"``: mean value, largest first.

Blocks overlapping the RoI are never perturbed (as in PdCR); ties are broken at random
(seeded). **Unit:** the drops are Dice as a *fraction* in [0, 1] (binary ``label == target``
masks restricted to the RoI, as in PdCR; multiply by 100 for the Dice points PdCR's ATEs are
given in). The **attribution score** is the area under the drop curve with a unit step per
block, ``Σ_k drop_k`` (Dice fraction × blocks); ``mean_drop`` = score / k_max.
``ProgressiveResult.unit`` says so.

``bank="zero"`` perturbs with zero occlusion (blocks set to 0 in model space); every draw
is then the same, so one draw per k is taken whatever ``n_draws`` says.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .checks import as_choice, as_int, require_finite
from .errors import InputMismatchError, MethodError

RANKS = ("auto", "abs", "negative", "positive")
UNIT = "Dice as a fraction (0-1); score = sum of drops over k (Dice x blocks)"


@dataclass
class ProgressiveResult:
    ks: np.ndarray                 # 1..k_max
    drops: np.ndarray              # M_0 − mean Dice after perturbing the top-k blocks
    dice: np.ndarray               # mean Dice after perturbing the top-k blocks
    m0: float
    score: float                   # area under the drop curve (Σ_k drop_k)
    rank: str
    order: list[int]               # block ids, most important first (top k_max)
    origins: list[list[int]]       # their origins on the model grid
    n_forward: int
    elapsed_s: float
    params: dict[str, Any] = field(default_factory=dict)
    unit: str = UNIT

    @property
    def mean_drop(self) -> float:
        return float(self.drops.mean()) if len(self.drops) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"ks": self.ks.tolist(), "drops": self.drops.tolist(), "dice": self.dice.tolist(),
                "m0": self.m0, "score": self.score, "mean_drop": self.mean_drop, "rank": self.rank,
                "order": self.order, "origins": self.origins, "n_forward": self.n_forward,
                "elapsed_s": self.elapsed_s, "unit": self.unit, **self.params}


def block_scores(attr_model: torch.Tensor, grid, rank: str) -> torch.Tensor:
    """Pool a model-grid map per block -> ``(n_blocks,)`` importance (higher = first)."""
    a = attr_model.double()
    if rank == "abs":
        return grid.pool(a.abs())
    if rank == "negative":
        return grid.pool(-a)
    if rank == "positive":
        return grid.pool(a)
    raise MethodError(f"rank must be one of {RANKS}, got {rank!r}")


def progressive_iter(model, image, attribution, target=None, roi=None, bank=None, block_size: int = 8,
                     k_max: int = 10, n_draws: int = 10, seed: int = 0, rank: str = "auto",
                     method: str | None = None, reference=None, batch_size: int | None = None
                     ) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`progressive_perturbation` (yields ``(done, total)``)."""
    from .bank import resolve_bank
    from .explainers.base import Explanation, make_context
    from .explainers.roi_dice import RoIDiceEngine, make_blocks, reference_positive

    t0 = time.perf_counter()
    if isinstance(attribution, Explanation):
        method = method or attribution.method
        target = attribution.target if target is None else target
        roi = attribution.roi if roi is None else roi
        attribution = attribution.attribution
    if target is None:
        raise MethodError("progressive perturbation needs the explained target class")
    rank = as_choice("rank", rank, RANKS, method="progressive perturbation")
    if rank == "auto":      # the method's registered ranking (PdCR: most negative ATE first)
        from .explainers.registry import REGISTRY, methods

        methods()
        rank = REGISTRY[method].rank if method in REGISTRY else "abs"
    k_max = as_int("k_max", k_max, lo=1, method="progressive perturbation")
    n_draws = as_int("n_draws", n_draws, lo=1, method="progressive perturbation")
    ctx, _, _ = make_context(model, image, target, roi, seed=seed, batch_size=batch_size)
    a = np.asarray(attribution, dtype=np.float32)
    if a.shape != tuple(ctx.prep.image_shape):
        raise InputMismatchError(
            f"attribution of shape {a.shape} does not match the image's spatial shape {tuple(ctx.prep.image_shape)}")
    require_finite(a, "The attribution map")
    a_model = torch.from_numpy(np.ascontiguousarray(ctx.prep.grid.to_model(a, order=1), dtype=np.float32))
    grid = make_blocks(ctx.shape, block_size)
    bk = resolve_bank(bank, model, grid.block_size, seed=seed, exclude=ctx.x)
    blocks = bk.for_block_size(grid.block_size, seed)
    if bk.deterministic:        # zero occlusion: every draw is the same block
        n_draws = 1
    engine = RoIDiceEngine(ctx, grid, blocks, reference_positive(ctx, reference), batch_size)

    in_roi = grid.pool(ctx.roi, "any").bool()
    scores = block_scores(a_model, grid, rank)
    g = ctx.generator()
    tie = torch.rand(len(grid), generator=g, dtype=torch.float64)
    cand = [k for k in range(len(grid)) if not in_roi[k]]
    if not cand:
        raise InputMismatchError("The RoI overlaps every block; nothing is left to perturb")
    order = sorted(cand, key=lambda k: (-float(scores[k]), float(tie[k])))[:k_max]
    k_max = len(order)
    draws = torch.randint(0, len(blocks), (n_draws, k_max), generator=g)

    jobs = [[(order[j], int(draws[t, j])) for j in range(k)] for k in range(1, k_max + 1)
            for t in range(n_draws)]
    res = torch.empty(len(jobs), dtype=torch.float64)
    f0 = ctx.n_forward
    yield 0, len(jobs)
    for d in engine.run(jobs, res):
        yield d, len(jobs)
    dice = res.reshape(k_max, n_draws).mean(1).numpy()
    drops = engine.m0 - dice
    return ProgressiveResult(
        np.arange(1, k_max + 1), drops, dice, engine.m0, float(drops.sum()), rank, order,
        [list(grid.origin(grid.indices()[k])) for k in order], ctx.n_forward - f0,
        time.perf_counter() - t0,
        {"method": method, "block_size": grid.block_size, "n_draws": n_draws, "seed": seed,
         "occlusion": "zero" if bk.kind == "zero" else "bank"})


def progressive_perturbation(model, image, attribution, target=None, roi=None, bank=None,
                             block_size: int = 8, k_max: int = 10, n_draws: int = 10, seed: int = 0,
                             rank: str = "auto", method: str | None = None, reference=None,
                             batch_size: int | None = None,
                             progress: Callable[[int, int], Any] | None = None) -> ProgressiveResult:
    """Progressive-perturbation curve and attribution score of any attribution map.

    ``attribution``: an :class:`~seg_explain.explainers.base.Explanation` (its method,
    target and RoI are used) or an image-grid array (then give ``target`` and ``roi``,
    and the method's name or ``rank="negative"`` for a PdCR map). ``bank``: as for
    PdCR (default: the shipped sample bank; ``"zero"`` for zero occlusion). Drops and score
    are in Dice as a fraction (``result.unit``). See the module docstring.
    """
    from .explainers.base import drive

    return drive(progressive_iter(model, image, attribution, target, roi, bank, block_size, k_max,
                                  n_draws, seed, rank, method, reference, batch_size), progress)
