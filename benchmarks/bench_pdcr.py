#!/usr/bin/env python
"""PdCR cost and faithfulness on the 2D sample model.

    python benchmarks/bench_pdcr.py [--n-rois 10] [--draws 10] [--skip-progressive] [--threads 2]
                                    [--repeat 1] [--json out.json]

1. Cost at the paper's settings (8 px blocks, S = 3, N = 50, tau = 0.02, default sample bank)
   on the shipped 2D sample image (``colin27_axial_t1``, its native 2 mm grid) and RoI
   (``colin27_axial_roi_frontal_L``): wall time, forward passes, and
   ``ratio = wall / (n_forward x bare per-image forward time at the best batch size)``
   (1.0 = nothing but forward passes; goal <= 1.2) and the share of the wall time spent
   outside the network (robust to other load on a shared machine); the reference code's loop
   (lcmmai/PdCR ``occlusion_sensitivity_optimized``: block by block, one batch of S then
   one of N copies, full-image argmax) re-implemented on the same model and bank for
   comparison; the batch-1 cost of the same passes; and ``adaptive=True``.
2. Progressive-perturbation attribution score (paper §4.3; ``seg_explain.progressive``)
   of PdCR vs Seg-Grad-CAM vs SmoothGrad on the predicted region of each class present in
   the sample slice (>= 10 RoIs), same bank, blocks, draws and seed for every method.

Falls back to a randomly initialised network of the sample model's architecture when
``sample_data/models/brain2d`` is not installed (the table says so).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import seg_explain  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from seg_explain import InputMismatchError, explain, load_image, load_model, methods  # noqa: E402
from seg_explain.bank import resolve_bank  # noqa: E402
from seg_explain.paths import sample_path  # noqa: E402
from seg_explain.progressive import progressive_perturbation  # noqa: E402

PAPER = dict(block_size=8, n_screen=3, n_draws=50, tau=0.02)


def get_model():
    p = sample_path("models", "brain2d")
    if p.is_dir():
        return load_model(p, device="cpu"), "sample brain2d"
    from monai.networks.nets import UNet
    from monai.transforms import ScaleIntensityRangePercentiles

    from seg_explain.models import SegModel

    torch.manual_seed(0)
    net = UNet(2, 1, 16, [16, 32, 64, 128], [2, 2, 2], num_res_units=1, norm="INSTANCE").eval()
    names = list(json.loads(sample_path("classes.json").read_text()).values())
    return SegModel(net, spatial_dims=2, in_channels=1, class_names=names, patch_size=(128, 128),
                    preprocess=[ScaleIntensityRangePercentiles(0, 95, 0, 1, clip=False)], divisor=8,
                    device="cpu"), "RANDOM UNet (brain2d not installed)"


def bare_forward(model, x: torch.Tensor, sizes=(1, 4, 8, 12, 16, 24, 32, 48, 64), secs=0.6, rounds=3):
    """Per-image inference time of model.forward at each batch size -> {b: seconds}.

    Interleaved rounds, minimum per size (robust to other load on a shared machine)."""
    out = {b: float("inf") for b in sizes}
    with torch.inference_mode():
        for _ in range(rounds):
            for b in sizes:
                xb = x[None].expand(b, *x.shape).contiguous()
                model.forward(xb)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < secs or n < 2:
                    model.forward(xb)
                    n += 1
                out[b] = min(out[b], (time.perf_counter() - t0) / n / b)
    return out


def reference_style(model, x: torch.Tensor, roi: torch.Tensor, target: int, blocks: torch.Tensor,
                    b=8, n_screen=3, n_draws=50, tau=0.02, seed=0):
    """The reference code's loop (lcmmai/PdCR ``occlusion_sensitivity_optimized``), on this
    model: block by block, one batch of S screening copies then one batch of N copies,
    full-image argmax, Dice on the RoI. Returns (seconds, forward passes)."""
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    n_fwd = 0
    with torch.inference_mode():
        clean = model.forward(x[None])[0].argmax(0)
        n_fwd += 1
        ref = (clean == target)[roi]

        def dice(xs):
            pred = model.forward(xs).argmax(1)[:, roi] == target
            inter = (pred & ref).sum(1).double()
            den = pred.sum(1).double() + ref.sum()
            return torch.where(den > 0, 2 * inter / den.clamp_min(1), torch.ones_like(den))

        h, w = x.shape[1:]
        for i in range(0, h, b):
            for j in range(0, w, b):
                if roi[i:i + b, j:j + b].any():
                    continue
                hb, wb = min(b, h - i), min(b, w - j)
                xs = x[None].repeat(n_screen, 1, 1, 1)
                xs[:, :, i:i + hb, j:j + wb] = blocks[torch.randint(0, len(blocks), (n_screen,), generator=g)][..., :hb, :wb]
                n_fwd += n_screen
                if ((dice(xs) - 1).abs() < tau).all():
                    continue
                xs = x[None].repeat(n_draws, 1, 1, 1)
                xs[:, :, i:i + hb, j:j + wb] = blocks[torch.randint(0, len(blocks), (n_draws,), generator=g)][..., :hb, :wb]
                n_fwd += n_draws
                dice(xs)
    return time.perf_counter() - t0, n_fwd


def table(rows, head):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    line = lambda r: "| " + " | ".join(str(v).ljust(n) for v, n in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (n + 2) for n in w) + "|"] + [line(r) for r in rows])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-rois", type=int, default=10)
    ap.add_argument("--draws", type=int, default=10, help="progressive-perturbation draws per k")
    ap.add_argument("--skip-progressive", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="PdCR timing runs (minimum reported)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, which = get_model()
    img = load_image(sample_path("brain2d", "colin27_axial_t1.tif"))
    roi = load_image(sample_path("brain2d", "colin27_axial_roi_frontal_L.tif")).data > 0
    x = model.prepare(img).x
    bank = resolve_bank(None, model, 8)
    print(f"model: {which}; image {img.data.shape} (model grid {tuple(x.shape[1:])}); "
          f"bank {bank}; torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")

    # ---- 1. cost -----------------------------------------------------------------
    bare = bare_forward(model, x)
    best_b = min(bare, key=bare.get)
    t_best, t_one = bare[best_b], bare[1]
    print("bare forward ms/image by batch: " + ", ".join(f"{b}: {v * 1e3:.2f}" for b, v in bare.items()))
    rows, res = [], {"model": which, "bare_ms_per_image": {b: v * 1e3 for b, v in bare.items()}}
    ref_s, ref_n = reference_style(model, x, torch.from_numpy(roi), model.class_index("frontal_L"),
                                   bank.for_block_size(8))
    rows.append(["reference-style loop", f"{ref_s:.2f}", ref_n, "3 / 50", f"{ref_n * t_best:.2f}",
                 f"{ref_s / (ref_n * t_best):.2f}", "", f"{ref_n * t_one:.1f}", "1.0x", "", "", ""])
    res["reference_style"] = {"wall_s": ref_s, "n_forward": ref_n, "ratio": ref_s / (ref_n * t_best)}
    # time spent inside the network, to split the wall time robustly on a loaded machine
    from seg_explain.explainers import base as _base

    net_s = [0.0]
    _orig = _base.Context.forward

    def _timed(self, xb):
        t = time.perf_counter()
        try:
            return _orig(self, xb)
        finally:
            net_s[0] += time.perf_counter() - t

    for name, kw in (("PdCR paper settings", {}), ("PdCR adaptive=True", {"adaptive": True})):
        best = None
        for _ in range(args.repeat):     # minimum over repeats, like the bare timings
            _base.Context.forward = _timed
            net_s[0] = 0.0
            t0 = time.perf_counter()
            try:
                e = explain(model, img, "pdcr", target="frontal_L", roi=roi, bank=bank, seed=0, **PAPER, **kw)
            finally:
                _base.Context.forward = _orig
            wall = time.perf_counter() - t0
            if best is None or wall < best[0]:
                best = (wall, net_s[0], e)
        wall, net_s[0], e = best
        nf = e.n_forward
        ideal = nf * t_best
        ex = e.extras
        rows.append([name, f"{wall:.2f}", nf, ex["batch_size"], f"{ideal:.2f}", f"{wall / ideal:.2f}",
                     f"{100 * (wall - net_s[0]) / wall:.1f}%",
                     f"{nf * t_one:.1f}", f"{ref_s / wall:.1f}x", ex["n_relevant"], ex["passes_saved"],
                     f"{ex['ate_min']:.3f}"])
        res[name] = {"wall_s": wall, "n_forward": nf, "batch": ex["batch_size"], "ratio": wall / ideal,
                     "outside_network_share": (wall - net_s[0]) / wall,
                     "n_relevant": ex["n_relevant"], "passes_saved": ex["passes_saved"],
                     "share_positive": ex["share_positive"], "share_negative": ex["share_negative"],
                     "ate_min": ex["ate_min"], "ate_max": ex["ate_max"]}
        if name.startswith("PdCR paper"):
            full = e.attribution
        else:
            res[name]["corr_with_full"] = float(np.corrcoef(full.ravel(), e.attribution.ravel())[0, 1])
    print()
    print(table(rows, ["run", "wall s", "n_forward", "batch", f"bare s (best b={best_b})", "ratio",
                       "outside network", "batch-1 cost s", "vs reference-style", "relevant blocks", "passes saved", "ATE min"]))
    if "PdCR adaptive=True" in res:
        print(f"adaptive vs full map correlation: {res['PdCR adaptive=True']['corr_with_full']:.3f}")

    # ---- 2. progressive perturbation ---------------------------------------------
    if not args.skip_progressive:
        have = set(methods())
        meths = [m for m in ("pdcr", "seg_grad_cam", "smoothgrad") if m in have]
        missing = [m for m in ("seg_grad_cam", "smoothgrad") if m not in have]
        pred = model.predict(img)
        counts = np.bincount(pred.ravel(), minlength=len(model.class_names))
        classes = [c for c in np.argsort(-counts) if c > 0 and counts[c] >= 20][:args.n_rois + 3]
        scores = {m: [] for m in meths}
        secs = {m: [] for m in meths}
        used = []
        for c in classes:
            if len(used) >= args.n_rois:
                break
            line = [model.class_names[c]]
            try:
                got = {}
                for m in meths:
                    kw = {"bank": bank, **PAPER} if m == "pdcr" else {}
                    t0 = time.perf_counter()
                    e = explain(model, img, m, target=int(c), seed=0, **kw)
                    dt = time.perf_counter() - t0
                    r = progressive_perturbation(model, img, e, bank=bank, block_size=8, k_max=10,
                                                 n_draws=args.draws, seed=0)
                    got[m] = (r.score, dt)
                    line.append(f"{m}={r.score:.3f}")
            except InputMismatchError as exc:   # e.g. an RoI touching every block
                print(f"  {model.class_names[c]}: skipped ({exc})")
                continue
            used.append(c)
            for m, (sc, dt) in got.items():
                scores[m].append(sc)
                secs[m].append(dt)
            print("  " + "  ".join(line), flush=True)
        classes = used
        arr = np.array([scores[m] for m in meths])
        wins = np.bincount(arr.argmax(0), minlength=len(meths)) if len(classes) else np.zeros(len(meths))
        rows = [[m, f"{np.mean(scores[m]):.3f}", f"{np.std(scores[m]):.3f}", f"{np.median(scores[m]):.3f}",
                 int(wins[i]), f"{np.mean(secs[m]):.2f}"] for i, m in enumerate(meths)]
        print()
        print(f"progressive perturbation on {len(classes)} RoIs (predicted class regions), k = 1..10, "
              f"{args.draws} draws, score = sum of RoI Dice drops")
        print(table(rows, ["method", "mean score", "sd", "median", "best on", "explain s"]))
        if missing:
            print(f"(not registered yet, skipped: {', '.join(missing)})")
        res["progressive"] = {"rois": [model.class_names[c] for c in classes], "scores": scores,
                              "explain_s": secs, "missing": missing}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
