"""The results folder of a data-set run (:mod:`seg_explain.dataset`): what was computed for
which settings and inputs, written so that nothing is lost, nothing foreign is deleted and
nothing damaged is trusted.

- ``OUT/run.json``: the run's settings (a fingerprint), and ``written``: the result files
  this tool wrote into ``OUT/images/`` (recorded *before* each file is written). It is the
  only list ``--overwrite`` deletes from: a user's notes or any other file there survive.
- ``OUT/images/<key><suffix>``: one finished image (``.npz`` for Agg2Exp, ``.json`` for the
  evaluation), written atomically, with a digest of its numbers in its ``meta``;
  ``<key>.failed.json``: an image that failed, with its error.
- A finished image is resumed only if the settings and its input files (path, size, date)
  are unchanged, its file is a regular file inside ``OUT/images``, its digest matches, and
  the job validates it (shapes; finite numbers: the NaN policy of outputs). Anything else is
  recomputed, never trusted.
- Leftover ``.part`` files of a killed run are removed when the store opens.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputMismatchError

RESULTS_DIR = "images"
RUN_FILE = "run.json"
FAILURES_FILE = "failures.csv"
FORMAT = 1
RESULT_MAX_BYTES = 64 * 1024 * 1024
RESULT_NAME = re.compile(r"[A-Za-z0-9._-]{1,80}-[0-9a-f]{10}(\.npz|\.json|\.failed\.json)")


# ---------------------------------------------------------------------- digests --
def jsonable(v):
    """A JSON-safe stand-in for a parameter value (arrays by content hash)."""
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return jsonable(v.item())
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    arr = getattr(v, "data", v)
    if isinstance(arr, np.ndarray):
        a = np.ascontiguousarray(arr)
        return {"array": hashlib.blake2b(a.tobytes(), digest_size=10).hexdigest(),
                "shape": list(a.shape), "dtype": str(a.dtype)}
    return f"<{type(v).__name__}>"


def file_sig(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    except (OSError, ValueError):
        return f"{path}\0missing"


def model_digest(path: str | os.PathLike) -> str:
    """Sizes and dates of a model's files (a file, or every file of a folder)."""
    p = Path(path)
    h = hashlib.blake2b(digest_size=10)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())[:20000]
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        h.update(file_sig(str(p)).encode())
    return h.hexdigest()


def inputs_digest(rec) -> str:
    """What an image's result depends on besides the run settings: its files (path, size,
    date) or array contents, its ground truth and RoIs (``rec``: an ImageRecord)."""
    parts = []
    for spec in [rec.image, rec.ground_truth, *[rec.rois[k] for k in sorted(rec.rois)]]:
        if isinstance(spec, str):
            parts.append(file_sig(spec) + (";dir" if os.path.isdir(spec) else ""))
        else:
            parts.append(json.dumps(jsonable(spec), sort_keys=True))
    parts.append(json.dumps(sorted(rec.rois)))
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()


def content_digest(data: bytes) -> str:
    """The digest a result file records of its numbers (checked before it is resumed)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# ---------------------------------------------------------------------- results --
class ResultStore:
    """``OUT/run.json`` + ``OUT/images/<key><suffix>`` (done) / ``<key>.failed.json`` (failed).

    ``job`` supplies ``fingerprint()``, ``run_id()``, ``suffix``, ``write(path, row, meta)``,
    ``read(path) -> (row, meta)``, ``digest(row)`` and ``validate(row, what)``; records have
    ``name`` and ``key``."""

    def __init__(self, out: str | os.PathLike, job, overwrite: bool = False):
        self.out = Path(out)
        self.dir = self.out / RESULTS_DIR
        self.job = job
        self.overwrite = overwrite
        self.run_id = job.run_id()
        self.previous_failures: list[str] = []
        self.written: list[str] = []        # file names in images/ this tool wrote (run.json)
        self.rejected: list[tuple[str, str]] = []   # (image, why) of result files not trusted

    # -- the manifest --
    def _read_run_file(self) -> dict:
        from ..files import read_json

        run_file = self.out / RUN_FILE
        if not run_file.exists():
            return {}
        try:
            return read_json(run_file, "run file", error=InputMismatchError)
        except InputMismatchError:
            return {}

    @staticmethod
    def _our_names(old: dict) -> list[str]:
        """The ``written`` list of a run.json, keeping only plain result-file names (a forged
        entry such as ``../../notes.txt`` names nothing we wrote)."""
        names = old.get("written")
        if not isinstance(names, list):
            return []
        return [n for n in names if isinstance(n, str) and RESULT_NAME.fullmatch(n)]

    def _write_run_file(self) -> None:
        from ..files import atomic_write
        from ..version import __version__

        with atomic_write(self.out / RUN_FILE) as tmp:
            tmp.write_text(json.dumps({"settings": self.job.fingerprint(), "run_id": self.run_id,
                                       "seg_explain": __version__, "written": sorted(self.written)},
                                      indent=1, sort_keys=True))

    def open(self, records=()) -> None:
        """Check the folder against an earlier run, clean up after it (``--overwrite``: its
        result files; always: temporary files of a killed run) and record this run."""
        from ..files import OutputError, remove_stale_parts

        if self.dir.exists() and not self.dir.is_dir():
            raise OutputError(f"{self.dir} exists and is not a folder")
        fp = self.job.fingerprint()
        old = self._read_run_file()
        old_fp = old.get("settings")
        if old_fp is not None and not self.overwrite and old_fp != json.loads(json.dumps(fp)):
            diff = [k for k in sorted(set(fp) | set(old_fp)) if fp.get(k) != old_fp.get(k)]
            raise InputMismatchError(
                f"{self.out} holds results of a run with other settings ({', '.join(diff)} differ); "
                "use --overwrite to replace them, or another --out")
        ours = self._our_names(old)
        if self.overwrite:
            mine = {self.path(r).name for r in records} | {self.path(r, failed=True).name for r in records}
            for name in sorted(set(ours) | mine):
                f = self.dir / name
                if f.is_file() and not f.is_symlink():
                    f.unlink()
            ours = []
        self.written = list(ours)
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(self.dir)
        remove_stale_parts(self.out, [RUN_FILE])
        self._write_run_file()

    def _record(self, path: Path) -> None:
        """Add ``path`` to run.json's ``written`` list before it is written."""
        if path.name not in self.written:
            self.written.append(path.name)
            self._write_run_file()

    def n_finished(self) -> int:
        """Finished-image files on disk now (an interrupted run says how many are kept by
        counting them, not by what it had booked: a signal may fall between the two)."""
        suffix = self.job.suffix
        try:
            return sum(1 for p in self.dir.iterdir() if p.name.endswith(suffix) and not p.name.startswith("."))
        except OSError:
            return 0

    def path(self, rec, failed: bool = False) -> Path:
        return self.dir / (rec.key + (".failed.json" if failed else self.job.suffix))

    def load(self, rec) -> dict | None:
        """The image's finished row, or None (not done, done with other settings or inputs,
        or unreadable, damaged or forged: then it is computed again and the reason kept in
        :attr:`rejected`)."""
        from ..files import regular_file

        if self.overwrite:
            return None
        p = self.path(rec)
        if not p.exists():
            if self.path(rec, failed=True).exists():
                self.previous_failures.append(rec.name)
            return None
        try:
            regular_file(p, "result file", inside=self.dir, error=ValueError)
            if p.stat().st_size > RESULT_MAX_BYTES:
                raise ValueError("larger than any result file")
            row, meta = self.job.read(p)
        except Exception as exc:  # noqa: BLE001 - a damaged result file is recomputed, never trusted
            from ..errors import first_line

            self.rejected.append((rec.name, f"unreadable ({first_line(exc)})"))
            return None
        if (meta.get("run") != self.run_id or meta.get("inputs") != inputs_digest(rec)
                or meta.get("name") != rec.name):
            return None                  # other settings or changed inputs: recomputed
        if meta.get("digest") != self.job.digest(row):
            self.rejected.append((rec.name, "its numbers do not match the digest recorded when it was written"))
            return None
        try:
            self.job.validate(row, f"the stored result of {rec.name!r}")
        except Exception as exc:  # noqa: BLE001 - NaN/Inf or wrong shapes: recomputed
            from ..errors import first_line

            self.rejected.append((rec.name, first_line(exc)))
            return None
        return row

    def save(self, rec, outcome: dict) -> None:
        from ..files import atomic_write

        meta: dict[str, Any] = {
            "format": FORMAT, "run": self.run_id, "inputs": inputs_digest(rec), "name": rec.name,
            "seconds": outcome.get("seconds"), "host": outcome.get("host"), "pid": outcome.get("pid"),
            "peak_rss": outcome.get("peak_rss"), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if outcome["status"] == "done":
            meta["digest"] = self.job.digest(outcome["row"])
            target = self.path(rec)
            self._record(target)
            with atomic_write(target) as tmp:
                self.job.write(tmp, outcome["row"], meta)
            with contextlib.suppress(OSError):
                self.path(rec, failed=True).unlink()
        else:
            target = self.path(rec, failed=True)
            self._record(target)
            with atomic_write(target) as tmp:
                tmp.write_text(json.dumps({"meta": meta, "error": outcome.get("error", "")}))
