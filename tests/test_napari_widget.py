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

from seg_explain.paths import sample_path  # noqa: E402

PLUGIN = "napari-seg-explain"


@pytest.fixture(autouse=True)
def _plugin_main_thread(monkeypatch):
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")


@pytest.fixture
def bundle2d(tmp_path):
    """The trained 2D sample bundle if installed, else a tiny random one (16 sample classes)."""
    real = sample_path("models", "brain2d")
    if (real / "configs" / "metadata.json").is_file():
        return real
    from seg_explain._napari.sample_data import class_names

    names = class_names()
    net = make_unet(2, out_channels=len(names))
    return write_bundle(tmp_path / "tiny2d", {**UNET_DEF, "spatial_dims": 2, "out_channels": len(names)}, net,
                        names, (32, 32))


@pytest.fixture
def bundle3d_tiny(tmp_path):
    net = make_unet(3)
    return write_bundle(tmp_path / "tiny3d", {**UNET_DEF, "spatial_dims": 3}, net,
                        ["background", "a", "b", "c"], (16, 16, 16))


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
    """Pick a bundle folder the way a user does: the combo's 'Bundle folder…' + the dialog."""
    from qtpy.QtWidgets import QFileDialog

    from seg_explain._napari import widget as W

    i = widget.model_combo.findData(str(path))
    if i < 0:
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(path)))
        i = widget.model_combo.findData(W.BROWSE_DIR)
    widget.model_combo.setCurrentIndex(i)
    widget.model_combo.activated.emit(i)
    qtbot.waitUntil(lambda: widget.model_info is not None and widget.model_info["path"] == str(path),
                    timeout=60000)


def set_combo(combo, text):
    i = combo.findText(text)
    assert i >= 0, (text, [combo.itemText(k) for k in range(combo.count())])
    combo.setCurrentIndex(i)


def run_explain(widget, qtbot, timeout=60000):
    widget.explain_button.click()
    assert widget.explain_button.text() == "Cancel"
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_explain_2d_sample_via_controls(make_napari_viewer, qtbot, bundle2d, monkeypatch):
    viewer = make_napari_viewer()
    image, _labels, roi = add_sample2d(viewer)
    before_img, before_roi = image.data.copy(), roi.data.copy()
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle2d, qtbot, monkeypatch)
    assert widget.image_combo.currentText() == image.name
    set_combo(widget.roi_combo, roi.name)
    assert widget.class_combo.currentText() == "frontal_L"  # the RoI's class hint
    set_combo(widget.method_combo, "gradient")
    n_before = len(viewer.layers)
    run_explain(widget, qtbot)
    assert "Done" in widget.status.text(), widget.status.text()

    attr = viewer.layers[-1]
    assert attr.name == f"gradient · frontal_L · {roi.name}:1"
    assert attr.data.shape == image.data.shape and attr.data.dtype == np.float32
    np.testing.assert_allclose(attr.scale, image.scale)
    np.testing.assert_allclose(attr.translate, image.translate)
    lo, hi = attr.contrast_limits
    assert lo == pytest.approx(-hi) and hi > 0
    rgba = attr.colormap.map(np.array([0.0, 0.5, 1.0]))
    assert rgba[1, 3] == 0.0, "zero must be fully transparent"
    assert rgba[0, 3] > 0.8 and rgba[2, 3] > 0.8
    assert rgba[2, 0] > rgba[2, 2] and rgba[0, 2] > rgba[0, 0]  # + red, - blue
    assert str(attr.blending) in ("translucent", "Blending.TRANSLUCENT")
    md = attr.metadata["seg_explain"]
    assert md["kind"] == "attribution" and md["method"] == "gradient" and md["target"] == "frontal_L"
    assert md["elapsed_s"] > 0 and md["n_forward"] >= 1 and "seed" in md["params"]
    assert attr.metadata["loaded_image"].spacing == pytest.approx(tuple(image.scale))
    # the sample already had this model's prediction, or a prediction layer was added once
    preds = [ly for ly in viewer.layers if ly.metadata.get("seg_explain", {}).get("kind") == "prediction"]
    assert len(preds) == 1 and preds[0].data.shape == image.data.shape
    assert len(viewer.layers) in (n_before + 1, n_before + 2)

    # a second run reuses the prediction layer; the user's layers are untouched
    set_combo(widget.method_combo, "seg_grad_cam")
    run_explain(widget, qtbot)
    assert viewer.layers[-1].name.startswith("seg_grad_cam · frontal_L")
    assert len([ly for ly in viewer.layers if ly.metadata.get("seg_explain", {}).get("kind") == "prediction"]) == 1
    np.testing.assert_array_equal(image.data, before_img)
    np.testing.assert_array_equal(roi.data, before_roi)
    assert image in viewer.layers and roi in viewer.layers

    # the canvas renders the anatomy under the attribution
    viewer.window.show()
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot[..., :3].std() > 0


def test_method_parameters_follow_the_method(make_napari_viewer, qtbot):
    from seg_explain.explainers.base import get_spec

    viewer = make_napari_viewer()
    from seg_explain._napari.widget import ExplainWidget

    widget = ExplainWidget(viewer)
    for method in ("smoothgrad", "integrated_gradients", "seg_grad_cam", "pdcr", "gradient"):
        set_combo(widget.method_combo, method)
        shown = set(widget.params.editors)
        assert shown == set(get_spec(method).defaults), (method, shown)
        vals = widget.params.values()
        for k, v in get_spec(method).defaults.items():
            if k in vals and v is not None:
                assert vals[k] == v, (method, k)
    set_combo(widget.method_combo, "pdcr")
    assert widget.bank_combo.isVisibleTo(widget)
    set_combo(widget.method_combo, "smoothgrad")
    assert not widget.bank_combo.isVisibleTo(widget)


def test_long_names_do_not_widen_the_dock(make_napari_viewer, qtbot):
    """Choosing a CAM lists the network's layer names (MONAI UNet paths run to 60 characters);
    a dock that grows to fit them squeezes and re-renders the canvas (a 3D frame costs
    hundreds of ms with software OpenGL)."""
    from seg_explain._napari.widget import ExplainWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.float32), name="short")
    widget = ExplainWidget(viewer)   # picks and loads the 2D sample model
    qtbot.addWidget(widget)
    widget.show()   # combo boxes size themselves to their contents when first shown
    qtbot.waitUntil(lambda: widget.model_info is not None and not widget.loader.running, timeout=60000)
    set_combo(widget.method_combo, "smoothgrad")
    narrow = widget.sizeHint().width()
    longest = max(widget.model_info["layers"], key=len)
    assert len(longest) > 40
    viewer.add_image(np.zeros((8, 8), np.float32), name="an image layer with a very long name " * 4)
    set_combo(widget.method_combo, "seg_grad_cam")
    layer_box = widget.params.editors["layer"]
    assert layer_box.findText(longest) >= 0
    qtbot.wait(50)
    assert layer_box.sizeHint().width() < 250, layer_box.sizeHint().width()
    assert widget.sizeHint().width() <= narrow + 10
    layer_box.setCurrentText(longest)
    assert layer_box.toolTip() == longest   # the full name is one hover away


def test_pdcr_outline_and_summary(make_napari_viewer, qtbot, bundle2d, monkeypatch):
    viewer = make_napari_viewer()
    image, _labels, roi = add_sample2d(viewer)
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle2d, qtbot, monkeypatch)
    set_combo(widget.roi_combo, roi.name)
    set_combo(widget.method_combo, "pdcr")
    set_combo(widget.bank_combo, "sample bank (MNI152)")
    widget.params.set_value("n_screen", 1)
    widget.params.set_value("n_draws", 2)
    widget.params.set_value("tau", 0.0)
    run_explain(widget, qtbot, timeout=120000)
    assert "Done" in widget.status.text(), widget.status.text()
    qtbot.waitUntil(lambda: f"RoI outline · {roi.name}:1" in viewer.layers, timeout=5000)
    names = [ly.name for ly in viewer.layers]
    attr = viewer.layers[f"pdcr · frontal_L · {roi.name}:1"]
    outline = viewer.layers[f"RoI outline · {roi.name}:1"]
    assert outline.data.shape == image.data.shape and outline.data.any(), names
    assert not (outline.data.astype(bool) & ~(roi.data == 1)).any()   # the outline lies on the RoI
    md = attr.metadata["seg_explain"]
    assert set(md["summary"]) >= {"share_positive", "share_negative", "share_irrelevant"}
    assert "support the RoI" in widget.summary.text()
    # PdCR: ATE < 0 = supporting evidence -> red at the low end
    rgba = attr.colormap.map(np.array([0.0, 0.5]))
    assert rgba[0, 0] > rgba[0, 2] and rgba[1, 3] == 0.0


def test_cancel_stops_quickly_and_adds_nothing(make_napari_viewer, qtbot, bundle2d, monkeypatch):
    import time

    viewer = make_napari_viewer()
    image, _labels, roi = add_sample2d(viewer)
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle2d, qtbot, monkeypatch)
    set_combo(widget.roi_combo, roi.name)
    set_combo(widget.method_combo, "smoothgrad")
    widget.params.set_value("n_samples", 20000)
    widget.batch_edit.setText("2")
    names_before = [ly.name for ly in viewer.layers]
    widget.explain_button.click()
    qtbot.waitUntil(lambda: widget.runner.pbar is not None and widget.runner.pbar.n > 0, timeout=60000)
    t0 = time.perf_counter()
    widget.explain_button.click()  # "Cancel"
    qtbot.waitUntil(lambda: not widget.running, timeout=2000)
    qtbot.waitUntil(lambda: not widget.runner.thread_alive, timeout=2000)
    assert time.perf_counter() - t0 < 2.0
    assert widget.explain_button.text() == "Explain" and "Cancelled" in widget.status.text()
    added = [ly.name for ly in viewer.layers if ly.name not in names_before]
    assert not [n for n in added if n.startswith("smoothgrad")], added
    # the viewer and the dock still work
    viewer.dims.set_current_step(0, 3)
    set_combo(widget.method_combo, "gradient")
    run_explain(widget, qtbot)
    assert viewer.layers[-1].name.startswith("gradient · ")


def test_bad_model_and_bad_roi_give_notifications(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog

    from seg_explain._napari import widget as W

    viewer = make_napari_viewer()
    image, _labels, roi = add_sample2d(viewer)
    widget = open_dock(viewer, qtbot)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a model")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(bad), "")))
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        i = widget.model_combo.findData(W.BROWSE_FILE)
        widget.model_combo.setCurrentIndex(i)
        widget.model_combo.activated.emit(i)
        qtbot.waitUntil(lambda: any("Cannot load the model" in str(n.message) for n in seen), timeout=30000)
        msg = next(str(n.message) for n in seen if "Cannot load the model" in str(n.message))
        assert "\n" not in msg and "broken.pt" in msg
        assert widget.model_info is None and not widget.explain_button.isEnabled()
        assert image in viewer.layers and roi in viewer.layers
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_empty_roi_label_is_a_notification(make_napari_viewer, qtbot, bundle2d, monkeypatch):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    image, _labels, _roi = add_sample2d(viewer)
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle2d, qtbot, monkeypatch)
    widget.new_roi_button.click()          # an empty RoI layer on the image's grid
    new = viewer.layers["RoI"]
    assert new.data.shape == image.data.shape
    np.testing.assert_allclose(new.scale, image.scale)
    assert widget.roi_combo.currentText() == "RoI"
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        n_layers = len(viewer.layers)
        widget.explain_button.click()
        assert any("not painted" in str(n.message) for n in seen), [str(n.message) for n in seen]
        assert not widget.running and len(viewer.layers) == n_layers
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_3d_volume_slices_and_3d_view(make_napari_viewer, qtbot, bundle3d_tiny, monkeypatch):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    vol = viewer.add_image(rng.random((20, 24, 22)).astype(np.float32), name="vol", scale=(2, 1.5, 1.5),
                           translate=(-10, 5, 3))
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, bundle3d_tiny, qtbot, monkeypatch)
    widget.new_roi_button.click()
    roi = viewer.layers["RoI"]
    roi.data[8:12, 10:14, 9:13] = 1
    roi.refresh()
    widget._on_roi_changed()
    set_combo(widget.class_combo, "a")
    set_combo(widget.method_combo, "seg_grad_cam")
    run_explain(widget, qtbot)
    attr = viewer.layers[-1]
    assert attr.data.shape == vol.data.shape
    np.testing.assert_allclose(attr.scale, vol.scale)
    np.testing.assert_allclose(attr.translate, vol.translate)
    assert str(attr.rendering) in ("translucent", "ImageRendering.TRANSLUCENT")
    lo3, hi3 = attr.contrast_limits
    viewer.window.show()  # (a screenshot of a hidden window, then show(), crashes Mesa)
    shots = []
    for z in (0, 10, 19):  # browse slices
        viewer.dims.set_current_step(0, z)
        shots.append(viewer.screenshot(canvas_only=True))
    assert not np.array_equal(shots[0], shots[1])
    viewer.dims.ndisplay = 3
    # the 3D view gets the volume variant of the colormap (weak values fully transparent)
    assert attr.colormap.name.endswith("3D")
    assert attr.colormap.map(np.array([0.5 + 0.1]))[0, 3] == 0.0
    assert attr.contrast_limits == pytest.approx([lo3, hi3])
    shot = viewer.screenshot(canvas_only=True)
    assert shot[..., :3].std() > 0
    viewer.dims.ndisplay = 2
    assert not attr.colormap.name.endswith("3D")


def test_2d_model_on_a_volume_explains_the_current_slice(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    net = make_unet(2)
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, net, ["background", "a", "b", "c"], (16, 16))
    rng = np.random.default_rng(1)
    vol = viewer.add_image(rng.random((6, 20, 18)).astype(np.float32), name="vol")
    widget = open_dock(viewer, qtbot)
    choose_bundle(widget, b, qtbot, monkeypatch)
    viewer.dims.set_current_step(0, 4)
    set_combo(widget.method_combo, "gradient")
    set_combo(widget.class_combo, "background")
    run_explain(widget, qtbot)
    attr = viewer.layers[-1]
    assert attr.name.endswith("z=4") and attr.data.shape == vol.data.shape
    nz = np.flatnonzero(np.abs(attr.data).reshape(6, -1).sum(1))
    assert set(nz) == {4}
