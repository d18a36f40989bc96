"""The front ends' jobs as plain generators over plain data, and the models they share.

A viewer runs these in its own worker thread (napari's ``thread_worker``, a Slicer timer):
they yield :class:`~seg_explain.jobs.ProgressEvent` objects or ``("status", text)``
messages and *return* their result; :func:`guarded` turns an exception into a
:class:`Failure` (one line for the user) or :data:`CANCELLED`, so nothing raises into the
viewer's event loop.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .messages import one_line

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """What a job returns when it failed: the one-line cause for the user."""

    message: str
    exc: BaseException | None = None


class _Cancelled:
    def __repr__(self) -> str:
        return "CANCELLED"


CANCELLED = _Cancelled()


def guarded(job: Callable[..., Iterator], *args, **kwargs) -> Iterator:
    """Run generator ``job`` turning exceptions into :class:`Failure` / :data:`CANCELLED`."""
    from ..errors import Cancelled

    try:
        result = yield from job(*args, **kwargs)
        return result
    except Cancelled:
        return CANCELLED
    except GeneratorExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - everything reaches the user as one line
        from ..errors import SegExplainError

        if isinstance(exc, SegExplainError):
            # an expected mistake (a bad file, a wrong-shape RoI, ...): the user sees one line; the
            # traceback goes to the debug log only (logging.DEBUG on "seg_explain"), never the terminal
            log.debug("seg-explain job stopped: %s", one_line(exc), exc_info=True)
        else:
            log.warning("seg-explain job failed (unexpected; please report it)", exc_info=True)
        return Failure(one_line(exc), exc)


class ModelCache:
    """Models loaded by (path, device); one per dock, shared by its jobs (thread-safe)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(path, device: str) -> tuple[str, str]:
        return (str(path), str(device or "auto"))

    def cached(self, path, device: str):
        return self._models.get(self.key(path, device))

    def get(self, path, device: str):
        k = self.key(path, device)
        with self._lock:
            m = self._models.get(k)
            if m is None:
                from .. import load_model

                m = load_model(path, device=device or "auto")
                self._models[k] = m
            return m

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def load_model_job(cache: ModelCache, path, device: str) -> Iterator:
    """Load (or fetch) a model, warm it up and time its passes (for cost estimates);
    returns a small description (names, dims, layers, devices)."""
    from ..explainers.job import measure_pass_times

    yield ("status", f"Loading model {path}")
    fresh = cache.cached(path, device) is None
    m = cache.get(path, device)
    if fresh or "pass_s" not in m.meta:
        yield ("status", "Warming up")
        measure_pass_times(m)
    layers: list[str] = []
    if m.hookable:
        from ..explainers.cams import candidate_layers

        layers = list(candidate_layers(m.network))
    return {"path": str(path), "device": str(m.device), "class_names": list(m.class_names),
            "spatial_dims": int(m.spatial_dims), "in_channels": int(m.in_channels),
            "name": m.name or str(path), "hookable": bool(m.hookable), "layers": layers,
            "spacing": m.spacing, "axcodes": m.axcodes}


def available_devices() -> list[str]:
    """Devices this torch build can use: auto and cpu, plus cuda / mps when present."""
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out
