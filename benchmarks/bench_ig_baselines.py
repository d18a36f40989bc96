"""Integrated Gradients completeness per baseline on the shipped sample models.

    python benchmarks/bench_ig_baselines.py                  # 2D and 3D, zero/min/mean/blur, 20 steps
    python benchmarks/bench_ig_baselines.py --dims 2 --baselines zero,mean,blur,blur:20 --steps 20,100
    python benchmarks/bench_ig_baselines.py --dims 3 --baselines mean,blur --targets frontal_L,occipital_R

For each sample model (``sample_data/models/brain2d`` on ``colin27_axial_t1.tif``, RoI =
the voxels predicted as ``frontal_L``; ``brain3d`` on ``colin27_t1_2mm.nii.gz``, RoI =
``temporal_R``) and each baseline, :func:`seg_explain.explain` runs IG and the table shows
f̂ at the baseline and at the image (of the model's blended output), Δf̂ = f̂(x) − f̂(x′),
Σ IG (on the image grid) and the relative completeness gap |Σ IG − Δf̂| / |Δf̂|, plus f̂
at a few points x′ + α(x − x′) of the straight path: a path that is flat for α > 0 and
jumps at α → 0 cannot be resolved by a Riemann sum (the instance norm after the first
convolution undoes x → a + b·x, so a constant baseline's path is nearly such a path).
Baselines that are identical on the prepared image (e.g. "min" = "zero" after a
percentile scaling to [0, 1]) are run once. ``--all-classes`` (2D default) also gives the
median and max gap over all predicted classes (one shared pass per batch).

Numbers depend only on the models and images (no timing in the decision); the seconds
column is indicative (machine load).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    2: (ROOT / "sample_data" / "models" / "brain2d", ROOT / "sample_data" / "brain2d" / "colin27_axial_t1.tif",
        "frontal_L"),
    3: (ROOT / "sample_data" / "models" / "brain3d", ROOT / "sample_data" / "brain3d" / "colin27_t1_2mm.nii.gz",
        "temporal_R"),
}
ALPHAS = (0.01, 0.1, 0.5)


def blended_f_hat(model, x: torch.Tensor, c: int, roi: torch.Tensor) -> float:
    """f̂ of the model's own (sliding-window blended) output on a prepared image."""
    from seg_explain.targets import roi_sum

    return float(roi_sum(model.logits_tensor(x)[None], c, roi, model.sigmoid)[0])


def run_case(sd: int, baselines, steps_list, all_classes: bool, path: bool, target: str | None = None) -> list[dict]:
    from seg_explain import explain, load_image, load_model
    from seg_explain.explainers.gradients import baseline_tensor
    from seg_explain.explainers.multiclass import explain_classes

    bundle, image, default_target = CASES[sd]
    target = target or default_target
    model = load_model(bundle, device="cpu")
    img = load_image(image)
    prep = model.prepare(img)
    x = prep.x
    c = model.class_index(target)
    roi = model.labels_from_logits(model.logits_tensor(x)) == c
    print(f"# {bundle.name} on {image.name}: prepared {tuple(x.shape[1:])}, patch {model.patch_size}, "
          f"blend {model.blend}; target {target} ({int(roi.sum())} voxels)", flush=True)
    rows, seen = [], []
    for b in baselines:
        xb = baseline_tensor(x, b)
        same = next((name for name, t in seen if torch.equal(t, xb)), None)
        seen.append((b, xb))
        for steps in steps_list:
            if same is not None:
                prev = next(r for r in rows if r["baseline"] == same and r["steps"] == steps)
                rows.append({**prev, "baseline": b, "note": f"= {same} on the prepared image"})
                continue
            t = time.perf_counter()
            e = explain(model, img, "integrated_gradients", target=target, baseline=b, steps=steps)
            secs = time.perf_counter() - t
            ex = e.extras
            row = {"model": f"{bundle.name} {target}", "baseline": b, "steps": steps,
                   "f_b": ex["f_baseline"], "f_x": ex["f_x"],
                   "delta": ex["f_x"] - ex["f_baseline"], "ig_sum_image": float(e.attribution.astype(np.float64).sum()),
                   "gap_rel": ex["completeness_gap_rel"], "s": secs, "note": "", "warn": bool(ex["warnings"])}
            if path:
                row["path"] = [blended_f_hat(model, xb + a * (x - xb), c, roi) for a in ALPHAS]
            if all_classes:
                exps = explain_classes(model, img, "integrated_gradients", baseline=b, steps=steps)
                g = np.array([q.extras["completeness_gap_rel"] for q in exps])
                row["classes"] = (len(exps), float(np.median(g)), float(g.max()), int((g > 0.2).sum()))
            rows.append(row)
            print(f"  {b} steps {steps}: gap {row['gap_rel']:.3f} ({secs:.0f} s)", flush=True)
    return rows


def table(rows) -> None:
    print()
    print("| model | baseline | steps | f̂(x′) | f̂(x) | Δf̂ | Σ IG (image grid) | gap / abs(Δf̂) "
          f"| f̂ at α = {', '.join(map(str, ALPHAS))} | all classes: n, median gap, max gap, n > 0.2 | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        p = ", ".join(f"{v:.0f}" for v in r["path"]) if r.get("path") else ""
        cl = r.get("classes")
        cls = f"{cl[0]}, {cl[1]:.3f}, {cl[2]:.3f}, {cl[3]}" if cl else ""
        note = f" ({r['note']})" if r.get("note") else ""
        print(f"| {r['model']} | {r['baseline']}{note} | {r['steps']} | {r['f_b']:.1f} | {r['f_x']:.1f} "
              f"| {r['delta']:.1f} | {r['ig_sum_image']:.1f} | {r['gap_rel']:.3f} | {p} | {cls} | {r['s']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="2,3", help="which sample models: 2, 3 or 2,3")
    p.add_argument("--baselines", default="zero,min,mean,blur")
    p.add_argument("--steps", default="20", help="comma-separated step counts")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--all-classes", default="2", help="dims for which to add the all-class summary ('' for none)")
    p.add_argument("--no-path", action="store_true", help="skip f̂ along the path")
    p.add_argument("--targets", default="", help="comma-separated class names instead of the default RoI "
                   "(frontal_L in 2D, temporal_R in 3D)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dims = [int(d) for d in args.dims.split(",") if d]
    every = {int(d) for d in args.all_classes.split(",") if d}
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] or [None]
    for sd in dims:
        for t in targets:
            rows += run_case(sd, baselines, steps, sd in every, not args.no_path, t)
    table(rows)


if __name__ == "__main__":
    main()
