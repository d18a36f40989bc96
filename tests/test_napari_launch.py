"""`bash scripts/run_napari.sh` = `python -m seg_explain._napari.launch`: sample + docks in a real viewer."""
from __future__ import annotations

import numpy as np
import pytest

from seg_explain._napari._testing import ensure_display

HAS_DISPLAY = ensure_display()
pytestmark = pytest.mark.skipif(not HAS_DISPLAY, reason="napari needs OpenGL: no DISPLAY and no Xvfb installed")


def test_launch_opens_sample_docks_and_roi_slice(make_napari_viewer, qtbot):
    from seg_explain._napari.explain_dock import ExplainWidget
    from seg_explain._napari.launch import open_viewer

    viewer, widget = open_viewer("brain3d", viewer=make_napari_viewer())
    assert isinstance(widget, ExplainWidget)
    kinds = [ly.metadata["seg_explain"]["kind"] for ly in viewer.layers]
    assert kinds == ["image", "prediction", "roi"]
    image, _pred, roi = viewer.layers
    assert tuple(roi.scale) == tuple(image.scale) and tuple(roi.translate) == tuple(image.translate)
    # the canvas opens on a slice that goes through the example RoI
    z = int(round((viewer.dims.point[0] - roi.translate[0]) / roi.scale[0]))
    assert np.asarray(roi.data)[z].any()
    docks = viewer.window._dock_widgets  # noqa: SLF001
    assert any("Explain segmentation" in k for k in docks) and any("Agg2Exp" in k for k in docks)
    # the Explain dock points at the sample image and, once its model has loaded (worker),
    # at the RoI's class
    assert widget.image_combo.currentText() == image.name
    qtbot.waitUntil(lambda: widget.model_info is not None and not widget.picker.runner.running, timeout=60000)
    assert widget.class_combo.currentText() == "temporal_R"


def test_launch_rejects_unknown_sample(capsys):
    from seg_explain._napari.launch import main

    with pytest.raises(SystemExit) as e:
        main(["liver"])
    assert e.value.code == 2 and "unknown sample" in capsys.readouterr().err


def test_open_sample_menu_lands_on_the_roi_slice(make_napari_viewer, qtbot):
    """File → Open Sample (not only the launcher) shows a slice through the example RoI."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-seg-explain", "brain3d")
    roi = next(ly for ly in viewer.layers if ly.metadata["seg_explain"]["kind"] == "roi")

    def on_roi():
        z = int(round((viewer.dims.point[0] - roi.translate[0]) / roi.scale[0]))
        return bool(np.asarray(roi.data)[z].any())

    qtbot.waitUntil(on_roi, timeout=5000)
