"""All-class SmoothGrad: our multi-class engine vs Captum NoiseTunnel(Saliency) looped over classes.

    python benchmarks/bench_smoothgrad.py                 # sample volume, n=20, all classes
    python benchmarks/bench_smoothgrad.py --crop patch    # centre crop of one model patch
    python benchmarks/bench_smoothgrad.py --no-memory     # skip the peak-memory table

Model and image: the 3D sample bundle ``sample_data/models/brain3d`` and the Colin27 2 mm
T1 (``sample_data/brain3d/colin27_t1_2mm.nii.gz``) when present; otherwise a random MONAI
UNet of the same architecture and a random volume of the same size (``--random`` forces it).

Both sides explain exactly the same thing: the image is prepared once with the bundle
(orientation, 2 mm spacing, intensity scaling; not timed) and both run on that model-space
array with the same network, the same windows (MONAI sliding windows, overlap 0.25, when
the volume exceeds the patch), the same RoIs (each predicted class's voxels, from one clean
prediction that both timings include) and the same f̂ (class logits summed over the
window's RoI voxels), the same σ and the same batch size. Ours pushes each batch of noisy
copies through the network once for all classes (one backward per class on the retained
graph); the baseline calls ``NoiseTunnel(Saliency(f̂_c)).attribute(..., abs=False)`` once
per class and window. Maps agree in expectation (different noise draws); the Pearson
correlation of the two maps per class is reported as a sanity check.

Peak memory (VmHWM of a fresh subprocess each, reset after loading the model and image): one class, a random volume twice the
model patch in each dimension, batch 1: ours (windowed) vs Captum on the whole volume, and
ours on one patch for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "sample_data" / "models" / "brain3d"
VOLUME = ROOT / "sample_data" / "brain3d" / "colin27_t1_2mm.nii.gz"
ARCH = {"spatial_dims": 3, "in_channels": 1, "out_channels": 16, "channels": (16, 32, 64, 128),
        "strides": (2, 2, 2), "num_res_units": 1, "norm": "INSTANCE"}
RANDOM_SHAPE = (90, 108, 90)   # the Colin27 2 mm volume on the model grid
PATCH = (64, 64, 64)


def load(random: bool):
    """(model, raw image, description): the sample bundle + volume, or a random stand-in."""
    from seg_explain import load_image, load_model

    if not random and BUNDLE.is_dir() and VOLUME.exists():
        return load_model(BUNDLE, device="cpu"), load_image(VOLUME), f"sample: {BUNDLE.name} + {VOLUME.name}"
    from monai.networks.nets import UNet

    from seg_explain.models import SegModel

    torch.manual_seed(0)
    net = UNet(**ARCH).eval()
    names = ["background"] + [f"class_{i}" for i in range(1, ARCH["out_channels"])]
    model = SegModel(net, spatial_dims=3, in_channels=1, class_names=names, patch_size=PATCH,
                     divisor=8, device="cpu")
    img = np.random.default_rng(0).normal(size=RANDOM_SHAPE).astype(np.float32)
    return model, img, f"random UNet {ARCH['channels']} + random volume {RANDOM_SHAPE}"


def bare(model):
    """The same network on the model grid with no preprocessing (input = prepared array)."""
    from seg_explain.models import SegModel

    return SegModel(model.network, spatial_dims=model.spatial_dims, in_channels=model.in_channels,
                    class_names=model.class_names, patch_size=model.patch_size, divisor=model.divisor,
                    overlap=model.overlap, sw_batch_size=model.sw_batch_size, blend=model.blend,
                    device=model.device, meta=dict(model.meta))


def centre_crop(x: np.ndarray, size) -> np.ndarray:
    sl = tuple(slice(max(0, (s - p) // 2), max(0, (s - p) // 2) + min(s, p)) for s, p in zip(x.shape[1:], size))
    return x[(slice(None),) + sl]


def captum_all_classes(model, x: np.ndarray, classes, n: int, level: float, bs: int, seed: int):
    """The baseline: NoiseTunnel(Saliency) per class and window, same blended f̂ and windows
    (each window's f̂ is its share of the blended RoI sum, weights w/Σw; gradients summed)."""
    from captum.attr import NoiseTunnel, Saliency

    from seg_explain.explainers.engine import WindowWeights

    torch.manual_seed(seed)
    xt = torch.as_tensor(x)
    S = tuple(xt.shape[1:])
    labels = model.labels_from_logits(model.logits_tensor(xt))   # the clean prediction (1 pass)
    n_fwd, n_bwd = 1, 0
    sigma = level * float(xt.max() - xt.min())
    weights = WindowWeights.for_model(model, S)
    tiling = weights.tiling
    out = {}
    for c in classes:
        roi = labels == c
        acc = torch.zeros((xt.shape[0],) + S)
        for w in tiling.windows:
            r = tiling.crop(roi, w).float()
            if not r.any():
                continue
            wt = weights.of(w)
            r = r if wt is None else r * wt

            def f_hat(xb, r=r, c=c):
                return (model.forward(xb)[:, c] * r).flatten(1).sum(1)

            nt = NoiseTunnel(Saliency(f_hat))
            g = nt.attribute(tiling.crop(xt, w)[None], nt_type="smoothgrad", nt_samples=n,
                             nt_samples_batch_size=bs, stdevs=sigma, abs=False)
            tiling.add_to(acc, w, g[0])
            n_fwd += n
            n_bwd += n
        out[c] = acc.sum(0).numpy()
    return out, n_fwd, n_bwd


def time_table(args) -> None:
    from seg_explain.explainers.multiclass import explain_classes

    model, img, what = load(args.random)
    prep = model.prepare(img)
    x = prep.x.numpy()
    if args.crop == "patch":
        x = centre_crop(x, model.patch_size)
    m = bare(model)
    from seg_explain.windows import model_windows

    n_win = len(model_windows(m, x.shape[1:]))
    pred = m.labels_from_logits(m.logits_tensor(torch.as_tensor(x))).numpy()
    classes = [int(c) for c in np.unique(pred)]
    if args.max_classes:
        classes = sorted(classes, key=lambda c: -(pred == c).sum())[:args.max_classes]
        classes.sort()
    bs = args.batch_size or min(args.n_samples, 4)
    print(f"# {what}; prepared volume {tuple(x.shape[1:])}{' (centre crop)' if args.crop == 'patch' else ''}, "
          f"patch {m.patch_size}, {n_win} window(s); {len(classes)} classes; SmoothGrad n={args.n_samples}, "
          f"noise_level={args.noise_level}, batch {bs}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    t = time.perf_counter()
    exps = explain_classes(m, x, "smoothgrad", classes=classes, n_samples=args.n_samples,
                           noise_level=args.noise_level, batch_size=bs, seed=args.seed)
    t_ours = time.perf_counter() - t
    sp = exps[0].extras["shared_passes"]
    print(f"ours done: {t_ours:.1f} s", flush=True)

    t = time.perf_counter()
    ref, nf, nb = captum_all_classes(m, x, classes, args.n_samples, args.noise_level, bs, args.seed)
    t_cap = time.perf_counter() - t
    print(f"captum done: {t_cap:.1f} s", flush=True)
    r = [float(np.corrcoef(e.attribution.ravel(), ref[e.target].ravel())[0, 1]) for e in exps]

    rows = [("ours: explain_classes (shared forwards)", t_ours, sp["n_forward"], sp["n_backward"]),
            ("Captum NoiseTunnel(Saliency) per class", t_cap, nf, nb)]
    print()
    print("| all-class SmoothGrad | wall s | forward rows | backward rows | time vs Captum |")
    print("|---|---:|---:|---:|---:|")
    for name, s, f, b in rows:
        print(f"| {name} | {s:.1f} | {f} | {b} | {s / t_cap:.2f}x |")
    print(f"\nmaps agree with Captum's (different noise draws): Pearson r per class "
          f"min {min(r):.3f}, median {np.median(r):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": what, "shape": list(x.shape[1:]), "windows": n_win,
                                               "classes": classes, "n_samples": args.n_samples, "batch": bs,
                                               "ours_s": t_ours, "captum_s": t_cap, "ratio": t_ours / t_cap,
                                               "ours_passes": [sp["n_forward"], sp["n_backward"]],
                                               "captum_passes": [nf, nb], "pearson_r": r}, indent=1))


# ------------------------------------------------------------------ peak memory --
def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: ``5`` to /proc/self/clear_refs), so the peak
    measured afterwards belongs to the explanation, not to loading the model and image."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mem_child(args) -> None:
    """Run one configuration in this (fresh) process and print its peak RSS."""
    from seg_explain import explain

    model, _, _ = load(args.random)
    m = bare(model)
    size = tuple(2 * p for p in m.patch_size) if args.mem_child != "ours_patch" else tuple(m.patch_size)
    x = np.random.default_rng(1).normal(size=(1,) + size).astype(np.float32)
    import gc

    gc.collect()
    reset = _reset_peak()
    base = _proc_status_mb("VmRSS") or _peak_mb()
    c = 1
    t = time.perf_counter()
    if args.mem_child.startswith("ours"):
        e = explain(m, x, "smoothgrad", target=c, roi=np.ones(size, bool), n_samples=args.mem_samples,
                    batch_size=1)
        nf = e.n_forward
    else:
        from captum.attr import NoiseTunnel, Saliency

        xt = torch.as_tensor(x)
        sigma = 0.1 * float(xt.max() - xt.min())
        nt = NoiseTunnel(Saliency(lambda xb: m.forward(xb)[:, c].flatten(1).sum(1)))
        nt.attribute(xt[None], nt_type="smoothgrad", nt_samples=args.mem_samples, nt_samples_batch_size=1,
                     stdevs=sigma, abs=False)
        nf = args.mem_samples
    peak = _peak_mb()
    print(json.dumps({"config": args.mem_child, "volume": list(size), "peak_mb": peak,
                      "before_mb": base, "peak_reset": reset, "wall_s": time.perf_counter() - t,
                      "forward_rows": nf}))


def memory_table(args) -> None:
    rows = []
    for cfg in ("ours_patch", "ours", "captum"):
        cmd = [sys.executable, __file__, "--mem-child", cfg, "--mem-samples", str(args.mem_samples),
               "--threads", str(args.threads)] + (["--random"] if args.random else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{cfg}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    names = {"ours_patch": "ours, one patch (reference)", "ours": "ours, windowed",
             "captum": "Captum NoiseTunnel(Saliency), whole volume"}
    print()
    print(f"| peak memory, SmoothGrad n={args.mem_samples}, 1 class, batch 1 | volume | RSS before MB "
          "| peak RSS MB | peak - before MB | wall s (indicative) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {names[r['config']]} | {'x'.join(map(str, r['volume']))} | {r['before_mb']:.0f} "
              f"| {r['peak_mb']:.0f} | {r['peak_mb'] - r['before_mb']:.0f} | {r['wall_s']:.1f} |")
    if rows and not all(r.get("peak_reset") for r in rows):
        print("(peak RSS could not be reset after loading: peaks include loading)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--noise-level", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=None, help="default: min(n_samples, 4) for both")
    p.add_argument("--crop", choices=("none", "patch"), default="none",
                   help="'patch': centre crop of one model patch (one window)")
    p.add_argument("--max-classes", type=int, default=None, help="only the N largest predicted classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--random", action="store_true", help="random UNet + volume even if the sample exists")
    p.add_argument("--no-time", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--mem-samples", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the timing result here")
    p.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.mem_child:
        return mem_child(args)
    if not args.no_time:
        time_table(args)
    if not args.no_memory:
        memory_table(args)


if __name__ == "__main__":
    main()
