"""Explain several classes of one image, sharing the work between them (Agg2Exp needs all).

:func:`explain_classes` gives the same maps as calling :func:`~.base.explain` once per
class with its predicted voxels as RoI (same seed, so the same noise samples / IG steps),
but

- the image is prepared and its clean prediction computed once (it fixes every class's
  RoI);
- methods that provide a multi-class form (``fn.multi``: the gradient family and both
  CAMs) push each batch of inputs through the network **once** for all classes and run one
  backward per class on the retained graph, so an image with K classes costs
  ``n`` forwards + ``K·n`` backwards instead of ``K·n`` of each;
- other methods (PdCR, KernelSHAP, ...) run once per class on the shared prepared image and
  clean logits.

Pass counts: each Explanation's ``n_forward`` counts the forward rows it used (shared ones
included, plus the clean prediction) and ``n_backward`` its own backward rows; the image
totals (what the computation really cost) are in ``extras["shared_passes"]``
(``n_forward``, ``n_backward``, ``n_classes``, ``elapsed_s``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import InputMismatchError
from ..jobs import drive, relay
from .base import Explanation, finalize, make_context, resolve_params


def explain_classes_iter(model, image, method: str, classes=None, seed: int = 0,
                         batch_size: int | None = None, **params) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`explain_classes`: yields ``(done, total)``, returns the list."""
    spec, full = resolve_params(method, params)
    t0 = time.perf_counter()
    prep = model.prepare(image)
    clean = model.logits_tensor(prep.x)
    pred = model.image_labels(prep, clean).astype(np.int32)     # the one prediction (model.predict's)
    present = set(int(c) for c in np.unique(pred))
    if classes is None:
        wanted = sorted(present)
    else:
        if isinstance(classes, (str, int, np.integer)):
            classes = [classes]
        wanted = []
        for c in classes:
            ci = model.class_index(c)
            if ci not in wanted:
                wanted.append(ci)
    ctxs, rois = [], []
    for c in wanted:
        if c not in present:
            continue  # not predicted in this image: nothing to explain
        try:
            ctx, roi_img, _ = make_context(model, None, c, None, None, None, seed, batch_size,
                                           prep=prep, clean_logits=clean)
        except InputMismatchError:
            continue  # RoI vanishes on the model grid
        ctxs.append(ctx)
        rois.append(roi_img)
    if not ctxs:
        names = ", ".join(model.class_names[c] for c in wanted)
        raise InputMismatchError(f"none of the requested classes ({names}) is predicted in this image")

    run_params = {**full, "seed": seed, "batch_size": batch_size}
    multi = spec.multi
    results: list[Any] = []
    if multi is not None:
        results = yield from multi(ctxs, **full)
    else:
        n = len(ctxs)
        for k, ctx in enumerate(ctxs):
            results.append((yield from relay(spec.fn(ctx, **full), k * 1000, 1000, n * 1000)))
    out: list[Explanation] = []
    n_fwd_own = sum(c.n_forward for c in ctxs)
    for ctx, roi_img, res in zip(ctxs, rois, results):
        extras: dict[str, Any] = {}
        if isinstance(res, tuple):
            res, extras = res
        ctx.n_forward += 1  # the shared clean prediction that fixed the RoI
        e = finalize(ctx, spec.name, res, roi_img, run_params, t0, dict(extras))
        e.prediction = pred
        out.append(e)
    elapsed = time.perf_counter() - t0
    shared = {
        "n_forward": 1 + (ctxs[0].n_forward - 1 if multi is not None else n_fwd_own),
        "n_backward": sum(c.n_backward for c in ctxs),
        "n_classes": len(ctxs), "elapsed_s": elapsed, "shared_forward": multi is not None}
    for e in out:
        e.elapsed_s = elapsed
        e.extras["shared_passes"] = dict(shared)
    yield (1, 1)
    return out


def explain_classes(model, image, method: str, classes=None, seed: int = 0,
                    batch_size: int | None = None, progress: Callable[[int, int], Any] | None = None,
                    **params) -> list[Explanation]:
    """Explain every class predicted in ``image`` (or only ``classes``) with ``method``.

    Each class's RoI is its predicted voxels (fixed from the clean image). Classes that are
    not predicted in this image are skipped; an unknown class raises. Returns one
    :class:`~.base.Explanation` per explained class, in class order.
    """
    return drive(explain_classes_iter(model, image, method, classes, seed, batch_size, **params), progress)
