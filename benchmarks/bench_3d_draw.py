#!/usr/bin/env python
"""First 3D frame with a result vs without it (software OpenGL under Xvfb).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/bench_3d_draw.py \
        [--method gradient] [--repeat 2]

The 3D sample (90x108x90 at 2 mm) in a real viewer, the Explain dock explains ``temporal_R``
through its own controls; then, in the 3D view, the wall time of a forced canvas draw
(``viewer.screenshot(canvas_only=True)``) for:

- ``context``: the anatomy alone (the result and its surfaces hidden);
- ``result (bounded)``: the result as the dock shows it (two iso-surface layers of the
  strongest evidence, each cut to the box around its surface, then max-pooled to at most
  ``EVIDENCE_MAX_VOXELS`` voxels);
- ``result (full resolution)``: the same surfaces cut to their box but never pooled.

Goal: the result's first frame <= 2x the context's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import seg_explain  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="gradient")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    os.environ.setdefault("SEG_EXPLAIN_SETTINGS", str(Path(tempfile.gettempdir()) / "seg_explain_bench3d.ini"))
    sys.path.insert(0, str(ROOT / "scripts"))
    import napari
    from screenshots import add_sample, explain_dock, result_layer, run, wait

    from seg_explain._napari.sample_data import sample_brain3d
    from seg_explain.frontend import evidence as ev
    from seg_explain.paths import sample_path

    v = napari.Viewer(show=True)
    v.window._qt_window.resize(1400, 900)  # noqa: SLF001
    image, pred, roi = add_sample(v, sample_brain3d)
    w = explain_dock(v)
    w.select_model(str(sample_path("models", "brain3d")))
    wait(lambda: w.model_info is not None)
    w.roi_combo.setCurrentText(roi.name)
    w.class_combo.setCurrentText("temporal_R")
    run(w, a.method)
    attr = result_layer(v)

    def frame() -> float:
        t0 = time.perf_counter()
        v.screenshot(canvas_only=True)
        return time.perf_counter() - t0

    def surfaces():
        return [ly for ly in v.layers if (ly.metadata.get("seg_explain") or {}).get("kind") == "evidence"]

    rows = []
    v.dims.ndisplay = 3
    for name, cap in (("result (bounded)", ev.EVIDENCE_MAX_VOXELS), ("result (full resolution)", 10 ** 12)):
        ev.bounded_volume.__defaults__ = (cap,)            # the bound evidence_surfaces uses
        w._sync_3d()                                       # rebuild the surfaces at this bound
        for s in surfaces():
            s.visible = False
        ctx = [frame() for _ in range(a.repeat)]
        for s in surfaces():
            s.visible = True
        res = [frame() for _ in range(a.repeat)]
        vox = sum(int(s.data.size) for s in surfaces())
        rows.append((name, vox, ctx, res))
    print("| view | surface voxels | context: first / next frame (s) | with result: first / next frame (s) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, vox, ctx, res in rows:
        print(f"| {name} | {vox:,} | {ctx[0]:.2f} / {min(ctx[1:] or ctx):.2f} | {res[0]:.2f} / "
              f"{min(res[1:] or res):.2f} | {res[0] / ctx[0]:.2f} |")
    del attr
    v.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
