#!/usr/bin/env python
"""Cost estimates against the real runs: what the docks say before running vs what happens.

    python benchmarks/bench_cost.py [--dims 2 3] [--methods pdcr smoothgrad ...] [--threads 2]
                                    [--quick] [--json out.json]

For the shipped samples (2D: ``colin27_axial_t1`` with the ``frontal_L`` RoI; 3D:
``colin27_t1_2mm`` with the ``temporal_R`` RoI) and every registered method at the settings the
Explain dock proposes for the model (``MethodSpec.gui_defaults``; PdCR also with
``adaptive=true`` and with zero occlusion), the table prints the estimate
(:func:`seg_explain.explainers.cost.estimate`, from the registry's cost model and the model's measured
pass times, exactly what the dock shows) next to the measured forward passes
(``Explanation.n_forward``) and wall time, and their ratios (goal: within 2x, i.e. ratio in
[0.5, 2]). ``--quick`` runs 3D PdCR with ``n_screen=1, n_draws=2`` instead of the dock's
settings (the pass count's structure: reachable blocks x RoI windows; the estimate uses the
same settings). Then Agg2Exp as its dock runs it by default (the core's default method at the
dock's settings, every predicted class of the sample image) against
:func:`seg_explain.explainers.cost.estimate_agg2exp` (``--no-agg2exp`` skips it; the
estimate assumes every foreground class is predicted, the run explains those that are). The model's pass times are measured again right before each case (as the dock
does after loading), so a loaded machine slows both sides; the wall time still varies with
other load on the machine (the "ms/pass" column: the measured forward time of one row).
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

from seg_explain import agg2exp, explain, load_image, load_model, methods  # noqa: E402
from seg_explain.allocator import tune_allocator  # noqa: E402
from seg_explain.explainers.cost import estimate, estimate_agg2exp  # noqa: E402
from seg_explain.explainers.job import measure_pass_times  # noqa: E402
from seg_explain.explainers.registry import get_spec  # noqa: E402
from seg_explain.frontend.agg2exp import default_method  # noqa: E402
from seg_explain.paths import sample_path  # noqa: E402

SAMPLES = {2: ("models/brain2d", "brain2d/colin27_axial_t1.tif", "brain2d/colin27_axial_roi_frontal_L.tif",
               "frontal_L"),
           3: ("models/brain3d", "brain3d/colin27_t1_2mm.nii.gz", "brain3d/colin27_roi_temporal_R.nii.gz",
               "temporal_R")}


def cases(sd: int, names: list[str], quick: bool):
    for m in names:
        spec = get_spec(m)
        if sd not in spec.caps.dims:
            continue
        p = {k: v for k, v in spec.gui_defaults(sd).items() if not spec.param(k).is_object}
        if m == "pdcr":
            if quick and sd == 3:      # the pass count's structure at a fraction of the time
                yield m, {**p, "adaptive": False, "n_screen": 1, "n_draws": 2}
            else:
                yield m, {**p, "adaptive": False}
                yield m, {**p, "adaptive": True}
            yield m, {**p, "bank": "zero"}
        else:
            yield m, p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-agg2exp", dest="agg2exp", action="store_false")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tune_allocator()
    names = a.methods or methods()
    rows = []
    print("| dims | method | settings | est. passes (range) | passes | ratio | est. s | s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sd in a.dims:
        mdir, ipath, rpath, cls = SAMPLES[sd]
        model = load_model(str(sample_path(mdir)))
        img = load_image(str(sample_path(ipath)))
        roi = np.asarray(load_image(str(sample_path(rpath))).data) > 0
        measure_pass_times(model)
        prep = model.prepare(img)
        roi_m = prep.roi_to_model(roi)
        mshape = tuple(prep.x.shape[1:])
        explain(model, img, "gradient", target=cls, roi=roi)    # untimed: first-call imports and warm-up
        for m, p in cases(sd, names, a.quick):
            measure_pass_times(model, repeat=3)
            est = estimate(model, m, p, mshape, roi_m)
            t0 = time.perf_counter()
            ex = explain(model, img, m, target=cls, roi=roi, **p)
            wall = time.perf_counter() - t0
            rng = ""
            if est.forward_min is not None or est.forward_max is not None:
                rng = f" ({est.forward_min or est.forward:,}–{est.forward_max or est.forward:,})"
            shown = {k: v for k, v in p.items() if k in ("adaptive", "bank", "block_size", "n_samples", "steps",
                                                          "n_draws", "n_screen")}
            r_p = est.forward / max(ex.n_forward, 1)
            r_s = (est.seconds or float("nan")) / wall
            print(f"| {sd}D | {m} | {shown} | {est.forward:,}{rng} | {ex.n_forward:,} | {r_p:.2f} | "
                  f"{est.seconds:.1f} | {wall:.1f} | {r_s:.2f} |", flush=True)
            rows.append(dict(dims=sd, method=m, params={k: str(v) for k, v in p.items()}, est_forward=est.forward,
                             est_min=est.forward_min, est_max=est.forward_max, forward=ex.n_forward,
                             backward=ex.n_backward, est_backward=est.backward, est_s=est.seconds, wall_s=wall))
        if a.agg2exp:
            rows.append(agg2exp_row(model, img, sd, mshape))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


def agg2exp_row(model, img, sd: int, mshape) -> dict:
    """Agg2Exp on the sample image at the dock's defaults: estimate vs run (prints a row)."""
    m = default_method(methods())
    spec = get_spec(m)
    p = {k: v for k, v in spec.gui_defaults(sd).items() if not spec.param(k).is_object}
    measure_pass_times(model, repeat=3)
    est = estimate_agg2exp(model, m, p, mshape, len(model.class_names) - 1, 1)
    t0 = time.perf_counter()
    res = agg2exp(model, img, method=m, **p)
    wall = time.perf_counter() - t0
    fwd, bwd = int(np.sum(res.n_forward)), int(np.sum(res.n_backward))
    passes, est_passes = fwd + bwd, est.forward + est.backward
    print(f"| {sd}D | Agg2Exp ({m}, {int(np.sum(res.present))} of {len(res.row_names)} classes) | {p} | {est_passes:,} | {passes:,} | {est_passes / max(passes, 1):.2f} | "
          f"{est.seconds:.1f} | {wall:.1f} | {(est.seconds or float('nan')) / wall:.2f} |", flush=True)
    return dict(dims=sd, method=f"agg2exp:{m}", params={k: str(v) for k, v in p.items()}, est_forward=est.forward,
                est_backward=est.backward, forward=fwd, backward=bwd, est_s=est.seconds,
                wall_s=wall)


if __name__ == "__main__":
    sys.exit(main())
