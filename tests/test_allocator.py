"""seg_explain.allocator: freed tensor-sized buffers are reused instead of re-faulted."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the tuning only applies to glibc on Linux")

CHILD = r"""
import json, resource, threading
import torch
from monai.networks.nets import UNet
from seg_explain.allocator import tune_allocator

tuned = tune_allocator()
torch.manual_seed(0)
net = UNet(3, 1, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
x = torch.randn(2, 1, 64, 64, 64)
out = {"tuned": tuned}

def passes():  # what an explainer does: the same gradient pass again and again
    faults = []
    for _ in range(4):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        xi = x.clone().requires_grad_(True)
        net(xi)[:, 1].sum().backward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    out["faults"] = faults

t = threading.Thread(target=passes)  # the GUI explains in a worker thread
t.start(); t.join()
print(json.dumps(out))
"""


def run_child(optout: str | None) -> dict:
    env = dict(os.environ)
    env.pop("SEG_EXPLAIN_MALLOC_TUNING", None)
    if optout is not None:
        env["SEG_EXPLAIN_MALLOC_TUNING"] = optout
    p = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_freed_buffers_are_reused_in_a_worker_thread():
    on, off = run_child(None), run_child("0")
    assert on["tuned"] is True and off["tuned"] is False
    # after the first passes have sized the heap, a tuned process stops faulting fresh pages
    # in (one 64³ UNet gradient pass touches ~30k pages when its buffers are not reused)
    steady_on, steady_off = sum(on["faults"][2:]), sum(off["faults"][2:])
    assert steady_off > 20000
    assert steady_on < 0.2 * steady_off


def test_cli_tunes_malloc(tmp_path):
    """The CLI tunes malloc before any command (load_model does too:
    tests/test_allocator_default.py)."""
    code = ("import sys; from seg_explain.cli import main; from seg_explain.allocator import _state; "
            "rc = main(['methods']); print('TUNED', _state.get('done'))")
    env = dict(os.environ)
    env.pop("SEG_EXPLAIN_MALLOC_TUNING", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "TUNED True" in out.stdout


ARENA_CHILD = r"""
import ctypes, json, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
ready, stop = threading.Event(), threading.Event()

def early():      # a thread that allocates before the tuning, as Qt's event-queue thread does
    libc.malloc(100)
    ready.set()
    stop.wait()

threading.Thread(target=early, daemon=True).start()
ready.wait()
import torch
from monai.networks.nets import UNet
from seg_explain.allocator import on_main_arena, tune_allocator
from seg_explain.jobs import drive

assert tune_allocator()
torch.manual_seed(0)
net = UNet(3, 1, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
x = torch.randn(4, 1, 64, 64, 64)

def steps(seen, faults):
    for i in range(4):
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        xi = x.clone().requires_grad_(True)
        net(xi)[:, 1].sum().backward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
        seen.append(on_main_arena())
        yield i + 1, 4
    return "done"

out = []
def caller():
    seen, faults = [], []
    here = on_main_arena()
    if here:          # glibc alternates the arenas of new threads: run from the other ones
        return
    out.append({"caller_on_main": here, "result": drive(steps(seen, faults)), "steps_on_main": seen,
                "faults": faults})

for _ in range(12):
    t = threading.Thread(target=caller)
    t.start(); t.join()
    if len(out) == 2:
        break
print(json.dumps(out))
"""


@pytest.mark.slow
def test_job_steps_run_on_the_main_arena_whatever_thread_calls():
    """A thread started before the tuning leaves a second malloc arena, and glibc gives every
    other new thread that one; a job driven from such a thread still runs its steps where
    blocks are reused (a pooled main-arena thread): no fresh pages per pass once warm."""
    env = dict(os.environ)
    env.pop("SEG_EXPLAIN_MALLOC_TUNING", None)
    p = subprocess.run([sys.executable, "-c", ARENA_CHILD], capture_output=True, text=True, env=env, check=True)
    runs = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(runs) == 2 and not any(r["caller_on_main"] for r in runs)   # the situation is reproduced
    for r in runs:
        assert r["result"] == "done" and r["steps_on_main"] == [True] * 4
    # a 4 x 64³ UNet gradient pass touches ~60k fresh pages when its buffers are not reused
    assert max(sum(r["faults"][2:]) for r in runs) < 15000, runs
