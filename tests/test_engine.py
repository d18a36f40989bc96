"""The shared machinery: thread-owned hooks and MONAI's blending weights."""
from __future__ import annotations

import threading

import pytest
import torch

from seg_explain.explainers.engine import HookSet, WindowWeights, thread_hooks
from seg_explain.windows import tile


def in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_thread_hooks_act_only_for_the_owner_thread():
    lin = torch.nn.Linear(3, 3)
    x = torch.ones(1, 3)
    plain = lin(x).detach()
    calls = []
    with thread_hooks() as hooks:
        hooks.pre(lin, lambda m, i: calls.append(("pre", threading.get_ident())))
        store = hooks.capture(lin, lambda out: (out.detach(), torch.zeros_like(out)))
        # another thread's pass: no hook runs, the output is not replaced
        other = in_thread(lambda: lin(x).detach())
        assert torch.equal(other, plain) and calls == [] and store == []
        # the owner's pass: both hooks run, the replacement is the output
        mine = lin(x)
        assert torch.equal(mine, torch.zeros_like(plain))
        assert calls == [("pre", threading.get_ident())] and len(store) == 1
        assert torch.equal(store[0], plain)
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    assert torch.equal(lin(x).detach(), plain)


def test_thread_hooks_are_removed_on_error_and_storage_is_per_call():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError):
        with thread_hooks() as hooks:
            first = hooks.capture(lin)
            raise RuntimeError("boom")
    assert not lin._forward_hooks and first == []
    a, b = HookSet(), HookSet()
    sa, sb = a.capture(lin), b.capture(lin)
    lin(torch.ones(1, 2))
    assert len(sa) == len(sb) == 1 and sa is not sb
    a.remove()
    b.remove()
    assert not lin._forward_hooks


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("shape,patch", [((37, 45), (16, 20)), ((12, 45), (16, 20)), ((20, 33, 17), (16, 16, 16))])
def test_blend_weights_are_a_partition_of_unity(shape, patch, blend):
    """Σ over the windows covering a voxel of w_k/Σw is 1 everywhere in the image."""
    t = tile(shape, patch, 0.25)
    ww = WindowWeights(t, blend)
    total = torch.zeros(shape)
    for w in t.windows:
        t.add_to(total, w, ww.of(w))
    assert len(t.windows) > 2
    assert torch.allclose(total, torch.ones(shape), atol=1e-6)
    if blend == "gaussian":
        centre = ww.importance[tuple(p // 2 for p in patch)]
        corner = ww.importance[(0,) * len(patch)]
        assert float(corner) < 0.01 * float(centre)   # the edges of a window count little
