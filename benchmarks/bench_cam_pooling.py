#!/usr/bin/env python
"""Which Seg-Grad-CAM α pooling is more faithful on windowed 3D volumes?

``alpha_pool="image"`` (one α from the gradient of the model's blended output) against
``"window"`` (one α per sliding window), on the 3D sample bundle (colin27, 8 windows) and the
nnU-Net 3d_fullres test fixture (held-out MNI152 at 6x4x4 mm), several RoIs each (a predicted
class per RoI). Faithfulness by progressive perturbation (PdCR paper §4.3: the top-k blocks of
the map replaced by real bank blocks, area under the RoI-Dice drop curve; higher = the map
ranks the blocks the RoI depends on first) and the Agg2Exp faithfulness correlation
(``seg_explain.metrics``, default protocol).

    PYTHONPATH=src python benchmarks/bench_cam_pooling.py [--threads 2] [--draws 5]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cases():
    from seg_explain import load_image, load_model

    yield ("sample 3D bundle", load_model(ROOT / "sample_data" / "models" / "brain3d", device="cpu"),
           load_image(ROOT / "sample_data" / "brain3d" / "colin27_t1_2mm.nii.gz"),
           ("frontal_L", "temporal_R", "occipital_R", "cerebellum"))
    fix = ROOT / "tests" / "data" / "nnunet"
    yield ("nnU-Net 3d_fullres", load_model(fix / "Dataset901_TinyBrain" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                                            device="cpu"),
           load_image(fix / "heldout" / "mni152_6x4x4.nii.gz"),
           ("cerebrum_left", "cerebrum_right", "cerebellum_brainstem"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--k-max", type=int, default=10)
    ap.add_argument("--bank", default="zero", help='"zero" (zero occlusion) or a bank file, e.g. '
                    "sample_data/pdcr_bank_3d.npz (real MNI152 blocks)")
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--only", choices=("sample", "nnunet"), default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from seg_explain import explain
    from seg_explain.dataset import evaluate
    from seg_explain.progressive import progressive_perturbation

    rows = []
    for title, model, img, names in cases():
        if a.only and not title.lower().startswith(a.only[:6].lower()):
            continue
        bank = a.bank
        for name in names:
            if name not in model.class_names:
                continue
            c = model.class_index(name)
            t0 = time.perf_counter()
            res = {}
            for pool in ("image", "window"):
                e = explain(model, img, "seg_grad_cam", target=c, alpha_pool=pool)
                pp = progressive_perturbation(model, img, e.attribution, target=c, roi=e.roi, bank=bank,
                                              block_size=a.block_size, k_max=a.k_max, n_draws=a.draws, method="seg_grad_cam")
                m = evaluate(model, [img], methods=[f"seg_grad_cam:alpha_pool={pool}"], classes=[c],
                             n_faithfulness=50, n_sensitivity=0)
                fc = float(np.nanmean([r["faithfulness"] for r in m.rows]))
                res[pool] = (pp.score, fc, e.extras.get("n_windows"))
            r = float(np.corrcoef(*[explain(model, img, "seg_grad_cam", target=c, alpha_pool=p).attribution.ravel()
                                    for p in ("image", "window")])[0, 1])
            rows.append((title, name, res["image"], res["window"], r, time.perf_counter() - t0))
            print(f"{title:20s} {name:22s} windows {res['image'][2]}  progressive score image "
                  f"{res['image'][0]:.3f} window {res['window'][0]:.3f}  faithfulness image {res['image'][1]:.3f} "
                  f"window {res['window'][1]:.3f}  r(image, window) {r:.2f}  ({rows[-1][-1]:.0f} s)", flush=True)
    print("\n| model | RoI class | progressive score: image | window | faithfulness: image | window | r |")
    print("|---|---|---|---|---|---|---|")
    for t, n, i, w, r, _ in rows:
        print(f"| {t} | {n} | {i[0]:.3f} | {w[0]:.3f} | {i[1]:.3f} | {w[1]:.3f} | {r:.2f} |")
    wins = sum(i[0] > w[0] for _, _, i, w, _, _ in rows)
    fwins = sum(i[1] > w[1] for _, _, i, w, _, _ in rows)
    print(f"\nimage pooling: higher progressive score on {wins}/{len(rows)} RoIs (mean "
          f"{np.mean([x[2][0] for x in rows]):.3f} vs {np.mean([x[3][0] for x in rows]):.3f}), higher "
          f"faithfulness on {fwins}/{len(rows)} (mean {np.mean([x[2][1] for x in rows]):.3f} vs "
          f"{np.mean([x[3][1] for x in rows]):.3f})")


if __name__ == "__main__":
    main()
