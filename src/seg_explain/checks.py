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
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InputMismatchError, MethodError


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
