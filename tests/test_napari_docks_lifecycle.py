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

def until(cond, what, timeout=120):
    t0 = time.monotonic()
    while not cond():
        QApplication.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            print("NEVER", what, flush=True)
            sys.exit(3)

viewer = napari.Viewer(show=True)
viewer.open_sample("napari-seg-explain", "{sample}")
_, agg = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Agg2Exp class importance")
_, exp = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Explain segmentation", tabify=True)
state = "{state}"
if state == "loading":          # close while the model loads in its worker
    until(lambda: exp.picker.runner.running, "loading")
else:
    until(lambda: exp.model_info is not None and not exp.picker.runner.running, "loaded")
    if state == "explaining":   # close while an explanation runs in its worker
        exp.set_method("smoothgrad")
        exp.params.set_value("n_samples", 100000)
        exp.explain_button.click()
        until(lambda: exp.runner.running, "explaining")
busy = exp.picker.runner.running or exp.runner.running
viewer.close()
QApplication.processEvents()
print("CLOSED", state, busy, flush=True)
"""

BROKEN = ("Traceback", "RuntimeError", "partially initialized", "has been deleted", "Segmentation fault",
          "Aborted", "QThread: Destroyed")


@pytest.mark.parametrize("sample, state, busy", [("brain3d", "loading", True), ("brain2d", "loaded", False),
                                                 ("brain2d", "explaining", True)])
@pytest.mark.slow
def test_fresh_process_docks_both_and_closes_cleanly(sample, state, busy):
    """Closed in the state the case names (the script waits for it, and says so): while the
    model loads, idle after loading, while an explanation runs."""
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "xcb")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(sample=sample, state=state)], capture_output=True,
                       text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"CLOSED {state} {busy}" in r.stdout, r.stdout
    bad = [line for line in r.stderr.splitlines() if any(b in line for b in BROKEN)]
    assert not bad, r.stderr[-3000:]
