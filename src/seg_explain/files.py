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
  file intact and no half-written one; the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import json
import os
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


def check_output(path: str | os.PathLike, inputs: Iterable = (), folder: bool = False,
                 names: Iterable[str] = ()) -> Path:
    """Check an output before computing; return it as a Path.

    ``inputs``: paths the run reads (image, RoI, bank, reference, model ...); the output may
    be none of them. ``folder=True``: ``path`` is an output folder and ``names`` the files
    that will be written inside it (none of which may be an input either).
    """
    out = Path(path).expanduser()
    ins = [Path(i).expanduser() for i in inputs if isinstance(i, (str, os.PathLike))]
    targets = [out / n for n in names] if folder else [out]
    for t in targets:
        for i in ins:
            if _same(t, i):
                raise OutputError(f"The output {t} is an input of this run; choose another output path "
                                  "(nothing was written)")
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a folder")
        parent = out
    else:
        if out.is_dir():
            raise OutputError(f"--out {out} is a folder; give a file name (e.g. {out / 'attribution.nii.gz'})")
        if out.exists() and not out.is_file():
            raise OutputError(f"--out {out} is not a regular file")
        parent = out.parent
    _writable_folder(parent)
    return out


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
