"""Validation of untrusted values, written once: arrays and explainer parameters.

Policy for non-finite voxels (images, RoIs, PdCR banks, reference label maps, baselines):
**refuse** with the number of NaN/Inf voxels and where they are. A NaN has no intensity
to explain and propagates through every convolution, so any "fill" would be a silent
guess; the user fixes the file (or masks it) and runs again.

Parameters: every numeric parameter is checked for type, finiteness and range and named
in the message (``smoothgrad: noise_level must be a finite number >= 0, got inf``).
Integers accept ``7`` and ``7.0`` (and ``"7"`` from text fields) but never ``7.9`` or a bool.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InputMismatchError, MethodError, NonFiniteResultError


# ------------------------------------------------------------------------- arrays --
def count_nonfinite(arr) -> int:
    """Number of NaN/±Inf entries (0 for integer and boolean arrays)."""
    a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
    if a.dtype.kind not in "fc":
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def require_finite(arr, what: str) -> None:
    """Raise :class:`InputMismatchError` if ``arr`` holds NaN or ±Inf (says how many)."""
    n = count_nonfinite(arr)
    if n:
        a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
        n_nan = int(np.isnan(a).sum())
        kinds = ", ".join(k for k, c in (("NaN", n_nan), ("Inf", n - n_nan)) if c)
        raise InputMismatchError(
            f"{what} has {n} non-finite voxel(s) ({kinds}) of {a.size}; replace them with real "
            "intensities (or crop them away) and run again")


def nonfinite_weights(model) -> tuple[int, str]:
    """``(count, first parameter name)`` of NaN/Inf entries in a model's weights (0, "" if
    none or the model has no torch network)."""
    net = getattr(model, "network", model)
    total, first = 0, ""
    named = getattr(net, "named_parameters", None)
    if named is None:
        return 0, ""
    try:
        items = list(named()) + list(net.named_buffers())
    except Exception:  # noqa: BLE001 - a scripted/exported program without the listing
        return 0, ""
    for name, t in items:
        if t.is_floating_point() or t.is_complex():
            n = int(t.numel() - t.isfinite().sum().item())
            if n and not first:
                first = name
            total += n
    return total, first


def require_finite_result(arr, what: str, model=None, ignore=None) -> None:
    """The NaN policy for *outputs*: a map, model output or table that holds NaN/Inf is an
    error (:class:`NonFiniteResultError`) with the count and the likely cause, never a
    written file or an empty table cell. ``ignore``: a boolean mask of entries that are
    NaN by definition (e.g. a per-voxel density of an empty region). ``model`` (a SegModel
    or torch module) is searched for non-finite weights to name the cause."""
    a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if ignore is not None:
        bad &= ~np.broadcast_to(np.asarray(ignore, dtype=bool), bad.shape)
    n = int(bad.sum())
    if not n:
        return
    n_nan = int((bad & np.isnan(a)).sum())
    kinds = ", ".join(k for k, c in (("NaN", n_nan), ("Inf", n - n_nan)) if c)
    cause = "the model's weights or plans (a NaN/Inf parameter, a normalisation eps <= 0) or an overflow"
    if model is not None:
        nw, first = nonfinite_weights(model)
        if nw:
            cause = f"the model's weights: {nw} of them are NaN/Inf (first: {first})"
    raise NonFiniteResultError(
        f"{what} has {n} non-finite value(s) ({kinds}) of {a.size}; the likely cause is {cause}; "
        "nothing was written for it — fix or retrain the model and run again")


def require_finite_row(row: dict, what: str, model=None) -> None:
    """An Agg2Exp per-image row (``(L, R)`` ``mass``/``mass_pos``/``mass_neg``/
    ``mass_per_voxel``, ``present`` (L,), ``volume`` (R,)): finite everywhere except where
    NaN means "nothing there" — a class not explained in the image, a region of no voxels
    (or an extra RoI the image does not have), a class whose attribution is all zero."""
    mats = {k: np.asarray(row[k], dtype=float) for k in ("mass", "mass_pos", "mass_neg", "mass_per_voxel")
            if row.get(k) is not None}
    if not mats:
        return
    L, R = next(iter(mats.values())).shape
    present = np.asarray(row.get("present", np.ones(L, bool)), dtype=bool).reshape(L, 1)
    vol = np.asarray(row.get("volume", np.ones(R)), dtype=float).reshape(1, R)
    require_finite_result(vol, f"{what} (volume)", model, ignore=np.isnan(vol))
    for k, m in mats.items():
        empty_row = np.isnan(m).all(axis=1, keepdims=True)
        require_finite_result(m, f"{what} ({k})", model, ignore=~present | ~(vol > 0) | empty_row)


# ------------------------------------------------------------- machine-derived bounds --
FDS_PER_WORKER = 16          # a local Dask worker: nanny + worker processes, their pipes and sockets
BATCH_ITEM_MIN_BYTES = 16 * 1024 * 1024   # the smallest batch item (a small 2D patch and its activations)
REMOTE_THREADS_MAX = 1024    # --scheduler: the workers' machines are not this one


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def memory_bytes() -> int:
    """Physical memory of this machine (bytes; 8 GiB when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):   # pragma: no cover
        return 8 * 1024 ** 3


def open_files_limit() -> int:
    """This process's limit of open file descriptors (soft; 1024 when unknown)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20
    except (ImportError, OSError, ValueError):   # pragma: no cover - Windows
        return 1024


def max_workers() -> int:
    """Local Dask worker processes this machine can run: one per core (each computes one
    image; more only oversubscribe the cores) and within the open-file limit."""
    return max(1, min(cpu_cores(), (open_files_limit() - 64) // FDS_PER_WORKER))


def max_threads(remote: bool = False) -> int:
    """Torch threads per worker: this machine's cores (an external cluster: 1024)."""
    return REMOTE_THREADS_MAX if remote else cpu_cores()


def max_batch_size() -> int:
    """Images per network pass that could fit in this machine's memory at all."""
    return max(1, memory_bytes() // BATCH_ITEM_MIN_BYTES)


# --------------------------------------------------------------------- parameters --
def _who(method: str | None, name: str) -> str:
    return f"{method}: {name}" if method else name


def as_int(name: str, value: Any, lo: int | None = None, hi: int | None = None,
           method: str | None = None) -> int:
    """An integer parameter (``7``, ``7.0`` or ``"7"``), range-checked."""
    v = value
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            v = None
    ok = (v is not None and not isinstance(v, (bool, np.bool_))
          and isinstance(v, (int, float, np.integer, np.floating))
          and math.isfinite(float(v)) and float(v) == int(v))
    bounds = _bounds(lo, hi)
    if not ok:
        raise MethodError(f"{_who(method, name)} must be a whole number{bounds}, got {value!r}")
    out = int(v)
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise MethodError(f"{_who(method, name)} must be a whole number{bounds}, got {value!r}")
    return out


def as_float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
             method: str | None = None, lo_open: bool = False) -> float:
    """A finite float parameter, range-checked (``lo_open``: strictly greater than ``lo``)."""
    v = value
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            v = None
    ok = (v is not None and not isinstance(v, (bool, np.bool_))
          and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v)))
    bounds = _bounds(lo, hi, lo_open)
    if not ok:
        raise MethodError(f"{_who(method, name)} must be a finite number{bounds}, got {value!r}")
    out = float(v)
    if lo is not None and (out <= lo if lo_open else out < lo) or (hi is not None and out > hi):
        raise MethodError(f"{_who(method, name)} must be a finite number{bounds}, got {value!r}")
    return out


def as_bool(name: str, value: Any, method: str | None = None) -> bool:
    """``True``/``False`` (also ``1``/``0`` and ``"true"``/``"false"``/``"yes"``/``"no"``)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise MethodError(f"{_who(method, name)} must be true or false, got {value!r}")


def as_choice(name: str, value: Any, choices: Iterable[str], method: str | None = None) -> str:
    """One of ``choices`` (case-insensitive for text)."""
    ch = list(choices)
    if isinstance(value, str) and value.strip().lower() in [c.lower() for c in ch]:
        return ch[[c.lower() for c in ch].index(value.strip().lower())]
    raise MethodError(f"{_who(method, name)} must be one of {', '.join(ch)}, got {value!r}")


def _bounds(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


# ------------------------------------------------------------------------ classes --
def class_indices(model, classes) -> list[int] | None:
    """``classes`` as the model's class indices, for every front end (agg2exp, evaluate,
    data-set runs): None (every predicted class) stays None; otherwise one class or a list
    (tuple, array) of them, each an int-like (``1``, ``np.int64(1)``, a 0-d integer array),
    a class name or a digit string. Order is kept, repeats dropped. Anything else (a float,
    a bool, an unknown name or index, an empty list) is an InputMismatchError of one line."""
    if classes is None:
        return None

    def one(c) -> int:
        if isinstance(c, (str, np.str_)):
            return model.class_index(str(c))
        if not isinstance(c, (bool, np.bool_)) and (isinstance(c, (int, np.integer)) or (
                isinstance(c, np.ndarray) and c.ndim == 0 and c.dtype.kind in "iu")):
            return model.class_index(int(c))
        raise InputMismatchError(
            f"classes: {c!r} ({type(c).__name__}) is not a class; give a class index, a class name, or a "
            f"list of them (the model's classes: {', '.join(f'{i}={n}' for i, n in enumerate(model.class_names))})")

    if isinstance(classes, np.ndarray) and classes.ndim > 0:
        items = list(classes.ravel())
    elif isinstance(classes, (list, tuple, range)):
        items = list(classes)
    else:
        items = [classes]
    if not items:
        raise InputMismatchError("classes is empty: give at least one class, or None for every predicted class")
    out: list[int] = []
    for c in items:
        i = one(c)
        if i not in out:
            out.append(i)
    return out
