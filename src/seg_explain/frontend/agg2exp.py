"""Agg2Exp for a front end: the run and the cell jobs, and what a view of them shows.

- :func:`agg_job` / :func:`cell_job` generators over plain data (progress events, then the
  result): the whole run, and one class's attribution for a clicked heatmap cell;
- :func:`method_order` the natural Agg2Exp method choices first, :func:`default_method`;
- :func:`cell_layer` the data, name, limits and record of "class a's evidence inside region b";
- :func:`cell_text` / :func:`cell_status` the words for a hovered / shown cell;
- :func:`run_key`, :func:`global_csv_path`.

Everything about a method comes from the registry: no method is named here. No viewer imports.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .jobs import ModelCache
from .reading import legend
from .results import attribution_limits, display_limits, scalar_items

COST_ORDER = {"cheap": 0, "moderate": 1, "expensive": 2}
MAX_KEPT_BYTES = 512 * 2 ** 20   # per-class maps kept for clicks up to this size (else: one explanation per click)


# ------------------------------------------------------------------------- jobs --
def agg_job(cache: ModelCache, model_path: str, device: str, images: list, names: list[str] | None,
            method: str, params: dict[str, Any], keep_maps: bool, token) -> Iterator:
    """Agg2Exp over ``images`` (LoadedImage copies or paths); returns ``(result, maps)``.

    Yields :class:`~seg_explain.jobs.ProgressEvent` (stage "<title> · image i/n: name", ETA of
    the whole run) and ``("partial", name, result so far)`` after each finished image.
    ``maps`` (when ``keep_maps`` and they take at most :data:`MAX_KEPT_BYTES`): the last
    image's per-class attributions and its label map (from the explanations' own prediction),
    so a heatmap click needs no recomputation."""
    from ..dataset import Agg2ExpRun
    from ..explainers.job import watched
    from ..explainers.registry import get_spec
    from ..jobs import events

    yield ("status", "Loading model")
    model = cache.get(model_path, device)
    token.check()
    finished: list[str] = []
    kept: dict[str, Any] = {}

    def on_image(name, exps, labels) -> None:   # worker thread: local state only
        finished.append(name)
        if keep_maps and sum(4 * int(np.size(e.attribution)) for e in exps) <= MAX_KEPT_BYTES:
            kept.clear()
            kept.update(image=name, labels=np.asarray(labels).astype(np.int32),
                        attributions={int(e.target): np.asarray(e.attribution, np.float32) for e in exps})

    run = Agg2ExpRun(model, images, method, names=names, on_error="skip" if len(images) > 1 else "raise",
                     on_image=on_image, **params)
    title = get_spec(method).title
    for ev in events(watched(model, token, run.run_iter()), f"{title}", token):
        yield dataclasses.replace(ev, stage=f"{title} · {run.status}" if run.status else title)
        if finished:
            name = finished[-1]
            finished.clear()
            yield ("partial", name, run.result())
    return run.finished_result(), kept


def cell_job(cache: ModelCache, model_path: str, device: str, image, image_name: str, method: str,
             params: dict[str, Any], target: int, token) -> Iterator:
    """Class ``target``'s attribution (RoI = its predicted voxels) and the label map it was
    made on (the Explanation's own prediction: no second prediction pass)."""
    from ..explainers.job import explain_job

    yield ("status", "Loading model")
    model = cache.get(model_path, device)
    exp = yield from explain_job(model, image, method, target, token=token, **params)
    return {"image": image_name, "labels": np.asarray(exp.prediction).astype(np.int32),
            "attributions": {int(target): np.asarray(exp.attribution, np.float32)}}


# ---------------------------------------------------------------------- methods --
def default_method(names: list[str]) -> str:
    """The core's Agg2Exp default (``Agg2ExpRun``'s ``method``), else the first name."""
    import inspect

    from ..dataset import Agg2ExpRun

    d = inspect.signature(Agg2ExpRun).parameters["method"].default
    return d if d in names else names[0]


def method_order(specs) -> list:
    """Registry entries, natural Agg2Exp choices first: methods that explain every class from
    shared passes, then by cost class, then by title."""
    return sorted(specs, key=lambda s: (not s.caps.multiclass, COST_ORDER.get(s.cost_class, 9), s.title.lower()))


def method_tooltip(spec) -> str:
    """A method entry's tooltip: its question, whether it shares passes across classes, its cost."""
    share = ("explains every class from shared passes" if spec.caps.multiclass
             else "explains one class at a time (slower with many classes)")
    return f"{spec.question}\n({share}; cost: {spec.cost_class})"


def run_key(model: str, device: str, method: str, params: dict) -> tuple:
    """What identifies a run's maps (a click reuses them only for the same key)."""
    return (str(model), device, method, tuple(sorted((k, repr(v)) for k, v in params.items())))


# ------------------------------------------------------------------------ cells --
@dataclass
class CellLayer:
    """Class a's attribution inside region b, ready to show (raw values, limits, record)."""

    data: np.ndarray
    name: str
    limits: tuple[float, float]         # contrast limits
    range: tuple[float, float]          # contrast-limit range (up to max |value|)
    one_sided: bool
    red_is_negative: bool
    info: dict[str, Any]                # the record a layer / node keeps
    voxels: int                         # voxels of region b
    mass: float                         # the cell's value (share of class a's |attribution|)


def cell_layer(result, spec, run_info: dict, maps: dict, a: int, b: int, scope=None) -> CellLayer:
    """Class ``a``'s attribution masked to region ``b`` (``maps``: the image's label map and
    per-class attributions; ``run_info``: model, method, params of the run; ``scope``: None
    for the global matrix, or an image index), with colour limits from the masked values."""
    attr = maps["attributions"][a]
    region = maps["labels"] == b
    masked = np.where(region, attr, 0).astype(np.float32)
    params = run_info.get("params", {})
    one = spec.is_one_sided(params)
    lim, mx = display_limits(masked if region.any() else attr, spec.caps.map_kind)
    val = float(result.matrix(scope, kind="mass")[a, b])
    info = {"kind": "attribution", "method": run_info["method"], "target": result.row_names[a],
            "target_index": a, "region": result.col_names[b], "region_index": b,
            "agg2exp_mass": val, "image": maps["image"], "model": run_info.get("model"),
            "params": scalar_items(params), "limit": lim, "max_abs": mx, "unit": spec.unit,
            "source": "agg2exp", "legend": legend(spec, result.row_names[a], params)}
    return CellLayer(masked, f"{spec.title} · {result.row_names[a]} in {result.col_names[b]}",
                     attribution_limits(lim, one, spec.red_is_negative),
                     attribution_limits(max(float(mx), float(lim)), one, spec.red_is_negative),
                     one, bool(spec.red_is_negative), info, int(region.sum()), val)


def cell_status(result, cell: CellLayer, a: int, b: int, where: str) -> str:
    """The status line after showing a cell (``where``: "global mean" or the image's scope)."""
    return (f"{result.row_names[a]} ← {result.col_names[b]}: {100 * cell.mass:.1f} % of "
            f"{result.row_names[a]}'s |attribution| ({where}); layer shows {cell.info['image']}, "
            f"{cell.voxels} voxels")


def cell_text(result, matrix: np.ndarray, kind: str, a: int, b: int) -> str:
    """What a hovered heatmap cell is, in full: classes named, the value in the view's kind."""
    from ..plots import KIND_TEXT

    v = matrix[a, b]
    info = KIND_TEXT[kind]
    val = (f"{100 * v:.1f} %" if info["share"] else f"{v:.2f}") if np.isfinite(v) else "n/a"
    what = info["cell"].replace("class a", result.row_names[a]).replace("region b", result.col_names[b])
    return f"{result.row_names[a]} ← {result.col_names[b]}: {val} ({what}). Click to show it as a layer."


def global_csv_path(local: Path) -> Path:
    """Where the global table goes next to the local one (``local`` -> ``global`` in the name)."""
    p = Path(local)
    stem = p.stem.replace("local", "global") if "local" in p.stem else p.stem + "_global"
    return p.with_name(stem).with_suffix(".csv")
