"""Where the images of a data-set run are computed: :class:`InProcess` (this process, one
image after another) or :class:`DaskExecutor` (a Dask cluster, one task per image)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..checks import cpu_cores as cores
from ..errors import Cancelled, InputMismatchError, SegExplainError, first_line, printable
from ..jobs import CancelToken
from .inputs import ImageRecord
from .kinds import Job
from .store import (
    model_digest,
)


class ClusterError(SegExplainError):
    """Dask is missing, or the cluster cannot be reached."""



# ------------------------------------------------------------------- on a worker --
_MODELS: OrderedDict = OrderedDict()
_MODELS_LOCK = threading.Lock()
MODEL_LOADS = {"count": 0}           # how many times this process loaded a model (tests)


def worker_model(path: str, device: str = "auto"):
    """The model at ``path``, loaded once per process (per path, device and file dates)."""
    key = (str(path), str(device), model_digest(path))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from ..models import load_model

            model = load_model(path, device=device)
            MODEL_LOADS["count"] += 1
            _MODELS[key] = model
            while len(_MODELS) > 2:
                _MODELS.popitem(last=False)
        else:
            _MODELS.move_to_end(key)
    return model


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch intra-op threads inside the block (None: unchanged)."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _peak_rss() -> int | None:
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)
    except (ImportError, OSError):   # pragma: no cover - Windows
        return None


def run_image(job: Job, rec: ImageRecord) -> dict:
    """The task a Dask worker runs for one image: the small rows, or the error (never raises
    for a bad image, so one image cannot stop the others). Loads the model once per worker."""
    from ..jobs import drive

    t0 = time.perf_counter()
    info = {"name": rec.name, "pid": os.getpid(), "host": _host()}
    try:
        with torch_threads(job.threads):
            model = worker_model(job.model, job.device)
            row = drive(job.compute(model, rec))
        return {**info, "status": "done", "row": row, "seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}
    except Exception as exc:  # noqa: BLE001 - recorded with the image, the run goes on
        return {**info, "status": "failed", "error": first_line(exc, with_type=True),
                "seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}


def _host() -> str:
    import socket

    return socket.gethostname()


# ----------------------------------------------------------------------- executors --
class InProcess:
    """Computes the images here, one after another (the default; what ``seg-explain``
    without ``--workers`` / ``--scheduler`` does). Yields sub-image progress; ``model`` (a
    loaded SegModel) is used as is, else the job's model path is loaded once."""

    description = "in this process"

    def __init__(self, model=None, raise_errors: bool = False):
        self.model = model
        self.raise_errors = raise_errors     # True: a failing image raises its own error (serial Python calls)

    def run(self, job: Job, records: Sequence[ImageRecord], token: CancelToken | None = None,
            on_image: Callable | None = None, labels_fn=None) -> Iterator[tuple[str, ImageRecord, Any]]:
        from ..explainers.job import cancel_hooks

        with torch_threads(job.threads):
            model = self.model if self.model is not None else worker_model(job.model, job.device)
            with cancel_hooks(model, token):
                for rec in records:
                    if token is not None:
                        token.check()
                    t0 = time.perf_counter()
                    gen = job.compute(model, rec, on_image, labels_fn)
                    try:
                        while True:
                            if token is not None:
                                token.check()
                            try:
                                d, t = next(gen)
                            except StopIteration as stop:
                                row = stop.value
                                break
                            yield ("progress", rec, d / t if t else 0.0)
                    except Cancelled:
                        raise
                    except Exception as exc:  # noqa: BLE001 - recorded with the image, the others go on
                        if self.raise_errors:
                            raise
                        yield ("result", rec, {"name": rec.name, "status": "failed",
                                               "error": first_line(exc, with_type=True),
                                               "seconds": time.perf_counter() - t0, "pid": os.getpid(),
                                               "host": _host()})
                        continue
                    finally:
                        gen.close()
                    yield ("result", rec, {"name": rec.name, "status": "done", "row": row, "pid": os.getpid(),
                                           "host": _host(), "seconds": time.perf_counter() - t0,
                                           "peak_rss": _peak_rss()})

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _allocator_env() -> dict[str, str]:
    """glibc malloc settings of :mod:`seg_explain.allocator` as environment variables, for
    worker processes (read by glibc when the process starts, so every thread, the task
    threads included, shares the main arena and reuses freed tensor buffers). Empty when
    opted out (``SEG_EXPLAIN_MALLOC_TUNING=0``) or not on Linux."""
    from ..allocator import MMAP_THRESHOLD, OPT_OUT, TRIM_THRESHOLD

    if os.environ.get(OPT_OUT, "").strip().lower() in ("0", "off", "no", "false") or \
            not sys.platform.startswith("linux"):
        return {}
    return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
            "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def _dask():
    try:
        import distributed
    except ImportError:
        raise ClusterError("running on Dask needs dask.distributed: pip install 'napari-seg-explain[dask]'") from None
    return distributed


class DaskExecutor:
    """Computes images as Dask tasks (:func:`run_image`), one task per image; results are
    small and come back to this process, which writes them.

    - ``DaskExecutor(client)``: an existing ``distributed.Client``;
    - ``DaskExecutor.local(n)``: a ``LocalCluster`` of ``n`` worker processes on this machine
      (one task at a time each; torch threads = ``threads`` or ``cores // n``; scheduler and
      dashboard on 127.0.0.1 only); closed with the executor;
    - ``DaskExecutor.connect(address)``: an existing cluster (``tcp://host:8786`` or a
      scheduler file written by ``dask scheduler --scheduler-file``).

    A worker that dies (killed, out of memory) costs only its task in flight: Dask reruns it
    elsewhere; after ``distributed.scheduler.allowed-failures`` deaths (3) that image is
    recorded as failed and the others go on."""

    def __init__(self, client, cluster=None, threads: int | None = None, description: str = ""):
        self.client = client
        self.cluster = cluster
        self.threads = threads
        self.description = description or f"on the Dask cluster at {client.scheduler.address}"

    @classmethod
    def local(cls, n_workers: int, threads: int | None = None, memory_limit="auto") -> DaskExecutor:
        distributed = _dask()
        from ..checks import as_int, max_workers

        n = as_int("workers", n_workers, 1, max_workers())     # this machine's cores and open files
        th = int(threads) if threads else max(1, cores() // n)
        import dask

        env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **_allocator_env()}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                               memory_limit=memory_limit, silence_logs=40)
        try:
            client = distributed.Client(cluster)
            # Ctrl-C reaches every process of the terminal's group: the workers leave it to this
            # process, which cancels the tasks and closes the cluster (also for restarted workers)
            from .._dask_plugins import IgnoreSigint, TuneAllocator

            client.register_plugin(IgnoreSigint())
            client.register_plugin(TuneAllocator())
        except BaseException:
            cluster.close()
            raise
        return cls(client, cluster, th, f"on a local Dask cluster: {n} worker process(es), "
                                        f"{th} torch thread(s) each")

    @classmethod
    def connect(cls, address: str, threads: int | None = None, timeout=None) -> DaskExecutor:
        """``timeout``: seconds to reach the scheduler (default: Dask's
        ``distributed.comm.timeouts.connect``, 30 s)."""
        distributed = _dask()
        kw = {"timeout": timeout} if timeout is not None else {}
        target = scheduler_address(address)
        try:
            client = distributed.Client(target, **kw)
        except Exception as exc:  # noqa: BLE001 - refused, timed out, a malformed address: one line
            raise ClusterError(f"cannot reach the Dask scheduler at {printable(target)}: "
                               f"{first_line(exc, with_type=True)}") from None
        n = len(client.scheduler_info().get("workers", {}))
        try:
            from .._dask_plugins import TuneAllocator

            client.register_plugin(TuneAllocator())
        except Exception as exc:  # noqa: BLE001 - workers that cannot import seg_explain fail per image
            client.close()
            raise ClusterError(f"the Dask workers at {printable(address)} cannot run seg_explain: "
                               f"{first_line(exc, with_type=True)}") from None
        return cls(client, None, threads,
                   f"on the Dask cluster at {client.scheduler.address} ({n} worker(s) now"
                   + ("; waiting for workers" if n == 0 else "") + ")")

    def run(self, job: Job, records: Sequence[ImageRecord], token: CancelToken | None = None,
            on_image: Callable | None = None, labels_fn=None) -> Iterator[tuple[str, ImageRecord, Any]]:
        distributed = _dask()
        if self.threads and not job.threads:
            job = dataclasses.replace(job, threads=self.threads)
        tag = os.urandom(4).hex()
        futures = {}
        for rec in records:
            f = self.client.submit(run_image, job, rec, key=f"seg-explain-{job.kind}-{rec.key}-{tag}", pure=False)
            futures[f] = rec
        ac = distributed.as_completed(list(futures))
        try:
            while futures:
                if token is not None:
                    token.check()
                if not ac.has_ready():
                    time.sleep(0.05)
                    continue
                for f in ac.next_batch(block=False):
                    rec = futures.pop(f)
                    if f.status == "finished":
                        out = f.result()
                    else:
                        try:
                            exc = f.exception(timeout=5)
                        except Exception as e:  # noqa: BLE001 - cancelled / lost
                            exc = e
                        why = ("the worker computing it died" if type(exc).__name__ == "KilledWorker"
                               else "the task did not finish")
                        out = {"name": rec.name, "status": "failed",
                               "error": f"{why} ({first_line(exc, with_type=True)})"}
                    f.release()
                    yield ("result", rec, out)
        finally:
            if futures:
                with contextlib.suppress(Exception):
                    self.client.cancel(list(futures))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def scheduler_address(spec: str) -> str:
    """``--scheduler``: an address (``tcp://host:8786``) as is, or the address in a scheduler
    file (``dask scheduler --scheduler-file``), read here as untrusted JSON: a file that is not
    one, or has no ``address``, is one line, not Dask's assertion."""
    from ..files import read_json

    if not os.path.exists(spec):
        if "://" not in spec and ":" not in spec:
            raise ClusterError(f"--scheduler {printable(spec)} is neither an address (tcp://host:8786) nor "
                               "an existing scheduler file")
        return spec
    try:
        info = read_json(spec, "scheduler file", error=ClusterError, max_bytes=1024 * 1024)
    except ClusterError as exc:
        raise ClusterError(f"{first_line(exc)}; give the file `dask scheduler --scheduler-file` wrote, "
                           "or the address (tcp://host:8786)") from None
    addr = info.get("address")
    if not isinstance(addr, str) or "://" not in addr:
        raise ClusterError(f"scheduler file {printable(spec)} has no scheduler address (an 'address' such as "
                           "tcp://host:8786); is the scheduler running?")
    return addr


def make_executor(workers: int | None = None, scheduler: str | None = None, client=None,
                  threads: int | None = None, model=None):
    """The executor for a run: ``client`` (a ``distributed.Client``, an address or a number
    of local workers), else ``scheduler`` (address / scheduler file), else ``workers``
    (local cluster), else :class:`InProcess`."""
    if client is not None:
        if isinstance(client, (InProcess, DaskExecutor)):
            return client
        if isinstance(client, bool):
            raise InputMismatchError("client must be a dask Client, an address or a number of workers")
        if isinstance(client, int):
            return DaskExecutor.local(client, threads)
        if isinstance(client, (str, os.PathLike)):
            return DaskExecutor.connect(os.fspath(client), threads)
        ex = DaskExecutor(client, None, threads)
        ex.close = lambda: None         # the caller's client stays open
        return ex
    if scheduler:
        return DaskExecutor.connect(scheduler, threads)
    if workers:
        return DaskExecutor.local(workers, threads)
    return InProcess(model)


