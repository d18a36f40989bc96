"""load_model applies the malloc tuning: a library caller gets reused buffers without doing anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_allocator import CHILD, pytestmark  # noqa: F401 (glibc on Linux only)

# the explainer-like passes of test_allocator's child, after nothing but load_model
LIBRARY_CHILD = CHILD.replace(
    "from seg_explain.allocator import tune_allocator\n\ntuned = tune_allocator()",
    "import sys\nfrom seg_explain import load_model\nfrom seg_explain.allocator import tuned as _tuned\n\n"
    "before = _tuned()\nload_model(sys.argv[1])\ntuned = _tuned()\nassert not before")


def run_child(bundle, optout: str | None) -> dict:
    env = dict(os.environ)
    env.pop("SEG_EXPLAIN_MALLOC_TUNING", None)
    if optout is not None:
        env["SEG_EXPLAIN_MALLOC_TUNING"] = optout
    p = subprocess.run([sys.executable, "-c", LIBRARY_CHILD, str(bundle)], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_child_is_the_allocator_tests_child():
    assert LIBRARY_CHILD != CHILD and "load_model(sys.argv[1])" in LIBRARY_CHILD


@pytest.mark.slow
def test_load_model_tunes_malloc_unless_opted_out(bundle3d):
    on, off = run_child(bundle3d, None), run_child(bundle3d, "0")
    assert on["tuned"] is True and off["tuned"] is False
    steady_on, steady_off = sum(on["faults"][2:]), sum(off["faults"][2:])
    assert steady_off > 20000
    assert steady_on < 0.2 * steady_off
