"""Agg2Exp plots with matplotlib's object API (no pyplot state, no Qt) and networkx.

Every function takes an optional ``ax`` (draw into it, e.g. the napari dock's canvas) or
``fig`` (a fresh axes is added to it); with neither, a new
:class:`matplotlib.figure.Figure` is made. The Figure is returned; write it with
:func:`save_figure` (Agg canvas, works headless; PNG, SVG or PDF by the file suffix).

- :func:`plot_heatmap`: the ``L × R`` matrix (global by default): short class names, x
  labels rotated and sized so that they never overlap (:func:`fit_heatmap_labels`), a
  colorbar that says what a value is (:data:`KIND_TEXT`), cell values when they fit, the
  context-mass cells (a = b) outlined;
- :func:`importance_graph` / :func:`plot_graph`: the top-k (default 3) incoming edges
  region b → class a per class, drawn as a two-column (bipartite) diagram: regions on the
  left, explained classes on the right, labels outside the columns, edge width and colour
  ∝ importance with a colorbar, and each class's context mass (its self-loop, a's share
  inside a) as the filled part of a ring around the class node, with a legend;
- :func:`plot_boxplots`: the distribution over images of one class's local importances.

Colours: ``theme=`` takes a :class:`Theme` (or a dict with ``background`` / ``text`` /
``foreground``), e.g. the napari viewer's; :data:`LIGHT` (white background, black text) is
the default and the one for papers.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

# what one value of each matrix kind is (aggregate.Agg2ExpResult.matrix(kind=...))
KIND_TEXT: dict[str, dict[str, Any]] = {
    "mass": {"short": "|attribution|", "share": True,
             "cell": "share of class a's |attribution| in region b",
             "diag": "context mass: a's share inside a"},
    "mass_pos": {"short": "positive part", "share": True,
                 "cell": "share of class a's positive attribution in region b",
                 "diag": "context mass: a's positive share inside a"},
    "mass_neg": {"short": "negative part", "share": True,
                 "cell": "share of class a's negative attribution in region b",
                 "diag": "context mass: a's negative share inside a"},
    "mass_per_voxel": {"short": "density (1 = mean)", "share": False,
                  "cell": "mean |attribution| of class a in region b ÷ image mean",
                  "diag": "density inside a (largest = full ring)"},
}


# ------------------------------------------------------------------------ themes --
@dataclass(frozen=True)
class Theme:
    """Figure colours: ``background`` (figure and axes), ``text`` (labels, ticks, titles),
    ``foreground`` (spines, node outlines)."""

    background: str = "#ffffff"
    text: str = "#000000"
    foreground: str = "#000000"

    @property
    def dark(self) -> bool:
        from matplotlib.colors import to_rgb

        r, g, b = to_rgb(self.background)
        return 0.299 * r + 0.587 * g + 0.114 * b < 0.5

    @property
    def muted(self) -> str:
        """Something between text and background (isolated nodes, NaN cells)."""
        from matplotlib.colors import to_hex, to_rgb

        t, b = np.array(to_rgb(self.text)), np.array(to_rgb(self.background))
        return to_hex(0.45 * t + 0.55 * b)


LIGHT = Theme()
DARK = Theme("#262930", "#f0f1f2", "#86929b")


def as_theme(theme=None) -> Theme:
    if theme is None:
        return LIGHT
    if isinstance(theme, Theme):
        return theme
    if isinstance(theme, dict):
        return Theme(theme.get("background", LIGHT.background), theme.get("text", LIGHT.text),
                     theme.get("foreground", theme.get("text", LIGHT.foreground)))
    if isinstance(theme, str) and theme.lower() in ("light", "dark"):
        return LIGHT if theme.lower() == "light" else DARK
    raise ValueError(f"theme must be a Theme, a dict or 'light'/'dark', got {theme!r}")


CELL_GID = "seg-explain-cell-value"   # heatmap value texts keep their own (cell-dependent) colour


def apply_theme(fig: Figure, theme=None) -> None:
    """Paint a whole Figure (axes, ticks, labels, titles, texts, legends, colorbars)."""
    th = as_theme(theme)
    fig.patch.set_facecolor(th.background)
    for t in fig.texts:
        t.set_color(th.text)
    for ax in fig.axes:
        ax.set_facecolor(th.background)
        ax.tick_params(colors=th.text, which="both")
        for sp in ax.spines.values():
            sp.set_color(th.foreground)
        for t in (ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax._right_title):  # noqa: SLF001
            t.set_color(th.text)
        for t in ax.texts:
            if t.get_gid() != CELL_GID:
                t.set_color(th.text)
        leg = ax.get_legend()
        if leg is not None:
            for t in leg.get_texts():
                t.set_color(th.text)
            leg.get_frame().set_facecolor(th.background)
            leg.get_frame().set_edgecolor(th.foreground)
            if leg.get_title() is not None:
                leg.get_title().set_color(th.text)
    for leg in fig.legends:
        for t in leg.get_texts():
            t.set_color(th.text)
        leg.get_frame().set_facecolor(th.background)


# ------------------------------------------------------------------------ labels --
_SPLIT = re.compile(r"([_\s\-.]+)")


def short_name(name: str, max_len: int = 12) -> str:
    """``name`` cut to at most ``max_len`` characters, word by word: the longest word is
    shortened first, one letter at a time, never below 3 letters; words of one or two
    characters (L/R, numbers) are kept. ``limbic_insula_L`` → ``limb_insul_L``."""
    name = str(name)
    if len(name) <= max_len:
        return name
    parts = _SPLIT.split(name)
    words = list(range(0, len(parts), 2))  # even indices are words, odd ones separators
    while len("".join(parts)) > max_len:
        cand = [i for i in words if len(parts[i]) > 3]
        if not cand:
            break
        i = max(cand, key=lambda k: (len(parts[k]), -k))
        parts[i] = parts[i][:-1]
    out = "".join(parts)
    return out if len(out) <= max_len else out[: max_len - 1] + "…"


def short_names(names: Sequence[str], max_len: int = 12) -> list[str]:
    """:func:`short_name` of each name, made unique (a longer cut where two would clash)."""
    names = [str(n) for n in names]
    out = [short_name(n, max_len) for n in names]
    for _ in range(8):
        seen: dict[str, list[int]] = {}
        for i, s in enumerate(out):
            seen.setdefault(s, []).append(i)
        clash = [ix for ix in seen.values() if len(ix) > 1 and len({names[i] for i in ix}) > 1]
        if not clash:
            return out
        max_len += 2
        for ix in clash:
            for i in ix:
                out[i] = short_name(names[i], max_len)
    return out


# ------------------------------------------------------------------------ inputs --
def heatmap_figsize(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches in which an ``n_rows × n_cols`` heatmap has room for every label and value."""
    return max(4.0, 0.3 * n_cols + 2.9), max(3.5, 0.27 * n_rows + 2.4)


def graph_figsize(n_nodes: int) -> tuple[float, float]:
    """Inches in which a graph over ``n_nodes`` names has room for every label."""
    return 4.8, max(3.5, 0.24 * n_nodes + 2.6)


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


def _renderer(fig: Figure):
    """A renderer for text extents: the figure's own canvas (Agg, QtAgg) or a new Agg one."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _layout(fig: Figure):
    fig.draw_without_rendering()
    return _renderer(fig)


def overlapping(texts, axis: str = "x", pad_px: float = 0.0) -> list[tuple[int, int]]:
    """Pairs of neighbouring visible, non-empty texts whose extents overlap along ``axis``
    (after the figure's layout; extents from the Agg renderer)."""
    texts = [t for t in texts if t.get_visible() and t.get_text()]
    if len(texts) < 2:
        return []
    fig = texts[0].figure
    r = _renderer(fig)
    boxes = [t.get_window_extent(renderer=r) for t in texts]
    lo = [b.x0 if axis == "x" else b.y0 for b in boxes]
    hi = [b.x1 if axis == "x" else b.y1 for b in boxes]
    order = np.argsort(lo)
    return [(int(order[k]), int(order[k + 1])) for k in range(len(order) - 1)
            if hi[order[k]] + pad_px > lo[order[k + 1]]]


# ----------------------------------------------------------------------- heatmap --
def fit_heatmap_labels(fig: Figure, ax, min_pt: float = 5.0, max_pt: float = 8.0, min_value_pt: float = 6.0,
                       values: bool | None = None) -> dict[str, float]:
    """Size the heatmap's tick labels (and cell values) to its cells after the layout.

    x labels are vertical, so each needs one line height of the column pitch; y labels one
    line height of the row pitch. The font shrinks down to ``min_pt``; below that only every
    n-th label is shown, so that labels never overlap. Cell values (texts with gid
    :data:`CELL_GID`) are shown only if they fit their cells
    at ``min_value_pt`` or more (``values=False`` hides them, ``True`` shows them at
    ``min_pt`` at least). Returns the sizes chosen (``x``, ``y``, ``cell``;
    ``cell`` is 0 when values are hidden)."""
    im = ax.images[0] if ax.images else None
    ny, nx = (im.get_array().shape if im is not None else (len(ax.get_yticks()), len(ax.get_xticks())))
    xt, yt = ax.get_xticklabels(), ax.get_yticklabels()
    cells = [t for t in ax.texts if t.get_gid() == CELL_GID]
    size = {"x": max_pt, "y": max_pt, "cell": max_pt}
    for t in xt + yt:
        t.set_fontsize(max_pt)
        t.set_visible(True)
    for t in cells:
        t.set_visible(False)      # measured separately: they never change the layout
    for _ in range(3):
        r = _layout(fig)
        bb = ax.get_window_extent(renderer=r)
        pitch = {"x": bb.width / max(nx, 1), "y": bb.height / max(ny, 1)}
        changed = False
        for key, labels in (("x", xt), ("y", yt)):
            vis = [t for t in labels if t.get_text()]
            if not vis:
                continue
            ext = max((t.get_window_extent(renderer=r).width if key == "x" else
                       t.get_window_extent(renderer=r).height) for t in vis)
            want = float(np.clip(size[key] * 0.9 * pitch[key] / max(ext, 1e-6), min_pt, max_pt))
            if abs(want - size[key]) > 0.05:
                size[key] = want
                for t in labels:
                    t.set_fontsize(want)
                changed = True
        if not changed:
            break
    # still crowded at the smallest size: show every n-th label
    r = _layout(fig)
    for key, labels in (("x", xt), ("y", yt)):
        step = 1
        while overlapping(labels[::step], key) and step < len(labels):
            step += 1
        for i, t in enumerate(labels):
            t.set_visible(i % step == 0)
    # cell values: the widest value must fit the cell with a margin
    if cells and values is not False:
        bb = ax.get_window_extent(renderer=r)
        cw, ch = bb.width / max(nx, 1), bb.height / max(ny, 1)
        probe = max(cells, key=lambda t: len(t.get_text()))
        probe.set_fontsize(max_pt)
        probe.set_visible(True)           # an invisible text has no extent
        e = probe.get_window_extent(renderer=r)
        probe.set_visible(False)
        s = float(min(max_pt, max_pt * 0.65 * cw / max(e.width, 1e-6), max_pt * 0.75 * ch / max(e.height, 1e-6)))
        if s >= min_value_pt or values is True:
            s = max(s, min_pt)
            for t in cells:
                t.set_fontsize(s)
                t.set_visible(True)
            size["cell"] = s
        else:
            size["cell"] = 0.0
    else:
        size["cell"] = 0.0
    return size


def value_format(kind: str = "mass"):
    """How a value of ``kind`` is written in a cell: shares in % (no % sign: the colorbar
    says it), densities with one decimal; values that round to 0 are left blank."""
    if KIND_TEXT.get(kind, KIND_TEXT["mass"])["share"]:   # in %, blank below 0.5 % (less clutter)
        return lambda v: f"{100 * v:.0f}" if np.isfinite(v) and 100 * v >= 0.5 else ""
    return lambda v: f"{v:.1f}" if np.isfinite(v) and v >= 0.05 else ""


def plot_heatmap(matrix, row_names: Sequence[str] | None = None, col_names: Sequence[str] | None = None,
                 ax=None, fig=None, cmap=None, annotate: bool | None = None, fmt: str | None = None,
                 title: str | None = None, vmin=None, vmax=None, colorbar: bool = True,
                 drop_empty_rows: bool = False, kind: str = "mass", cbar_label: str | None = None,
                 theme=None, max_label: int | None = 12, fit: bool = True) -> Figure:
    """Heatmap of an ``(L, R)`` importance matrix (rows: explained classes a, columns: regions b).

    ``kind`` (``mass`` | ``mass_pos`` | ``mass_neg`` | ``mass_per_voxel``) sets the colorbar's
    label and the value format (shares in %; densities with one decimal). Labels longer
    than ``max_label`` characters are shortened (:func:`short_names`; None keeps them).
    ``annotate``: None = cell values when they fit (:func:`fit_heatmap_labels`), True /
    False = always / never. ``fit=False`` skips the label fitting (it needs a layout pass)."""
    m, rn, cn = _matrix_and_names(matrix, row_names, col_names)
    th = as_theme(theme)
    info = KIND_TEXT.get(kind, KIND_TEXT["mass"])
    if drop_empty_rows:
        keep = ~np.isnan(m).all(1)
        m, rn = m[keep], [n for n, k in zip(rn, keep) if k]
    f, a = _axes(ax, fig, figsize=heatmap_figsize(len(rn), len(cn)))
    finite = m[np.isfinite(m)]
    signed = finite.size > 0 and finite.min() < 0
    from matplotlib import colormaps

    if signed:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        vmin, vmax = (-lim if vmin is None else vmin), (lim if vmax is None else vmax)
        cmap = cmap or "RdBu_r"
    else:
        vmin = 0.0 if vmin is None else vmin
        vmax = (float(finite.max()) if finite.size and finite.max() > 0 else 1.0) if vmax is None else vmax
        cmap = cmap or "viridis"
    cm = colormaps[cmap] if isinstance(cmap, str) else cmap
    cm = cm.with_extremes(bad=th.muted)
    im = a.imshow(np.ma.masked_invalid(m), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto",
                  interpolation="nearest")
    xl = short_names(cn, max_label) if max_label else cn
    yl = short_names(rn, max_label) if max_label else rn
    a.set_xticks(range(len(cn)), labels=xl, rotation=90, ha="center", va="top")
    a.set_yticks(range(len(rn)), labels=yl)
    a.tick_params(length=2, pad=2)
    a.set_xlabel("region b   (□ = context mass, a inside a)", fontsize=8)
    a.set_ylabel("explained class a", fontsize=8)
    if title:
        a.set_title(title, fontsize=9)
    if fmt is not None:
        write = fmt.format
    else:
        write = value_format(kind)
    if annotate is not False:
        norm = im.norm
        for (i, j), v in np.ndenumerate(m):
            text = write(v) if np.isfinite(v) else ""
            if not text:
                continue
            r, g, b, _ = cm(norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            a.text(j, i, text, ha="center", va="center", fontsize=7, gid=CELL_GID,
                   color="white" if dark else "black")
    # context mass (class a inside its own region) outlined, so the diagonal reads at a glance
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    for i, name in enumerate(rn):
        if name in cn:
            a.add_patch(Rectangle((cn.index(name) - 0.5, i - 0.5), 1, 1, fill=False, lw=0.8,
                                  ec=th.text, gid="context-mass", zorder=3,
                                  path_effects=[withStroke(linewidth=2.0, foreground=th.background)]))
    if colorbar:
        label = cbar_label or (info["cell"] + (" (%)" if info["share"] and fmt is None else ""))
        cb = f.colorbar(im, ax=a, fraction=0.05, pad=0.02, aspect=30)
        cb.set_label(label, fontsize=7)
        cb.ax.tick_params(labelsize=7)
        if info["share"] and fmt is None and not signed:
            from matplotlib.ticker import FuncFormatter

            cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{100 * v:.3g}"))
        cb.outline.set_edgecolor(th.foreground)
    apply_theme(f, th)
    if fit:
        fit_heatmap_labels(f, a, values=annotate)
    return f


# ------------------------------------------------------------------------- graph --
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
    for n in cn:
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


EDGE_GID = "seg-explain-edge"
RING_AREA = 110.0          # points² of a class node's ring (= context mass 1)


def _edge_cmap(th: Theme):
    """A colormap whose weak end still shows on the background (and fades towards it)."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    base = colormaps["viridis"]
    t = np.linspace(0.3, 1.0, 256) if th.dark else np.linspace(0.85, 0.0, 256)
    return ListedColormap(base(t), name="edges")


def plot_graph(matrix, row_names: Sequence[str] | None = None, col_names: Sequence[str] | None = None,
               top_k: int = 3, ax=None, fig=None, include_self: bool = False, title: str | None = None,
               max_width: float = 5.0, drop_isolated: bool = True, cmap=None,
               exclude: Sequence[str] = (), kind: str = "mass", theme=None, max_label: int | None = 12,
               legend: bool = True, colorbar: bool = True) -> Figure:
    """Draw :func:`importance_graph` as two columns: regions b (left) → explained classes a
    (right), in the classes' order, so a region and the class of the same name are on one
    row. Edges are smooth curves, width and colour ∝ importance (colorbar); a class node is
    a ring whose filled disk has the area of its context mass (``local[a, a]``; the
    self-loop, which is not an edge unless ``include_self``); labels sit outside the
    columns. ``kind`` words the legend (:data:`KIND_TEXT`)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    th = as_theme(theme)
    info = KIND_TEXT.get(kind, KIND_TEXT["mass"])
    m, rn, cn = _matrix_and_names(matrix, row_names, col_names)
    g = importance_graph(m, rn, cn, top_k, include_self, exclude=exclude)
    f, a = _axes(ax, fig, figsize=graph_figsize(len(set(rn) | set(cn))))
    a.set_axis_off()
    if title:
        a.set_title(title, fontsize=8)
    edges = sorted(g.edges(data=True), key=lambda e: e[2]["weight"])
    sources = {u for u, _, _ in edges}
    targets = {v for _, v, _ in edges}
    if not drop_isolated:
        targets |= {n for i, n in enumerate(rn) if np.isfinite(m[i]).any()}
    order = [n for n in list(rn) + [c for c in cn if c not in rn] if n in sources or n in targets]
    if not order:
        a.text(0.5, 0.5, "no edges", ha="center", va="center", transform=a.transAxes)
        apply_theme(f, th)
        return f
    n = len(order)
    ypos = {name: (1.0 - i / (n - 1) if n > 1 else 0.5) for i, name in enumerate(order)}
    weights = np.array([d["weight"] for _, _, d in edges]) if edges else np.zeros(0)
    wmax = float(weights.max()) if weights.size else 1.0
    norm = Normalize(0.0, wmax if wmax > 0 else 1.0)
    cm = _edge_cmap(th) if cmap is None else (cmap if not isinstance(cmap, str) else __import__(
        "matplotlib").colormaps[cmap])
    x0, x1 = 0.0, 1.0
    for u, v, d in edges:
        w = d["weight"]
        yu, yv = ypos[u], ypos[v]
        path = MplPath([(x0, yu), (0.45, yu), (0.55, yv), (x1, yv)],
                       [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4])
        a.add_patch(PathPatch(path, facecolor="none", edgecolor=cm(norm(w)),
                              lw=0.4 + max_width * (w / wmax if wmax > 0 else 0), alpha=0.9,
                              capstyle="butt", zorder=1, gid=EDGE_GID))
    # nodes
    left = [u for u in order if u in sources]
    right = [v for v in order if v in targets]
    a.scatter([x0] * len(left), [ypos[u] for u in left], s=16, c=th.text, zorder=3, linewidths=0,
              gid="region-nodes")
    cms = {}
    diag = [g.nodes[v].get("context_mass", float("nan")) for v in right]
    dmax = 1.0 if info["share"] else max([c for c in diag if np.isfinite(c)] or [1.0])
    for v, c in zip(right, diag):
        cms[v] = float(np.clip(c / dmax, 0, 1)) if np.isfinite(c) else 0.0
    a.scatter([x1] * len(right), [ypos[v] for v in right], s=RING_AREA, facecolors=th.background,
              edgecolors=th.text, linewidths=0.9, zorder=3, gid="class-rings")
    accent = "#f28e2b"
    disks = a.scatter([x1] * len(right), [ypos[v] for v in right], s=[RING_AREA * cms[v] for v in right],
                      c=accent, linewidths=0, zorder=4, gid="context-mass")
    disks.context_mass = [cms[v] for v in right]
    # labels outside the columns
    full = list(order)
    labels = dict(zip(full, short_names(full, max_label) if max_label else full))
    pitch_frac = 1.0 / max(n, 1)
    for u in left:
        a.text(x0 - 0.05, ypos[u], labels[u], ha="right", va="center", fontsize=7, zorder=5, gid="left")
    for v in right:
        a.text(x1 + 0.06, ypos[v], labels[v], ha="left", va="center", fontsize=7, zorder=5, gid="right")
    pad = 0.6 * pitch_frac + 0.02
    a.set_xlim(x0 - 0.02, x1 + 0.03)
    a.set_ylim(-pad, 1 + 2 * pad + 0.03)
    a.text(x0, 1 + 1.5 * pad, "region b", ha="center", va="center", fontsize=7, style="italic", gid="header")
    a.text(x1, 1 + 1.5 * pad, "class a", ha="center", va="center", fontsize=7, style="italic", gid="header")
    if legend:
        ring = Line2D([], [], ls="", marker="o", ms=9, mfc=th.background, mec=th.text, mew=0.9)
        dot = Line2D([], [], ls="", marker="o", ms=5.5, mfc=accent, mec="none")
        edge = Line2D([], [], color=cm(0.8), lw=2.5)
        kk = f"top-{top_k}" if top_k > 1 else "strongest"
        hidden = f", no {', '.join(exclude)}" if exclude else ""
        from matplotlib.legend_handler import HandlerTuple

        handles = [edge, (ring, dot)]
        texts = [f"b → a: {kk} regions per class{hidden}", info["diag"]]
        kw = dict(handler_map={tuple: HandlerTuple(ndivide=1)}, fontsize=7, frameon=False, handlelength=2.0,
                  ncols=2, columnspacing=1.0, handletextpad=0.5, borderaxespad=0.2)
        from matplotlib.layout_engine import ConstrainedLayoutEngine

        outside = isinstance(f.get_layout_engine(), ConstrainedLayoutEngine) and len(f.axes) == 1
        leg = (f.legend(handles, texts, loc="outside lower center", **kw) if outside else
               a.legend(handles, texts, loc="upper center", bbox_to_anchor=(0.5, -0.02), **kw))
        if leg.get_window_extent(renderer=_renderer(f)).width > 0.98 * f.bbox.width:   # one column
            leg.remove()
            kw["ncols"] = 1
            (f.legend(handles, texts, loc="outside lower center", **kw) if outside else
             a.legend(handles, texts, loc="upper center", bbox_to_anchor=(0.5, -0.02), **kw))
    if colorbar and edges:
        sm = ScalarMappable(norm=norm, cmap=cm)
        cb = f.colorbar(sm, ax=a, orientation="horizontal", location="bottom", fraction=0.04, pad=0.02,
                        aspect=35, shrink=0.9)
        lab = "edge b → a: " + info["cell"] + (" (%)" if info["share"] else "") + "; width ∝ value"
        cb.set_label(lab, fontsize=7)
        cb.ax.tick_params(labelsize=7)
        cb.outline.set_edgecolor(th.foreground)
        if info["share"]:
            from matplotlib.ticker import FuncFormatter

            cb.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{100 * v:.3g}"))
    apply_theme(f, th)
    _fit_graph_labels(f, a, n)
    return f


def _fit_graph_labels(fig: Figure, ax, n_rows: int, min_pt: float = 5.0, max_pt: float = 8.0) -> float:
    """Label font and node sizes so that neither labels nor rings of one column overlap
    (both follow the row pitch after the layout)."""
    side = [t for t in ax.texts if t.get_gid() in ("left", "right")]
    if not side:
        return 0.0
    for _ in range(2):
        r = _layout(fig)
        bb = ax.get_window_extent(renderer=r)
        y0, y1 = ax.get_ylim()
        pitch = bb.height / max(y1 - y0, 1e-9) * (1.0 / max(n_rows - 1, 1)) if n_rows > 1 else bb.height
        h = max(t.get_window_extent(renderer=r).height for t in side)
        size = float(np.clip(side[0].get_fontsize() * 0.95 * pitch / max(h, 1e-6), min_pt, max_pt))
        for t in side:
            t.set_fontsize(size)
        # ring diameter at most 85 % of the pitch (points = px · 72 / dpi)
        ring = float(min(RING_AREA, (0.85 * pitch * 72.0 / fig.dpi) ** 2))
        for c in ax.collections:
            if c.get_gid() == "class-rings":
                c.set_sizes([ring])
            elif c.get_gid() == "context-mass":
                c.set_sizes([ring * v for v in getattr(c, "context_mass", [])])
            elif c.get_gid() == "region-nodes":
                c.set_sizes([min(16.0, ring / 4)])
    return size


# ---------------------------------------------------------------------- boxplots --
def plot_boxplots(result, explained_class, ax=None, fig=None, kind: str = "mass",
                  regions: Sequence[str] | None = None, title: str | None = None,
                  sort: bool = True, theme=None) -> Figure:
    """Boxplots over images of ``local[:, a, :]`` for one explained class (name or index)."""
    arr = {"mass": result.local, "mass_pos": result.local_pos, "mass_neg": result.local_neg,
           "mass_per_voxel": result.local_per_voxel}[kind]
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
    th = as_theme(theme)
    if series:
        a.boxplot(series, tick_labels=labels, flierprops={"marker": "o", "markerfacecolor": th.text,
                                                           "markersize": 3})
        a.tick_params(axis="x", labelrotation=90)
    else:
        a.text(0.5, 0.5, "class not predicted in any image", ha="center", va="center", transform=a.transAxes)
    a.set_ylabel(KIND_TEXT[kind]["cell"].replace("class a's", "the class's").replace("region b", "the region"),
                 fontsize=8)
    a.set_title(title or f"{result.row_names[a_idx]}: evidence by region ({data.shape[0]} images)")
    apply_theme(f, th)
    return f


# ------------------------------------------------------------------------ saving --
FIGURE_FORMATS = ("png", "svg", "pdf")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write a Figure to a file, the format from the suffix (png, svg, pdf; matplotlib's
    headless printers, no pyplot), with the figure's own background colour."""
    from .files import atomic_write

    p = Path(path)
    fmt = p.suffix.lstrip(".").lower() or "png"
    with atomic_write(p) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt, facecolor=fig.get_facecolor(), edgecolor="none")
    return p
