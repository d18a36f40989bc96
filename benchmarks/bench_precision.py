#!/usr/bin/env python
"""bf16 against fp32, per method: speed-up, map agreement and RoI label agreement.

    python benchmarks/bench_precision.py [--threads 2] [--repeat 1] [--methods ...] [--json out.json]
                                         [--with-3d]

The shipped 2D sample (``brain2d`` bundle, ``colin27_axial_t1``), class ``frontal_L`` with
the painted RoI, every method at its defaults except: SmoothGrad ``n_samples=10``, IG
``steps=10``, KernelSHAP ``n_samples=200``, PdCR at the reference code's settings (its
defaults: 8 px blocks, S = 3, N = 50, tau = 0.02 points). Each method runs with
``precision="fp32"`` and ``precision="bf16"`` as a user calls it (``explain(...)``, nothing
else set), each after a warm-up gradient call at its precision (first-call costs).

Per row: wall seconds fp32 / bf16 (min of ``--repeat``) and the speed-up; the Pearson r
of the two maps (for PdCR: of its block ATEs); the RoI label agreement (share of the RoI's
voxels whose clean predicted label is the same under bf16 as under fp32); and for PdCR the
share of blocks whose relevance (ATE != 0) is the same. ``--with-3d`` adds the windowed 3D
sample (``brain3d``, gradient of ``temporal_R``: sliding windows) to show the windowed
path is lowered too. The CPU's bf16 support is printed (AVX512-BF16 / AMX).
"""
from __future__ import annotations

import argparse
import json
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

from seg_explain import explain, load_image, load_model  # noqa: E402
from seg_explain.paths import sample_path  # noqa: E402

SETTINGS = {"gradient": {}, "smoothgrad": {"n_samples": 10}, "integrated_gradients": {"steps": 10},
            "kernel_shap": {"n_samples": 200}, "seg_grad_cam": {}, "seg_hires_grad_cam": {}, "pdcr": {}}


def cpu_bf16() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ", ".join(have) or "none (bf16 emulated: expect no speed-up)"


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def run(model, img, method, kw, precision, repeat):
    explain(model, img, "gradient", target=kw["target"], precision=precision)   # warm-up (first-call costs)
    best, e = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        e = explain(model, img, method, precision=precision, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, e


def row(name, model, img, method, kw, repeat):
    t32, e32 = run(model, img, method, kw, "fp32", repeat)
    t16, e16 = run(model, img, method, kw, "bf16", repeat)
    roi = np.asarray(e32.roi, bool)
    agree = float((np.asarray(e32.prediction)[roi] == np.asarray(e16.prediction)[roi]).mean())
    out = {"method": name, "fp32_s": t32, "bf16_s": t16, "speedup": t32 / t16,
           "r": pearson(e32.attribution, e16.attribution), "roi_label_agreement": agree,
           "n_forward": e32.n_forward}
    if method == "pdcr":
        a = {k["id"]: k["ate_points"] for k in e32.extras["blocks"] if k["status"] != "roi"}
        b = {k["id"]: k["ate_points"] for k in e16.extras["blocks"] if k["status"] != "roi"}
        keys = sorted(a)
        out["r"] = pearson(np.array([a[k] for k in keys]), np.array([b[k] for k in keys]))
        out["relevance_agreement"] = float(np.mean([(a[k] != 0) == (b[k] != 0) for k in keys]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--with-3d", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(sample_path("models", "brain2d"), device="cpu")
    img = load_image(sample_path("brain2d", "colin27_axial_t1.tif"))
    roi = np.asarray(load_image(sample_path("brain2d", "colin27_axial_roi_frontal_L.tif")).data) > 0
    print(f"# 2D sample, frontal_L painted RoI; torch {torch.__version__}, {a.threads} threads, "
          f"CPU bf16 support: {cpu_bf16()}; min of {a.repeat}", flush=True)
    rows = []
    for m in a.methods:
        rows.append(row(m, model, img, m, {"target": "frontal_L", "roi": roi, **SETTINGS[m]}, a.repeat))
        r = rows[-1]
        print(f"  {m}: {r['fp32_s']:.2f} s -> {r['bf16_s']:.2f} s, r {r['r']:.4f}", flush=True)
    if a.with_3d:
        m3 = load_model(sample_path("models", "brain3d"), device="cpu")
        v = load_image(sample_path("brain3d", "colin27_t1_2mm.nii.gz"))
        rows.append(row("gradient (3D, sliding windows)", m3, v, "gradient", {"target": "temporal_R"}, a.repeat))
    print()
    print("| method | fp32 s | bf16 s | speed-up | map r vs fp32 | RoI label agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = f" (block relevance agreement {r['relevance_agreement']:.3f})" if "relevance_agreement" in r else ""
        print(f"| {r['method']} | {r['fp32_s']:.2f} | {r['bf16_s']:.2f} | {r['speedup']:.2f}x | {r['r']:.4f}{extra} "
              f"| {r['roi_label_agreement']:.4f} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
