"""A data-set run (:class:`DatasetRun`: resumable, in-process or on Dask) and the one place
that builds a run from Python arguments (:func:`prepare_run`)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputMismatchError, SegExplainError, first_line
from ..jobs import CancelToken, ProgressEvent
from .executors import DaskExecutor, InProcess, make_executor, worker_model
from .inputs import ImageRecord, records_from
from .kinds import Agg2ExpJob, EvaluateJob, Job
from .store import (
    FAILURES_FILE,
    ResultStore,
    model_digest,
)

STEPS_PER_IMAGE = 1000


# --------------------------------------------------------------------------- runs --
@dataclass(frozen=True)
class ImageProgress(ProgressEvent):
    """A :class:`~seg_explain.jobs.ProgressEvent` of a data-set run (``done``/``total`` in
    per-mille of an image, as Agg2Exp's generator yields them) with the image it is about:
    ``state`` is ``"running"`` (in-process, within an image), ``"done"``, ``"failed"`` (with
    ``error``) or ``"resumed"`` (the first event, when images were already done)."""

    image: str | None = None
    state: str = "running"
    error: str | None = None
    n_done: int = 0            # images finished (this run and the resumed ones)
    n_failed: int = 0
    n_total: int = 0
    n_resumed: int = 0


class DatasetRun:
    """A resumable data-set run: iterate :meth:`events` (or call :meth:`run`), read :meth:`result`.

    ``job``: :class:`Agg2ExpJob` / :class:`EvaluateJob`; ``records``: :class:`ImageRecord`;
    ``executor``: :class:`InProcess` (default) or :class:`DaskExecutor`; ``out``: the results
    folder (None: keep results in memory only); ``overwrite``: recompute images already done.
    """

    def __init__(self, job: Job, records: Sequence[ImageRecord], *, executor=None,
                 out: str | os.PathLike | None = None, overwrite: bool = False, model=None):
        self.job = job
        self.records = list(records)
        if not self.records:
            raise InputMismatchError("no image given")
        names = [r.name for r in self.records]
        if len(set(names)) != len(names):
            raise InputMismatchError("image names must be unique")
        self.executor = executor if executor is not None else InProcess(model)
        self.store = ResultStore(out, job, overwrite) if out is not None else None
        self.rows: dict[str, dict] = {}
        self.failures: dict[str, str] = {}
        self.outcomes: list[dict] = []      # this run's outcomes (timings, worker pid, peak memory)
        self.resumed: list[str] = []
        if self.store is not None:
            self.store.open(self.records)
            for rec in self.records:
                row = self.store.load(rec)
                if row is not None:
                    self.rows[rec.name] = row
                    self.resumed.append(rec.name)
        self.todo = [r for r in self.records if r.name not in self.rows]
        self.previous_failures = list(self.store.previous_failures) if self.store is not None else []
        self.rejected = list(self.store.rejected) if self.store is not None else []

    @property
    def n_total(self) -> int:
        return len(self.records)

    def events(self, token: CancelToken | None = None, on_image: Callable | None = None,
               labels_fn=None) -> Iterator[ImageProgress]:
        """Run the images not done yet; yield :class:`ImageProgress`; return :meth:`result`.

        ``token`` stops the run between images (and inside network passes in-process; on
        Dask the tasks in flight are cancelled); what finished is kept (and written).
        ``on_image(name, explanations, labels)`` (in-process Agg2Exp only) sees each image's
        maps."""
        t0 = time.perf_counter()
        n = self.n_total
        total = n * STEPS_PER_IMAGE
        finished_here = 0

        def event(state, image=None, frac=0.0, error=None):
            n_fin = len(self.rows) + len(self.failures)
            done = min(total, n_fin * STEPS_PER_IMAGE + int(frac * (STEPS_PER_IMAGE - 1)))
            elapsed = time.perf_counter() - t0
            work = finished_here + frac
            eta = (n - n_fin - frac) * elapsed / work if work > 0 else None
            stage = {"running": f"image {min(n_fin + 1, n)}/{n}: {image}",
                     "done": f"done {image}", "failed": f"failed {image}",
                     "resumed": f"{len(self.resumed)} image(s) already done"}[state]
            return ImageProgress(stage, done, total, elapsed, eta, image, state, error, len(self.rows),
                                 len(self.failures), n, len(self.resumed))

        if self.resumed:
            yield event("resumed")
        stream = self.executor.run(self.job, self.todo, token, on_image, labels_fn)
        try:
            for kind, rec, payload in stream:
                if kind == "progress":
                    yield event("running", rec.name, payload)
                    continue
                if payload["status"] == "done":    # the NaN policy: a NaN row is a failure, never a result
                    try:
                        self.job.validate(payload["row"], f"the result of {rec.name!r}")
                    except SegExplainError as exc:
                        payload = {k: v for k, v in payload.items() if k != "row"}
                        payload.update(status="failed", error=first_line(exc, with_type=True))
                self.outcomes.append({k: v for k, v in payload.items() if k != "row"})
                if self.store is not None:
                    self.store.save(rec, payload)
                finished_here += 1
                if payload["status"] == "done":
                    self.rows[rec.name] = payload["row"]
                    self.failures.pop(rec.name, None)
                    yield event("done", rec.name)
                else:
                    self.failures[rec.name] = payload.get("error", "")
                    yield event("failed", rec.name, error=payload.get("error"))
        finally:
            stream.close()
        return self.result()

    def run(self, progress: Callable[[int, int], Any] | None = None, token: CancelToken | None = None):
        from ..jobs import drive

        return drive(self.events(token), progress)

    def result(self):
        """The result of the images finished so far (resumed ones included), in data-set order."""
        rows = [self.rows[r.name] for r in self.records if r.name in self.rows]
        fails = [(r.name, self.failures[r.name]) for r in self.records if r.name in self.failures]
        return self.job.assemble(rows, fails)

    def finished_result(self):
        """:meth:`result`, or one line naming every failure when no image finished."""
        if not self.rows and self.failures:
            verb = "explained" if self.job.kind == "agg2exp" else "evaluated"
            raise InputMismatchError(f"No image could be {verb}: "
                                     + "; ".join(f"{n}: {m}" for n, m in self.failures.items()))
        return self.result()

    owns_executor = True

    def close(self) -> None:
        """Close the executor (a local cluster it started), unless it was passed in to be reused."""
        if self.owns_executor:
            self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write_failures(self, out: str | os.PathLike) -> Path | None:
        """``failures.csv`` (image, error) when images failed; a stale one is removed."""
        from ..files import write_csv

        p = Path(out) / FAILURES_FILE
        if not self.failures:
            with contextlib.suppress(OSError):
                p.unlink()
            return None
        rows = [{"image": r.name, "error": self.failures[r.name]} for r in self.records if r.name in self.failures]
        return write_csv(p, rows, ["image", "error"])


# ---------------------------------------------------------------------- Python API --
def _model_identity(model, digest_weights: bool = True) -> tuple[str, str, str]:
    """``(path, device, digest)`` of a model given as a path or a SegModel. A model built in
    Python is identified by a hash of its weights, computed only when ``digest_weights``."""
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        return path, "auto", model_digest(path)
    path = getattr(model, "source", "") or ""
    device = str(getattr(model, "device", "auto"))
    if path and os.path.exists(path):
        return os.path.abspath(path), device, model_digest(path)
    if not digest_weights:
        return "", device, ""
    h = hashlib.blake2b(digest_size=10)       # a model built in Python: its weights identify it
    net = getattr(model, "network", None)
    if net is not None and hasattr(net, "state_dict"):
        for k, v in net.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return "", device, h.hexdigest()


def prepare_run(kind: str, model, images, *, client=None, out: str | os.PathLike | None = None,
                overwrite: bool = False, threads: int | None = None, raise_errors: bool = False,
                **kw) -> DatasetRun:
    """A :class:`DatasetRun` of ``kind`` (``"agg2exp"`` or ``"evaluate"``) from Python inputs.

    ``model``: a path (loaded here on the CPU for its class names; each worker loads it once
    with ``device``, default ``"auto"``) or a SegModel loaded from a file (its path is sent to
    the workers; a model built in Python can only run in this process). ``images``: what
    :func:`seg_explain.agg2exp` takes, or :class:`ImageRecord` objects. ``client``: None (this
    process), a ``distributed.Client``, a scheduler address, a number of local worker
    processes, or an executor. ``**kw``: :func:`seg_explain.agg2exp`'s keywords (``method``,
    ``extra_rois``, ``names``, ``ground_truth``, ``classes``, ``seed``, ``batch_size``, the
    method's parameters) or :func:`seg_explain.metrics.evaluate`'s. Everything is checked here,
    before any image. ``raise_errors`` (in this process only): a failing image raises its own
    error instead of being recorded (what serial Python calls with ``on_error="raise"`` want).
    Close the run (``with run:`` or ``run.close()``) to close a cluster it
    started."""
    from ..checks import as_int, class_indices

    device = kw.pop("device", None)
    # the weights' digest identifies results kept on disk or sent to workers; a run in this
    # process and in memory keeps nothing, so it skips hashing every weight
    path, dev, digest = _model_identity(model, digest_weights=out is not None or client is not None)
    if isinstance(model, (str, os.PathLike)):
        loaded = worker_model(path, "cpu" if client is not None else (device or "auto"))
        dev = device or "auto"
    else:
        loaded = model
        dev = device or dev
    if client is not None and not isinstance(client, InProcess) and not path:
        raise InputMismatchError("a Dask run needs the model as a file: pass its path (or a model from "
                                 "load_model); each worker loads it once")
    names = kw.pop("names", None)
    if kind == "agg2exp":
        from ..explainers.registry import resolve_params

        method = kw.pop("method", "smoothgrad")
        extra_rois = kw.pop("extra_rois", None)
        ground_truth = kw.pop("ground_truth", None)
        classes = kw.pop("classes", None)
        seed = as_int("seed", kw.pop("seed", 0), 0, 2 ** 31 - 1)
        batch_size = kw.pop("batch_size", None)
        precision = loaded.with_precision(kw.pop("precision", None)).precision
        resolve_params(method, kw)
        records, roi_names = records_from(images, names, ground_truth, extra_rois)
        classes = class_indices(loaded, classes)
        job: Job = Agg2ExpJob(model=path, device=dev, threads=threads, method=method, params=dict(kw),
                               classes=classes, seed=seed, batch_size=batch_size,
                               row_names=list(loaded.class_names), roi_names=roi_names,
                               with_dice=any(r.ground_truth is not None for r in records), model_digest=digest,
                               precision=precision)
    elif kind == "evaluate":
        from ..metrics import plan_evaluation

        on_error = kw.pop("on_error", "skip")
        plan = plan_evaluation(loaded, **kw)
        records, _ = records_from(images, names)
        job = EvaluateJob(model=path, device=dev, threads=threads, plan=plan, model_digest=digest,
                          on_error=on_error)
    else:
        raise ValueError(f"kind must be 'agg2exp' or 'evaluate', got {kind!r}")
    executor = make_executor(client=client, threads=threads, model=loaded)
    if raise_errors and isinstance(executor, InProcess):
        executor.raise_errors = True
    owned = not isinstance(client, (InProcess, DaskExecutor))     # an executor passed in stays open
    try:
        run = DatasetRun(job, records, executor=executor, out=out, overwrite=overwrite, model=loaded)
    except BaseException:
        if owned:
            executor.close()
        raise
    run.owns_executor = owned
    return run


def run_python(kind: str, model, images, *, progress: Callable | None = None, client=None,
               out: str | os.PathLike | None = None, overwrite: bool = False,
               token: CancelToken | None = None, threads: int | None = None, **kw):
    """``agg2exp(..., client=..., out=...)`` / ``evaluate(...)`` as a data-set run
    (:func:`prepare_run`), driven to its end. ``on_error="raise"`` (the default) stops at the
    first failing image (what finished is kept in ``out``); ``"skip"`` lists failures in the
    result. ``on_image`` (Agg2Exp in this process only) sees each image's maps."""
    on_error = kw.pop("on_error", "raise")
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    on_image = kw.pop("on_image", None)
    if on_image is not None and client is not None:
        raise InputMismatchError("on_image sees voxel maps, which stay on the workers; run in this process")
    with prepare_run(kind, model, images, client=client, out=out, overwrite=overwrite, threads=threads,
                     **kw) as run:
        gen = run.events(token, on_image=on_image)
        try:
            for ev in gen:
                if ev.state == "failed" and on_error == "raise":
                    raise InputMismatchError(f"{ev.image}: {ev.error}")
                if progress is not None:
                    progress(ev.done, ev.total)
        finally:
            gen.close()
        if out is not None:
            run.write_failures(out)
    return run.finished_result()


