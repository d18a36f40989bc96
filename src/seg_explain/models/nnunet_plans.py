"""An nnU-Net trainer folder's JSON: which trainer folder a path names, ``plans.json``'s
configurations (``inherits_from`` resolved) and ``dataset.json``'s labels and channels.

**Labels** come from ``dataset.json`` (class index -> name, ``0 .. K-1`` as nnU-Net requires);
region-based (sigmoid) models are refused. :func:`quote_key` writes a ``plans.json`` key path
the way every refusal of the nnU-Net loader names it. The files themselves are read by the
loader (``seg_explain.files.read_json``: regular files inside the trainer folder,
size-capped).
"""
from __future__ import annotations

from copy import deepcopy
from pathlib import Path

from ..errors import ModelLoadError
from .nnunet_layout import has_plans, trainer_folders


def quote_key(path: str) -> str:
    return f"'{path}'"


def resolve_folder(p: Path) -> tuple[Path, list[str] | None]:
    """(trainer folder, folds named by the path or None)."""
    if has_plans(p):
        return p, None
    if p.name.startswith("fold_") and has_plans(p.parent):
        return p.parent, [p.name[len("fold_"):]]
    found = trainer_folders(p)
    if len(found) == 1:
        return found[0], None
    if not found:
        raise ModelLoadError(f"{p.name} holds no nnU-Net trainer folder (Trainer__Plans__Configuration "
                             "with plans.json and dataset.json)")
    raise ModelLoadError(f"{p.name} holds {len(found)} nnU-Net trainer folders; pick one: "
                         + ", ".join(f.name for f in found))


# ----------------------------------------------------------------- plans.json --
def plans_configuration(plans: dict, name: str, where: str, seen: tuple = ()) -> dict:
    """nnU-Net's configuration with ``inherits_from`` resolved."""
    confs = plans.get("configurations")
    if not isinstance(confs, dict) or not isinstance(confs.get(name), dict):
        avail = ", ".join(sorted(confs)) if isinstance(confs, dict) else "none"
        raise ModelLoadError(f"{where}: configuration {name!r} is not in plans.json (it has: {avail})")
    conf = deepcopy(confs[name])
    parent = conf.get("inherits_from")
    if parent is not None:
        if not isinstance(parent, str) or parent in seen + (name,):
            raise ModelLoadError(f"{where}: configuration {name!r} inherits in a circle ({parent!r})")
        base = plans_configuration(plans, parent, where, seen + (name,))
        base.update(conf)
        conf = base
    return conf


# --------------------------------------------------------------- dataset.json --
def parse_labels(ds: dict, where: str) -> list[str]:
    """Class names by index from dataset.json ``labels`` (region-based models refused)."""
    labels = ds.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelLoadError(f"{where}: dataset.json has no 'labels' object")
    if "regions_class_order" in ds or any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ModelLoadError(
            f"{where} is a region-based nnU-Net model (labels as lists of classes, one sigmoid output "
            "per overlapping region, regions_class_order): not supported; seg-explain explains "
            "softmax models (one label map) or single-channel sigmoid models")
    by_index: dict[int, str] = {}
    for name, v in labels.items():
        if name == "ignore":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ModelLoadError(f"{where}: dataset.json label {name!r} must be a class index >= 0, got {v!r}")
        if v in by_index:
            raise ModelLoadError(f"{where}: dataset.json names class {v} twice ({by_index[v]!r}, {name!r})")
        by_index[v] = str(name)
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) < 2:
        raise ModelLoadError(f"{where}: dataset.json labels must be 0, 1, ..., K-1 (nnU-Net's rule), got "
                             f"{sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def channel_count(ds: dict, where: str) -> int:
    ch = ds.get("channel_names", ds.get("modality"))
    if not isinstance(ch, dict) or not ch or len(ch) > 1024:
        raise ModelLoadError(f"{where}: dataset.json needs 'channel_names' (channel index -> name)")
    return len(ch)
