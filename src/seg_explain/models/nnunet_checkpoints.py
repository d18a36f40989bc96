"""nnU-Net fold checkpoints: which ``fold_N`` folders and files (as nnU-Net auto-detects
them), and unpickling them safely.

**Safety** (docs/SECURITY.md): a checkpoint must be a regular file inside the trainer folder;
its pickle is scanned for the globals it references and loaded with
``torch.load(weights_only=True)`` allowing exactly the numpy scalar types nnU-Net's trainer
writes in its logs (:data:`CHECKPOINT_GLOBALS`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ModelLoadError, UnsafeConfigError, first_line
from ..files import regular_file
from .torch_errors import is_restricted_refusal, refused_global

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
# exactly what nnU-Net's trainer pickles besides tensors and plain containers: numpy float
# scalars in its logs (np.float32 / np.float64 = "scalar" called with a "dtype", whose state
# is set on a Float32DType / Float64DType instance). The numpy<2 module name is the same
# function under its old path (checkpoints written with numpy 1.x, e.g. TotalSegmentator's).
CHECKPOINT_GLOBALS = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype")


def _safe_globals():
    import numpy as _np

    core = getattr(_np, "_core", None)
    scalar = getattr(getattr(core, "multiarray", None), "scalar", None) if core is not None else None
    if scalar is None:  # numpy < 2
        scalar = _np.core.multiarray.scalar
    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"),
            (_np.dtype, "numpy.dtype"), type(_np.dtype(_np.float32)), type(_np.dtype(_np.float64))]


def load_checkpoint(path: Path, root: Path) -> dict:
    """An nnU-Net checkpoint, unpickled by torch's restricted unpickler only.

    Its pickle is scanned first: any global outside torch's own safe set and
    :data:`CHECKPOINT_GLOBALS` is refused by name before anything is unpickled."""
    real = regular_file(path, "nnU-Net checkpoint", inside=root, error=ModelLoadError)
    ser = torch.serialization
    if not hasattr(ser, "safe_globals"):
        raise ModelLoadError("loading nnU-Net checkpoints safely needs torch >= 2.5 "
                             "(torch.serialization.safe_globals)")
    scan = getattr(ser, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        try:
            needed = set(scan(str(real)))
        except Exception:  # noqa: BLE001 - not a zip checkpoint: the restricted load decides
            needed = set()
        extra = sorted(needed - set(CHECKPOINT_GLOBALS))
        if extra:
            raise UnsafeConfigError(
                f"{path.parent.name}/{path.name} references {', '.join(extra[:5])}"
                + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
                + ", beyond the tensors, containers and numpy float scalars an nnU-Net checkpoint holds; "
                "nothing was unpickled (re-save it as {'network_weights': state_dict} with torch.save "
                "if you trust it)")
    try:
        with ser.safe_globals(_safe_globals()):
            ck = torch.load(str(real), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = first_line(exc)
        if is_restricted_refusal(exc):
            found = refused_global(exc) or "a pickled Python object"
            raise UnsafeConfigError(f"{path.parent.name}/{path.name} holds {found[:160]}, beyond the tensors, "
                                    "containers and numpy float scalars an nnU-Net checkpoint holds; it was not "
                                    "unpickled") from None
        raise ModelLoadError(f"{path.parent.name}/{path.name} is not a readable checkpoint: {msg[:200]}") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("network_weights"), dict):
        raise ModelLoadError(f"{path.parent.name}/{path.name} is not an nnU-Net checkpoint (no network_weights)")
    w = ck["network_weights"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in w.items()):
        raise ModelLoadError(f"{path.parent.name}/{path.name}: network_weights must map names to tensors")
    return ck


def fold_checkpoints(root: Path, folds: Sequence | None, checkpoint: str | None) -> list[tuple[str, Path]]:
    """(fold name, checkpoint path) per fold: ``folds`` as given, else every ``fold_N``
    with a checkpoint (``fold_all`` only when there is none), as nnU-Net auto-detects."""
    names = (checkpoint,) if checkpoint else CHECKPOINTS
    if checkpoint and checkpoint not in CHECKPOINTS + ("checkpoint_latest.pth",):
        raise ModelLoadError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, checkpoint_latest.pth")

    def ckpt(d: Path) -> Path | None:
        for n in names:
            if os.path.lexists(d / n):
                return d / n
        return None

    if folds is not None:
        out = []
        for f in folds:
            d = root / f"fold_{f}"
            c = ckpt(d) if d.is_dir() else None
            if c is None:
                raise ModelLoadError(f"{root.name}: fold_{f} has no {' or '.join(names)}")
            out.append((str(f), c))
        return out
    found = []
    for d in sorted(root.iterdir()):
        m = re.fullmatch(r"fold_(\d+)", d.name)
        if m and d.is_dir() and ckpt(d) is not None:
            found.append((int(m.group(1)), d.name[5:], ckpt(d)))
    if found:
        return [(n, c) for _, n, c in sorted(found)]
    d = root / "fold_all"
    if d.is_dir() and ckpt(d) is not None:
        return [("all", ckpt(d))]
    raise ModelLoadError(f"{root.name} has no fold_N/{' or '.join(names)}")
