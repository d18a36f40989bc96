"""Explanations of one shared model in several real threads at once (the GUI does this).

A ``Rendezvous`` after the network makes every explaining forward pass (autograd on) wait
for the other thread's, so both threads are inside the network at the same time and a
hook installed by one of them is certainly present while the other runs: the overlap
that made a concurrent gradient come out wrong (a CAM hook detaching its activations) and
two CAMs fail with "layer ran 2 times" happens every round, not by chance.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import close, make_unet, wrap

from seg_explain import explain
from seg_explain.errors import Cancelled


class Rendezvous(torch.nn.Module):
    """Identity; with ``barrier`` set, a forward pass with autograd on waits for the other party."""

    def __init__(self):
        super().__init__()
        self.barrier: threading.Barrier | None = None

    def forward(self, x):
        if self.barrier is not None and torch.is_grad_enabled():
            self.barrier.wait()
        return x


def shared_model():
    meet = Rendezvous()
    net = torch.nn.Sequential(make_unet(2), meet).eval()
    return wrap(net, 2), meet


def run_threads(jobs):
    """Run each ``job()`` in its own thread; return (results, errors) in job order."""
    results, errors = [None] * len(jobs), [None] * len(jobs)

    def target(i):
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors[i] = exc

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


@pytest.fixture
def setup(rng):
    model, meet = shared_model()
    x = rng.normal(size=(32, 40)).astype(np.float32)
    pred = model.predict(x)
    vals, counts = np.unique(pred, return_counts=True)
    order = [int(v) for v in vals[np.argsort(-counts)]]
    return model, meet, x, order[0], order[1]


@pytest.mark.parametrize("pair", [("seg_grad_cam", "gradient"), ("seg_hires_grad_cam", "seg_grad_cam"),
                                  ("gradient", "integrated_gradients")])
def test_two_explanations_overlapping_in_the_network(setup, pair):
    model, meet, x, c1, c2 = setup
    params = {"integrated_gradients": {"steps": 1, "baseline": "zero"}}
    jobs_args = [(pair[0], c1), (pair[1], c2)]
    sequential = [explain(model, x, m, target=c, **params.get(m, {})) for m, c in jobs_args]
    meet.barrier = threading.Barrier(2, timeout=30)
    try:
        for _round in range(3):
            results, errors = run_threads([lambda m=m, c=c: explain(model, x, m, target=c, **params.get(m, {}))
                                           for m, c in jobs_args])
            assert errors == [None, None], errors
            for got, ref in zip(results, sequential):
                assert np.abs(ref.attribution).max() > 0
                close(got.attribution, ref.attribution, rtol=1e-5)
                assert got.n_forward == ref.n_forward and got.n_backward == ref.n_backward
    finally:
        meet.barrier = None
    # nothing left behind on the shared network
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.network.modules())


def test_free_running_threads_match_sequential(setup):
    """Four threads, no rendezvous: CAMs and gradient methods interleaving as they come."""
    model, _, x, c1, c2 = setup
    jobs_args = [("seg_grad_cam", c1, {}), ("gradient", c1, {}), ("seg_hires_grad_cam", c2, {}),
                 ("smoothgrad", c2, {"n_samples": 2})]
    sequential = [explain(model, x, m, target=c, **p).attribution for m, c, p in jobs_args]
    for _round in range(3):
        results, errors = run_threads([lambda m=m, c=c, p=p: explain(model, x, m, target=c, **p)
                                       for m, c, p in jobs_args])
        assert errors == [None] * 4, errors
        for got, ref in zip(results, sequential):
            close(got.attribution, ref, rtol=1e-5)


def test_cancel_hooks_stop_only_their_own_job(setup):
    """A job's cancel hooks (token cancelled) are installed while another thread explains the
    same model: the other explanation runs to the right result; the job's own pass stops."""
    from seg_explain._napari.workers import CancelToken, cancel_hooks

    model, _, x, c1, _ = setup
    ref_cam = explain(model, x, "seg_grad_cam", target=c1).attribution
    ref_sg = explain(model, x, "smoothgrad", target=c1, n_samples=2).attribution
    installed, other_done = threading.Event(), threading.Event()

    def job():
        token = CancelToken()
        with cancel_hooks(model, token):
            token.cancel()
            installed.set()
            assert other_done.wait(60)
            try:
                model.forward(torch.as_tensor(x)[None, None])
            except Cancelled:
                return "cancelled"
            return "ran"

    def other():
        assert installed.wait(60)
        try:
            return (explain(model, x, "seg_grad_cam", target=c1).attribution,
                    explain(model, x, "smoothgrad", target=c1, n_samples=2).attribution)
        finally:
            other_done.set()

    results, errors = run_threads([job, other])
    assert errors == [None, None], errors
    status, (cam, sg) = results
    assert status == "cancelled"
    close(cam, ref_cam, rtol=1e-5)
    close(sg, ref_sg, rtol=1e-5)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.network.modules())
