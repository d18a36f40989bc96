"""Open napari with a sample (image, the sample model's prediction, an RoI) and both docks.

    python -m seg_explain._napari.launch [brain3d|brain2d] [--no-agg]

This is what ``bash scripts/run_napari.sh`` runs: the same sample contribution and widgets a
user reaches through *File → Open Sample* and *Plugins*, opened in one go.
"""
from __future__ import annotations

import argparse

PLUGIN = "napari-seg-explain"
SAMPLES = ("brain3d", "brain2d")


def open_viewer(sample: str = "brain3d", agg_dock: bool = True, show: bool = True, viewer=None):
    """A viewer (new, or ``viewer``) with ``sample`` loaded through the plugin and the docks."""
    if viewer is None:
        import napari

        viewer = napari.Viewer(title=f"napari-seg-explain · {sample}", show=show)
    viewer.open_sample(PLUGIN, sample)
    docks = []
    if agg_dock:
        docks.append(viewer.window.add_plugin_dock_widget(PLUGIN, "Agg2Exp class importance")[0])
    # added last into the same tab group, so the Explain dock is the one in front
    dw, explain = viewer.window.add_plugin_dock_widget(PLUGIN, "Explain segmentation", tabify=agg_dock)
    docks.append(dw)
    def fit() -> None:  # once the window is laid out: keep the canvas the largest thing on screen
        try:
            from qtpy.QtCore import Qt
            from qtpy.QtWidgets import QTabBar

            qwin = viewer.window._qt_window  # noqa: SLF001
            # tabified docks: the tab bar would otherwise be as wide as both full titles
            # ("... (napari-seg-explain)") and push the canvas into a strip
            for bar in qwin.findChildren(QTabBar):
                bar.setElideMode(Qt.ElideRight)
                bar.setUsesScrollButtons(True)
            screen = qwin.screen().availableGeometry() if hasattr(qwin, "screen") else None
            if screen is not None and qwin.width() < 0.8 * screen.width():
                # the demo needs room: layer panels + docks + a canvas worth looking at
                qwin.resize(int(0.9 * screen.width()), int(0.9 * screen.height()))
            qwin.resizeDocks(docks, [400] * len(docks), Qt.Horizontal)
        except (AttributeError, TypeError, RuntimeError):  # pragma: no cover - private API moved
            pass
        viewer.reset_view()

    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, fit)
    go_to_roi(viewer)
    return viewer, explain


def go_to_roi(viewer) -> None:
    """Show the slice through the middle of the first non-empty RoI (Labels) layer of a volume."""
    import numpy as np

    for layer in viewer.layers:
        if layer.__class__.__name__ != "Labels" or layer.ndim < 3:
            continue
        if layer.metadata.get("seg_explain", {}).get("kind") != "roi":
            continue
        idx = np.nonzero(np.asarray(layer.data))
        if len(idx[0]):
            z = int(np.median(idx[0]))
            viewer.dims.set_point(0, z * layer.scale[0] + layer.translate[0])
        return


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m seg_explain._napari.launch", description=__doc__.splitlines()[0])
    ap.add_argument("sample", nargs="?", default="brain3d",
                    help="brain3d (Colin27 T1, 3D) or brain2d (an axial slice); '3d'/'2d' also work")
    ap.add_argument("--no-agg", action="store_true", help="do not open the Agg2Exp dock")
    a = ap.parse_args(argv)
    sample = a.sample if a.sample.startswith("brain") else f"brain{a.sample}"
    if sample not in SAMPLES:
        ap.error(f"unknown sample {a.sample!r}; choose brain3d or brain2d")
    import napari

    open_viewer(sample, agg_dock=not a.no_agg)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
