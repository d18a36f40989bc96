"""Files from and to the user, handled so that nothing is lost and nothing hangs.

Reading (untrusted input):

- :func:`regular_file` / :func:`input_path`: an input must be a regular file (or a folder
  where one is expected). FIFOs, sockets and devices are refused *before* anything opens
  them, so a named pipe cannot hang a run and a link to ``/dev/zero`` cannot fill memory.
  With ``inside=ROOT`` the resolved path (symlinks followed) must lie inside ``ROOT``: a
  model folder cannot point us at files elsewhere.
- :func:`read_json`: a JSON object read with a size cap.

Writing (the user's files):

- :func:`check_output` runs *before* any computation: the output is not one of the inputs,
  not a folder, its folder exists (or can be made) and is writable, so a run never fails
  only after minutes of work.
- :func:`atomic_write`: write to a temporary file in the same folder, then ``os.replace``
  onto the target. An interrupted run (Ctrl-C, SIGTERM, a full disk) leaves the previous
  file intact and no half-written one; the temporary file is removed. A run killed with
  SIGKILL cannot remove it: :func:`remove_stale_parts` (called when a rerun checks its
  outputs) does.
- :func:`model_paths`: what a model reads (a bundle or nnU-Net folder, a TorchScript/.pt2
  file and its JSON sidecar); :func:`check_output` refuses an output there.
- :class:`WriteLog`: the writing phase of a command, after every request was validated;
  a failure says exactly which files were written before it and which were not.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ImageLoadError, InputMismatchError, SegExplainError

JSON_MAX_BYTES = 8 * 1024 * 1024


class OutputError(SegExplainError, OSError):
    """An output path cannot or must not be written."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | os.PathLike, what: str = "file", inside: str | os.PathLike | None = None,
                 error=ImageLoadError, allow_dir: bool = False) -> Path:
    """``path`` resolved; raise ``error`` unless it is a regular file (or a folder if
    ``allow_dir``), and, with ``inside``, unless it lies inside that folder."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)               # follows symlinks: what would really be opened
    except FileNotFoundError:
        raise error(f"{what[:1].upper()}{what[1:]} not found: {p}") from None
    except OSError as exc:
        raise error(f"Cannot open {what} {p}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode))):
        raise error(f"{what} {p} is {_kind(st.st_mode)}; give a regular file")
    real = p.resolve()
    if inside is not None:
        root = Path(inside).expanduser().resolve()
        if real != root and root not in real.parents:
            raise error(f"{what} {p} points outside {root} (to {real}); files of a model folder must "
                        "stay inside it")
    return real


def read_json(path: str | os.PathLike, what: str, inside=None, error=ImageLoadError,
              max_bytes: int = JSON_MAX_BYTES) -> dict:
    """A JSON object from a regular file of at most ``max_bytes``."""
    p = regular_file(path, what, inside, error)
    with open(p, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise error(f"{what} {Path(path).name} is larger than {max_bytes // (1024 * 1024)} MiB; "
                    "a config is a few kB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{what} {Path(path).name} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {Path(path).name} must hold a JSON object")
    return data


# ---------------------------------------------------------------------------- outputs --
def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def model_paths(model: str | os.PathLike | None) -> list[Path]:
    """Files and folders a model reads, resolved: a model folder (a bundle, an nnU-Net
    trainer folder and, for a ``fold_N`` folder, the trainer folder holding its plans) or
    a model file with its JSON sidecar (and the bundle around a bundle's ``models/`` file)."""
    if model is None or not isinstance(model, (str, os.PathLike)):
        return []
    p = Path(model).expanduser()
    try:
        p = p.resolve()
    except OSError:
        return [p]
    out = [p]
    if p.is_dir():
        for up in (p.parent, p.parent.parent):     # fold_N / DatasetXXX inside a trainer folder
            if (up / "plans.json").exists() and (up / "dataset.json").exists():
                out.append(up)
    else:
        out.append(p.with_suffix(".json"))
        if p.parent.name == "models" and (p.parent.parent / "configs").is_dir():
            out.append(p.parent.parent)           # a bundle's models/model.ts
    return out


def _inside_any(target: Path, protected: Iterable[Path]) -> Path | None:
    try:
        t = target.resolve()
    except OSError:
        t = target.absolute()
    for q in protected:
        if t == q or (q.is_dir() and q in t.parents):
            return q
    return None


def check_output(path: str | os.PathLike, inputs: Iterable = (), folder: bool = False,
                 names: Iterable[str] = (), model=None, what: str = "--out") -> Path:
    """Check an output before computing; return it as a Path.

    ``inputs``: paths the run reads (image, RoI, bank, reference, model ...); the output may
    be none of them. ``model``: the model path; the output may not lie in what it reads
    (:func:`model_paths`). ``folder=True``: ``path`` is an output folder and ``names`` the
    files that will be written inside it (none of which may be an input either). Leftover
    temporary files of a killed earlier run are removed (:func:`remove_stale_parts`).
    """
    out = Path(path).expanduser()
    ins = [Path(i).expanduser() for i in inputs if isinstance(i, (str, os.PathLike))]
    names = list(names)
    targets = [out / n for n in names] if folder else [out]
    protected = model_paths(model)
    for t in ([out] if folder else []) + targets:
        hit = _inside_any(t, protected)
        if hit is not None:
            raise OutputError(f"The output {t} lies in the model's files ({hit}); a run never writes into "
                              "a model it reads — choose another output path (nothing was written)")
    for t in targets:
        for i in ins:
            if _same(t, i):
                raise OutputError(f"The output {t} is an input of this run; choose another output path "
                                  "(nothing was written)")
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{what} {out} exists and is not a folder")
        parent = out
    else:
        if out.is_dir():
            raise OutputError(f"{what} {out} is a folder; give a file name (e.g. {out / 'attribution.nii.gz'})")
        if out.exists() and not out.is_file():
            raise OutputError(f"{what} {out} is not a regular file")
        parent = out.parent
    _writable_folder(parent)
    remove_stale_parts(parent, names if folder else [out.name])
    return out


_PART = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.part(\.[A-Za-z0-9.]*)?")


def remove_stale_parts(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[str]:
    """Remove the temporary files :func:`atomic_write` leaves when a run is killed with
    SIGKILL (``.NAME.XXXXXXXX.part.ext``) for the given file ``names`` (None: any), and
    our write probes. Returns the names removed."""
    d = Path(folder)
    wanted = None if names is None else {os.fspath(n) for n in names}
    removed = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    for f in entries:
        m = _PART.fullmatch(f.name)
        ours = (m is not None and (wanted is None or m.group("name") in wanted)) or (
            re.fullmatch(r"\.seg-explain-probe-[A-Za-z0-9_]{8}", f.name) is not None)
        if ours and f.is_file() and not f.is_symlink():
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f.name)
    return removed


class WriteLog:
    """The writing phase of a run: ``log.write(path, fn)`` calls ``fn(path)`` and remembers
    the file; a failure is re-raised as one :class:`OutputError` that says which files were
    written before it and which were not (``planned``: every file the phase will write)."""

    def __init__(self, planned: Iterable[str | os.PathLike] = ()):
        self.planned = [Path(p) for p in planned]
        self.written: list[Path] = []

    def write(self, path: str | os.PathLike, fn):
        p = Path(path)
        try:
            result = fn(p)
        except (OSError, SegExplainError) as exc:
            if not self.written:
                raise
            from .errors import first_line

            rest = [q.name for q in self.planned if q not in self.written and q != p]
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else first_line(cause)
            raise OutputError(
                f"Cannot write {p}: {reason}; written before it: {', '.join(q.name for q in self.written)}"
                + f"; not written: {', '.join([p.name, *rest])} (their previous versions, if any, are kept)"
            ) from exc
        self.written.append(p)
        return result


def _writable_folder(folder: Path) -> None:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"Cannot write into {folder}: {probe} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".seg-explain-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"Cannot write into {folder}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so writers pick the format);
    on success it replaces ``path`` atomically, on any failure it is removed."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(p.suffixes[-2:]) if p.name.lower().endswith(".nii.gz") else p.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".part{suffix}", dir=p.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        if p.exists():
            with contextlib.suppress(OSError):
                os.chmod(tmp_p, stat.S_IMODE(os.stat(p).st_mode))
        else:
            with contextlib.suppress(OSError):
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp_p, 0o666 & ~umask)
        os.replace(tmp_p, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_p.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, SegExplainError):
            raise OutputError(f"Cannot write {p}: {exc.strerror or exc} (nothing was changed)") from exc
        raise


def require_same_grid(ref, other, what: str) -> None:
    """Refuse a mask/label file whose grid differs from the image's.

    Both are LoadedImage objects. Shapes must match; when both files carry geometry
    (NIfTI, MHA/NRRD, DICOM) their affines must agree to 1 % of a voxel."""
    import numpy as np

    if tuple(other.spatial_shape) != tuple(ref.spatial_shape):
        raise InputMismatchError(f"{what} has shape {tuple(other.spatial_shape)}, the image "
                                 f"{tuple(ref.spatial_shape)}; it must be on the image's grid")
    geo = ("nifti", "itk", "dicom")
    if ref.meta.get("format") in geo and other.meta.get("format") in geo:
        tol = 0.01 * float(min(ref.spacing))
        if not np.allclose(np.asarray(ref.affine, float), np.asarray(other.affine, float), atol=tol):
            raise InputMismatchError(
                f"{what} is not on the image's grid (its affine differs: origin/spacing/orientation); "
                "resample it to the image first")


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns) -> Path:
    """Write a CSV atomically (an interrupted write leaves the previous file intact); non-finite
    floats become empty cells (the NaN policy of tables)."""
    import math

    p = Path(path)
    with atomic_write(p) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return p
