#!/usr/bin/env python
"""PdCR cost, agreement with the reference code, adaptive draws and faithfulness (2D sample).

    python benchmarks/bench_pdcr.py [--n-rois 10] [--draws 10] [--threads 2] [--repeat 1]
                                    [--skip-compare] [--skip-cost] [--skip-agreement]
                                    [--skip-adaptive] [--skip-progressive]
                                    [--json out.json]

All ATEs and tau are in **Dice points (0-100)**, as in the paper and the reference code.
Everything calls the library as a user does (``load_model`` + ``explain``, the CLI in a
subprocess): no private tuning.

0. Python API vs CLI vs the authors' loop, in one run at the reference code's settings
   (8 px blocks, S = 3, N = 50, tau = 0.02 points, a 32² square RoI on the predicted
   ``occipital_R`` snapped to the block grid, the default sample bank, seed 0): wall time
   of ``explain(...)`` in this process, of ``seg-explain explain`` in a fresh process (the
   whole process, and the explanation alone as the CLI reports it: ``elapsed_s``) and of
   the reference loop (:func:`reference_loop`), each the minimum of ``--repeat``, run
   interleaved so that load on a shared machine hits all three alike; plus the API with the
   opt-in ``precision="bf16"``. Process CPU seconds beside the wall times.
1. Cost at the paper's settings (8 px blocks, S = 3, N = 50, tau = 0.02 Dice points, default
   sample bank) on the shipped 2D sample image (``colin27_axial_t1``, its native 2 mm grid)
   and RoI (``colin27_axial_roi_frontal_L``): wall time, forward passes, and
   ``ratio = wall / (n_forward x bare per-image forward time at the best batch size)``
   (1.0 = nothing but forward passes; goal <= 1.2), the share of the wall time spent outside
   the network (robust to other load on a shared machine), and the time relative to the
   reference code's loop (lcmmai/PdCR ``occlusion_sensitivity_optimized``: block by block,
   one batch of S then one of N copies, full-image argmax, Dice x 100, tau at screening and
   on the final ATE) re-implemented on the same model and bank (:func:`reference_loop`).
2. Agreement with that reference loop (its own random draws) on 32² square RoIs as in the
   reference code (on the predicted ``frontal_L`` and ``occipital_R``, snapped to the block
   grid) and on the painted RoI: relevant full blocks (non-zero ATE) and the Pearson r of
   the full-block maps; also our count at tau = 2 points (the old, 100x too large default).
3. ``adaptive=True`` against the full-N map on the same RoIs, two seeds: Pearson r of the
   block maps, forward passes (ratio to full N), and the mean signed difference
   adaptive − full over the relevant blocks (full-N ATE != 0), in Dice points.
4. Progressive-perturbation attribution score (paper §4.3; ``seg_explain.progressive``)
   of PdCR vs Seg-Grad-CAM vs SmoothGrad on the predicted region of each class present in
   the sample slice (>= 10 RoIs), same bank, blocks, draws and seed for every method
   (score = sum over k = 1..10 of the RoI Dice drop, Dice as a fraction: Dice x blocks).

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
from seg_explain.allocator import tuned  # noqa: E402
from seg_explain.bank import resolve_bank  # noqa: E402
from seg_explain.paths import sample_path  # noqa: E402
from seg_explain.progressive import progressive_perturbation  # noqa: E402

PAPER = dict(block_size=8, n_screen=3, n_draws=50, tau=0.02)   # tau in Dice points


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
    """Per-image inference time of model.forward at each batch size ->
    ({b: wall seconds}, {b: process CPU seconds}).

    Interleaved rounds, minimum per size (robust to other load on a shared machine; the CPU
    time is robust to being descheduled, not to cache and memory-bandwidth contention)."""
    out = {b: float("inf") for b in sizes}
    cpu = {b: float("inf") for b in sizes}
    with torch.inference_mode():
        for _ in range(rounds):
            for b in sizes:
                xb = x[None].expand(b, *x.shape).contiguous()
                model.forward(xb)
                n, t0, c0 = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - t0 < secs or n < 2:
                    model.forward(xb)
                    n += 1
                out[b] = min(out[b], (time.perf_counter() - t0) / n / b)
                cpu[b] = min(cpu[b], (time.process_time() - c0) / n / b)
    return out, cpu


def reference_loop(model, x: torch.Tensor, roi: torch.Tensor, target: int, blocks: torch.Tensor,
                   b=8, n_screen=3, n_draws=50, tau=0.02, seed=0):
    """The reference code's loop (lcmmai/PdCR ``occlusion_sensitivity_optimized``) on this
    model, with its own draws: full blocks only, row by row; blocks touching the RoI are
    skipped; one batch of S screening copies (all |ITE| < tau: skip), then one batch of N
    copies; |mean ITE| < tau: skip. Dice x 100 (points) with the reference's epsilon, the
    clean prediction as the reference. Returns (seconds, forward passes, {(i, j): ATE})
    with (i, j) the block index of every perturbable full block; ``.cpu_s`` on the function
    holds the process CPU seconds of the last call."""
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    n_fwd = 0
    ate = {}
    with torch.inference_mode():
        clean = model.forward(x[None])[0].argmax(0)
        n_fwd += 1
        ref = ((clean == target)[roi]).double()

        def dice_points(xs):
            pred = (model.forward(xs).argmax(1)[:, roi] == target).double()
            return 100 * (2 * (pred * ref).sum(1)) / (pred.sum(1) + ref.sum() + 1e-10)

        base = float(100 * 2 * ref.sum() / (2 * ref.sum() + 1e-10))
        h, w = x.shape[1:]
        for i in range(0, h - b + 1, b):
            for j in range(0, w - b + 1, b):
                if roi[i:i + b, j:j + b].any():
                    continue
                ate[(i // b, j // b)] = 0.0
                xs = x[None].repeat(n_screen, 1, 1, 1)
                xs[:, :, i:i + b, j:j + b] = blocks[torch.randint(0, len(blocks), (n_screen,), generator=g)]
                n_fwd += n_screen
                if ((dice_points(xs) - base).abs() < tau).all():
                    continue
                xs = x[None].repeat(n_draws, 1, 1, 1)
                xs[:, :, i:i + b, j:j + b] = blocks[torch.randint(0, len(blocks), (n_draws,), generator=g)]
                n_fwd += n_draws
                avg = float((dice_points(xs) - base).mean())
                if abs(avg) >= tau:
                    ate[(i // b, j // b)] = avg
    reference_loop.cpu_s = time.process_time() - c0
    return time.perf_counter() - t0, n_fwd, ate


def full_block_map(e, b=8):
    """{(i, j): ATE points} of the perturbable full blocks of a PdCR Explanation."""
    return {tuple(k["index"]): k["ate_points"] for k in e.extras["blocks"]
            if k["status"] != "roi" and k["size"] == [b] * len(k["size"])}


def square_roi(model, img, cls: str, side=32, b=8):
    """A side² square RoI (as in the reference code) on the predicted region of ``cls``,
    centred on its centroid and snapped to the block grid."""
    pred = model.predict(img)
    ys, xs = np.nonzero(pred == model.class_index(cls))
    roi = np.zeros(pred.shape, bool)
    o = [int(np.clip(round((c - side / 2) / b) * b, 0, n - side)) for c, n in zip((ys.mean(), xs.mean()), pred.shape)]
    roi[o[0]:o[0] + side, o[1]:o[1] + side] = True
    return roi, o


def compare_api_cli_reference(model, img, blocks8, threads: int, repeat: int) -> dict:
    """Section 0: the same PdCR explanation through the Python API, the CLI and the
    reference loop (see the module docstring); prints the table, returns the numbers."""
    import re
    import subprocess
    import tempfile

    from seg_explain import save_image

    cls = "occipital_R"
    roi, o = square_roi(model, img, cls)
    x = model.prepare(img).x
    params = {k: v for k, v in PAPER.items()}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    import resource

    times = {"api": [], "api_bf16": [], "cli": [], "cli_process": [], "reference": []}
    cpu = {"api": [], "api_bf16": [], "cli_process": [], "reference": []}   # process CPU s (robust to descheduling)
    with tempfile.TemporaryDirectory() as tmp:
        roi_path = Path(tmp) / "roi.tif"
        save_image(roi_path, roi.astype(np.uint8), like=img)
        cmd = [sys.executable, "-m", "seg_explain.cli", "explain", str(sample_path("brain2d", "colin27_axial_t1.tif")),
               "--model", str(model.source or sample_path("models", "brain2d")), "--method", "pdcr",
               "--target", cls, "--roi", str(roi_path), "--seed", "0", "--quiet", "--out", str(Path(tmp) / "map.tif"),
               *(a for k, v in params.items() for a in ("--param", f"{k}={v}"))]
        for _ in range(repeat):
            s, _n, ref_map = reference_loop(model, x, torch.from_numpy(roi), model.class_index(cls), blocks8,
                                            **{k: v for k, v in params.items() if k != "block_size"})
            times["reference"].append(s)
            cpu["reference"].append(reference_loop.cpu_s)
            t0, c0 = time.perf_counter(), time.process_time()
            e = explain(model, img, "pdcr", target=cls, roi=roi, seed=0, **params)
            times["api"].append(time.perf_counter() - t0)
            cpu["api"].append(time.process_time() - c0)
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            times["cli_process"].append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu["cli_process"].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
            t0, c0 = time.perf_counter(), time.process_time()
            e16 = explain(model, img, "pdcr", target=cls, roi=roi, seed=0, precision="bf16", **params)
            times["api_bf16"].append(time.perf_counter() - t0)
            cpu["api_bf16"].append(time.process_time() - c0)
            if p.returncode != 0:
                raise SystemExit(f"CLI failed: {p.stderr.strip()[-500:]}")
            times["cli"].append(float(re.search(r'"elapsed_s": ([0-9.]+)', p.stderr).group(1)))
            print(f"  reference {s:.1f} s, API {times['api'][-1]:.1f} s, CLI {times['cli'][-1]:.1f} s "
                  f"(process {times['cli_process'][-1]:.1f} s); CPU s: reference {cpu['reference'][-1]:.1f}, "
                  f"API {cpu['api'][-1]:.1f}, CLI process {cpu['cli_process'][-1]:.1f}", flush=True)
        cli_map = load_image(Path(tmp) / "map.tif").data
    same = bool(np.array_equal(np.asarray(cli_map, np.float32), e.attribution))
    best = {k: min(v) for k, v in times.items()}
    bc = {k: min(v) for k, v in cpu.items()}
    ref, rc = best["reference"], bc["reference"]
    rows = [["Python API: explain(model, img, 'pdcr', ...)", f"{best['api']:.1f}", f"{best['api'] / ref:.2f}",
             "1.00", f"{bc['api']:.1f}", f"{bc['api'] / rc:.2f}", e.n_forward],
            ["CLI: seg-explain explain (explanation, its elapsed_s)", f"{best['cli']:.1f}",
             f"{best['cli'] / ref:.2f}", f"{best['cli'] / best['api']:.2f}", "", "", e.n_forward],
            ["CLI: whole process (start, load, explain, write)", f"{best['cli_process']:.1f}",
             f"{best['cli_process'] / ref:.2f}", f"{best['cli_process'] / best['api']:.2f}",
             f"{bc['cli_process']:.1f}", f"{bc['cli_process'] / rc:.2f}", ""],
            ["Python API, precision='bf16' (opt-in)", f"{best['api_bf16']:.1f}", f"{best['api_bf16'] / ref:.2f}",
             f"{best['api_bf16'] / best['api']:.2f}", f"{bc['api_bf16']:.1f}", f"{bc['api_bf16'] / rc:.2f}",
             e16.n_forward],
            ["authors' loop (reference code, same model and bank)", f"{ref:.1f}", "1.00",
             f"{ref / best['api']:.2f}", f"{rc:.1f}", "1.00", _n]]
    print(f"\nPdCR through the Python API, the CLI and the authors' loop: {cls} 32² RoI at {tuple(o)}, "
          f"8 px blocks, S = 3, N = 50, tau = 0.02 points, seed 0, {threads} threads, min of {repeat} "
          f"(interleaved); malloc tuning {'on' if tuned() else 'off'}; CLI map identical to the API's: {same}")
    print(table(rows, ["path", "wall s", "/ authors' loop", "/ Python API", "CPU s", "CPU / authors' loop",
                       "forward passes"]))
    return {"seconds": times, "cpu_seconds": cpu, "best": best, "api_vs_reference": best["api"] / ref,
            "cli_vs_api": best["cli"] / best["api"], "cli_map_identical": same, "tuned": tuned()}


def table(rows, head):
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    line = lambda r: "| " + " | ".join(str(v).ljust(n) for v, n in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (n + 2) for n in w) + "|"] + [line(r) for r in rows])


def corr(a: dict, b: dict) -> float:
    keys = sorted(a)
    va, vb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    return float(np.corrcoef(va, vb)[0, 1]) if va.std() > 0 and vb.std() > 0 else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-rois", type=int, default=10)
    ap.add_argument("--draws", type=int, default=10, help="progressive-perturbation draws per k")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--skip-adaptive", action="store_true")
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
    blocks8 = bank.for_block_size(8)
    print(f"model: {which}; image {img.data.shape} (model grid {tuple(x.shape[1:])}); "
          f"bank {bank}; torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}; "
          "ATEs and tau in Dice points (0-100)")

    res = {"model": which, "unit": "Dice points (0-100)"}
    if not args.skip_compare:
        res["compare"] = compare_api_cli_reference(model, img, blocks8, args.threads, args.repeat)

    # ---- 1. cost -----------------------------------------------------------------
    if not args.skip_cost:
        bare, bare_cpu = bare_forward(model, x)
        best_b = min(bare, key=bare.get)
        t_best, c_best = bare[best_b], min(bare_cpu.values())
        print("bare forward ms/image by batch: " + ", ".join(f"{b}: {v * 1e3:.2f}" for b, v in bare.items()))
        print("bare forward CPU ms/image by batch: " + ", ".join(f"{b}: {v * 1e3:.2f}" for b, v in bare_cpu.items()))
        rows = []
        res.update({"bare_ms_per_image": {b: v * 1e3 for b, v in bare.items()},
                    "bare_cpu_ms_per_image": {b: v * 1e3 for b, v in bare_cpu.items()}})
        ref_s, ref_n, ref_map = reference_loop(model, x, torch.from_numpy(roi), model.class_index("frontal_L"),
                                               blocks8, **{k: v for k, v in PAPER.items() if k != "block_size"})
        ref_c = reference_loop.cpu_s
        rows.append(["reference loop", f"{ref_s:.2f}", f"{ref_c:.2f}", ref_n, "3 / 50",
                     f"{ref_s / (ref_n * t_best):.2f}", f"{ref_c / (ref_n * c_best):.2f}", "", "1.00", "1.00", "",
                     sum(v != 0 for v in ref_map.values()), "", f"{min(ref_map.values()):.3f}"])
        res["reference_loop"] = {"wall_s": ref_s, "cpu_s": ref_c, "n_forward": ref_n,
                                 "ratio": ref_s / (ref_n * t_best), "ratio_cpu": ref_c / (ref_n * c_best)}
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
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    e = explain(model, img, "pdcr", target="frontal_L", roi=roi, bank=bank, seed=0, **PAPER, **kw)
                finally:
                    _base.Context.forward = _orig
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if best is None or wall < best[0]:
                    best = (wall, cpu, net_s[0], e)
            wall, cpu, net_s[0], e = best
            nf = e.n_forward
            ex = e.extras
            per_pass = (cpu / nf) / (ref_c / ref_n)
            rows.append([name, f"{wall:.2f}", f"{cpu:.2f}", nf, ex["batch_size"], f"{wall / (nf * t_best):.2f}",
                         f"{cpu / (nf * c_best):.2f}", f"{100 * (wall - net_s[0]) / wall:.1f}%", f"{wall / ref_s:.2f}",
                         f"{per_pass:.2f}", ex["n_screened_in"], ex["n_relevant"], ex["passes_saved"],
                         f"{ex['ate_min_points']:.3f}"])
            res[name] = {"wall_s": wall, "cpu_s": cpu, "n_forward": nf, "batch": ex["batch_size"],
                         "ratio": wall / (nf * t_best), "ratio_cpu": cpu / (nf * c_best),
                         "time_vs_reference": wall / ref_s, "cpu_per_pass_vs_reference": per_pass,
                         "outside_network_share": (wall - net_s[0]) / wall,
                         "n_screened_in": ex["n_screened_in"], "n_relevant": ex["n_relevant"],
                         "passes_saved": ex["passes_saved"], "share_positive": ex["share_positive"],
                         "share_negative": ex["share_negative"], "ate_min_points": ex["ate_min_points"],
                         "ate_max_points": ex["ate_max_points"]}
            if name.startswith("PdCR paper"):
                full = e.attribution
                print()
                print(ex["report"])
            else:
                res[name]["corr_with_full"] = float(np.corrcoef(full.ravel(), e.attribution.ravel())[0, 1])
        print()
        print(f"ratio = time / (n_forward x bare per-image time at the best batch size: {t_best * 1e3:.2f} ms wall "
              f"at b={best_b}, {c_best * 1e3:.2f} ms CPU); per pass = CPU s per forward pass / the reference loop's")
        print(table(rows, ["run", "wall s", "cpu s", "n_forward", "batch", "ratio (wall)", "ratio (cpu)",
                           "outside network", "wall / reference", "per pass / reference", "screened in",
                           "relevant", "passes saved", "ATE min (points)"]))
        if "PdCR adaptive=True" in res:
            print(f"adaptive vs full map correlation: {res['PdCR adaptive=True']['corr_with_full']:.3f}")

    rois = {}
    if not (args.skip_agreement and args.skip_adaptive):
        for cls in ("frontal_L", "occipital_R"):
            r, o = square_roi(model, img, cls)
            rois[f"{cls} 32² at {tuple(o)}"] = (cls, r)
        rois["frontal_L painted"] = ("frontal_L", roi)
    fulls = {}

    # ---- 2. agreement with the reference loop ----------------------------------------
    if not args.skip_agreement:
        rows, res["agreement"] = [], {}
        for name, (cls, r) in rois.items():
            ts, tn, rmap = reference_loop(model, x, torch.from_numpy(r), model.class_index(cls), blocks8,
                                          **{k: v for k, v in PAPER.items() if k != "block_size"})
            t0 = time.perf_counter()
            e = explain(model, img, "pdcr", target=cls, roi=r, bank=bank, seed=0, **PAPER)
            wall = time.perf_counter() - t0
            fulls[(name, 0)] = e
            ours = full_block_map(e)
            old = full_block_map(explain(model, img, "pdcr", target=cls, roi=r, bank=bank, seed=0,
                                         **{**PAPER, "tau": 2.0}))
            n_ref, n_ours, n_old = (sum(v != 0 for v in m.values()) for m in (rmap, ours, old))
            rc = corr(rmap, ours)
            rows.append([name, len(rmap), n_ref, n_ours, f"{rc:.3f}", n_old, f"{corr(rmap, old):.3f}",
                         f"{min(rmap.values()):.2f} / {min(ours.values()):.2f}", f"{wall / ts:.2f}"])
            res["agreement"][name] = {"full_blocks": len(rmap), "relevant_reference": n_ref,
                                      "relevant_ours": n_ours, "r": rc, "relevant_ours_tau2": n_old,
                                      "r_tau2": corr(rmap, old), "time_vs_reference": wall / ts}
        print()
        print("agreement with the reference loop (its own draws), full blocks, tau = 0.02 Dice points")
        print(table(rows, ["RoI", "full blocks", "relevant: reference", "relevant: ours", "r",
                           "ours at tau = 2 points", "r (tau = 2)", "ATE min (points) ref / ours",
                           "time / reference"]))

    # ---- 3. adaptive draws against the full-N map -------------------------------------
    if not args.skip_adaptive:
        rows, res["adaptive"] = [], []
        for name, (cls, r) in rois.items():
            for seed in (0, 1):
                e = fulls.get((name, seed)) or explain(model, img, "pdcr", target=cls, roi=r, bank=bank,
                                                       seed=seed, **PAPER)
                a = explain(model, img, "pdcr", target=cls, roi=r, bank=bank, seed=seed, adaptive=True, **PAPER)
                fb = {k["id"]: k["ate_points"] for k in e.extras["blocks"] if k["status"] != "roi"}
                ab = {k["id"]: k["ate_points"] for k in a.extras["blocks"] if k["status"] != "roi"}
                rel = [k for k in fb if fb[k] != 0]
                d = np.array([ab[k] - fb[k] for k in rel]) if rel else np.zeros(1)
                scale = float(np.mean([abs(fb[k]) for k in rel])) if rel else 0.0
                rc, pr = corr(fb, ab), a.n_forward / e.n_forward
                rows.append([name, seed, len(rel), f"{rc:.4f}", f"{a.n_forward} / {e.n_forward}", f"{pr:.2f}",
                             f"{d.mean():+.4f}", f"{d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0:.4f}",
                             f"{scale:.3f}", f"{a.extras['adaptive_half_width_points']:.3f}"])
                res["adaptive"].append({"roi": name, "seed": seed, "relevant": len(rel), "r": rc, "pass_ratio": pr,
                                        "n_forward": a.n_forward, "n_forward_full": e.n_forward,
                                        "mean_signed_diff_points": float(d.mean()),
                                        "mean_abs_full_points": scale})
        print()
        print("adaptive=True vs full N = 50 (same seed and draws), block maps, Dice points")
        print(table(rows, ["RoI", "seed", "relevant blocks", "r", "passes adaptive / full", "ratio",
                           "mean signed diff", "its s.e.", "mean |full ATE|", "half-width target"]))
        rs = [a["r"] for a in res["adaptive"]]
        prs = [a["pass_ratio"] for a in res["adaptive"]]
        msd = [a["mean_signed_diff_points"] for a in res["adaptive"]]
        print(f"r min {min(rs):.4f}, pass ratio max {max(prs):.2f}, mean signed difference over all rows "
              f"{np.mean(msd):+.4f} points")

    # ---- 4. progressive perturbation ---------------------------------------------
    if not args.skip_progressive:
        have = set(methods()) | {"pdcr_zero"}
        meths = [m for m in ("pdcr", "pdcr_zero", "seg_grad_cam", "smoothgrad") if m in have]
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
                    kw = ({"bank": bank, **PAPER} if m == "pdcr" else {"bank": "zero", **PAPER}
                          if m == "pdcr_zero" else {})
                    t0 = time.perf_counter()
                    e = explain(model, img, "pdcr" if m == "pdcr_zero" else m, target=int(c), seed=0, **kw)
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
              f"{args.draws} draws (real bank blocks), score = sum of RoI Dice drops (Dice as a fraction "
              "0-1, so Dice x blocks); pdcr_zero = PdCR with bank='zero' (zero occlusion)")
        print(table(rows, ["method", "mean score", "sd", "median", "best on", "explain s"]))
        if missing:
            print(f"(not registered yet, skipped: {', '.join(missing)})")
        res["progressive"] = {"rois": [model.class_names[c] for c in classes], "scores": scores,
                              "explain_s": secs, "missing": missing}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float))


if __name__ == "__main__":
    main()
