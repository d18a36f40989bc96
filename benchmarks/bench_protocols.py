#!/usr/bin/env python
"""Why ``protocol="default"`` is the default: what each rule of the Agg2Exp authors' protocol
(``protocol="agg2exp"``, seg_explain.protocols) does to the numbers, measured.

    python benchmarks/bench_protocols.py [--threads 1]

1. RoI rule. A voxel-wise threshold model (class 1 where x > 0.5, logit x − 0.5) on a 256²
   image in [0, 1]. Integrated Gradients is exact on it: from a zero baseline it is each
   voxel's contribution to f̂ with the RoI fixed — the scalar every explainer here (and the
   authors' gradient code, which fixes the RoI from the input it explains) explains. The
   table gives its faithfulness under both RoI rules, and that of IG from 0.5 (the exact
   contribution when a removed voxel leaves the region).
2. Explainer seed. SmoothGrad (n = 20) on the 2D sample model and slice with *zero* input
   noise: the sensitivity a method scores when nothing about the input changes.
3. Noise scale. The prepared sample images' intensity range: what an absolute 0.1 is as a
   share of it (the authors' CT window was [0, 1], so there 0.1 = 10 %).
4. Subset size. 224² voxels as a share of our inputs and of a chest CT.
5. Both protocols side by side on the sample slice (same subset share), SmoothGrad and
   gradient: how far the rules move the figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import seg_explain  # noqa: F401
except ImportError:  # a source checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from seg_explain import load_image, load_model  # noqa: E402
from seg_explain.dataset import evaluate  # noqa: E402
from seg_explain.models import SegModel  # noqa: E402
from seg_explain.protocols import AUTHORS_SUBSET  # noqa: E402

SAMPLE = ROOT / "sample_data"


def threshold_model() -> SegModel:
    net = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 1.0
        net.bias[1] = -0.5
    return SegModel(net.eval(), spatial_dims=2, in_channels=1, class_names=["bg", "fg"], device="cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    print("1. RoI rule: faithfulness of exact maps on the threshold model (256², 100 subsets, seeds 0-4)")
    model = threshold_model()
    rows = []
    for s in range(5):
        x = np.random.default_rng(s).random((256, 256)).astype(np.float32)
        x[0, 0] = 0.0
        m = [("IG from 0 (exact, RoI fixed)", "integrated_gradients", {"baseline": "zero", "steps": 2}),
             ("IG from 0.5 (exact, RoI recomputed)", "integrated_gradients",
              {"baseline": np.full(x.shape, 0.5, np.float32), "steps": 2})]
        for proto in ("default", "agg2exp"):
            res = evaluate(model, [x], m, classes=[1], n_sensitivity=0, subset=0.05, protocol=proto, seed=s)
            rows += [(proto, r["method"], r["faithfulness"]) for r in res.rows]
    for meth in sorted({r[1] for r in rows}):
        vals = {p: np.array([f for q, mm, f in rows if q == p and mm == meth]) for p in ("default", "agg2exp")}
        print(f"   {meth:<38} default {vals['default'].mean():.4f} (min {vals['default'].min():.4f})   "
              f"agg2exp {vals['agg2exp'].mean():.4f} (min {vals['agg2exp'].min():.4f})")

    model2 = load_model(SAMPLE / "models" / "brain2d", device="cpu")
    img = load_image(SAMPLE / "brain2d" / "colin27_axial_t1.tif")
    pred = model2.predict(img)
    counts = np.bincount(pred.ravel(), minlength=len(model2.class_names))
    fg = [int(c) for c in np.argsort(-counts) if c > 0][:2]
    classes = [0] + fg
    print(f"\n2. Explainer seed: SmoothGrad n=20, zero input noise, 2D sample slice, classes "
          f"{[model2.class_names[c] for c in classes]}, 3 copies")
    sg = [("SmoothGrad", "smoothgrad", {"n_samples": 20})]
    for proto in ("default", "agg2exp"):
        for noise in (0.0, 0.1):
            res = evaluate(model2, [img], sg, classes=classes, n_faithfulness=2, subset=0.05, n_sensitivity=3,
                           noise=noise, protocol=proto)
            v = np.array([r["sensitivity"] for r in res.rows])
            print(f"   {proto:<8} noise {noise:.1f}: sensitivity {v.mean():.3f} ± {v.std(ddof=1):.3f}")

    print("\n3. Noise scale: prepared sample images (model input)")
    for name, mdl, path in [("2D colin27 slice", model2, SAMPLE / "brain2d" / "colin27_axial_t1.tif"),
                            ("3D colin27", None, SAMPLE / "brain3d" / "colin27_t1_2mm.nii.gz"),
                            ("3D held-out ITK head", None, SAMPLE / "heldout" / "KmeansTest_T1UCharRaw.nii.gz")]:
        mdl = mdl or load_model(SAMPLE / "models" / "brain3d", device="cpu")
        x = mdl.prepare(load_image(path)).x
        r = float(x.max() - x.min())
        print(f"   {name:<22} range [{float(x.min()):.2f}, {float(x.max()):.2f}]: absolute 0.1 = "
              f"{0.1 / r:.3f} × range (ours: 0.100 × range)")

    print("\n4. Subset size: 224² = 50176 voxels is")
    for name, p in [("a 40³ crop (the Table-1 3D inputs)", 40 ** 3), ("the 2D sample slice 108×90", 108 * 90),
                    ("a 96³ patch (the authors' training patch)", 96 ** 3),
                    ("a chest CT at 1.5 mm, 273×273×230", 273 * 273 * 230)]:
        share = AUTHORS_SUBSET / p
        print(f"   {name:<44} {share:8.1%}" + ("  (more than the image)" if share > 1 else ""))

    print("\n5. Side by side on the 2D sample slice (subset 5 %, 100 subsets, 3 copies, noise 0.1)")
    m = [("SmoothGrad", "smoothgrad", {"n_samples": 20}), ("Vanilla Gradient", "gradient", {})]
    out = {}
    for proto in ("default", "agg2exp"):
        res = evaluate(model2, [img], m, classes=classes, subset=0.05, n_sensitivity=3, protocol=proto)
        out[proto] = {(r["method"], r["class"]): r for r in res.rows}
    print(f"   {'method':<17}{'class':<16}{'faithfulness default / agg2exp':>32}{'sensitivity default / agg2exp':>32}")
    for key in out["default"]:
        a, b = out["default"][key], out["agg2exp"][key]
        print(f"   {key[0]:<17}{key[1]:<16}{a['faithfulness']:>16.3f} / {b['faithfulness']:<13.3f}"
              f"{a['sensitivity']:>16.3f} / {b['sensitivity']:.3f}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s, torch threads {args.threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
