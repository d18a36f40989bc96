"""The Explain dock in a real napari viewer, driven through its own controls.

Uses the shipped 2D sample (image + RoI) with the trained brain2d bundle when it is
installed, else a tiny random MONAI bundle written on the fly; 3D paths use a tiny volume.
The viewer is a real ``napari.Viewer`` (``make_napari_viewer``); headless runs get an
OpenGL-capable display from a private Xvfb (see ``seg_explain._napari._testing``).
"""
from __future__ import annotations

import numpy as np
import pytest

from seg_explain._napari._testing import ensure_display

HAS_DISPLAY = ensure_display()
pytestmark = pytest.mark.skipif(not HAS_DISPLAY, reason="napari needs OpenGL: no DISPLAY and no Xvfb installed")

from conftest import UNET_DEF, make_unet, write_bundle  # noqa: E402

PLUGIN = "napari-seg-explain"


@pytest.fixture(autouse=True)
def _plugin_main_thread(monkeypatch):
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")


@pytest.fixture
def bundle3d_tiny(tmp_path):
    net = make_unet(3)
    return write_bundle(tmp_path / "tiny3d", {**UNET_DEF, "spatial_dims": 3}, net,
                        ["background", "a", "b", "c"], (16, 16, 16))


def dock_on_sample2d(viewer, qtbot, bundle, monkeypatch):
    """The 2D sample in ``viewer`` and the Explain dock with ``bundle`` loaded:
    (viewer, dock, image layer, RoI layer)."""
    image, _labels, roi = add_sample2d(viewer)
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle, qtbot, monkeypatch)
    return viewer, widget, image, roi


def add_sample2d(viewer):
    """The 2D sample's layers as napari would add them from the sample menu."""
    from seg_explain._napari.sample_data import sample_brain2d

    layers = []
    for data, kw, kind in sample_brain2d():
        layers.append(getattr(viewer, f"add_{kind}")(data, **kw))
    return layers


def open_dock(viewer, qtbot):
    """The dock through napari's plugin menu machinery (the widget gets a proxied viewer)."""
    _dw, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Explain segmentation")
    return widget


def choose_bundle(widget, path, qtbot, monkeypatch):
    """Pick a model folder the way a user does: the combo's 'Model folder…' + the dialog."""
    from qtpy.QtWidgets import QFileDialog

    from seg_explain._napari.model_picker import BROWSE_DIR

    combo = widget.model_combo
    i = combo.findData(str(path))
    if i < 0:
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(path)))
        i = combo.findData(BROWSE_DIR)
    combo.setCurrentIndex(i)
    combo.activated.emit(i)
    qtbot.waitUntil(lambda: widget.model_info is not None and widget.model_info["path"] == str(path),
                    timeout=60000)


def set_combo(combo, text):
    i = combo.findText(text)
    assert i >= 0, (text, [combo.itemText(k) for k in range(combo.count())])
    combo.setCurrentIndex(i)


def run_explain(widget, qtbot, timeout=60000):
    widget.explain_button.click()
    assert widget.explain_button.text() == "Cancel", widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def kind_of(layer):
    return (layer.metadata.get("seg_explain") or {}).get("kind")


def test_explain_2d_sample_via_controls(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    viewer = make_napari_viewer()
    image, labels, roi = add_sample2d(viewer)
    before_img, before_roi = image.data.copy(), roi.data.copy()
    opacities = {ly.name: ly.opacity for ly in (labels, roi)}
    assert labels.visible and roi.visible
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, sample_bundle2d, qtbot, monkeypatch)
    assert widget.image_combo.currentText() == image.name
    set_combo(widget.roi_combo, roi.name)
    assert widget.class_combo.currentText() == "frontal_L"  # the RoI's class hint
    widget.set_method("gradient")
    run_explain(widget, qtbot)
    assert "Done" in widget.status.text(), widget.status.text()

    attr = next(ly for ly in viewer.layers if kind_of(ly) == "attribution")
    assert attr.name == f"Vanilla gradient · {roi.name}"          # the class is not repeated
    assert attr.data.shape == image.data.shape and attr.data.dtype == np.float32
    np.testing.assert_allclose(attr.scale, image.scale)
    np.testing.assert_allclose(attr.translate, image.translate)
    lo, hi = attr.contrast_limits
    assert lo == pytest.approx(-hi) and hi > 0
    rgba = attr.colormap.map(np.array([0.0, 0.5, 1.0]))
    assert rgba[1, 3] == 0.0, "zero must be fully transparent"
    assert rgba[0, 3] > 0.8 and rgba[2, 3] > 0.8
    assert rgba[2, 0] > rgba[2, 2] and rgba[0, 2] > rgba[0, 0]  # + red, - blue
    # every result says what it means: a colour bar, a legend with the unit, on the canvas too
    assert attr.colorbar.visible
    assert attr.colormap.name == "attribution ±"
    legend = widget.legend.text()
    # plain words first, with the colormap's own colour words, then the exact unit
    assert legend.startswith("Red to yellow: brightening these voxels would make the model more sure this is "
                             "frontal_L; blue to cyan: it would make the model less sure")
    assert legend.index("∂ logit sum / ∂ intensity") > legend.index("less sure")
    assert viewer.text_overlay.visible and "red to yellow: supports frontal_L" in viewer.text_overlay.text
    assert f"full colour at ±{attr.contrast_limits[1]:.3g}" in viewer.text_overlay.text
    attr.contrast_limits = (-0.5, 0.5)                   # the user narrows the range: the legend follows
    assert "full colour at ±0.5" in viewer.text_overlay.text
    md = attr.metadata["seg_explain"]
    assert md["kind"] == "attribution" and md["method"] == "gradient" and md["target"] == "frontal_L"
    assert md["unit"] == "∂ logit sum / ∂ intensity" and md["legend"] == legend
    assert attr.metadata["loaded_image"].spacing == pytest.approx(tuple(image.scale))
    # the RoI is outlined for every method, on the RoI
    outline = next(ly for ly in viewer.layers if kind_of(ly) == "roi_outline")
    assert outline.data.any() and not (outline.data.astype(bool) & ~(roi.data == 1)).any()
    # the sample already had this model's prediction: no second prediction layer
    assert len([ly for ly in viewer.layers if kind_of(ly) == "prediction"]) == 1
    # the prediction and the RoI are hidden (not dimmed: dimmed labels still tint the anatomy) ...
    assert not labels.visible and not roi.visible and outline.visible and outline.opacity == 1.0
    # ... and come back as they were when the results go
    viewer.layers.remove(attr)
    assert labels.visible and roi.visible
    assert labels.opacity == pytest.approx(opacities[labels.name])
    assert roi.opacity == pytest.approx(opacities[roi.name])
    np.testing.assert_array_equal(image.data, before_img)
    np.testing.assert_array_equal(roi.data, before_roi)

    # a CAM (ReLU) gets a one-sided colormap: 0 transparent, no blue half
    widget.set_method("seg_grad_cam")
    run_explain(widget, qtbot)
    cam = viewer.layers.selection.active
    assert cam.name.startswith("Seg-Grad-CAM · ") and cam.colormap.name == "attribution +"
    assert cam.contrast_limits[0] == 0.0 and cam.colormap.map(np.array([0.0]))[0, 3] == 0.0
    assert widget.legend.text().startswith("Red to yellow: the network's features here support frontal_L")
    # the same RoI explained again keeps one outline (visible, on top)
    outlines = [ly for ly in viewer.layers if kind_of(ly) == "roi_outline"]
    assert len(outlines) == 1 and outlines[0].visible and viewer.layers[-1] is outlines[0]

    viewer.window.show()
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot[..., :3].std() > 0


def test_method_forms_come_from_the_registry(make_napari_viewer, qtbot, bundle3d_tiny, monkeypatch):
    from seg_explain.explainers.registry import specs

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((20, 20, 20), np.float32), name="vol")
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle3d_tiny, qtbot, monkeypatch)
    for spec in specs():
        widget.set_method(spec.name)
        assert widget.method_combo.currentText().startswith(spec.title)
        assert spec.question in widget.method_doc.text()
        shown = set(widget.params.editors)
        plain = {p.name for p in spec.params if p.kind not in ("bank", "label_map")}
        assert plain <= shown, (spec.name, shown)
        vals = widget.params.values()
        defaults = spec.gui_defaults(3)
        for k in plain:
            assert vals[k] == defaults[k], (spec.name, k, vals[k])
            assert spec.param(k).help in widget.params.editors[k].toolTip()
        for p in spec.params:
            chooser = {"bank": widget.bank_combo, "label_map": widget.reference_combo}.get(p.kind)
            if chooser is not None:
                assert chooser.isVisibleTo(widget)
    # 3D models get the registry's cheaper GUI default; typed values survive a method switch
    widget.set_method("smoothgrad")
    assert widget.params.values()["n_samples"] == 10
    widget.params.set_value("n_samples", 7)
    widget.set_method("gradient")
    widget.set_method("smoothgrad")
    assert widget.params.values()["n_samples"] == 7
    widget.defaults_button.click()
    assert widget.params.values()["n_samples"] == 10
    # the device list holds only what torch can use here
    import torch

    devices = [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())]
    assert ("cuda" in devices) == torch.cuda.is_available() and devices[:2] == ["auto", "cpu"]


def test_cost_estimate_warning_and_cheaper_settings(make_napari_viewer, qtbot, bundle3d_tiny, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32), name="vol")
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle3d_tiny, qtbot, monkeypatch)
    widget.set_method("smoothgrad")
    qtbot.waitUntil(lambda: "≈ 10 forward" in widget.cost.text(), timeout=5000)
    n_windows = 1   # no painted RoI: the estimate assumes the RoI lies in one window
    assert f"≈ {10 * n_windows:,} forward + {10 * n_windows:,} backward" in widget.cost.text()
    assert " here" in widget.cost.text()   # seconds from this model's measured passes
    assert not widget.cheaper_button.isVisibleTo(widget)
    widget.params.set_value("n_samples", 200_000)
    qtbot.waitUntil(lambda: widget.cost_warning.text().startswith("⚠ this may take"), timeout=5000)
    assert "n_samples=" in widget.cost_warning.text() and widget.cheaper_button.isVisibleTo(widget)
    widget.cheaper_button.click()
    assert widget.params.values()["n_samples"] < 200_000
    qtbot.waitUntil(lambda: widget.cost_warning.text() == "", timeout=5000)


def test_progress_and_eta_inside_the_dock_then_cancel(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):

    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    set_combo(widget.roi_combo, roi.name)
    widget.set_method("smoothgrad")
    widget.params.set_value("n_samples", 20000)
    widget.batch_edit.setText("2")
    names_before = [ly.name for ly in viewer.layers]
    widget.explain_button.click()
    qtbot.waitUntil(lambda: widget.progress.isVisibleTo(widget) and widget.progress.value() > 0, timeout=60000)
    qtbot.waitUntil(lambda: "left" in widget.stage.text(), timeout=10000)   # an ETA in the dock
    assert "SmoothGrad" in widget.stage.text()
    at_cancel = widget.progress.value()
    widget.explain_button.click()  # "Cancel": 20,000 samples in batches of 2 would take many minutes
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    qtbot.waitUntil(lambda: not widget.runner.thread_alive, timeout=60000)
    assert at_cancel < widget.progress.maximum()          # stopped before the end, by the token
    assert widget.explain_button.text() == "Explain" and "Cancelled" in widget.status.text()
    assert not widget.progress.isVisibleTo(widget)
    added = [ly.name for ly in viewer.layers if ly.name not in names_before]
    assert not added, added
    widget.set_method("gradient")
    run_explain(widget, qtbot)
    assert viewer.layers.selection.active.name.startswith("Vanilla gradient · ")


def test_pdcr_report_and_not_measurable_negatives(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    set_combo(widget.roi_combo, roi.name)
    widget.set_method("pdcr")
    set_combo(widget.bank_combo, "sample bank (MNI152)")
    widget.params.set_value("n_screen", 1)
    widget.params.set_value("n_draws", 2)
    run_explain(widget, qtbot, timeout=120000)
    assert "Done" in widget.status.text(), widget.status.text()
    attr = viewer.layers.selection.active
    assert kind_of(attr) == "attribution" and attr.name.startswith("PdCR")
    text = widget.summary.text()
    assert "Dice points" in text and "not measurable" in text and "Histogram" in text
    # without a reference M0 = 100 points, so ATE <= 0: a one-sided map, strongest at the low end
    assert widget.legend.text().startswith("Red to yellow: replacing this block with tissue from other scans "
                                           "lowers how well frontal_L is segmented")
    assert "Dice points" in widget.legend.text() and "blue" not in widget.legend.text()
    # shown as a positive "Dice lost when replaced" (= −ATE), strongest at the high end; saved as the ATE
    assert "Dice points lost when replaced" in widget.legend.text()
    assert attr.colormap.name == "attribution +" and attr.contrast_limits[0] == 0.0 < attr.contrast_limits[1]
    assert attr.data.min() >= 0.0 and attr.data.max() > 0.0
    raw = attr.metadata["seg_explain_raw"]
    assert raw.max() <= 0.0 and np.array_equal(attr.data, -raw)
    rgba = attr.colormap.map(np.array([1.0, 0.0]))
    assert rgba[0, 0] > rgba[0, 2] and rgba[0, 3] > 0.8 and rgba[1, 3] == 0.0
    assert any(kind_of(ly) == "roi_outline" for ly in viewer.layers)


def test_display_helpers_change_what_is_shown_not_the_result(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    set_combo(widget.roi_combo, roi.name)
    widget.set_method("gradient")
    run_explain(widget, qtbot)
    attr = viewer.layers.selection.active
    widget.raw_button.click()                   # the raw values are one click away
    raw = attr.data.copy()
    widget.top_spin.setValue(10.0)
    shown = attr.data
    nz_raw, nz = np.count_nonzero(raw), np.count_nonzero(shown)
    assert 0.08 * nz_raw <= nz <= 0.12 * nz_raw
    kept = shown != 0
    np.testing.assert_array_equal(shown[kept], raw[kept])      # the strongest voxels, unchanged
    assert np.abs(raw[~kept]).max() <= np.abs(raw[kept]).min()
    widget.top_spin.setValue(100.0)
    widget.body_check.setChecked(True)
    from scipy.ndimage import binary_fill_holes

    pred = next(ly for ly in viewer.layers if kind_of(ly) == "prediction").data
    head = binary_fill_holes(pred > 0)
    assert not np.any(attr.data[~head]) and np.any(raw[~head])   # nothing outside the head
    widget.body_check.setChecked(False)
    widget.smooth_spin.setValue(2.0)
    assert np.abs(attr.data).max() < np.abs(raw).max()           # smoothing spreads the speckle
    widget.smooth_spin.setValue(0.0)
    np.testing.assert_array_equal(attr.data, raw)


def test_model_handling_is_predictable(make_napari_viewer, qtbot, tmp_path, sample_bundle2d, monkeypatch):
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog

    from seg_explain._napari.model_picker import BROWSE_FILE

    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    good = widget.model_info["path"]
    # a 3D image added later does not switch the model: the dock says why Explain is off
    vol = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="a volume")
    set_combo(widget.image_combo, vol.name)
    assert widget.model_info["path"] == good and widget.explain_button.isEnabled()   # 2D model: slice
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a model")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(bad), "")))
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        i = widget.model_combo.findData(BROWSE_FILE)
        widget.model_combo.setCurrentIndex(i)
        widget.model_combo.activated.emit(i)
        qtbot.waitUntil(lambda: any("Cannot load the model" in str(n.message) for n in seen), timeout=30000)
        msg = next(str(n.message) for n in seen if "Cannot load the model" in str(n.message))
        assert "\n" not in msg and "broken.pt" in msg
        # the failed model leaves the list and the remembered models; the working one comes back
        qtbot.waitUntil(lambda: widget.model_info is not None and widget.model_info["path"] == good, timeout=30000)
        assert widget.model_combo.findData(str(bad)) < 0 and str(bad) not in widget.picker.recent()
        assert widget.class_combo.count() > 1
        assert image in viewer.layers and roi in viewer.layers
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_explain_disabled_says_why(make_napari_viewer, qtbot, bundle3d_tiny, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((24, 24), np.float32), name="flat")
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle3d_tiny, qtbot, monkeypatch)
    assert not widget.explain_button.isEnabled()
    assert "is a 3D model but 'flat' is a 2D image" in widget.explain_button.toolTip()
    assert "3D model" in widget.stage.text()


def test_new_roi_layer_takes_a_distinct_colour_and_empty_label_is_a_notification(
        make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    from napari.utils.notifications import notification_manager

    viewer, widget, image, _roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    drawn = [np.asarray(ly.colormap.map(np.array([v]))).reshape(-1)[:3]
             for ly in viewer.layers if ly.__class__.__name__ == "Labels" and ly.visible
             for v in np.unique(ly.data) if v != 0]
    widget.new_roi_button.click()          # an empty RoI layer on the image's grid
    new = viewer.layers.selection.active
    assert new.name.startswith("RoI") and new.data.shape == image.data.shape
    np.testing.assert_allclose(new.scale, image.scale)
    # strokes must show: its colour is far from every colour the visible label layers draw
    # (the sample RoI's green among them)
    mine = np.asarray(new.colormap.map(np.array([1]))).reshape(-1)[:3]
    assert drawn and min(np.linalg.norm(mine - c) for c in drawn) > 0.3
    assert widget.roi_combo.currentText() == new.name
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        n_layers = len(viewer.layers)
        widget.explain_button.click()
        assert any("not painted" in str(n.message) for n in seen), [str(n.message) for n in seen]
        assert not widget.running and len(viewer.layers) == n_layers
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


@pytest.mark.slow
def test_3d_volume_slices_and_evidence_surfaces(make_napari_viewer, qtbot, bundle3d_tiny, monkeypatch):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    vol = viewer.add_image(rng.random((20, 24, 22)).astype(np.float32), name="vol", scale=(2, 1.5, 1.5),
                           translate=(-10, 5, 3))
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle3d_tiny, qtbot, monkeypatch)
    widget.new_roi_button.click()
    roi = viewer.layers.selection.active
    roi.data[8:12, 10:14, 9:13] = 1
    roi.refresh()
    widget._on_roi_changed()
    set_combo(widget.class_combo, "a")
    widget.set_method("gradient")
    run_explain(widget, qtbot)
    attr = viewer.layers.selection.active
    assert attr.data.shape == vol.data.shape
    np.testing.assert_allclose(attr.scale, vol.scale)
    np.testing.assert_allclose(attr.translate, vol.translate)
    lo3, hi3 = attr.contrast_limits
    viewer.window.show()  # (a screenshot of a hidden window, then show(), crashes Mesa)
    shots = []
    for z in (0, 10, 19):  # browse slices
        viewer.dims.set_current_step(0, z)
        shots.append(viewer.screenshot(canvas_only=True))
    assert not np.array_equal(shots[0], shots[1])
    assert widget.surfaces_check.isVisibleTo(widget)       # a volume: the 3D option is offered
    viewer.dims.ndisplay = 3
    # in 3D: two iso surfaces (supporting red, opposing blue) replace the signed cloud
    ev = [ly for ly in viewer.layers if kind_of(ly) == "evidence"]
    assert len(ev) == 2 and {"supports", "opposes"} <= {w for ly in ev for w in ly.name.split()}
    assert all(str(ly.rendering) in ("iso", "ImageRendering.ISO") for ly in ev)
    sup = next(ly for ly in ev if "supports" in ly.name)
    # as many voxels as the strongest 5 % of the positive part, inside the (smoothed) surface
    frac = np.count_nonzero(sup.data >= sup.iso_threshold) / max(np.count_nonzero(attr.data > 0), 1)
    assert 0.04 <= frac <= 0.06
    assert sup.contrast_limits[1] == pytest.approx(sup.iso_threshold)   # full colour at the surface
    assert not attr.visible and attr.colormap.name.endswith("3D")
    # the anatomy as a faint attenuated MIP under the surfaces; the image layer it stands for hidden
    ctx = [ly for ly in viewer.layers if kind_of(ly) == "context"]
    assert len(ctx) == 1 and viewer.layers.index(ctx[0]) == 0 and not vol.visible
    assert str(ctx[0].rendering).lower().endswith("attenuated_mip") and ctx[0].opacity < 0.5
    np.testing.assert_allclose(ctx[0].scale, vol.scale)
    # every surface is closed: a zero border all round (a surface at the volume's edge is not cut open)
    for ly in ev:
        d = np.asarray(ly.data)
        assert not d[0].any() and not d[-1].any() and not d[:, 0].any() and not d[:, :, -1].any()
    assert "surfaces enclose the strongest 5 %" in viewer.text_overlay.text
    shot = viewer.screenshot(canvas_only=True)
    assert shot[..., :3].std() > 0
    viewer.dims.ndisplay = 2
    assert attr.visible and not [ly for ly in viewer.layers if kind_of(ly) in ("evidence", "context")]
    assert vol.visible                                   # the image layer is back as it was
    assert not roi.visible                               # label layers stay hidden under a result
    assert "full colour at ±" in viewer.text_overlay.text
    assert not attr.colormap.name.endswith("3D") and attr.contrast_limits == pytest.approx([lo3, hi3])
    # a second result in 3D: only the result on stage draws surfaces (the first one's go)
    widget.set_method("seg_grad_cam")
    run_explain(widget, qtbot)
    cam = viewer.layers.selection.active
    viewer.dims.ndisplay = 3
    ev = [ly for ly in viewer.layers if kind_of(ly) == "evidence"]
    assert ev and all(cam.name in ly.name for ly in ev) and not attr.visible
    assert len([ly for ly in viewer.layers if kind_of(ly) == "context"]) == 1


def test_2d_model_on_a_volume_explains_the_current_slice(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    net = make_unet(2)
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, net, ["background", "a", "b", "c"], (16, 16))
    rng = np.random.default_rng(1)
    vol = viewer.add_image(rng.random((6, 20, 18)).astype(np.float32), name="vol")
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, b, qtbot, monkeypatch)
    viewer.dims.set_current_step(0, 4)
    widget.set_method("gradient")
    set_combo(widget.class_combo, "background")
    run_explain(widget, qtbot)
    attr = viewer.layers.selection.active
    assert attr.name.endswith("z=4") and attr.data.shape == vol.data.shape
    nz = np.flatnonzero(np.abs(attr.data).reshape(6, -1).sum(1))
    assert set(nz) == {4}


def test_long_names_do_not_widen_the_dock(make_napari_viewer, qtbot):
    """Choosing a CAM lists the network's layer names (MONAI UNet paths run to 60 characters);
    a dock that grows to fit them squeezes and re-renders the canvas."""
    from seg_explain._napari.explain_dock import ExplainWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.float32), name="short")
    widget = ExplainWidget(viewer)   # picks and loads the 2D sample model
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitUntil(lambda: widget.model_info is not None, timeout=60000)
    widget.set_method("smoothgrad")
    narrow = widget.sizeHint().width()
    longest = max(widget.model_info["layers"], key=len)
    assert len(longest) > 40
    viewer.add_image(np.zeros((8, 8), np.float32), name="an image layer with a very long name " * 4)
    widget.set_method("seg_grad_cam")
    layer_box = widget.params.editors["layer"]
    assert layer_box.findData(longest) >= 0      # shown by a short name, the full path kept as data
    qtbot.wait(50)
    assert layer_box.sizeHint().width() < 250, layer_box.sizeHint().width()
    assert widget.sizeHint().width() <= narrow + 10
    layer_box.setCurrentText(longest)
    assert layer_box.toolTip() == longest   # the full name is one hover away
    # nothing is cut at the right edge: no horizontal scrolling, and the dock asks for what it needs
    from qtpy.QtCore import Qt

    scroll = widget._scroll
    assert scroll.horizontalScrollBarPolicy() == Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert widget.minimumWidth() >= scroll.widget().minimumSizeHint().width()
    widget.resize(widget.minimumWidth(), 700)
    qtbot.wait(50)
    assert scroll.widget().width() <= scroll.viewport().width()
    widget.shutdown()


def test_removing_the_dock_stops_its_worker(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    """napari's dock × takes the widget out of its frame without closing it: the running
    explanation must still be stopped and its thread joined (no signal to a deleted widget)."""
    viewer = make_napari_viewer()
    image, _labels, roi = add_sample2d(viewer)
    dw, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Explain segmentation")
    choose_bundle(widget, sample_bundle2d, qtbot, monkeypatch)
    widget.set_method("smoothgrad")
    widget.params.set_value("n_samples", 20000)
    widget.batch_edit.setText("2")
    widget.explain_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=60000)
    viewer.window.remove_dock_widget(dw)
    qtbot.waitUntil(lambda: not widget.runner.thread_alive, timeout=5000)
    assert widget._closed and not widget.running


def test_closing_the_viewer_joins_a_running_explanation(make_napari_viewer, qtbot, sample_bundle2d, monkeypatch):
    # a hidden window: the dock must find it anyway
    viewer, widget, image, roi = dock_on_sample2d(make_napari_viewer(), qtbot, sample_bundle2d, monkeypatch)
    widget.set_method("smoothgrad")
    widget.params.set_value("n_samples", 20000)
    widget.batch_edit.setText("2")
    widget.explain_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() > 0, timeout=60000)
    runner = widget.runner
    viewer.close()
    assert widget._closed and not runner.thread_alive


def test_evidence_surfaces_find_a_planted_region_in_speckle():
    """A gradient-like map: a planted block of supporting evidence (mean +1) and one of opposing
    evidence (mean -1), both under strong voxel speckle (sd 2) in a field of speckle. Unsmoothed,
    the strongest 5 % are scattered speckle; smoothed (as the 3D view does), the red surface
    encloses the planted support and the blue one the planted opposition."""
    from seg_explain.frontend.evidence import EVIDENCE_SMOOTH, EVIDENCE_TOP, evidence_volumes

    rng = np.random.default_rng(0)
    a = rng.normal(0, 2.0, (40, 40, 40)).astype(np.float32)
    sup_box = (slice(3, 17),) * 3      # 14³ voxels: more than the top 5 % of a sign (~1,600)
    opp_box = (slice(23, 37),) * 3
    a[sup_box] += 1.0
    a[opp_box] -= 1.0
    planted_sup = np.zeros(a.shape, bool)
    planted_sup[sup_box] = True
    planted_opp = np.zeros(a.shape, bool)
    planted_opp[opp_box] = True

    def inside(smooth):
        sup, opp, ts, to = evidence_volumes(a, False, EVIDENCE_TOP, smooth=smooth)
        s, o = sup >= ts, opp >= to
        n = int(np.ceil((a > 0).sum() * EVIDENCE_TOP / 100))
        assert abs(int(s.sum()) - n) <= 1                     # as many voxels as the top 5 % of that sign
        return (s & planted_sup).sum() / s.sum(), (o & planted_opp).sum() / o.sum()

    raw_sup, raw_opp = inside(0.0)
    sm_sup, sm_opp = inside(EVIDENCE_SMOOTH)
    assert raw_sup < 0.2 and raw_opp < 0.2          # speckle: mostly outside the planted blocks
    assert sm_sup > 0.9 and sm_opp > 0.9            # regions: inside them
    # PdCR-style maps (support is negative): the red part is the negative one
    sup, _opp, _ts, _to = evidence_volumes(-a, True, EVIDENCE_TOP, smooth=EVIDENCE_SMOOTH)
    assert ((sup >= _ts) & planted_sup).sum() / (sup >= _ts).sum() > 0.9
