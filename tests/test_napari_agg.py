"""The Agg2Exp dock in a real napari viewer: a narrow dock with meaningful entries before the
first run, methods from the registry, progress in the dock, heatmap labels that do not
overlap, the graph's top-k edges and legend, hover/click on a cell (a layer with a
colorbar), light-theme figure export whatever the viewer's theme, the files view with
partial results, cancelling (no layer), and shutdown joining a running worker."""
from __future__ import annotations

import csv
import inspect
import re

import numpy as np
import pytest

from seg_explain._napari._testing import ensure_display

HAS_DISPLAY = ensure_display()
pytestmark = pytest.mark.skipif(not HAS_DISPLAY, reason="napari needs OpenGL: no DISPLAY and no Xvfb installed")


from seg_explain.paths import sample_path  # noqa: E402

MAX_DOCK_PX = 420


def _dock(viewer):
    _dw, widget = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Agg2Exp class importance")
    return widget


def _image(viewer):
    from seg_explain._napari.sample_data import sample_brain2d

    data, kw, _ = sample_brain2d()[0]
    return viewer.add_image(data, **kw)


def _spy_stage(widget, monkeypatch) -> list[str]:
    seen: list[str] = []
    orig = widget.stage.setText

    def record(text):
        seen.append(str(text))
        orig(text)

    monkeypatch.setattr(widget.stage, "setText", record)
    return seen


def _run(widget, qtbot, timeout=120000):
    widget.run_button.click()
    assert widget.run_button.text() == "Cancel"
    assert not widget.method_combo.isEnabled() and not widget.params.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    assert widget.run_button.text() == "Run Agg2Exp"


def _cell_event(widget, r, c, name="button_press_event"):
    from matplotlib.backend_bases import MouseEvent

    widget.heat_canvas.draw()
    ax = widget.heat_fig.axes[0]
    x, y = ax.transData.transform((c, r))
    return MouseEvent(name, widget.heat_canvas, x, y, button=1 if name == "button_press_event" else None)


def _corner_rgb(path):
    from PIL import Image

    return tuple(np.asarray(Image.open(path).convert("RGB"))[3, 3])


def test_before_the_first_run(make_napari_viewer, qtbot, sample_bundle2d):
    from seg_explain.dataset import Agg2ExpRun
    from seg_explain.explainers.registry import specs

    viewer = make_napari_viewer(show=True)
    _image(viewer)
    widget = _dock(viewer)
    # the view combo says what will be shown, and the figure says what to do
    assert widget.scope_combo.count() >= 1 and widget.scope_combo.currentText().startswith("global")
    assert widget.scope_combo.toolTip().startswith("global = mean")   # its own help survives
    assert widget.kind_combo.currentText() and widget.kind_combo.currentData() == "mass"
    assert "Run Agg2Exp" in " ".join(t.get_text() for t in widget.heat_fig.axes[0].texts)
    # the method list is the registry's: natural Agg2Exp choices (shared passes) first, cost shown
    by_name = {s.name: s for s in specs()}
    names = [widget.method_combo.itemData(i) for i in range(widget.method_combo.count())]
    assert sorted(names) == sorted(by_name)
    multi = [by_name[n].caps.multiclass for n in names]
    assert multi == sorted(multi, reverse=True)
    for i, n in enumerate(names):
        assert widget.method_combo.itemText(i) == f"{by_name[n].title} · {by_name[n].cost_class}"
    assert widget.method == inspect.signature(Agg2ExpRun).parameters["method"].default
    spec = by_name[widget.method]
    widget.select_model(str(sample_bundle2d))
    assert widget.wait_model(60)
    assert set(widget.params.editors) == {p.name for p in spec.params if p.kind not in ("bank", "label_map")}
    # a narrow dock: its hints and the width it gets when docked
    qtbot.waitUntil(lambda: widget.width() > 0, timeout=5000)
    assert widget.sizeHint().width() <= MAX_DOCK_PX, widget.sizeHint().width()
    assert widget.minimumSizeHint().width() <= MAX_DOCK_PX, widget.minimumSizeHint().width()
    assert widget.width() <= MAX_DOCK_PX, widget.width()


@pytest.mark.slow
def test_run_progress_heatmap_graph_click_and_export(make_napari_viewer, qtbot, sample_bundle2d, tmp_path,
                                                     monkeypatch):
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    from seg_explain.explainers.registry import get_spec
    from seg_explain.plots import EDGE_GID, importance_graph, overlapping

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    image = _image(viewer)
    widget = _dock(viewer)
    widget.select_model(str(sample_bundle2d))
    widget.set_method("gradient")
    assert widget.image_combo.currentText() == image.name
    values: list[int] = []
    widget.progress.valueChanged.connect(values.append)
    stages = _spy_stage(widget, monkeypatch)
    _run(widget, qtbot)
    res = widget.result
    assert res is not None and res.n_images == 1, widget.status.text()
    # the core's progress reached the dock: bar values, stage with "image i/n"
    assert values and max(values) == 1000, values
    title = get_spec("gradient").title
    assert any(s.startswith(f"{title} · image 1/1") for s in stages), stages
    L = len(res.row_names)
    assert res.local.shape == (1, L, L)

    # the heatmap: drawn in the viewer's theme, labels that do not overlap
    ax = widget.heat_fig.axes[0]
    [im] = ax.get_images()
    assert im.get_array().shape == (len(widget._rows), L)
    theme = get_theme(viewer.theme)
    assert to_hex(widget.heat_fig.get_facecolor()) == to_hex(theme.background.as_hex())
    assert to_hex(ax.xaxis.label.get_color()) == to_hex(theme.text.as_hex())
    widget.heat_canvas.draw()
    assert overlapping(ax.get_xticklabels(), "x") == []
    assert overlapping(ax.get_yticklabels(), "y") == []
    assert all(t.get_visible() for t in ax.get_xticklabels()), "16 classes fit the dock's width"
    cbar = widget.heat_fig.axes[1]
    assert "share of class a's |attribution|" in cbar.get_ylabel()
    viewer.theme = "light"
    assert to_hex(widget.heat_fig.get_facecolor()) == to_hex(get_theme("light").background.as_hex())
    viewer.theme = "dark"

    # the graph: exactly top-k incoming edges per class (background left out), a legend
    widget.tabs.setCurrentIndex(1)
    widget.draw("graph")
    gax = widget.graph_fig.axes[0]
    m = widget.current_matrix()
    g = importance_graph(m, res.row_names, res.col_names, top_k=3, exclude=["background"])
    edges = [p for p in gax.patches if p.get_gid() == EDGE_GID]
    assert len(edges) == g.number_of_edges() > 0
    for a, name in enumerate(res.row_names):
        cand = [j for j in range(L) if j != a and res.col_names[j] != "background" and np.isfinite(m[a, j])
                and m[a, j] > 0]
        assert g.in_degree(name) == min(3, len(cand))
    assert widget.graph_fig.legends or gax.get_legend() is not None
    widget.topk.setValue(1)
    widget.show_background.setChecked(True)
    qtbot.waitUntil(lambda: not widget._stale["graph"], timeout=5000)
    gax = widget.graph_fig.axes[0]
    g1 = importance_graph(m, res.row_names, res.col_names, top_k=1)
    assert len([p for p in gax.patches if p.get_gid() == EDGE_GID]) == g1.number_of_edges()
    assert "background" in {u for u, _v in g1.edges}
    widget.tabs.setCurrentIndex(0)

    # hover names a cell in full (labels are shortened); a click adds the evidence as a layer
    long = [a for a in widget._rows if len(res.row_names[a]) > 12 and res.row_names[a] != "background"]
    r = widget._rows.index(long[0] if long else next(a for a in widget._rows if res.row_names[a] != "background"))
    a = widget._rows[r]
    b = a
    widget.heat_canvas.callbacks.process("motion_notify_event", _cell_event(widget, r, b, "motion_notify_event"))
    assert widget.status.text().startswith(f"{res.row_names[a]} ← {res.col_names[b]}:"), widget.status.text()
    n = len(viewer.layers)
    widget.heat_canvas.callbacks.process("button_press_event", _cell_event(widget, r, b))
    assert len(viewer.layers) == n + 1, "kept maps: no recomputation"
    layer = viewer.layers[-1]
    assert layer.name == f"{title} · {res.row_names[a]} in {res.col_names[b]}"
    assert layer.colorbar.visible
    labels = widget.maps["labels"]
    assert layer.data.shape == image.data.shape
    assert not layer.data[labels != b].any(), "masked to the region"
    assert layer.data[labels == b].any()
    np.testing.assert_allclose(layer.scale, image.scale)
    lo, hi = layer.contrast_limits
    assert lo == -hi and layer.colormap.map(np.array([0.5]))[0, 3] == 0.0   # signed map, 0 transparent
    md = layer.metadata["seg_explain"]
    assert md["agg2exp_mass"] == pytest.approx(res.local[0, a, b])

    # exports: light figures for papers from a dark viewer, in PNG and SVG; dark on request; CSV
    assert viewer.theme == "dark"
    files = widget.export_figures(str(tmp_path / "fig.png"), light=True)
    assert [p.name for p in files] == ["fig.png", "fig_graph.png"]
    assert all(_corner_rgb(p) == (255, 255, 255) for p in files)
    files = widget.export_figures(str(tmp_path / "fig.svg"), light=True)
    for p in files:
        svg = p.read_text(encoding="utf-8")
        assert re.search(r'id="patch_1">\s*<path[^>]*style="fill: #ffffff"', svg)
        assert "fill: #f0f1f2" not in svg.split('id="axes_1"')[1], "no dark-theme text in a light figure"
    widget.light_export.setChecked(True)
    assert _corner_rgb(widget.export_figures(str(tmp_path / "box.png"))[0]) == (255, 255, 255)
    dark = widget.export_figures(str(tmp_path / "dark.png"), light=False)
    assert to_hex(np.array(_corner_rgb(dark[0])) / 255) == to_hex(theme.background.as_hex())
    files = widget.export_csv(str(tmp_path / "local_importance.csv"))
    rows = list(csv.DictReader(open(files[0])))
    assert len(rows) == L * L and set(rows[0]) >= {"image", "explained_class", "region", "mass"}
    assert files[1].name == "global_importance.csv" and files[1].is_file()


def test_files_view_partial_results_cell_job_and_cancel(make_napari_viewer, qtbot, sample_bundle2d, tmp_path,
                                                        monkeypatch):
    import tifffile

    viewer = make_napari_viewer()
    image = _image(viewer)
    widget = _dock(viewer)
    widget.select_model(str(sample_bundle2d))
    widget.set_method("gradient")
    src = sample_path("brain2d", "colin27_axial_t1.tif")
    flipped = tmp_path / "flipped.tif"
    img = tifffile.imread(src)
    tifffile.imwrite(flipped, np.ascontiguousarray(img[:, ::-1]), resolution=(0.5, 0.5))
    widget.add_files([src, flipped])
    shown: list[tuple[int, bool]] = []
    orig = widget._show_result

    def spy(res, partial=False, info=None):
        shown.append((res.n_images, partial))
        orig(res, partial, info)

    monkeypatch.setattr(widget, "_show_result", spy)
    stages = _spy_stage(widget, monkeypatch)
    _run(widget, qtbot)
    res = widget.result
    assert res.n_images == 2, widget.status.text()
    # partial results were shown as images finished, then the whole run
    assert (1, True) in shown and shown[-1] == (2, False), shown
    assert any("image 1/2" in s for s in stages) and any("image 2/2" in s for s in stages), stages
    assert widget.scope_combo.count() == 3  # global + the two images
    widget.scope_combo.setCurrentIndex(2)
    np.testing.assert_allclose(widget.current_matrix(), res.local[1], equal_nan=True)
    widget.scope_combo.setCurrentIndex(0)

    # no maps kept for files: a click explains class a on the image layer; cancelling adds nothing
    a = next(i for i in widget._rows if res.row_names[i] != "background")
    n = len(viewer.layers)
    assert widget.show_cell(a, a) is None and widget.running
    widget.run_button.click()                       # Cancel, before the job's result is handled
    qtbot.waitUntil(lambda: not widget.running, timeout=5000)
    assert len(viewer.layers) == n and "no layer" in widget.status.text()
    assert widget.result is res
    widget.show_cell(a, a)                          # this time let it finish: one explanation
    qtbot.waitUntil(lambda: len(viewer.layers) == n + 1, timeout=60000)
    layer = viewer.layers[-1]
    assert layer.colorbar.visible and layer.data.shape == image.data.shape
    assert widget.maps["image"] == image.name and set(widget.maps["attributions"]) == {a}

    # cancel a long run: the dock is usable again at once and keeps the previous result
    widget.use_current.setChecked(True)
    widget.set_method("smoothgrad")
    widget.params.set_value("n_samples", 5000)
    n = len(viewer.layers)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=60000)
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=3000)
    assert widget.run_button.text() == "Run Agg2Exp" and widget.result is res
    assert len(viewer.layers) == n and widget.progress.isHidden()


def _long_run(viewer, qtbot, bundle):
    """An Agg2Exp run long enough to be interrupted, started and under way: (viewer, dock)."""
    _image(viewer)
    widget = _dock(viewer)
    widget.select_model(str(bundle))
    widget.set_method("smoothgrad")
    widget.params.set_value("n_samples", 5000)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=60000)
    return viewer, widget


@pytest.mark.parametrize("how", ["shutdown", "remove the dock"])
def test_shutdown_joins_a_running_worker(make_napari_viewer, qtbot, sample_bundle2d, how):
    viewer, widget = _long_run(make_napari_viewer(), qtbot, sample_bundle2d)
    assert widget.runner.thread_alive
    n = len(viewer.layers)
    if how == "shutdown":
        widget.shutdown()
    else:   # napari's × on the dock: the widget leaves its QDockWidget, nothing closes it
        viewer.window.remove_dock_widget(widget)
    assert not widget.runner.thread_alive and not widget.picker.runner.thread_alive
    assert len(viewer.layers) == n
    # later viewer events reach nothing that is gone
    viewer.theme = "light"
    _image(viewer)


def test_closing_the_viewer_stops_the_run(make_napari_viewer, qtbot, sample_bundle2d):
    viewer, widget = _long_run(make_napari_viewer(), qtbot, sample_bundle2d)
    runner = widget.runner
    viewer.close()
    assert not runner.thread_alive
