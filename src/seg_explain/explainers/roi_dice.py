"""The RoI-Dice engine the perturbation methods share (PdCR, progressive perturbation).

A *job* replaces some blocks of the prepared image by bank blocks (``do(x_p = block)``);
the engine runs the network on the perturbed image *as the model runs it* — its own
windows, blending weights and padding, asked of the model
(:meth:`SegModel.tiling <seg_explain.models.segmodel.SegModel.tiling>`,
:meth:`~seg_explain.models.segmodel.SegModel.window_weights`,
:meth:`~seg_explain.models.segmodel.SegModel.pads_for`) — and returns the Dice of the
RoI's ``label == target`` against a reference. The clean RoI logits are the model's own
output (``model.logits_tensor``), so with nothing replaced the Dice against the model's own
prediction is 100 points by construction.

Identical copies are run once. Two draws that paste the same content into the same block
give the same perturbed image, so the same Dice: the engine keys each job by *what it
pastes* (bank blocks with identical voxels share one key, :func:`seg_explain.bank.content_ids`), drops
pastes that leave the image unchanged (a bank block equal to the block it replaces), and
runs each distinct perturbed image once per engine, screening and ATE draws alike; a job
that changes nothing gets the model's own clean Dice without a pass. Exact (every job's
Dice is the one its own image gives), and large on real banks: the shipped sample banks
are drawn from whole slices and volumes, so many blocks are background (the 2D bank: 907
of 2000 blocks are all 0), and every draw of one of them into a block is the same image.

:class:`BlockPartition` is the regular block grid both methods perturb.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F

from ..bank import content_ids
from ..checks import as_int, require_finite
from ..errors import InputMismatchError, MethodError
from .base import Context


# ------------------------------------------------------------------------------ grid --
@dataclass
class BlockPartition:
    """A regular grid of blocks over a model-grid shape (partial blocks at the far edges)."""

    shape: tuple[int, ...]
    block_size: int

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / self.block_size) for s in self.shape)

    def __len__(self) -> int:
        return int(np.prod(self.grid_shape))

    def indices(self) -> list[tuple[int, ...]]:
        return list(product(*[range(g) for g in self.grid_shape]))

    def origin(self, idx: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(i) * self.block_size for i in idx)

    def size(self, idx: Sequence[int]) -> tuple[int, ...]:
        b = self.block_size
        return tuple(min(b, s - i * b) for i, s in zip(idx, self.shape))

    def slices(self, idx: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(o, o + n) for o, n in zip(self.origin(idx), self.size(idx)))

    def pool(self, arr: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
        """Per-block mean (or ``any``) of a ``(*shape)`` array -> flat ``(n_blocks,)``."""
        out = torch.empty(len(self), dtype=torch.float64)
        for k, idx in enumerate(self.indices()):
            v = arr[self.slices(idx)]
            out[k] = float(v.any()) if reduce == "any" else float(v.double().mean())
        return out

    def labels(self) -> np.ndarray:
        """int32 map of block id + 1 over ``shape``."""
        lab = np.zeros(self.shape, np.int32)
        for k, idx in enumerate(self.indices()):
            lab[self.slices(idx)] = k + 1
        return lab

    def paint(self, values: Sequence[float]) -> torch.Tensor:
        """Map with each block's voxels set to its value (float32)."""
        out = torch.zeros(self.shape, dtype=torch.float32)
        for k, idx in enumerate(self.indices()):
            if values[k]:
                out[self.slices(idx)] = float(values[k])
        return out

    def info(self) -> dict:
        return {"block_size": self.block_size, "grid_shape": list(self.grid_shape),
                "model_shape": list(self.shape), "n_blocks": len(self),
                "origin_of_block": "index * block_size (model-grid voxels); edge blocks are partial"}


def make_blocks(shape: Sequence[int], block_size: int) -> BlockPartition:
    b = as_int("block_size", block_size, lo=1)
    if any(b > s for s in shape):
        raise InputMismatchError(
            f"block_size {b} is larger than the image on the model grid {tuple(shape)}; "
            "choose a smaller block_size")
    return BlockPartition(tuple(int(s) for s in shape), b)


# ------------------------------------------------------------------------- engine --
def _intersect(block: Sequence[slice], window: Sequence[slice]):
    """(window-local slices, block-local slices) of block ∩ window, or None if disjoint."""
    loc, crop = [], []
    for bs, ws in zip(block, window):
        a, b = max(bs.start, ws.start), min(bs.stop, ws.stop)
        if a >= b:
            return None
        loc.append(slice(a - ws.start, b - ws.start))
        crop.append(slice(a - bs.start, b - bs.start))
    return (slice(None),) + tuple(loc), (slice(None),) + tuple(crop)


class RoIDiceEngine:
    """Batched ``do(x_p = bank block)`` → forward → Dice on the RoI.

    A *job* is a list of ``(block_id, bank_index)`` replacements applied together to one
    copy of the image (PdCR: one pair; progressive perturbation: the top-k blocks).
    Jobs from any number of blocks are packed into the same batch.

    Two backends, chosen by the model (:meth:`SegModel.needs_windows`):

    - the image fits the model patch (or the model has none): one forward pass of the
      whole image per job, padded as ``model.forward`` pads it (``model.pads_for``);
    - larger images: the model's own sliding-window inference (the model's windows,
      padding and blending weights, exactly as ``model.logits``) restricted to what the
      RoI needs. Only
      the windows that contain RoI voxels matter; their clean outputs are computed once,
      and a job re-runs only those of them that contain a perturbed block, swapping
      their weighted contribution (``w/Σw`` times the output) in the model's own clean RoI
      logits. The result equals a full
      sliding-window pass on the RoI voxels, at 1–2^D window passes per job instead of
      all windows. Blocks that no RoI window sees cannot change the RoI prediction: 0
      without any pass (``outside_window``). ``n_forward`` counts window passes.
    """

    def __init__(self, ctx: Context, grid: BlockPartition, bank_blocks: torch.Tensor,
                 ref_pos: torch.Tensor, batch_size: int | None = None):
        self.ctx, self.grid = ctx, grid
        model = ctx.model
        self.device = model.device
        self.sliding = model.needs_windows(ctx.shape)
        self._bank_cpu = bank_blocks.detach().to("cpu", torch.float32)
        self.bank = self._bank_cpu.to(self.device)
        self.canon = content_ids(self._bank_cpu).tolist()
        self.memo: dict[tuple, float] = {}            # distinct perturbation -> Dice
        self.rows_asked = self.rows_run = 0             # network rows the jobs needed / ran
        self._unchanged: dict[tuple[int, int], bool] = {}
        self._x_cpu = ctx.x.detach().to("cpu", torch.float32)
        self.target, self.sigmoid = ctx.target, model.sigmoid
        roi_flat = ctx.roi.flatten()
        self.ref = ref_pos.flatten()[roi_flat].to(self.device)
        self.n_ref = int(self.ref.sum())
        blocks = self._slices = [grid.slices(idx) for idx in grid.indices()]
        # the clean RoI logits are the model's own output (model.logits_tensor); a job
        # changes them only by what its perturbation changes, so M0 is the model's own Dice
        self.clean_roi_logits = ctx.clean_logits.flatten(1)[:, roi_flat].to(self.device)
        if self.sliding:
            self._init_sliding(blocks)
        else:
            self._init_single(blocks)
        self.batch_size = int(batch_size) if batch_size else default_batch(ctx, self.item_shape)
        self.tuned = bool(batch_size or ctx.batch_size)
        self.timing: dict[int, float] = {}
        self.m0 = float(self._dice_vals(self.clean_roi_logits[None])[0])

    # ------------------------------------------------------------- single window --
    def _init_single(self, blocks):
        ctx, model = self.ctx, self.ctx.model
        # pad once exactly as model.forward pads (size divisor, or a static program's fixed
        # shape) so that no batch needs a pad/crop and the logits stay contiguous
        per_axis = model.pads_for(ctx.shape)
        lo = [a for a, _ in per_axis]
        pads = [v for lo_hi in reversed(per_axis) for v in lo_hi]
        self.xw = F.pad(ctx.x, pads).to(self.device).contiguous()
        self.item_shape = tuple(self.xw.shape[1:])
        roi_p = F.pad(ctx.roi.float(), pads) > 0     # same row-major order as ctx.roi's voxels
        self.roi_idx = torch.nonzero(roi_p.flatten()).flatten().to(self.device)
        whole = tuple(slice(0, n) for n in self.item_shape)
        self.place = [_intersect([slice(s.start + o, s.stop + o) for s, o in zip(b, lo)], whole)
                      for b in blocks]

    # ----------------------------------------------------------- sliding windows --
    def _init_sliding(self, blocks):
        ctx, model = self.ctx, self.ctx.model
        weights = model.window_weights(ctx.shape)          # the model's windows and weights
        tiling = weights.tiling
        patch = tuple(int(p) for p in tiling.patch)
        lo = [a for a, _ in tiling.pads]
        pads = [v for lo_hi in reversed(tiling.pads) for v in lo_hi]
        xp = F.pad(ctx.x, pads).to(self.device)
        imp = (torch.ones(patch) if weights.single else weights.importance).to(self.device).reshape(-1)
        coords = torch.nonzero(ctx.roi) + torch.tensor(lo)                      # (nR, D) padded
        self.xp, self.item_shape = xp, patch
        self.win_slices, self.win_pos, self.win_loc, self.win_imp = [], [], [], []
        strides = torch.tensor([int(np.prod(patch[d + 1:])) for d in range(len(patch))])
        for w in tiling.windows:
            start = torch.tensor([s.start for s in w])
            inside = ((coords >= start) & (coords < start + torch.tensor(patch))).all(1)
            if not inside.any():
                continue
            pos = torch.nonzero(inside).flatten()
            loc = ((coords[pos] - start) * strides).sum(1)
            self.win_slices.append(w)
            self.win_pos.append(pos.to(self.device))
            self.win_loc.append(loc.to(self.device))
            self.win_imp.append(imp[loc.to(self.device)])
        # Σw at the RoI voxels (every window holding one is an RoI window)
        self.denom = (torch.ones(len(coords)) if weights.single else weights.norm[tuple(coords.T)]).to(self.device)
        # block -> [(window k, placement)] for the RoI windows it touches
        self.place = []
        for b in blocks:
            bp = [slice(s.start + o, s.stop + o) for s, o in zip(b, lo)]
            hits = [(k, pl) for k, w in enumerate(self.win_slices) if (pl := _intersect(bp, w)) is not None]
            self.place.append(hits or None)
        # each RoI window's clean weighted contribution (one batched pass): a job swaps the
        # contributions of the windows it perturbs
        self.clean_contrib = []
        with torch.inference_mode():
            bs = max(1, default_batch(ctx, patch))
            for s0 in range(0, len(self.win_slices), bs):
                ks = list(range(s0, min(s0 + bs, len(self.win_slices))))
                out = ctx.forward(torch.stack([xp[(slice(None),) + self.win_slices[k]] for k in ks]))
                for i, k in enumerate(ks):
                    self.clean_contrib.append(
                        out[i].flatten(1).index_select(1, self.win_loc[k]).float() * self.win_imp[k])

    # ---------------------------------------------------------------------- helpers --
    def reachable(self, block_id: int) -> bool:
        return self.place[block_id] is not None

    @property
    def n_windows(self) -> int:
        return len(self.win_slices) if self.sliding else 1

    def _dice_vals(self, lf: torch.Tensor) -> torch.Tensor:
        """Dice of ``label == target`` vs the reference from RoI logits ``(B, L, nR)`` -> ``(B,)``."""
        if self.sigmoid:
            pred = (lf[:, 0] > 0) if self.target == 1 else (lf[:, 0] <= 0)
        else:
            pred = lf.argmax(1) == self.target
        inter = (pred & self.ref).sum(1).double()
        denom = pred.sum(1).double() + self.n_ref
        return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).cpu()

    def _paste(self, row: torch.Tensor, placement, k: int) -> None:
        loc, crop = placement
        row[loc] = self.bank[k][crop]

    def _run_single(self, chunk) -> torch.Tensor:
        xb = self.xw.expand(len(chunk), *self.xw.shape).clone()
        for i, job in enumerate(chunk):
            for blk, k in job:
                if self.place[blk] is not None:
                    self._paste(xb[i], self.place[blk], k)
        logits = self.ctx.forward(xb)
        return self._dice_vals(logits.flatten(2).index_select(2, self.roi_idx))

    def _items(self, job) -> dict[int, list]:
        """RoI windows touched by a job -> the pastes to make in each."""
        items: dict[int, list] = {}
        for blk, k in job:
            for w, pl in self.place[blk] or ():
                items.setdefault(w, []).append((pl, k))
        return items

    def _run_sliding(self, chunk) -> torch.Tensor:
        per_job = [self._items(job) for job in chunk]
        flat = [(j, w, pastes) for j, it in enumerate(per_job) for w, pastes in it.items()]
        lf = self.clean_roi_logits.expand(len(chunk), *self.clean_roi_logits.shape).clone()
        if flat:
            xb = torch.stack([self.xp[(slice(None),) + self.win_slices[w]] for _, w, _ in flat])
            for i, (_, _, pastes) in enumerate(flat):
                for pl, k in pastes:
                    self._paste(xb[i], pl, k)
            out = self.ctx.forward(xb)
            for i, (j, w, _) in enumerate(flat):
                new = out[i].flatten(1).index_select(1, self.win_loc[w]).float() * self.win_imp[w]
                lf[j].index_add_(1, self.win_pos[w], (new - self.clean_contrib[w]) / self.denom[self.win_pos[w]])
        return self._dice_vals(lf)

    def _changes(self, blk: int, k: int) -> bool:
        """Whether pasting bank block ``k`` into block ``blk`` changes the image."""
        key = (blk, k)
        if key not in self._unchanged:
            orig = self._x_cpu[(slice(None),) + tuple(self._slices[blk])]
            new = self._bank_cpu[k][(slice(None),) + tuple(slice(0, n) for n in orig.shape[1:])]
            self._unchanged[key] = bool(torch.equal(orig, new))
        return not self._unchanged[key]

    def key(self, job) -> tuple:
        """What a job does to the image: sorted ``(block, content id)`` of the pastes that
        change it and that a RoI window sees (a later paste into the same block wins, as
        when the job is run). Jobs with equal keys give the same image; ``()`` = unchanged."""
        last: dict[int, int] = {}
        for blk, k in job:
            if self.place[blk] is not None:
                last[blk] = self.canon[k]
        return tuple(sorted((b, c) for b, c in last.items() if self._changes(b, c)))

    @property
    def rows_reused(self) -> int:
        """Network rows the jobs so far did not need to run (identical or unchanged images)."""
        return self.rows_asked - self.rows_run

    def cost(self, job) -> int:
        """Forward rows a job needs (run alone)."""
        return 1 if not self.sliding else len(self._items(job))

    # ------------------------------------------------------------------------- run --
    def run(self, jobs: list[list[tuple[int, int]]], out: torch.Tensor) -> Iterator[int]:
        """Evaluate ``jobs`` into ``out`` (Dice per job), yielding the count done after each
        batch (in jobs; ``out`` is filled when the generator is exhausted).

        Only distinct perturbed images not seen before by this engine run (see the module
        docstring); the rest are filled in from them. A batch holds about ``batch_size``
        network rows (images or windows). Unless the batch size was fixed by the user, the
        first long run tries half, once and twice the default on its first batches (real
        work; results do not depend on the batch size) and keeps the fastest per row."""
        keys = [self.key(j) for j in jobs]
        self.rows_asked += sum(self.cost(j) for j in jobs)
        todo: dict[tuple, None] = {}
        for kk in keys:
            if kk and kk not in self.memo:
                todo.setdefault(kk)
        distinct = [list(kk) for kk in todo]
        res = torch.empty(len(distinct), dtype=torch.float64)
        for d in self._run_distinct(distinct, res):
            if d < len(distinct):
                yield d * len(jobs) // len(distinct)
        self.memo.update(zip(todo, res.tolist()))
        out[:] = torch.tensor([self.memo[kk] if kk else self.m0 for kk in keys], dtype=out.dtype)
        yield len(jobs)

    def _run_distinct(self, jobs: list[list[tuple[int, int]]], out: torch.Tensor) -> Iterator[int]:
        trial: list[int] = []
        if not self.tuned and len(jobs) >= 8 * self.batch_size:
            b = self.batch_size
            trial = [c for _ in range(2) for c in sorted({max(1, b // 2), b, 2 * b})]
            self.tuned = True
        timing: dict[int, float] = {}
        costs = [self.cost(j) for j in jobs] if self.sliding else None
        start = 0
        run_chunk = self._run_sliding if self.sliding else self._run_single
        with torch.inference_mode():
            while start < len(jobs):
                tuning = bool(trial)
                bs = trial.pop(0) if tuning else self.batch_size
                stop, rows = start, 0
                while stop < len(jobs) and (stop == start or rows + (costs[stop] if costs else 1) <= bs):
                    rows += costs[stop] if costs else 1
                    stop += 1
                t0 = time.perf_counter()
                out[start:stop] = run_chunk(jobs[start:stop])
                self.rows_run += rows
                if tuning and rows >= bs:
                    per = (time.perf_counter() - t0) / max(rows, 1)
                    timing[bs] = min(timing.get(bs, per), per)
                    if not trial:
                        self.batch_size = min(timing, key=timing.get)
                        self.timing = timing
                start = stop
                yield start


def default_batch(ctx: Context, item_shape: Sequence[int]) -> int:
    """Network rows (perturbed images or windows) per forward pass.

    GPU: from free memory (inference keeps no activations for a backward pass). CPU: about
    2^17 voxels per batch (larger batches gain nothing on a CPU and cost memory)."""
    n_vox = int(np.prod(item_shape)) * max(1, ctx.model.in_channels)
    if ctx.batch_size:
        return max(1, int(ctx.batch_size))
    if ctx.model.device.type == "cpu":
        return int(max(1, min(64, 2 ** 17 // max(n_vox, 1))))
    return ctx.auto_batch(per_item_bytes=n_vox * 4 * 24, cap=256)


def reference_positive(ctx: Context, reference) -> torch.Tensor:
    """The reference as a boolean ``label == target`` mask on the model grid.

    ``reference``: None (the model's clean prediction), a label map of the image's spatial
    shape (image grid; a boolean mask means "is the target"), a LoadedImage or a path."""
    if reference is None:
        return ctx.clean_labels == ctx.target
    import os

    from ..io import LoadedImage, load_image

    if isinstance(reference, (str, os.PathLike)):      # e.g. --param reference=gt.nii.gz
        reference = load_image(reference)
    if isinstance(reference, LoadedImage):
        reference = reference.data
    ref = np.asarray(reference)
    if ref.dtype.kind not in "biuf":
        raise MethodError(f"the reference must be a label map (numbers), got an array of {ref.dtype}")
    require_finite(ref, "The reference segmentation")
    if ref.shape != tuple(ctx.prep.image_shape):
        raise InputMismatchError(
            f"reference label map of shape {ref.shape} does not match the image's spatial shape "
            f"{tuple(ctx.prep.image_shape)}")
    if ref.dtype == bool:
        pos = ref
    else:
        pos = ref == ctx.target
    return torch.from_numpy(ctx.prep.roi_to_model(pos))


