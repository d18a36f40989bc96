"""Reading a result at a glance (issue 23): one result and one colour bar on stage, labels
hidden while it shows, a readable display by default with the raw values one click away,
booleans as check boxes, legends whose colour words match the colormap."""
from __future__ import annotations

import numpy as np
import pytest

from seg_explain._napari._testing import ensure_display

HAS_DISPLAY = ensure_display()
pytestmark = pytest.mark.skipif(not HAS_DISPLAY, reason="napari needs OpenGL: no DISPLAY and no Xvfb installed")

from test_napari_explain_dock import (  # noqa: E402
    _plugin_main_thread,  # noqa: F401  (autouse fixture)
    dock_on_sample2d,
    kind_of,
    run_explain,
    set_combo,
)


def results(viewer):
    return [ly for ly in viewer.layers if kind_of(ly) == "attribution"]


def test_one_result_one_colour_bar_labels_hidden(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    labels = [ly for ly in viewer.layers if ly.__class__.__name__ == "Labels"]
    set_combo(widget.roi_combo, roi.name)
    widget.set_method("gradient")
    run_explain(widget, qtbot)
    widget.set_method("seg_grad_cam")
    run_explain(widget, qtbot)
    first, second = results(viewer)
    # the new result hides the previous one (kept in the list); one colour bar: the selected result's
    assert second.visible and not first.visible
    assert [ly.colorbar.visible for ly in (first, second)] == [False, True]
    viewer.layers.selection.active = first
    first.visible = True
    assert [ly.colorbar.visible for ly in (first, second)] == [True, False]
    # label layers are hidden while a result shows (the RoI outline stays), back when none is visible
    assert labels and not any(ly.visible for ly in labels)
    assert all(ly.visible for ly in viewer.layers if kind_of(ly) == "roi_outline")
    viewer.layers.remove(first)
    viewer.layers.remove(second)
    assert all(ly.visible for ly in labels)


def test_gradient_opens_readable_and_raw_is_one_click_away(make_napari_viewer, qtbot, sample_bundle2d,
                                                           monkeypatch, tmp_path):
    from scipy.ndimage import binary_fill_holes, gaussian_filter

    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    set_combo(widget.roi_combo, roi.name)
    widget.set_method("gradient")
    run_explain(widget, qtbot)
    attr = results(viewer)[-1]
    shown = attr.data.copy()
    pred = next(ly for ly in viewer.layers if kind_of(ly) == "prediction").data
    head = binary_fill_holes(pred > 0)
    # smoothed (an independent σ = 1.5 filter of the raw map has these values where shown), inside
    # the head, the strongest 20 % of it; colour limits from what is shown, not from the raw peaks
    # saving the layer writes the raw values, not the display
    from seg_explain import load_image
    from seg_explain._napari.writer import write_image

    data, meta, _ = attr.as_layer_data_tuple()
    saved = load_image(write_image(str(tmp_path / "map.tif"), data, meta)[0]).data
    widget.raw_button.click()
    raw = attr.data.copy()
    np.testing.assert_array_equal(saved, raw)
    assert not np.array_equal(saved, shown)
    assert not np.any(shown[~head]) and np.any(raw[~head])
    kept = shown != 0
    np.testing.assert_allclose(shown[kept], gaussian_filter(raw, 1.5, mode="nearest")[kept], rtol=1e-4, atol=1e-7)
    assert 0.18 * head.sum() <= kept.sum() <= 0.22 * head.sum()
    assert np.count_nonzero(raw) > 2 * kept.sum()
    assert attr.contrast_limits[1] > np.abs(np.percentile(np.abs(shown[kept]), 50))
    assert widget.smooth_spin.value() == 0 and widget.top_spin.value() == 100 and not widget.body_check.isChecked()
    # the canvas legend gives three values of the colour scale and the unit
    assert viewer.text_overlay.text.count("|") >= 2 and "∂ logit sum / ∂ intensity" in viewer.text_overlay.text
    # a block map (PdCR) opens raw: every block as measured
    from seg_explain.explainers.registry import get_spec
    from seg_explain.frontend.reading import display_defaults

    assert display_defaults(get_spec("pdcr")).raw and not display_defaults(get_spec("smoothgrad")).raw


def test_booleans_are_check_boxes(qtbot):
    from qtpy.QtWidgets import QCheckBox

    from seg_explain._napari.params import ParamForm
    from seg_explain.explainers.registry import get_spec

    form = ParamForm()
    qtbot.addWidget(form)
    form.set_method(get_spec("pdcr"), spatial_dims=3)
    box = form.editors["adaptive"]
    assert isinstance(box, QCheckBox) and box.isChecked()          # the 3D default: adaptive on
    assert form.values()["adaptive"] is True
    box.setChecked(False)
    assert form.values()["adaptive"] is False
    form.restore_defaults()
    assert box.isChecked()
    form.set_method(get_spec("seg_grad_cam"), spatial_dims=2)
    assert isinstance(form.editors["relu"], QCheckBox)


def test_wrong_shape_layers_are_listed_disabled_and_layers_go_by_short_names(
        make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    from qtpy.QtCore import Qt

    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    assert not widget.surfaces_check.isVisibleTo(widget)     # no 3D option for a 2D image
    viewer.add_labels(np.zeros((20, 30), np.uint8), name="atlas elsewhere")
    combo = widget.roi_combo
    i = combo.findText("atlas elsewhere (other shape)")
    assert i >= 0 and not combo.model().item(i).isEnabled()
    why = combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
    assert "20 × 30" in why and " × ".join(str(s) for s in image.data.shape) in why
    assert combo.findText(roi.name) >= 0 and combo.model().item(combo.findText(roi.name)).isEnabled()
    # a CAM's layer: short names in the list, the module path in the tooltip and in the value
    widget.set_method("seg_grad_cam")
    box = widget.params.editors["layer"]
    paths = [box.itemData(k) for k in range(1, box.count())]
    assert paths and all("." in p for p in paths if p.count(".") > 1)
    k = next(k for k in range(1, box.count()) if box.itemData(k).count(".") > 2)
    assert len(box.itemText(k)) < len(box.itemData(k)) and box.itemData(k).endswith(box.itemText(k).lstrip("…"))
    assert box.itemData(k, Qt.ItemDataRole.ToolTipRole) == box.itemData(k)
    box.setCurrentIndex(k)
    assert widget.params.values()["layer"] == box.itemData(k)


@pytest.mark.parametrize("size", [(320, 380), (600, 900)])
def test_no_method_form_collapses_when_the_dock_is_resized(make_napari_viewer, qtbot, sample_bundle2d,
                                                          monkeypatch, size):
    """Every method's form keeps each field at least at its minimum height, visible and
    reachable by scrolling, at a small and a tall dock size."""
    from qtpy.QtWidgets import QApplication

    from seg_explain.explainers.registry import specs

    viewer, widget, _image, _roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    dock = widget.parentWidget()
    while dock is not None and dock.__class__.__name__ != "QtViewerDockWidget":
        dock = dock.parentWidget()
    for spec in specs():
        widget.set_method(spec.name)
        (dock or widget).resize(*size)
        for _ in range(3):
            QApplication.processEvents()
        for name, ed in widget.params.editors.items():
            assert ed.isVisibleTo(widget), (spec.name, name)
            assert ed.height() >= ed.minimumSizeHint().height() - 1, (spec.name, name, ed.height())
            assert ed.width() >= 40, (spec.name, name, ed.width())
        assert widget.explain_button.height() >= widget.explain_button.minimumSizeHint().height() - 1


def test_eta_counts_down_between_progress_events(qtbot):
    from qtpy.QtWidgets import QLabel, QProgressBar

    from seg_explain._napari.workers import show_progress
    from seg_explain.jobs import ProgressEvent

    bar, stage = QProgressBar(), QLabel()
    qtbot.addWidget(bar)
    qtbot.addWidget(stage)
    stage.show()
    assert show_progress(ProgressEvent("Agg2Exp", 1, 4, 10.0, 30.0), bar, stage)
    assert stage.text().endswith("about 30 s left")
    qtbot.waitUntil(lambda: "about 2" in stage.text(), timeout=4000)      # 29 s, 28 s, ... no new event
    show_progress(("status", "done"), bar, stage)
    qtbot.wait(1300)
    assert stage.text() == "done"


def test_3d_evidence_volumes_are_bounded_and_keep_where_the_evidence_is():
    from seg_explain.frontend.evidence import EVIDENCE_MAX_VOXELS, bounded_volume

    a = np.zeros((90, 108, 90), np.float32)
    a[40, 50:52, 45] = 1.0                      # a thin planted region, one voxel wide
    b, sc, tr = bounded_volume(a, (2.0, 2.0, 2.0), (-10.0, 0.0, 5.0))
    assert b.size <= EVIDENCE_MAX_VOXELS * 1.1 and b.max() == 1.0    # still above any threshold < 1
    world_old = np.array([-10 + 2 * 40, 0 + 2 * 50.5, 5 + 2 * 45])
    world_new = np.array(tr) + np.array(sc) * np.argwhere(b).mean(0)
    assert np.abs(world_new - world_old).max() <= max(sc) / 2 + 1e-6
    small = np.ones((10, 10, 10), np.float32)
    assert bounded_volume(small, (1, 1, 1), (0, 0, 0))[0] is small or \
        bounded_volume(small, (1, 1, 1), (0, 0, 0))[0].shape == small.shape
