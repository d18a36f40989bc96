"""The terminal side of data-set commands (``seg-explain agg2exp|evaluate``): their shared
arguments, a progress bar on stderr, and running a :class:`~seg_explain.dataset.DatasetRun`
to tables with exit codes."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..dataset import STEPS_PER_IMAGE, DatasetRun, ImageProgress
from ..dataset.inputs import path_inside
from ..dataset.store import (
    RESULTS_DIR,
)
from ..errors import Cancelled, InputMismatchError, SegExplainError, first_line, printable

EXIT_OK = 0                  # every image done
EXIT_BAD_INPUT = 2           # bad input, nothing computed (or no image could be computed)
EXIT_SOME_FAILED = 3         # tables written, but some images failed (listed in failures.csv)


# ------------------------------------------------------------------- terminal side --
class TerminalProgress:
    """A progress bar on stderr (tqdm: images done/total, rate, ETA, failures); plain lines
    when tqdm is not installed. Messages go through :meth:`write` so they do not break it."""

    def __init__(self, desc: str, total: int, initial: int = 0, quiet: bool = False):
        self.quiet = quiet
        self.desc = desc
        self.total = total
        self.bar = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._initial = initial
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="image", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5 if tty else 5.0, smoothing=0.2, leave=True)

    def update(self, ev: ImageProgress) -> None:
        if self.quiet:
            return
        fail = f"{ev.n_failed} failed" if ev.n_failed else ""
        if self.bar is not None:
            if ev.state in ("done", "failed"):
                self.bar.set_postfix_str(fail, refresh=False)
                self.bar.update(1)
            elif ev.state == "running":
                now = time.perf_counter()
                if now - self._last > 0.5:
                    self._last = now
                    cur = f"{ev.image} {100 * (ev.done % STEPS_PER_IMAGE) / STEPS_PER_IMAGE:.0f}%"
                    self.bar.set_postfix_str(", ".join(s for s in (fail, cur) if s), refresh=False)
                    self.bar.refresh()
            return
        now = time.perf_counter()
        if ev.state in ("done", "failed") and (now - self._last > 2.0 or ev.n_done + ev.n_failed == ev.n_total):
            self._last = now
            eta = ""
            if ev.eta_s is not None:
                from ..jobs import human_seconds

                eta = f", about {human_seconds(ev.eta_s)} left"
            print(f"{self.desc} {ev.n_done + ev.n_failed}/{ev.n_total} images"
                  + (f", {ev.n_failed} failed" if ev.n_failed else "") + f", {now - self._t0:.1f}s{eta}",
                  file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_dataset_arguments(p) -> None:
    """``--workers``, ``--scheduler``, ``--threads``, ``--overwrite`` for a subcommand."""
    g = p.add_argument_group("data sets (Dask, resuming)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=None, metavar="N",
                    help="run on a local Dask cluster of N worker processes (needs the [dask] extra)")
    ex.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run on an existing Dask cluster: scheduler address (tcp://host:8786) or "
                         "scheduler file (dask scheduler --scheduler-file)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per worker (default: cores / workers with --workers; "
                        "torch's default in-process; the workers' own setting with --scheduler)")
    g.add_argument("--overwrite", action="store_true",
                   help="recompute images already done in --out (default: a rerun skips them)")


def check_dataset_arguments(args) -> None:
    """Bounds of ``--workers`` / ``--threads`` from this machine (cores, open-file limit)."""
    from ..checks import as_int, cpu_cores, max_threads, max_workers, open_files_limit

    if args.workers is not None:
        hi = max_workers()
        try:
            as_int("--workers", args.workers, 1, hi)
        except SegExplainError:
            raise InputMismatchError(
                f"--workers must be a whole number in [1, {hi}], got {args.workers!r}: this machine has "
                f"{cpu_cores()} core(s) and allows {open_files_limit()} open files (each worker process "
                "computes one image at a time)") from None
    if args.threads is not None:
        remote = bool(getattr(args, "scheduler", None))
        hi = max_threads(remote)
        try:
            as_int("--threads", args.threads, 1, hi)
        except SegExplainError:
            where = "a remote worker" if remote else f"this machine has {cpu_cores()} core(s)"
            raise InputMismatchError(f"--threads must be a whole number in [1, {hi}] ({where}), "
                                     f"got {args.threads!r}") from None


def check_inputs_outside_results(inputs: Sequence, out: str | os.PathLike) -> None:
    """No input may lie in ``OUT/images``: that folder is the run's own (``--overwrite``
    replaces what is there)."""
    from ..files import OutputError

    res = Path(out) / RESULTS_DIR
    for i in inputs:
        if isinstance(i, (str, os.PathLike)) and path_inside(Path(i), res):
            raise OutputError(f"the input {printable(i)} lies in {printable(res)}, the results folder this run "
                              "writes; move it or choose another --out (nothing was written)")


def run_command(run: DatasetRun, desc: str, quiet: bool, out: Path, what: str = "image") -> Any:
    """Drive ``run`` for a command: resume message, progress bar, failures as they happen,
    ``failures.csv``; on Ctrl-C / SIGTERM say what is kept. Returns the result."""
    if run.resumed:
        k = len(run.resumed)
        print(f"seg-explain: skipping {k} {what}{'s' if k != 1 else ''} already done in {printable(out)} "
              f"(--overwrite recomputes them)", file=sys.stderr)
    for name, why in run.rejected:
        print(f"seg-explain: recomputing {printable(name)}: its stored result is not trusted ({why})",
              file=sys.stderr)
    if run.previous_failures:
        print(f"seg-explain: retrying {len(run.previous_failures)} {what}(s) that failed before", file=sys.stderr)
    if not quiet:
        print(f"{desc} {len(run.todo)} of {run.n_total} {what}(s) to compute {run.executor.description}",
              file=sys.stderr, flush=True)
    bar = TerminalProgress(desc, run.n_total, len(run.resumed), quiet)
    try:
        gen = run.events()
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                res = stop.value
                break
            if ev.state == "failed":
                bar.write(f"seg-explain: failed: {printable(ev.image)}: {printable(ev.error)}")
            bar.update(ev)
    except BaseException as exc:
        bar.close()
        done = run.store.n_finished() if run.store is not None else len(run.rows)
        kept = (f"{done} {what}(s) finished are kept in {printable(out / RESULTS_DIR)}; rerun the same "
                "command to resume")
        if not isinstance(exc, Exception) or isinstance(exc, Cancelled):   # Ctrl-C, SIGTERM
            print(f"seg-explain: {kept}", file=sys.stderr)
        elif isinstance(exc, OSError):          # a full disk, a folder gone: say what is kept
            from ..files import OutputError

            raise OutputError(f"{first_line(exc)}; {kept}; no table was written") from exc
        raise
    bar.close()
    return res
