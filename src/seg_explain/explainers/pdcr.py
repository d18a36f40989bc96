"""PdCR: Perturbation-driven Causal Reasoning (paper §3; METHODS.md "PdCR").

Causal effect of each block of the image on the segmentation quality of the RoI:

1. ``M_0 = Dice(ŷ(x)|_R, ref|_R)``; ``ref`` = the model's own clean prediction (default)
   or a reference segmentation, e.g. ground truth (``reference=``, image grid).
2. The (model-grid) image is cut into a grid of ``block_size`` blocks (cubes in 3D;
   partial blocks at the far edges). Blocks that overlap the RoI are never perturbed;
   their map value is 0 (the GUI draws the RoI outline there).
3. Screening: each other block is replaced ``n_screen`` times by a random bank block
   (cropped to the partial block's size at the edges);
   ``ITE = Dice(ŷ(x | do(x_p = b))|_R, ref|_R) − M_0``. ``max |ITE| < tau`` → irrelevant (0).
4. Otherwise ``ATE_p`` = mean ITE over ``n_draws`` fresh draws; as in the reference code,
   ``|ATE_p| < tau`` is irrelevant too (0; the unthresholded mean stays in the block table).

**Units: Dice points (0–100)**, as in the paper's tables and the reference code (which
computes Dice × 100). ``tau`` is in points (default 0.02 points = 2e-4 as a fraction, the
reference code's setting); the attribution map, ``extras`` (keys ending in ``_points``) and
the block table hold ATEs in points; ``extras["unit"]`` says so. Only ``extras["m0"]``
is a fraction in [0, 1] (``m0_points`` is the same in points). Dice is that of the binary
masks ``label == target`` restricted to the RoI voxels; empty-vs-empty is 1 (100 points).

**Sign convention** (stored raw, as the paper defines it): ``ATE < 0`` means replacing
the block *lowered* the RoI Dice, i.e. its content *supported* the RoI segmentation — a
**positive contribution**, shown red. ``ATE > 0`` (the segmentation got better without
the content) is a **negative contribution**, shown blue. 0 = irrelevant / RoI / not
reachable. ``progressive.py`` therefore ranks PdCR blocks by ``−ATE``.

**What PdCR can and cannot show.** With the default reference (the model's own clean
prediction) ``M_0 = 100`` points, so no replacement can raise the Dice and ATE ≤ 0 by
construction: negative contributions are *not measurable* without a reference
segmentation. ``extras["share_negative"]`` is then ``None`` (not 0) and
``extras["negative_measurable"]`` is False with a note; give ``reference=`` (a label map, a
file or a LoadedImage on the image grid) to measure them.

**Occlusion.** ``bank`` (see :mod:`seg_explain.bank`): real blocks from other images (the
paper), or ``bank="zero"`` for zero occlusion (blocks set to 0 in model space, i.e. in the
preprocessed network input; the reference code's ``zero_local`` ablation). Zero occlusion
is deterministic: one pass per block (``n_screen`` / ``n_draws`` do not apply; the one ITE
is the ATE, thresholded by ``tau``).

Deliberate differences from the reference code (``occlusion_sensitivity_optimized``),
following the paper / METHODS.md: partial blocks at the image edges are explained (the
reference code skips them); empty-vs-empty Dice is 1 (the reference code's epsilon makes it
0); any RoI shape (the reference code: a square); multi-class models (``argmax == target``;
the reference code: one sigmoid output > 0.5). Given the same draws, the ATEs of all full
blocks equal the reference loop's (``tests/test_pdcr_reference.py``).

Report (the reference code's statistics, in our words): ``extras["histogram"]`` counts the
perturbable blocks by ATE with the reference code's bins (edges −3, −1, −0.3, −tau, tau,
0.3, 1, 3 points; RoI blocks are not counted, unlike the reference code which puts them in
the central bin), and ``extras["report"]`` is a multi-line text (summary, histogram,
statistics) for the CLI and the GUI. :func:`write_blocks_csv` writes the block table.

Speed (the method's weak point: thousands of forward passes):

- perturbed copies of many blocks × draws go through the network together in one batch
  (the work list is flattened across blocks), under ``torch.inference_mode``;
- only the RoI voxels of the logits are read (argmax/threshold on the RoI only);
- the clean prediction ``ctx.clean_logits`` is reused for ``M_0`` and the reference;
- batch size: from memory on a GPU, ~2^17 voxels on a CPU; unless ``batch_size`` is given,
  the first batches try ½×, 1× and 2× of it and keep the fastest (results never depend on
  the batch size: draws are fixed per block before any pass);
- images larger than ``model.patch_size``: the model's own sliding-window inference
  (same windows, overlap and blending as ``model.logits``), restricted to the windows that
  hold RoI voxels; their clean outputs are computed once and each perturbed copy re-runs
  only the RoI windows that contain the perturbed block, swapping their weighted
  contribution in the blended RoI logits. This is *exact* (the RoI logits equal those of a
  full sliding-window pass of the perturbed image) at typically 1–2^D window passes per
  copy instead of all windows. Blocks that no RoI window contains cannot change the RoI prediction:
  they get 0 without any pass (flagged ``outside_window``). ``n_forward`` then counts
  window passes.

``adaptive=True`` (beyond the paper; see :func:`adaptive_draws`): a two-stage design. Each
block's number of ATE draws is fixed *from its screening draws alone*, before any ATE draw,
so the ATE (the mean of that many fresh draws) stays unbiased — a rule that stops on the
ATE draws themselves (e.g. "10 draws, all 0, variance 0: stop") pulls rare large effects
towards 0. ``n_k = clamp(ceil((1.96 s_k / h)^2), 10, n_draws)`` with ``s_k`` the standard
deviation of the block's screening ITEs together with two pseudo-draws (0 and its largest
screening effect), a floor that keeps any block with a large screening effect from being
measured with few draws, and the half-width target ``h = max(rel * R, tau)`` relative to
the map's range ``R`` (the largest |mean screening ITE| over the blocks); ``rel`` = 0.1 for
``adaptive=True`` or the float given (in (0, 1]). Needs ``n_screen >= 1``. The forward passes
saved are reported.

Extras of the Explanation: ``unit``, ``convention``, ``tau_points``, ``m0`` (fraction) and
``m0_points``, ``reference`` ("model prediction" or "given segmentation"),
``negative_measurable`` and ``negative_note``, ``share_positive`` / ``share_negative``
(``None`` when not measurable) / ``share_irrelevant`` and the counts ``n_positive`` /
``n_negative`` / ``n_irrelevant`` (over the perturbable blocks), ``ate_min_points`` /
``ate_max_points``, ``n_blocks`` / ``n_roi_blocks`` / ``n_perturbable`` / ``n_screened_in``
(went on to the N draws) / ``n_relevant`` (non-zero ATE) / ``n_below_tau`` /
``n_outside_window``, ``n_forward_screen`` / ``n_forward_ate`` / ``passes_saved`` (by
``adaptive``) / ``passes_reused`` (draws that gave an image already run, or the unchanged
image: no pass, see :mod:`~seg_explain.explainers.roi_dice`),
``adaptive_rel`` / ``adaptive_half_width_points``, ``occlusion`` ("bank" or "zero"),
``histogram``, ``report``, ``batch_size``, ``n_roi_windows``, ``blocks`` (per-block table:
id, index, origin, size, status, screened, screened_out, below_tau, outside_window,
screen_max_abs_ite_points, ate_points (the map value), ate_raw_points (before the tau
threshold), n_draws, ci95_points, contribution), ``block_grid`` (model-grid geometry) and
``block_labels`` (int32 image-grid map of block ids + 1, for drawing outlines).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..checks import as_bool, as_float, as_int
from ..errors import InputMismatchError, MethodError
from .base import Context
from .registry import Capabilities, Cost, CostInput, MethodSpec, Param, block_reach, register
from .roi_dice import RoIDiceEngine, make_blocks, reference_positive

UNIT = "Dice points (0-100)"
CONVENTION = ("ATE < 0: perturbing the block lowered the RoI Dice, so its content supported "
              "the RoI (positive contribution, red); ATE > 0: negative contribution (blue); "
              "ATE and tau in Dice points (0-100)")
NEGATIVE_NOTE = ("Negative contributions (ATE > 0) are not measurable without a reference "
                 "segmentation: against the model's own prediction M0 = 100 Dice points, so no "
                 "replacement can raise the Dice (give reference= a ground-truth label map)")
NEGATIVE_NOTE_M0 = ("Negative contributions (ATE > 0) cannot show: M0 = 100 Dice points against "
                    "the given reference, so no replacement can raise the Dice")
HIST_EDGES = (0.3, 1.0, 3.0)      # the reference code's histogram edges besides ±tau (points)
ADAPTIVE_MIN = 10                 # adaptive=True: fewest ATE draws per block
ADAPTIVE_REL = 0.1                 # adaptive=True: CI half-width target / the map's range
Z95 = 1.96


def draw_indices(seed: int, n_bank: int, n_blocks: int, n_screen: int, n_draws: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank draws PdCR uses: ``(screen (n_blocks, n_screen), ate (n_blocks, n_draws))``.

    Both come from one ``torch.Generator`` seeded with ``seed`` (screening first), fixed
    before any pass, so results never depend on batching and a re-implementation can be
    fed the very same draws (``tests/test_pdcr_reference.py``)."""
    g = torch.Generator().manual_seed(int(seed))
    screen = torch.randint(0, n_bank, (n_blocks, max(n_screen, 0)), generator=g)
    ate = torch.randint(0, n_bank, (n_blocks, max(n_draws, 0)), generator=g)
    return screen, ate


def adaptive_draws(screen_ite: torch.Tensor, half_width: float, n_min: int, n_max: int,
                   z: float = Z95) -> torch.Tensor:
    """Draws per block for ``adaptive=True``, fixed from the screening ITEs alone.

    ``screen_ite``: ``(K, S)`` screening ITEs (any unit; ``half_width`` in the same). The
    spread of each block is the sample standard deviation (ddof 1) of its S screening ITEs
    *plus two pseudo-draws*, 0 and its largest-magnitude screening ITE: a floor that is
    large whenever the block showed a large effect, even if every screening draw agreed
    (three draws easily miss a rare second value). ``n = ceil((z s / h)^2)`` clamped to
    ``[n_min, n_max]`` (a CI half-width of about ``h`` if ``s`` were the true spread).
    Because ``n`` never depends on the ATE draws, the mean of the ``n`` fresh ATE draws is
    an unbiased estimate of the block's ATE."""
    x = screen_ite.double()
    k = x.shape[0]
    if x.shape[1] == 0:
        return torch.full((k,), int(n_max), dtype=torch.long)
    ext = x.gather(1, x.abs().argmax(1, keepdim=True))
    aug = torch.cat([x, torch.zeros(k, 1, dtype=x.dtype), ext], 1)
    sd = aug.std(1, unbiased=True)
    if half_width <= 0:
        return torch.full((k,), int(n_max), dtype=torch.long)
    n = torch.ceil((z * sd / half_width) ** 2)
    return n.clamp(min(n_min, n_max), n_max).long()


def histogram_bins(tau: float) -> tuple[list[float], list[str]]:
    """The reference code's histogram bins of block ATEs (points): edges and labels.

    Edges ``-inf, -3, -1, -0.3, -tau, tau, 0.3, 1, 3, inf`` (those of ±0.3/±1/±3 within
    ``tau`` are dropped when ``tau >= 0.3``); bins are ``[lo, hi)`` except the last (as
    ``numpy.histogram``); with ``tau = 0`` the central bin holds exactly the zeros."""
    outer = [e for e in HIST_EDGES if e > tau]
    edges = [-math.inf] + [-e for e in reversed(outer)] + [0.0 - tau, tau] + outer + [math.inf]
    f = lambda v: f"{v:g}"      # noqa: E731
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo == -math.inf:
            labels.append(f"< {f(hi)}")
        elif hi == math.inf:
            labels.append(f">= {f(lo)}")
        elif lo == -tau and hi == tau:
            labels.append(f"{f(lo)} to {f(hi)} (irrelevant)" if tau > 0 else "0 (irrelevant)")
        else:
            labels.append(f"{f(lo)} to {f(hi)}")
    return edges, labels


def block_histogram(values_points, tau: float) -> list[int]:
    """Counts of ``values_points`` in :func:`histogram_bins` (equals ``numpy.histogram``
    with those edges whenever ``tau > 0``)."""
    v = np.asarray(values_points, dtype=np.float64).ravel()
    edges, _ = histogram_bins(tau)
    counts = []
    last = len(edges) - 2
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        if tau == 0 and lo == hi == 0:
            m = v == 0
        elif tau == 0 and lo == 0:
            m = (v > 0) & (v < hi)
        else:
            m = (v >= lo) & ((v <= hi) if i == last else (v < hi))
        counts.append(int(m.sum()))
    return counts


def _pct(n: int | None, d: int) -> str:
    return "not measurable" if n is None else f"{n} ({100 * n / max(d, 1):.1f} %)"


def format_report(ex: dict, target_name: str = "") -> str:
    """The human-readable PdCR report (summary, histogram, statistics) from its extras."""
    tau = ex["tau_points"]
    n = ex["n_perturbable"]
    against = ("the given reference segmentation" if ex["reference"] == "given segmentation"
               else "the model's own prediction")
    lines = [
        f"PdCR{f' for {target_name!r}' if target_name else ''}: {ex['n_blocks']} blocks of "
        f"{ex['block_grid']['block_size']} px, {n} perturbed ({ex['n_roi_blocks']} overlap the RoI "
        "and are not); all values in Dice points (0-100)",
        f"Occlusion: {ex['occlusion_text']}",
        f"M0 (RoI Dice before perturbation) = {ex['m0_points']:.2f} points against "
        f"{against}",
        f"tau = {tau:g} points (|ATE| < tau counts as irrelevant, at screening and for the final ATE)",
        f"Positive contributions (ATE < 0, red: the content supported the RoI): {_pct(ex['n_positive'], n)}",
        f"Negative contributions (ATE > 0, blue: the RoI got better without it): {_pct(ex['n_negative'], n)}",
        f"Irrelevant (|ATE| < tau, screened out or outside the RoI's windows): {_pct(ex['n_irrelevant'], n)}",
    ]
    if not ex["negative_measurable"]:
        lines.append(f"  Note: {ex['negative_note']}")
    lines.append(f"ATE range: {ex['ate_min_points']:.3f} to {ex['ate_max_points']:.3f} points")
    fwd = (f"Forward passes: {ex['n_forward_screen'] + ex['n_forward_ate']} (screening "
           f"{ex['n_forward_screen']}, ATE {ex['n_forward_ate']})")
    if ex.get("passes_reused"):
        fwd += f"; {ex['passes_reused']} draws repeated an image already run (or left it unchanged): no pass"
    if ex.get("adaptive_rel"):
        fwd += (f"; adaptive draws (half-width target {ex['adaptive_half_width_points']:.3g} points) "
                f"saved {ex['passes_saved']}")
    lines.append(fwd)
    h = ex["histogram"]
    lines.append(f"Histogram of block ATEs (points; {n} perturbed blocks):")
    w = max(len(s) for s in h["labels"])
    for lab, c in zip(h["labels"], h["counts"]):
        lines.append(f"  {lab.ljust(w)}  {'n/a' if c is None else c}")
    return "\n".join(lines)


CSV_COLUMNS = ("id", "index", "origin", "size", "status", "contribution", "ate_points",
               "ate_raw_points", "ci95_points", "n_draws", "screen_max_abs_ite_points",
               "screened_out", "below_tau", "outside_window")


def write_blocks_csv(explanation, path):
    """Write PdCR's per-block table (ATEs in Dice points) to ``path`` as CSV.

    ``explanation``: a PdCR Explanation or its ``extras``. Index/origin/size are
    ``;``-joined model-grid voxel coordinates. Returns the path written."""
    from ..files import write_csv

    ex = explanation if isinstance(explanation, dict) else explanation.extras
    rows = [{c: (";".join(str(i) for i in b.get(c)) if isinstance(b.get(c), list) else b.get(c))
             for c in CSV_COLUMNS} for b in ex["blocks"]]
    return write_csv(path, rows, CSV_COLUMNS)   # atomic; None -> empty cell


def _adaptive_rel(adaptive) -> float:
    """0 (off), ADAPTIVE_REL (True) or the float given, in (0, 1]."""
    if adaptive is None:
        return 0.0
    try:
        return ADAPTIVE_REL if as_bool("adaptive", adaptive, "pdcr") else 0.0
    except MethodError:
        pass
    try:
        return as_float("adaptive", adaptive, lo=0.0, hi=1.0, lo_open=True, method="pdcr")
    except MethodError:
        raise MethodError(
            "pdcr: adaptive must be true/false or the CI half-width target as a fraction of the "
            f"map's range, in (0, 1], got {adaptive!r}") from None


# ----------------------------------------------------------------------- explainer --
def pdcr(ctx: Context, bank=None, block_size: int = 8, n_screen: int = 3, n_draws: int = 50,
         tau: float = 0.02, reference=None, adaptive=False):
    """PdCR map on the model grid, in Dice points (see the module docstring).

    The registry parses the parameters first (:data:`SPEC`); they are checked again here so
    that a direct call is just as safe."""
    from ..bank import resolve_bank

    t0 = time.perf_counter()
    n_screen = as_int("n_screen", n_screen, lo=0, method="pdcr")
    n_draws = as_int("n_draws", n_draws, lo=1, method="pdcr")
    tau = as_float("tau", tau, lo=0.0, hi=100.0, method="pdcr")   # Dice points
    block_size = as_int("block_size", block_size, lo=1, method="pdcr")
    rel = _adaptive_rel(adaptive)

    grid = make_blocks(ctx.shape, block_size)
    bk = resolve_bank(bank, ctx.model, grid.block_size, seed=ctx.seed, exclude=ctx.x)
    blocks = bk.for_block_size(grid.block_size, ctx.seed)
    deterministic = bk.deterministic
    if deterministic:          # zero occlusion: every draw is the same, one pass says it all
        n_screen, n_draws, rel = 0, 1, 0.0
    if rel > 0 and n_screen < 1:
        raise MethodError("pdcr: adaptive=True sizes each block's draws from its screening draws; "
                          "use n_screen >= 1")
    ref_pos = reference_positive(ctx, reference)
    engine = RoIDiceEngine(ctx, grid, blocks, ref_pos, ctx.batch_size)
    m0 = engine.m0
    m0_pts = 100.0 * m0

    in_roi = grid.pool(ctx.roi, "any").bool()
    ids = [k for k in range(len(grid)) if not in_roi[k]]
    if not ids:
        raise InputMismatchError(
            "The RoI overlaps every block, so nothing is left to perturb; paint a smaller RoI or use "
            "a smaller block_size")
    reach = [k for k in ids if engine.reachable(k)]

    n_bank = len(blocks)
    screen_idx, ate_idx = draw_indices(ctx.seed, n_bank, len(grid), n_screen, n_draws)

    done = 0
    total = len(reach) * (n_screen + n_draws)
    yield done, total
    f_start = ctx.n_forward

    # --- 1. screening: S draws per block, all blocks packed together (ITEs in points) ---
    screen_max = torch.zeros(len(grid), dtype=torch.float64)
    screen_ite = torch.zeros(len(grid), max(n_screen, 0), dtype=torch.float64)
    if n_screen > 0 and reach:
        jobs = [[(k, int(screen_idx[k, s]))] for k in reach for s in range(n_screen)]
        res = torch.empty(len(jobs), dtype=torch.float64)
        for d in engine.run(jobs, res):
            yield done + d, total
        done += len(jobs)
        screen_ite[reach] = (100.0 * res - m0_pts).reshape(len(reach), n_screen)
        screen_max[reach] = screen_ite[reach].abs().max(1).values
        screened_in = [k for k in reach if float(screen_max[k]) >= tau]
    else:
        screened_in = list(reach)
    n_forward_screen = ctx.n_forward - f_start

    # --- 2. ATE over N fresh draws (adaptive: per-block N fixed from the screening) -----
    n_of = torch.zeros(len(grid), dtype=torch.long)
    half_width = 0.0
    if screened_in:
        if rel > 0:
            x = screen_ite[screened_in]
            span = float(x.mean(1).abs().max())          # the map's range, from the screening
            half_width = max(rel * span, tau)
            n_of[screened_in] = adaptive_draws(x, half_width, ADAPTIVE_MIN, n_draws)
        else:
            n_of[screened_in] = n_draws
    total = done + int(n_of.sum())
    yield done, total
    jobs, owner = [], []
    for k in screened_in:
        for t in range(int(n_of[k])):
            jobs.append([(k, int(ate_idx[k, t]))])
            owner.append(k)
    sums = torch.zeros(len(grid), dtype=torch.float64)
    sq = torch.zeros(len(grid), dtype=torch.float64)
    if jobs:
        res = torch.empty(len(jobs), dtype=torch.float64)
        for d in engine.run(jobs, res):
            yield done + d, total
        done += len(jobs)
        ite = 100.0 * res - m0_pts
        own = torch.tensor(owner)
        sums.index_add_(0, own, ite)
        sq.index_add_(0, own, ite * ite)
    n_forward_ate = ctx.n_forward - f_start - n_forward_screen

    # --- 3. map + summary ----------------------------------------------------------
    cnt = n_of.clamp_min(1).double()
    raw = torch.where(n_of > 0, sums / cnt, torch.zeros_like(sums))
    var = torch.where(n_of > 1, (sq / cnt - raw * raw).clamp_min(0) * cnt / (cnt - 1).clamp_min(1),
                      torch.zeros_like(sums))
    ci = Z95 * torch.sqrt(var / cnt)
    ate = torch.where(raw.abs() < tau, torch.zeros_like(raw), raw)     # as the reference code
    attr = grid.paint(ate.tolist())

    sin = set(screened_in)
    reach_set = set(reach)
    table = []
    for k, idx in enumerate(grid.indices()):
        roi_b = bool(in_roi[k])
        a = None if roi_b else float(ate[k])
        below = (not roi_b) and k in sin and a == 0
        table.append({
            "id": k, "index": list(idx), "origin": list(grid.origin(idx)), "size": list(grid.size(idx)),
            "status": "roi" if roi_b else ("relevant" if a != 0 else "irrelevant"),
            "screened": (not roi_b) and k in reach_set and n_screen > 0,
            "screened_out": (not roi_b) and k in reach_set and k not in sin,
            "below_tau": below,
            "outside_window": (not roi_b) and k not in reach_set,
            "screen_max_abs_ite_points": None if roi_b or n_screen == 0 or k not in reach_set
            else float(screen_max[k]),
            "ate_points": a, "ate_raw_points": float(raw[k]) if k in sin else None,
            "n_draws": int(n_of[k]), "ci95_points": float(ci[k]) if n_of[k] > 1 else None,
            "contribution": None if roi_b else ("positive" if a < 0 else "negative" if a > 0 else "none"),
        })
    vals = ate[ids]
    n_ids = len(ids)
    n_pos = int((vals < 0).sum())
    n_neg = int((vals > 0).sum())
    given = reference is not None
    measurable = given and m0 < 1.0
    note = None if measurable else (NEGATIVE_NOTE if not given else NEGATIVE_NOTE_M0)
    edges, labels = histogram_bins(tau)
    counts: list = block_histogram(vals.numpy(), tau)
    if not measurable:     # ATE > 0 cannot occur: a "0" there would read like a finding
        central = edges.index(-tau)
        counts = [c if i <= central else None for i, c in enumerate(counts)]
    saved = sum((n_draws - int(n_of[k])) * engine.cost([(k, 0)]) for k in screened_in)
    extras = {
        "unit": UNIT, "convention": CONVENTION, "tau_points": tau, "m0": m0, "m0_points": m0_pts,
        "reference": "given segmentation" if given else "model prediction",
        "negative_measurable": measurable, "negative_note": note,
        "share_positive": n_pos / n_ids, "share_negative": n_neg / n_ids if measurable else None,
        "share_irrelevant": (n_ids - n_pos - n_neg) / n_ids,
        "n_positive": n_pos, "n_negative": n_neg if measurable else None, "n_irrelevant": n_ids - n_pos - n_neg,
        "ate_min_points": float(vals.min()), "ate_max_points": float(vals.max()),
        "n_blocks": len(grid), "n_roi_blocks": int(in_roi.sum()), "n_perturbable": n_ids,
        "n_screened_in": len(screened_in), "n_relevant": n_pos + n_neg,
        "n_below_tau": sum(1 for b in table if b["below_tau"]),
        "n_outside_window": n_ids - len(reach),
        "n_forward_screen": n_forward_screen, "n_forward_ate": n_forward_ate,
        "passes_saved": int(saved), "passes_reused": engine.rows_reused,
        "adaptive_rel": rel, "adaptive_half_width_points": half_width,
        "occlusion": "zero" if bk.kind == "zero" else "bank", "occlusion_text": bk.describe(),
        "deterministic_bank": deterministic, "batch_size": engine.batch_size,
        "sliding_windows": engine.sliding, "n_roi_windows": engine.n_windows,
        "bank": repr(bk), "bank_size": n_bank,
        "histogram": {"edges_points": edges, "labels": labels, "counts": counts,
                      "counted": "perturbed blocks (RoI blocks excluded), one count per block"},
        "blocks": table, "block_grid": grid.info(),
        "block_labels": ctx.prep.to_image(grid.labels(), order=0).astype(np.int32),
    }
    extras["report"] = format_report(extras, ctx.model.class_names[ctx.target])
    extras["pdcr_seconds"] = time.perf_counter() - t0
    return attr, extras


# ------------------------------------------------------------------------ registry --
def adaptive_draws_expected(n_draws: int, rel: float) -> float:
    """Draws per screened-in block that ``adaptive`` is expected to take (cost estimates).

    :func:`adaptive_draws` takes ``ceil((z s / h)^2)`` clamped to ``[ADAPTIVE_MIN, n_draws]``
    with ``h = rel x`` the map's range: every block but those with the largest effects sits
    at the floor (sample cases, ``rel = 0.1``: 11.9 draws per block of at most 50); the part
    above the floor grows as ``1 / rel^2``."""
    lo = min(ADAPTIVE_MIN, n_draws)
    return float(min(n_draws, lo + 0.05 * (n_draws - lo) * (ADAPTIVE_REL / max(rel, 1e-6)) ** 2))


def _cost(info: CostInput, p: dict) -> Cost:
    """Forward passes: S screening draws on every block the RoI's windows see, then N ATE
    draws (adaptive: :func:`adaptive_draws_expected`) on each block that passes screening;
    a draw costs one pass per RoI window holding the block (one when the image fits the
    network), plus one clean pass per RoI window when the image is windowed; blocks no RoI
    window sees cost nothing. A draw that repeats a block's earlier image costs nothing
    (:mod:`~seg_explain.explainers.roi_dice`): with the shipped sample bank, whose
    background blocks are identical, the count is the expected number of distinct draws
    (:func:`~seg_explain.bank.expected_distinct` over
    :func:`~seg_explain.bank.default_bank_groups`); other banks count every draw (an upper
    bound). Data-dependent: the expected count assumes every reachable block passes
    screening (the sample RoIs: 146 of 150 at the default tau); ``forward_min`` = none
    does (screening only)."""
    from ..bank import default_bank_groups, expected_distinct

    b = int(p.get("block_size") or 8)
    reach = block_reach(info, b)
    rows = reach.rows
    clean = info.n_windows if info.n_windows_all > 1 else 0    # the RoI windows' clean outputs
    bank = p.get("bank")
    if str(bank).lower() == "zero":
        return Cost(clean + rows, 0, note="zero occlusion: one pass per block the RoI's windows see")
    s_, n_ = int(p.get("n_screen", 3)), int(p.get("n_draws", 50))
    rel = _adaptive_rel(p.get("adaptive"))
    n_eff = adaptive_draws_expected(n_, rel) if rel > 0 and s_ > 0 else float(n_)
    groups = default_bank_groups(info.spatial_dims, b) if bank in (None, "") else ()
    note = "data-dependent: blocks screened out at tau skip their ATE draws"
    if groups:
        note += "; repeated draws of the sample bank's identical (background) blocks cost no pass"

    def draws(n: float) -> float:
        return expected_distinct(groups, n) if groups else n
    screen = clean + round(draws(s_) * rows)
    return Cost(clean + round(draws(s_ + n_eff) * rows), 0, forward_max=clean + round(draws(s_ + n_) * rows),
                forward_min=screen if s_ > 0 else clean + round(draws(n_eff) * rows), note=note)


def _cheaper(p: dict, spatial_dims: int) -> dict:
    out: dict = {}
    if not _adaptive_rel(p.get("adaptive")):
        out["adaptive"] = True
    if spatial_dims == 3 and int(p.get("block_size") or 8) < 16:
        out["block_size"] = 16
    return out


SPEC = register(MethodSpec(
    "pdcr", pdcr, title="PdCR (causal blocks)", source="PdCR, arXiv 2602.20511",
    question="which image blocks cause the RoI's segmentation: the average change of the RoI's Dice when a "
             "block outside it is replaced by real blocks from other images (coarse-to-fine screening)",
    params=(
        Param("bank", "bank", None, "replacement blocks: none = the shipped sample bank; 'zero' = zero "
              "occlusion (0 in the model's preprocessed input); or a folder / .npz / list of images"),
        Param("block_size", "int", 8, "block edge (cubes in 3D)", lo=1, hi=1024, unit="voxels",
              gui_default_3d=16),
        Param("n_screen", "int", 3, "screening draws per block (S)", lo=0, hi=10_000),
        Param("n_draws", "int", 50, "draws per relevant block for its ATE (N)", lo=1, hi=100_000),
        Param("tau", "float", 0.02, "relevance threshold: a block whose screening |ITE|s or whose |ATE| stay "
              "below tau counts as irrelevant (0.02 points = the reference code)", lo=0.0, hi=100.0,
              unit="Dice points"),
        Param("reference", "label_map", None, "reference segmentation (e.g. ground truth) for the RoI Dice; "
              "none = the model's own prediction (then M0 = 100 points and negative contributions are not "
              "measurable)"),
        Param("adaptive", "bool_or_fraction", False, "fix each block's number of draws from its screening "
              "draws (true: CI half-width 0.1 x the map's range; or that fraction), unbiased, ~0.3x the passes",
              gui_default_3d=True)),
    caps=Capabilities(dims=(2, 3), gradients=False, hooks=False, multiclass=False, map_kind="block"),
    unit=UNIT,
    positive="blocks whose replacement raised {cls}'s RoI Dice (negative contribution; only measurable "
             "against a reference segmentation)",
    negative="blocks whose content supports {cls}'s RoI (replacing them lowers its Dice)",
    red_is_negative=True,
    # against the model's own prediction M0 = 100 points: no replacement can raise the Dice, ATE <= 0
    one_sided=lambda p: p.get("reference") is None,
    summary_fields=("m0_points", "tau_points", "share_positive", "share_negative", "share_irrelevant",
                    "n_relevant", "ate_min_points", "ate_max_points", "passes_saved"),
    rank="negative", cost=_cost, cheaper=_cheaper, cost_class="expensive"))
