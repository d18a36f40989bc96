"""Agg2Exp plots with matplotlib's object API (no pyplot state, no Qt) and networkx.

Every function takes an optional ``ax`` (draw into it, e.g. the napari dock's themed
canvas) or ``fig`` (a fresh axes is added to it); with neither, a new
:class:`matplotlib.figure.Figure` is made. The Figure is returned; write it with
:func:`save_figure` (Agg canvas, works headless).

- :func:`plot_heatmap`: the ``L × R`` matrix (global by default) with class names, a
  sequential colormap for non-negative data or a diverging one centred at 0 when values
  are signed, cells annotated.
- :func:`importance_graph` / :func:`plot_graph`: a directed graph region → explained class
  keeping the top-k (default 3) incoming edges per class (self-loops, i.e. the context
  mass, are drawn as node size instead unless ``include_self=True``); edge width ∝
  importance.
- :func:`plot_boxplots`: the distribution over images of one class's local importances
  (one box per region; fliers are the outlier images).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def _axes(ax=None, fig=None, figsize=(6, 5)):
    if ax is not None:
        return ax.figure, ax
    if fig is None:
        fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(111)


def _matrix_and_names(matrix, row_names, col_names):
    """Accept an Agg2ExpResult (global matrix) or an array + names."""
    if hasattr(matrix, "global_importance"):
        res = matrix
        return (np.asarray(res.global_importance, float), list(row_names or res.row_names),
                list(col_names or res.col_names))
    m = np.asarray(matrix, float)
    if m.ndim != 2:
        raise ValueError(f"expected an (L, R) matrix, got shape {m.shape}")
    rn = list(row_names) if row_names is not None else [str(i) for i in range(m.shape[0])]
    cn = list(col_names) if col_names is not None else [str(i) for i in range(m.shape[1])]
    if len(rn) != m.shape[0] or len(cn) != m.shape[1]:
        raise ValueError(f"{len(rn)} row / {len(cn)} column names for a matrix of shape {m.shape}")
    return m, rn, cn


def plot_heatmap(matrix, row_names: Sequence[str] | None = None, col_names: Sequence[str] | None = None,
                 ax=None, fig=None, cmap=None, annotate: bool | None = None, fmt: str = "{:.2f}",
                 title: str | None = None, vmin=None, vmax=None, colorbar: bool = True,
                 drop_empty_rows: bool = False) -> Figure:
    """Heatmap of an ``(L, R)`` importance matrix (rows: explained classes, columns: regions)."""
    m, rn, cn = _matrix_and_names(matrix, row_names, col_names)
    if drop_empty_rows:
        keep = ~np.isnan(m).all(1)
        m, rn = m[keep], [n for n, k in zip(rn, keep) if k]
    f, a = _axes(ax, fig, figsize=(max(4.0, 0.55 * len(cn) + 2.5), max(3.0, 0.45 * len(rn) + 1.5)))
    finite = m[np.isfinite(m)]
    signed = finite.size > 0 and finite.min() < 0
    if signed:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        vmin, vmax = (-lim if vmin is None else vmin), (lim if vmax is None else vmax)
        cmap = cmap or "RdBu_r"
    else:
        vmin = 0.0 if vmin is None else vmin
        vmax = (float(finite.max()) if finite.size and finite.max() > 0 else 1.0) if vmax is None else vmax
        cmap = cmap or "viridis"
    im = a.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                  interpolation="nearest")
    a.set_xticks(range(len(cn)), labels=cn, rotation=45, ha="right", rotation_mode="anchor")
    a.set_yticks(range(len(rn)), labels=rn)
    a.set_xlabel("region")
    a.set_ylabel("explained class")
    if title:
        a.set_title(title)
    if annotate is None:
        annotate = m.size <= 400
    if annotate:
        norm = im.norm
        cm = im.get_cmap()
        for (i, j), v in np.ndenumerate(m):
            if not np.isfinite(v):
                continue
            r, g, b, _ = cm(norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            a.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                   color="white" if dark else "black")
    if colorbar:
        f.colorbar(im, ax=a, shrink=0.8, label="importance")
    return f


def importance_graph(matrix, row_names: Sequence[str] | None = None, col_names: Sequence[str] | None = None,
                     top_k: int = 3, include_self: bool = False, min_weight: float = 0.0,
                     exclude: Sequence[str] = ()):
    """``networkx.DiGraph`` with an edge region → class for the top-k regions of each class.

    Rows that are all NaN (class never predicted) get no edges; regions named in
    ``exclude`` (e.g. ``["background"]``, which often dominates by sheer volume) are not
    sources of edges. Node attribute
    ``context_mass`` holds the diagonal for class nodes; edge attribute ``weight`` the
    importance.
    """
    import networkx as nx

    m, rn, cn = _matrix_and_names(matrix, row_names, col_names)
    g = nx.DiGraph()
    for j, n in enumerate(cn):
        g.add_node(n, kind="class" if n in rn else "roi")
    for i, n in enumerate(rn):
        if n not in g:
            g.add_node(n, kind="class")
        if n in cn:
            v = m[i, cn.index(n)]
            g.nodes[n]["context_mass"] = float(v) if np.isfinite(v) else float("nan")
    for i, target in enumerate(rn):
        row = m[i]
        cand = [(float(row[j]), cn[j]) for j in range(len(cn))
                if np.isfinite(row[j]) and row[j] > min_weight and (include_self or cn[j] != target)
                and cn[j] not in exclude]
        cand.sort(key=lambda t: -t[0])
        for w, src in cand[:max(0, int(top_k))]:
            g.add_edge(src, target, weight=w)
    return g


def plot_graph(matrix, row_names: Sequence[str] | None = None, col_names: Sequence[str] | None = None,
               top_k: int = 3, ax=None, fig=None, include_self: bool = False, title: str | None = None,
               max_width: float = 6.0, drop_isolated: bool = True, cmap: str = "viridis",
               exclude: Sequence[str] = ()) -> Figure:
    """Draw :func:`importance_graph` on a circle; edge width and colour ∝ importance."""
    import networkx as nx
    from matplotlib import colormaps
    from matplotlib.patches import FancyArrowPatch

    g = importance_graph(matrix, row_names, col_names, top_k, include_self, exclude=exclude)
    if drop_isolated:
        g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
    f, a = _axes(ax, fig, figsize=(6, 6))
    a.set_axis_off()
    a.set_aspect("equal")
    if title:
        a.set_title(title)
    if g.number_of_nodes() == 0:
        a.text(0.5, 0.5, "no edges", ha="center", va="center", transform=a.transAxes)
        return f
    pos = nx.circular_layout(g)
    weights = np.array([d["weight"] for _, _, d in g.edges(data=True)]) if g.number_of_edges() else np.zeros(0)
    wmax = float(weights.max()) if weights.size else 1.0
    cm = colormaps[cmap]
    for (u, v, d) in g.edges(data=True):
        w = d["weight"] / wmax if wmax > 0 else 0
        if u == v:
            continue
        arrow = FancyArrowPatch(pos[u], pos[v], arrowstyle="-|>", mutation_scale=12,
                                connectionstyle="arc3,rad=0.12", lw=0.5 + max_width * w,
                                color=cm(0.15 + 0.85 * w), alpha=0.85, shrinkA=12, shrinkB=12, zorder=1)
        a.add_patch(arrow)
    xs = np.array([pos[n] for n in g.nodes])
    sizes = []
    colors = []
    for n in g.nodes:
        cmass = g.nodes[n].get("context_mass", float("nan"))
        sizes.append(200 + 800 * (cmass if np.isfinite(cmass) else 0.0))
        colors.append("#d95f02" if g.nodes[n].get("kind") == "roi" else "#7570b3")
    a.scatter(xs[:, 0], xs[:, 1], s=sizes, c=colors, zorder=2, edgecolors="white", linewidths=1)
    for n, (x, y) in pos.items():
        a.text(x * 1.18, y * 1.18, str(n), ha="center", va="center", fontsize=8, zorder=3)
    a.set_xlim(-1.45, 1.45)
    a.set_ylim(-1.45, 1.45)
    a.text(0.0, -0.02, f"top-{top_k} incoming edges per class; width ∝ importance; node size ∝ context mass",
           ha="left", va="top", fontsize=7, transform=a.transAxes)
    return f


def plot_boxplots(result, explained_class, ax=None, fig=None, kind: str = "mass",
                  regions: Sequence[str] | None = None, title: str | None = None,
                  sort: bool = True) -> Figure:
    """Boxplots over images of ``local[:, a, :]`` for one explained class (name or index)."""
    arr = {"mass": result.local, "mass_pos": result.local_pos, "mass_neg": result.local_neg,
           "mass_mean": result.local_mean}[kind]
    a_idx = (result.row_names.index(explained_class) if isinstance(explained_class, str)
             else int(explained_class))
    data = arr[:, a_idx, :]
    names = list(result.col_names)
    cols = [names.index(r) for r in regions] if regions is not None else list(range(len(names)))
    series = []
    labels = []
    for j in cols:
        v = data[:, j]
        v = v[np.isfinite(v)]
        if v.size:
            series.append(v)
            labels.append(names[j])
    if sort and series:
        order = np.argsort([-np.median(s) for s in series])
        series = [series[k] for k in order]
        labels = [labels[k] for k in order]
    f, a = _axes(ax, fig, figsize=(max(4.0, 0.5 * len(labels) + 2), 4))
    if series:
        a.boxplot(series, tick_labels=labels, flierprops={"marker": "o", "markerfacecolor": "black",
                                                           "markersize": 3})
        a.tick_params(axis="x", labelrotation=45)
        for t in a.get_xticklabels():
            t.set_ha("right")
            t.set_rotation_mode("anchor")
    else:
        a.text(0.5, 0.5, "class not predicted in any image", ha="center", va="center", transform=a.transAxes)
    a.set_ylabel({"mass": "local importance", "mass_pos": "positive mass", "mass_neg": "negative mass",
                  "mass_mean": "per-voxel importance"}[kind])
    a.set_title(title or f"{result.row_names[a_idx]}: evidence by region ({data.shape[0]} images)")
    return f


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write a Figure to a file (matplotlib picks a headless printer; no pyplot)."""
    from .files import atomic_write

    p = Path(path)
    with atomic_write(p) as tmp:
        fig.savefig(tmp, dpi=dpi, format=p.suffix.lstrip(".").lower() or "png")
    return p
