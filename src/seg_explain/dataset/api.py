"""The Python entry points of data-set runs: :func:`agg2exp` / :func:`evaluate` (and their
generator forms), and :class:`Agg2ExpRun` for front ends that stop a run and keep what it
finished. All of them build one :class:`~seg_explain.dataset.DatasetRun` with
:func:`~seg_explain.dataset.prepare_run`, so a serial call, a resumable ``out=`` folder and a
Dask cluster run the same code and give the same tables."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..jobs import CancelToken
from .run import DatasetRun, prepare_run, run_python


def _serial(kind: str, model, images, **kw) -> DatasetRun:
    """A run in this process, kept in memory; ``on_error="raise"`` raises a failing image's own
    error, ``"skip"`` lists it."""
    on_error = kw.pop("on_error", "raise")
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    if kind == "evaluate":
        kw["on_error"] = on_error
    return prepare_run(kind, model, images, raise_errors=on_error == "raise", **kw)


class Agg2ExpRun:
    """A stoppable Agg2Exp computation in this process: iterate :meth:`run_iter` (``(done,
    total)`` steps), read :meth:`result` at any time (after a stop it holds the images
    finished so far). ``status`` is a one-line text of where it is; ``skipped`` lists
    ``(image, reason)`` of images that failed (``on_error="skip"``). ``on_image(name,
    explanations, labels)`` sees each finished image's maps. Arguments as :func:`agg2exp`."""

    def __init__(self, model, images, method: str = "smoothgrad", extra_rois=None, *,
                 on_image: Callable | None = None, token: CancelToken | None = None, **kwargs):
        self.run = _serial("agg2exp", model, images, method=method, extra_rois=extra_rois, **kwargs)
        self.on_image = on_image
        self.token = token
        self.status = ""

    def __getattr__(self, name: str):
        if name in ("method", "params", "classes", "seed", "batch_size", "precision", "row_names", "col_names"):
            return getattr(self.run.job, name)        # the settings, as checked by prepare_run
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(self.run.failures.items())

    def run_iter(self) -> Iterator[tuple[int, int]]:
        for ev in self.run.events(self.token, on_image=self.on_image):
            self.status = ev.stage if ev.state != "failed" else f"skipped {ev.image}: {ev.error}"
            yield ev.done, ev.total
        n_ok, n_bad = len(self.run.rows), len(self.run.failures)
        self.status = f"done: {n_ok} image(s)" + (f", {n_bad} skipped" if n_bad else "")

    def result(self):
        return self.run.result()

    def finished_result(self):
        """:meth:`result`, or one line naming every failure when no image finished."""
        return self.run.finished_result()


def agg2exp_iter(model, images, method: str = "smoothgrad", extra_rois=None, **kwargs
                 ) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`agg2exp`: yields ``(done, total)``, returns the result.

    Closing the generator stops between steps; to keep the images finished so far, use an
    :class:`Agg2ExpRun` and call its ``result()``."""
    run = Agg2ExpRun(model, images, method, extra_rois, **kwargs)
    yield from run.run_iter()
    return run.finished_result()


def agg2exp(model, images, method: str = "smoothgrad", extra_rois=None,
            progress: Callable[[int, int], Any] | None = None, *, client=None,
            out: str | os.PathLike | None = None, overwrite: bool = False, **kwargs):
    """Agg2Exp class-to-region importance over ``images``.

    Parameters
    ----------
    model : SegModel (or, for ``client``/``out`` runs, a model path)
    images : one image or a sequence (ndarrays on the model grid, ``LoadedImage`` or file
        paths, loaded one at a time)
    method : any registered explainer (default SmoothGrad, the paper's choice)
    extra_rois : extra region columns (see :class:`seg_explain.aggregate.ExtraRois` for the
        accepted forms)
    progress : ``callback(done, total)``
    names : image names for the tables (default: file stems, else ``image_<i>``)
    ground_truth : label maps (one per image; arrays or paths) -> ``result.dice``
    classes : explain only these classes (default: every class predicted in each image)
    seed, batch_size : passed to the explainer (image ``name`` uses ``image_seed(seed, name)``)
    precision : "bf16" / "fp16": the network under autocast (opt-in; :mod:`seg_explain.precision`);
        default None: the model's own (fp32)
    on_error : ``"raise"`` (default) or ``"skip"`` (bad images are listed in ``result.skipped``)
    **params : the explainer's parameters (e.g. ``n_samples=20``)
    client : run one Dask task per image: a ``distributed.Client``, a scheduler address
        (``"tcp://host:8786"``) or a number of local worker processes; ``model`` must then be
        a path or a model loaded from a file (each worker loads it once). Tables are identical
        to the serial run's (seeds per image).
    out : a results folder: every finished image is written at once, and a rerun with the
        same ``out`` skips the images already done (``overwrite=True`` recomputes them).
        See :mod:`seg_explain.dataset` (also for ``threads`` and ``device`` of the workers).
    """
    if client is not None or out is not None:
        return run_python("agg2exp", model, images, progress=progress, client=client, out=out,
                          overwrite=overwrite, method=method, extra_rois=extra_rois, **kwargs)
    from ..jobs import drive

    return drive(agg2exp_iter(model, images, method, extra_rois, **kwargs), progress)


def evaluate_iter(model, images, methods: Sequence = ("smoothgrad",), classes=None, **kwargs
                  ) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`evaluate`: yields ``(done, total)``, returns the result."""
    run = _serial("evaluate", model, images, methods=methods, classes=classes, **kwargs)
    yield from ((ev.done, ev.total) for ev in run.events())
    return run.finished_result()


def evaluate(model, images, methods: Sequence = ("smoothgrad",), classes=None,
             progress: Callable[[int, int], Any] | None = None, *, client=None,
             out: str | os.PathLike | None = None, overwrite: bool = False, **kwargs):
    """Faithfulness, sensitivity, complexity and efficiency of ``methods`` on ``images``.

    ``methods``: names (``"smoothgrad"``), ``"name:k=v:k=v"`` strings, ``(label, name,
    params)`` tuples or dicts — e.g. a label "KernelSHAP (semantic)", the method's registry
    name (``seg-explain methods``) and ``{"features": "semantic"}``. ``classes``: explain these
    classes where predicted (default: every predicted class, background included): an index, a
    name or a list of them. ``method_params``: ``{name_or_label: {...}}``; other keyword
    arguments that are explainer parameters apply to every method that has them.
    ``protocol``: ``"default"`` (RoI fixed from the clean prediction, the explainer's seed
    kept, noise × image range, 5 % subsets) or ``"agg2exp"`` (the Agg2Exp authors' Quantus
    settings; :mod:`seg_explain.protocols`). Metric settings: ``n_faithfulness`` (100),
    ``subset`` (the protocol's: 0.05 / 50176 voxels), ``n_sensitivity`` (3), ``noise`` (0.1),
    ``theta`` (0.1), ``baseline`` (the protocol's: "min" / "global_min"), ``seed`` (0; image
    ``name`` uses ``image_seed(seed, name)``), ``batch_size``, ``precision`` (None: the model's
    own, fp32; "bf16" runs the network under autocast, :mod:`seg_explain.precision`),
    ``on_error`` ("raise" | "skip": an unreadable image is listed in ``settings["skipped"]``, a
    method that cannot explain one class in ``settings["failed"]``; the rest is evaluated).

    Data sets: ``client`` (a ``distributed.Client``, a scheduler address, or a number of
    local worker processes) runs one Dask task per image; ``out`` keeps every finished
    image in a folder and resumes from it (``overwrite=True`` recomputes). See
    :mod:`seg_explain.dataset`.
    """
    if client is not None or out is not None:
        return run_python("evaluate", model, images, progress=progress, client=client, out=out,
                          overwrite=overwrite, methods=methods, classes=classes, **kwargs)
    from ..jobs import drive

    return drive(evaluate_iter(model, images, methods, classes, **kwargs), progress)
