"""README screenshots from a real napari session (2D and 3D), driven through the docks.

    apt-get install -y xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
        libxcb-render-util0 libxkbcommon-x11-0 libgl1 libegl1
    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshots.py [--out docs]

Writes ``screenshot_2d.png`` (2D sample slice, SmoothGrad of frontal_L in the painted RoI:
colour bar, legend, RoI outline, the cost line), ``screenshot_3d.png`` (3D sample, SmoothGrad
of temporal_R in the 3D view: surfaces of the strongest supporting / opposing evidence),
``screenshot_3d_slice.png`` (the same volume, slice view), ``screenshot_3d_cam.png`` and
``screenshot_3d_pdcr.png`` (Seg-Grad-CAM and PdCR of temporal_R in the 3D view, the dock's
defaults; nothing touched but the camera), ``screenshot_pdcr_2d.png`` (PdCR with
its report) and ``screenshot_agg2exp.png`` (the Agg2Exp dock on the 2D sample). Everything runs
offline on the shipped sample data and models; the explanations go through the Explain button.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.01)


def wait(cond, timeout: float = 1800.0) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out")
        QApplication.processEvents()
        time.sleep(0.01)


def add_sample(viewer, fn):
    return [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in fn()]


def explain_dock(viewer):
    _dw, w = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Explain segmentation")
    return w


def run(w, method: str, **params) -> None:
    w.set_method(method)
    for k, v in params.items():
        w.params.set_value(k, v)
    pump(0.5)   # the cost line updates
    w.explain_button.click()
    wait(lambda: not w.running)
    if not w.status.text().startswith("Done"):
        raise RuntimeError(w.status.text())
    pump(1.0)


def close_toasts(viewer) -> None:
    """Hide the notification pop-ups (they would cover the canvas in a still picture)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for w in viewer.window._qt_window.findChildren(NapariQtNotification):  # noqa: SLF001
        w.close()


def result_layer(viewer):
    return next(ly for ly in reversed(list(viewer.layers))
                if (ly.metadata.get("seg_explain") or {}).get("kind") == "attribution" and ly.visible)


def shot(viewer, path: Path) -> None:
    pump(0.5)
    close_toasts(viewer)
    pump(0.3)
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs")
    ap.add_argument("--only", nargs="*", default=["2d", "3d", "3dcam", "3dpdcr", "pdcr", "agg", "methods2d"])
    ap.add_argument("--size", default="1400x900")
    ap.add_argument("--view", default="-0.5,0.8,0.9",
                    help="3D view direction in data axes (S, P, L): from the right, front and above")
    ap.add_argument("--zoom", type=float, default=3.0)
    ap.add_argument("--try-views", action="append", default=[], help="extra 3D views (try_3d_<i>.png)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import tempfile

    os.environ.setdefault("SEG_EXPLAIN_SETTINGS", str(Path(tempfile.gettempdir()) / "seg_explain_screenshots.ini"))
    width, height = (int(v) for v in args.size.split("x"))

    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    warnings.filterwarnings("ignore", message=".*System theme detection.*")
    import napari

    from seg_explain._napari.sample_data import sample_brain2d, sample_brain3d
    from seg_explain.paths import sample_path

    def new_viewer(title):
        v = napari.Viewer(title=title, show=True)
        v.window._qt_window.resize(width, height)  # noqa: SLF001 - window size for the picture
        v.window._qt_window.move(0, 0)  # noqa: SLF001
        v.theme = "dark"
        return v

    if "methods2d" in args.only:
        # every method's default result on the 2D sample, untouched (docs/result_2d_<method>.png);
        # PdCR with adaptive draws (the 3D default; its full-N map looks the same, ~3x the passes)
        from seg_explain.explainers.registry import specs

        v = new_viewer("napari-seg-explain: 2D defaults")
        image, pred, roi = add_sample(v, sample_brain2d)
        w = explain_dock(v)
        w.select_model(str(sample_path("models", "brain2d")))
        wait(lambda: w.model_info is not None)
        w.roi_combo.setCurrentText(roi.name)
        w.class_combo.setCurrentText("frontal_L")
        v.reset_view()
        for spec in specs():
            run(w, spec.name, **({"adaptive": True} if spec.name == "pdcr" else {}))
            shot(v, out / f"result_2d_{spec.name}.png")
        v.close()

    if "2d" in args.only:
        v = new_viewer("napari-seg-explain: 2D")
        image, pred, roi = add_sample(v, sample_brain2d)
        pred.visible = False
        roi.contour = 1
        w = explain_dock(v)
        w.select_model(str(sample_path("models", "brain2d")))
        wait(lambda: w.model_info is not None)
        w.roi_combo.setCurrentText(roi.name)
        w.class_combo.setCurrentText("frontal_L")
        run(w, "smoothgrad", n_samples=20)
        sg = result_layer(v)
        v.layers.selection.active = sg
        w.params.set_value("n_samples", 20)   # the cost line of the next run stays on screen
        pump(0.5)
        v.reset_view()
        shot(v, out / "screenshot_2d.png")
        if "pdcr" in args.only:
            sg.visible = False
            w.set_method("pdcr")
            w.bank_combo.setCurrentText("sample bank (MNI152)")
            run(w, "pdcr", adaptive=True)
            v.reset_view()
            pump(1.0)
            v.layers.selection.active = result_layer(v)
            shot(v, out / "screenshot_pdcr_2d.png")
        if "agg" in args.only:
            v.window.remove_dock_widget(v.window._dock_widgets["Explain segmentation (napari-seg-explain)"])  # noqa: SLF001
            _dw, agg = v.window.add_plugin_dock_widget("napari-seg-explain", "Agg2Exp class importance")
            agg.select_model(str(sample_path("models", "brain2d")))
            agg.set_method("smoothgrad")
            agg.params.set_value("n_samples", 10)
            agg.run_button.click()
            wait(lambda: not agg.running)
            if agg.result is None:
                raise RuntimeError(agg.status.text())
            a = agg.result.row_names.index("frontal_L")
            b = agg.result.row_names.index("frontal_R")
            agg.show_cell(a, b)
            for ly in v.layers:
                if (ly.metadata.get("seg_explain") or {}).get("kind") in ("attribution", "roi_outline") \
                        and "Agg2Exp" not in ly.name and " in " not in ly.name:
                    ly.visible = False
            roi.visible = True
            v.reset_view()
            pump(1.0)
            shot(v, out / "screenshot_agg2exp.png")
        v.close()

    if "3d" in args.only or "3dcam" in args.only or "3dpdcr" in args.only:
        # the 3D view exactly as the dock leaves it: nothing touched after Explain but the camera
        v = new_viewer("napari-seg-explain: 3D")
        image, pred, roi = add_sample(v, sample_brain3d)
        w = explain_dock(v)
        w.select_model(str(sample_path("models", "brain3d")))
        wait(lambda: w.model_info is not None)
        w.roi_combo.setCurrentText(roi.name)
        w.class_combo.setCurrentText("temporal_R")

        def in_3d(path):
            attr = result_layer(v)
            v.dims.ndisplay = 3          # the dock adds the evidence surfaces and the anatomy context
            pump(1.0)
            v.layers.selection.active = attr
            # camera at the patient's right, in front and above, superior up (axes: S, P, L)
            v.camera.set_view_direction(tuple(float(a) for a in args.view.split(",")), up_direction=(1, 0, 0))
            v.camera.zoom = args.zoom
            shot(v, path)
            return attr

        if "3d" in args.only:
            run(w, "smoothgrad")
            attr = in_3d(out / "screenshot_3d.png")
            for i, extra in enumerate(args.try_views):
                v.camera.set_view_direction(tuple(float(a) for a in extra.split(",")), up_direction=(1, 0, 0))
                shot(v, out / f"try_3d_{i}.png")
            v.dims.ndisplay = 2
            z = int(round(float(v.layers[roi.name].data.nonzero()[0].mean())))
            v.dims.set_current_step(0, z)
            v.layers.selection.active = attr
            v.reset_view()
            shot(v, out / "screenshot_3d_slice.png")
        if "3dcam" in args.only:
            v.dims.ndisplay = 2
            run(w, "seg_grad_cam")       # the dock's defaults
            in_3d(out / "screenshot_3d_cam.png")
        if "3dpdcr" in args.only:
            # the dock's 3D defaults: 16-voxel blocks, the sample bank's real blocks, adaptive draws
            # (repeated draws of the bank's background blocks share a pass: minutes on 2 CPU cores)
            v.dims.ndisplay = 2
            run(w, "pdcr")
            in_3d(out / "screenshot_3d_pdcr.png")
        v.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
