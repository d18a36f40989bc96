"""How an nnU-Net v2 model folder is laid out on disk (no torch): a trainer folder
``Trainer__Plans__Configuration`` with ``plans.json`` and ``dataset.json``, its ``fold_*``
folders, or a ``DatasetXXX_Name`` folder holding trainer folders."""
from __future__ import annotations

import os
import re
from pathlib import Path


def has_plans(d: Path) -> bool:
    return os.path.lexists(d / "plans.json") and os.path.lexists(d / "dataset.json")


def trainer_folders(d: Path) -> list[Path]:
    try:
        subs = sorted(s for s in d.iterdir() if s.is_dir() and s.name.count("__") >= 2)
    except OSError:
        return []
    return [s for s in subs if has_plans(s)]


def is_nnunet_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an nnU-Net v2 trainer folder, one of its ``fold_*`` folders, or a
    ``DatasetXXX_Name`` folder holding trainer folders."""
    p = Path(path)
    if not p.is_dir():
        return False
    if has_plans(p):
        return True
    if p.name.startswith("fold_") and has_plans(p.parent):
        return True
    return bool(re.match(r"Dataset\d+_", p.name)) and bool(trainer_folders(p))
