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
