"""Test/CI helpers for the napari wing (not used at run time).

napari draws with OpenGL. Qt's ``offscreen`` platform only gets an OpenGL context through
an X server, so headless runs without ``DISPLAY`` cannot show a real viewer canvas.
:func:`ensure_display` starts a private ``Xvfb`` (when installed) and points ``DISPLAY`` at
it *before* the QApplication exists; the ``offscreen`` platform then renders through it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

_STATE: dict[str, object] = {}


def ensure_display(size: str = "1400x900x24", timeout_s: float = 10.0) -> bool:
    """True if an X display (hence OpenGL) is available, starting Xvfb if needed."""
    if "ok" in _STATE:
        return bool(_STATE["ok"])
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        _STATE["ok"] = True
        return True
    xvfb = shutil.which("Xvfb")
    if not xvfb:
        _STATE["ok"] = False
        return False
    proc = None
    num = None
    for n in range(100 + os.getpid() % 200, 400):
        if os.path.exists(f"/tmp/.X{n}-lock") or os.path.exists(f"/tmp/.X11-unix/X{n}"):
            continue
        try:
            proc = subprocess.Popen([xvfb, f":{n}", "-screen", "0", size, "-nolisten", "tcp"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent)
        except OSError:
            break
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s and proc.poll() is None:
            if os.path.exists(f"/tmp/.X11-unix/X{n}"):
                num = n
                break
            time.sleep(0.05)
        if num is not None:
            break
        proc.kill()  # lost a race for this display number: try the next one
        proc = None
    if num is None or proc is None:
        _STATE["ok"] = False
        return False
    os.environ["DISPLAY"] = f":{num}"
    _STATE.update(ok=True, proc=proc)
    return True


def _die_with_parent() -> None:
    """In the Xvfb child: get SIGTERM when this (test) process ends, after Qt has closed
    its connection (killing Xvfb earlier, e.g. from atexit, makes Xlib abort the exit)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the server outlives the tests
        pass
