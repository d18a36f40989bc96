"""One explanation as a job for a front end: progress events, cancellation inside network
passes (:func:`cancel_hooks`), and the warm-up pass timing the cost estimates use."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from ..jobs import CancelToken, ProgressEvent, events
from .engine import thread_hooks

BATCH_PROBE = 4          # copies in the batched-forward probe of measure_pass_times


@contextmanager
def cancel_hooks(model, token: CancelToken | None):
    """While active, every module's forward (and every activation's backward) of
    ``model.network`` checks ``token`` for the calling thread's passes only, so a cancel
    stops a long batch within one layer and never touches another job on the same model.

    Compiled networks (TorchScript, ``torch.export``) take no hooks: they stop at the
    explainer's next step instead."""
    if token is None:
        yield
        return
    import torch

    net = getattr(model, "network", None)
    if not isinstance(net, torch.nn.Module) or isinstance(net, torch.jit.ScriptModule):
        yield
        return

    def grad_check(_grad):
        token.check()

    def pre(_m, _inp):
        token.check()

    def post(_m, _inp, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(grad_check)

    with thread_hooks() as hooks:
        for m in net.modules():
            hooks.pre(m, pre)
            hooks.forward(m, post)
        yield


# ------------------------------------------------------------------------------ jobs --
def explain_job(model, image, method: str, target=1, roi=None, *, token: CancelToken | None = None,
                **kwargs) -> Iterator[ProgressEvent]:
    """One explanation as a job: yields :class:`ProgressEvent` ("explaining <method>"), checks
    ``token`` between steps and inside network passes, returns the
    :class:`~seg_explain.explainers.base.Explanation` (which carries the clean prediction).

    ``kwargs``: everything :func:`seg_explain.explain` takes (``seed``, ``batch_size``,
    ``roi_mode``, ``roi_label``, ``slice_index`` and the method's parameters)."""
    from .base import explain_iter
    from .registry import get_spec

    title = get_spec(method).title
    steps = explain_iter(model, image, method, target, roi, **kwargs)
    return (yield from events(watched(model, token, steps), f"Explaining ({title})", token))


def watched(model, token: CancelToken | None, gen: Iterator):
    """``gen`` with :func:`cancel_hooks` active from its first step to its end: the hooks
    belong to the thread that runs the steps (:func:`seg_explain.jobs.events` may run them
    on another thread than the caller's)."""
    with cancel_hooks(model, token) if token is not None else nullcontext():
        return (yield from gen)


# ----------------------------------------------------------------------- pass timing --
def measure_pass_times(model, repeat: int = 2) -> dict[str, float]:
    """Warm a model up and time one forward and one forward+backward pass.

    The first gradient pass imports what torch and MONAI load lazily (so a GUI should call
    this right after loading, off its main thread, before the first explanation). The
    timings, in seconds per voxel of one network row (window or image), are kept in
    ``model.meta["pass_s"]`` for :func:`estimate`. Measured on an input of the model's
    patch (or 64 voxels per axis, at most), batch 1, the best of ``repeat`` runs; and a forward
    of :data:`BATCH_PROBE` copies (``forward_batched``, per copy): what a forward costs when a
    method batches its perturbed copies."""
    import numpy as np
    import torch

    n = min(64, max(model.min_size, 2 * model.divisor, 16))
    shape = tuple(model.patch_size) if model.patch_size and np.prod(model.patch_size) <= 64 ** 3 \
        else (n,) * model.spatial_dims
    x = torch.zeros((1, model.in_channels) + tuple(shape))
    fwd = bwd = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.forward(x)
        fwd = min(fwd, time.perf_counter() - t0)
        xg = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.enable_grad():
            out = model.forward(xg)
            (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
        bwd = min(bwd, time.perf_counter() - t0 - fwd)
    # perturbation methods run their copies in batches, which costs less per copy than batch 1
    xb = torch.zeros((BATCH_PROBE, model.in_channels) + tuple(shape))
    fwd_b = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.forward(xb)
        fwd_b = min(fwd_b, (time.perf_counter() - t0) / BATCH_PROBE)
    vox = float(np.prod(shape))
    model.meta["pass_s"] = {"forward": fwd / vox, "backward": max(bwd, fwd) / vox, "voxels": vox,
                            "forward_batched": min(fwd_b, fwd) / vox}
    return model.meta["pass_s"]
