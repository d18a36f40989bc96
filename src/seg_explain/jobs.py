"""The job driver: how every long computation runs, written once.

Explainers, Agg2Exp, the metrics and progressive perturbation are generators that yield
``(done, total)`` between steps and return their result. This module drives them for every
front-end (the CLI, the napari docks' worker threads, batch runs):

- :func:`drive` runs a generator to its end (optionally calling ``callback(done, total)``
  and checking a :class:`CancelToken` between steps) and returns its value;
- :func:`events` relays a generator's steps as :class:`ProgressEvent` objects (stage text,
  done/total, elapsed seconds and an ETA), so a GUI only has to show them;
- :class:`CancelToken`: cooperative cancellation between steps (checked inside network
  passes by :func:`seg_explain.explainers.job.cancel_hooks`).

This is the ground floor: it imports nothing of the project but its errors and the
allocator (where a job's steps run). Explanation
jobs live in :mod:`seg_explain.explainers.job`, cost estimates in
:mod:`seg_explain.explainers.cost`.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import Cancelled


# ------------------------------------------------------------------------- progress --
@dataclass(frozen=True)
class ProgressEvent:
    """One step of a job: ``stage`` text, ``done`` of ``total`` units, seconds so far and an
    ETA in seconds (None until it can be estimated)."""

    stage: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def text(self) -> str:
        pct = f"{100 * self.fraction:3.0f}%" if self.total else ""
        eta = f", about {human_seconds(self.eta_s)} left" if self.eta_s is not None else ""
        return f"{self.stage} {pct}{eta}".strip()


class _Eta:
    """ETA from the rate since the first step that did work (the first steps include
    warm-up costs), smoothed so the estimate does not jump with every batch."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.eta: float | None = None

    def update(self, done: int, total: int) -> tuple[float, float | None]:
        now = time.perf_counter()
        if self.first is None and done > 0:
            self.first = (now, done)
        eta = None
        if self.first is not None and total and done > self.first[1]:
            rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
            raw = max(0.0, (total - done) / rate)
            eta = raw if self.eta is None else 0.7 * self.eta + 0.3 * raw
            self.eta = eta
        return now - self.t0, eta


def events(gen: Iterator, stage: str, token: CancelToken | None = None) -> Iterator[ProgressEvent]:
    """Relay a ``(done, total)`` generator as :class:`ProgressEvent`; return its value.

    Events the generator yields itself (a nested job) pass through unchanged. The token is
    checked between steps; the generator is closed whatever happens. Its steps run where
    memory comes from glibc's main arena (:func:`seg_explain.allocator.main_arena_runner`:
    this thread, or a pooled one when this thread was given another arena)."""
    from .allocator import main_arena_runner

    eta = _Eta()
    runner = main_arena_runner()
    try:
        while True:
            if token is not None:
                token.check()
            try:
                item = runner.run(next, gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(item, ProgressEvent):
                yield item
                continue
            done, total = int(item[0]), int(item[1])
            elapsed, left = eta.update(done, total)
            yield ProgressEvent(stage, done, total, elapsed, left)
    finally:
        try:
            runner.run(gen.close)
        finally:
            runner.close()


def drive(gen: Iterator, callback: Callable[[int, int], Any] | None = None,
          token: CancelToken | None = None):
    """Run a generator to completion, calling ``callback(done, total)`` for each step
    (``(done, total)`` tuples and :class:`ProgressEvent` alike); return its value. The same
    loop as :func:`events` (token checked between steps, generator closed whatever happens)."""
    it = events(gen, "", token)
    try:
        while True:
            try:
                ev = next(it)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(ev.done, ev.total)
    finally:
        it.close()      # closes gen too, even when the callback raises


def relay(gen: Iterator, offset: int, span: int, total: int) -> Iterator[tuple[int, int]]:
    """Re-yield a sub-generator's ``(done, total)`` steps as ``offset + span·done/total`` of
    ``total`` (a part of a bigger job); return its value."""
    while True:
        try:
            d, t = next(gen)
        except StopIteration as stop:
            return stop.value
        yield (offset + min(span - 1, int(span * d / max(t, 1))) if span else offset, total)


# ----------------------------------------------------------------------- cancelling --
class CancelToken:
    """A flag a job checks; :meth:`check` raises :class:`seg_explain.errors.Cancelled`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.cancelled_at: float | None = None

    def cancel(self) -> None:
        if not self._event.is_set():
            self.cancelled_at = time.perf_counter()
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def human_seconds(s: float) -> str:
    """Seconds as a person reads them: ``"4.2 s"``, ``"35 s"``, ``"12 min"``, ``"1.5 h"``."""
    if not math.isfinite(s):
        return "?"
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
