"""Docks never break and never crash on close (issue: a dock opened right after the other
raced its imports against a worker; closing the viewer while a worker ran printed
"wrapped C/C++ object ... has been deleted" and once aborted the process).

Each run is a fresh process, as a user starting napari: open the sample, dock both widgets
at once (the Explain dock starts loading its model in a worker straight away), close the
viewer immediately. Every run must exit 0 with nothing on stderr that says something broke.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from seg_explain._napari._testing import ensure_display

HAS_DISPLAY = ensure_display()
pytestmark = pytest.mark.skipif(not HAS_DISPLAY, reason="napari needs OpenGL: no DISPLAY and no Xvfb installed")

SCRIPT = r"""
import sys, time
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
viewer.open_sample("napari-seg-explain", "{sample}")
_, agg = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Agg2Exp class importance")
_, exp = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Explain segmentation", tabify=True)
t0 = time.time()
while time.time() - t0 < {wait}:
    QApplication.processEvents()
    time.sleep(0.01)
busy = exp.picker.runner.running or exp.runner.running
viewer.close()
QApplication.processEvents()
print("CLOSED", busy, flush=True)
"""

BROKEN = ("Traceback", "RuntimeError", "partially initialized", "has been deleted", "Segmentation fault",
          "Aborted", "QThread: Destroyed")


@pytest.mark.parametrize("sample, wait", [("brain2d", 0.05), ("brain3d", 0.3), ("brain2d", 1.0)])
def test_fresh_process_docks_both_and_closes_cleanly(sample, wait):
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(sample=sample, wait=wait)], capture_output=True,
                       text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CLOSED" in r.stdout
    bad = [line for line in r.stderr.splitlines() if any(b in line for b in BROKEN)]
    assert not bad, r.stderr[-3000:]
