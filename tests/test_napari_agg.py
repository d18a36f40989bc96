"""The Agg2Exp dock in a real napari viewer: heatmap for the 2D sample, themed canvas,
clicking a cell adds the masked evidence as a layer, CSV/PNG export, the files view."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from seg_explain._napari._testing import ensure_display

HAS_DISPLAY = ensure_display()
pytestmark = pytest.mark.skipif(not HAS_DISPLAY, reason="napari needs OpenGL: no DISPLAY and no Xvfb installed")

from conftest import UNET_DEF, make_unet, write_bundle  # noqa: E402

from seg_explain.paths import sample_path  # noqa: E402


@pytest.fixture
def bundle2d(tmp_path):
    real = sample_path("models", "brain2d")
    if (real / "configs" / "metadata.json").is_file():
        return real
    from seg_explain._napari.sample_data import class_names

    names = class_names()
    net = make_unet(2, out_channels=len(names))
    return write_bundle(tmp_path / "tiny2d", {**UNET_DEF, "spatial_dims": 2, "out_channels": len(names)}, net,
                        names, (32, 32))


def _dock(viewer):
    _dw, widget = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Agg2Exp class importance")
    return widget


def _run(widget, qtbot):
    widget.run_button.click()
    assert widget.run_button.text() == "Cancel"
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)


def test_heatmap_click_and_export(make_napari_viewer, qtbot, bundle2d, tmp_path):
    from matplotlib.backend_bases import MouseEvent
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    from seg_explain._napari.sample_data import sample_brain2d

    viewer = make_napari_viewer()
    data, kw, _ = sample_brain2d()[0]
    image = viewer.add_image(data, **kw)
    widget = _dock(viewer)
    widget.select_model(str(bundle2d))
    widget.method_combo.setCurrentText("gradient")
    assert widget.image_combo.currentText() == image.name
    # tabified with the Explain dock, its minimum width is the pair's: leave room for the canvas
    assert widget.minimumSizeHint().width() < 450, widget.minimumSizeHint().width()
    assert widget.scope_combo.toolTip().startswith("global = mean")  # its own help survives
    _run(widget, qtbot)
    res = widget.result
    assert res is not None and res.n_images == 1, widget.status.text()
    L = len(res.row_names)
    assert res.local.shape == (1, L, L)
    # the heatmap is drawn, themed like the viewer
    ax = widget.heat_fig.axes[0]
    [im] = ax.get_images()
    assert im.get_array().shape == (len(widget._rows), L)
    theme = get_theme(viewer.theme)
    assert to_hex(widget.heat_fig.get_facecolor()) == to_hex(theme.background.as_hex())
    assert to_hex(ax.xaxis.label.get_color()) == to_hex(theme.text.as_hex())
    viewer.theme = "light" if viewer.theme != "light" else "dark"
    assert to_hex(widget.heat_fig.get_facecolor()) == to_hex(get_theme(viewer.theme).background.as_hex())
    assert widget.graph_fig.axes, "the graph is drawn too"

    # click the cell (class a, region a) of the first explained non-background row
    r = next(i for i, a in enumerate(widget._rows) if res.row_names[a] != "background")
    a = widget._rows[r]
    b = a
    widget.heat_canvas.draw()
    ax = widget.heat_fig.axes[0]  # redrawn by the theme change
    x, y = ax.transData.transform((b, r))
    ev = MouseEvent("button_press_event", widget.heat_canvas, x, y, button=1)
    n = len(viewer.layers)
    widget.heat_canvas.callbacks.process("button_press_event", ev)
    assert len(viewer.layers) == n + 1
    layer = viewer.layers[-1]
    assert layer.name == f"agg2exp · gradient · {res.row_names[a]} in {res.col_names[b]}"
    labels = widget.maps["labels"]
    assert layer.data.shape == image.data.shape
    assert not layer.data[labels != b].any(), "masked to the region"
    assert layer.data[labels == b].any()
    np.testing.assert_allclose(layer.scale, image.scale)
    assert layer.colormap.map(np.array([0.5]))[0, 3] == 0.0
    md = layer.metadata["seg_explain"]
    assert md["agg2exp_mass"] == pytest.approx(res.local[0, a, b])

    # exports
    files = widget.export_csv(str(tmp_path / "local_importance.csv"))
    rows = list(csv.DictReader(open(files[0])))
    assert len(rows) == L * L and set(rows[0]) >= {"image", "explained_class", "region", "mass"}
    assert files[1].name == "global_importance.csv" and files[1].is_file()
    pngs = widget.export_png(str(tmp_path / "heat.png"))
    assert all(p.is_file() and p.stat().st_size > 1000 for p in pngs)


def test_files_view_and_cancel(make_napari_viewer, qtbot, bundle2d, tmp_path):
    import tifffile

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.select_model(str(bundle2d))
    widget.method_combo.setCurrentText("gradient")
    src = sample_path("brain2d", "colin27_axial_t1.tif")
    flipped = tmp_path / "flipped.tif"
    img = tifffile.imread(src)
    tifffile.imwrite(flipped, np.ascontiguousarray(img[:, ::-1]), resolution=(0.5, 0.5))
    widget.add_files([src, flipped])
    _run(widget, qtbot)
    res = widget.result
    assert res.n_images == 2, widget.status.text()
    assert widget.scope_combo.count() == 3  # global + the two images
    widget.scope_combo.setCurrentIndex(2)
    np.testing.assert_allclose(widget.current_matrix(), res.local[1], equal_nan=True)

    # cancel a long run: the dock is usable again at once and keeps the previous result
    widget.method_combo.setCurrentText("smoothgrad")
    widget.params.set_value("n_samples", 5000)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.runner.pbar is not None and widget.runner.pbar.n > 0, timeout=60000)
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=2000)
    assert widget.run_button.text() == "Run Agg2Exp" and widget.result is res
