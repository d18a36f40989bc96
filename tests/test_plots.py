"""Agg2Exp plots (plots.py): labels that never overlap, colorbars that say what a value is,
the two-column graph with exactly top-k incoming edges per class and a legend, themes,
boxplots, drawing into given axes, PNG/SVG/PDF."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from seg_explain.aggregate import Agg2ExpResult
from seg_explain.plots import (
    CELL_GID,
    DARK,
    EDGE_GID,
    KIND_TEXT,
    LIGHT,
    importance_graph,
    overlapping,
    plot_boxplots,
    plot_graph,
    plot_heatmap,
    save_figure,
    short_name,
    short_names,
)

ROWS = ["background", "liver", "kidney", "spleen"]
COLS = ROWS + ["lesion"]
BRAIN = ["background", "frontal_L", "frontal_R", "parietal_L", "parietal_R", "temporal_L", "temporal_R",
         "occipital_L", "occipital_R", "limbic_insula_L", "limbic_insula_R", "deep_grey_L", "deep_grey_R",
         "cerebellum_L", "cerebellum_R", "other_brain"]


def fake_result(n=6, seed=0):
    rng = np.random.default_rng(seed)
    L, R = len(ROWS), len(COLS)
    loc = rng.dirichlet(np.ones(L), size=(n, L))
    loc = np.concatenate([loc, rng.random((n, L, 1)) * 0.2], -1)
    loc[2, 3] = np.nan                                   # spleen absent in image 2
    nan = np.full_like(loc, np.nan)
    return Agg2ExpResult(loc, loc, loc, nan, ROWS, COLS, [f"im{i}" for i in range(n)],
                         np.ones((n, R)), ~np.isnan(loc[:, :, 0]))


def brain_matrix(seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(len(BRAIN)) * 0.3, size=len(BRAIN))


def dock_axes(size=(3.7, 3.9)):
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, fig.add_subplot(111)


def test_short_names_are_short_unique_and_keep_short_ones():
    assert short_name("liver") == "liver"
    assert short_name("limbic_insula_L") == "limb_insul_L"
    assert short_name("limbic_insula_L", 10) == "lim_insu_L"
    s = short_names(BRAIN, 12)
    assert all(len(x) <= 12 for x in s) and len(set(s)) == len(BRAIN)
    assert s[9].endswith("_L") and s[10].endswith("_R")
    # two long names that would clash get longer cuts instead
    s = short_names(["segment_number_one", "segment_number_two"], 8)
    assert len(set(s)) == 2


def test_heatmap_labels_values_and_colorbar(tmp_path):
    res = fake_result()
    fig = plot_heatmap(res, title="global")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == COLS
    assert [t.get_text() for t in ax.get_yticklabels()] == ROWS
    values = [t for t in ax.texts if t.get_gid() == CELL_GID]
    g = res.global_importance
    want = {(i, j): f"{100 * v:.0f}" for (i, j), v in np.ndenumerate(g) if 100 * v >= 0.5}
    assert len(values) == len(want) and all(t.get_visible() for t in values), "values fit a paper figure"
    assert {t.get_text() for t in values} == set(want.values())
    assert ax.images[0].get_cmap().name.startswith("viridis")
    assert ax.get_title() == "global"
    cbar = fig.axes[1]
    assert cbar.get_ylabel() == KIND_TEXT["mass"]["cell"] + " (%)"
    assert "share of class a's |attribution| in region b" in cbar.get_ylabel()
    # every kind says what its values are
    fig = plot_heatmap(res.global_per_voxel, ROWS, COLS, kind="mass_per_voxel")
    assert "image mean" in fig.axes[1].get_ylabel()
    p = save_figure(fig, tmp_path / "h.png")
    assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("size", [(3.7, 3.9), (2.6, 2.6)])
def test_heatmap_x_labels_never_overlap_at_dock_size(size):
    fig, ax = dock_axes(size)
    plot_heatmap(brain_matrix(), BRAIN, BRAIN, ax=ax, theme=DARK, title="SmoothGrad · global")
    fig.canvas.draw()
    for axis, labels in (("x", ax.get_xticklabels()), ("y", ax.get_yticklabels())):
        vis = [t for t in labels if t.get_visible()]
        assert overlapping(labels, axis) == [], (axis, [t.get_text() for t in vis])
        assert len(vis) >= len(BRAIN) // 3
        assert all(t.get_fontsize() >= 5 for t in vis)
        assert all(t.get_rotation() == 90 for t in vis) if axis == "x" else True
    if size == (3.7, 3.9):  # the dock's canvas: every label shown, but no room for 256 values
        assert all(t.get_visible() for t in ax.get_xticklabels())
        assert not any(t.get_visible() for t in ax.texts if t.get_gid() == CELL_GID)
    # value texts never wider than their cells when shown
    fig, ax = dock_axes((7.5, 6.5))
    plot_heatmap(brain_matrix(), BRAIN, BRAIN, ax=ax)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    cell_w = ax.get_window_extent(r).width / len(BRAIN)
    vals = [t for t in ax.texts if t.get_gid() == CELL_GID]
    assert vals and all(t.get_visible() for t in vals)
    assert max(t.get_window_extent(r).width for t in vals) < 0.8 * cell_w


def test_heatmap_signed_uses_diverging_centred_map():
    m = np.array([[0.5, -0.2], [-1.0, 0.3]])
    fig = plot_heatmap(m, ["a", "b"], ["x", "y"], annotate=False)
    im = fig.axes[0].images[0]
    assert im.get_cmap().name.startswith("RdBu_r")
    assert im.norm.vmin == -1.0 and im.norm.vmax == 1.0
    assert not [t for t in fig.axes[0].texts if t.get_gid() == CELL_GID]
    with pytest.raises(ValueError):
        plot_heatmap(m, ["a"], ["x", "y"])


def test_graph_keeps_top_k_incoming_edges():
    res = fake_result()
    g = importance_graph(res, top_k=3)
    for cls in ROWS:
        assert g.in_degree(cls) == 3
        assert cls not in g.predecessors(cls)          # context mass is a node attribute
    assert g.number_of_edges() == 3 * len(ROWS)
    gm = res.global_importance
    top = [COLS[j] for j in np.argsort(-np.where(np.arange(len(COLS)) == 1, -np.inf, gm[1]))[:3]]
    assert set(g.predecessors("liver")) == set(top)
    assert g.nodes["liver"]["context_mass"] == pytest.approx(gm[1, 1])
    assert importance_graph(res, top_k=1, include_self=True).number_of_edges() == len(ROWS)
    g = importance_graph(res, top_k=2, exclude=["background"])
    assert "background" not in {u for u, _ in g.edges} and g.in_degree("liver") == 2
    m = np.array([[1.0, np.nan], [np.nan, np.nan]])
    assert importance_graph(m, ["a", "b"], ["a", "b"], include_self=True).number_of_edges() == 1


def _edges(ax):
    return [p for p in ax.patches if p.get_gid() == EDGE_GID]


def test_graph_drawing_edges_legend_rings_and_labels(tmp_path):
    m = brain_matrix()
    fig, ax = dock_axes()
    plot_graph(m, BRAIN, BRAIN, top_k=3, ax=ax, theme=DARK, exclude=["background"], title="g")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    g = importance_graph(m, BRAIN, BRAIN, top_k=3, exclude=["background"])
    edges = _edges(ax)
    assert len(edges) == g.number_of_edges() == 3 * len(BRAIN)
    # width grows with the importance (edges are drawn weakest first)
    w = sorted(d["weight"] for *_e, d in g.edges(data=True))
    assert [e.get_linewidth() for e in edges] == sorted(e.get_linewidth() for e in edges)
    assert edges[0].get_linewidth() < edges[-1].get_linewidth() and w[0] < w[-1]
    # a legend says what an edge and a ring are; a colorbar gives the edge scale and unit
    legend = fig.legends[0] if fig.legends else ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert any("top-3" in t and "b → a" in t and "background" in t for t in texts)
    assert any(t.startswith("context mass") for t in texts)
    lb = legend.get_window_extent(r)
    assert lb.x0 >= 0 and lb.x1 <= fig.bbox.width, "the legend fits the dock's figure"
    cbar = [a for a in fig.axes if a is not ax][0]
    assert "share of class a's |attribution| in region b" in cbar.get_xlabel()
    # context mass: the filled disk's area over the ring's = a's share inside a
    rings = next(c for c in ax.collections if c.get_gid() == "class-rings")
    disks = next(c for c in ax.collections if c.get_gid() == "context-mass")
    ring = rings.get_sizes()[0]
    right = [t.get_text() for t in ax.texts if t.get_gid() == "right"]
    assert len(right) == len(disks.get_sizes())
    full = dict(zip(short_names(BRAIN), BRAIN))
    np.testing.assert_allclose(disks.get_sizes() / ring, [m[BRAIN.index(full[n]), BRAIN.index(full[n])]
                                                          for n in right], rtol=1e-6)
    # labels sit outside the node columns and do not overlap each other or any node
    x_left = ax.transData.transform((0.0, 0.0))[0]
    x_right = ax.transData.transform((1.0, 0.0))[0]
    node_px = np.concatenate([ax.transData.transform(c.get_offsets()) for c in ax.collections])
    for side in ("left", "right"):
        labels = [t for t in ax.texts if t.get_gid() == side]
        assert labels and overlapping(labels, "y") == []
        for t in labels:
            bb = t.get_window_extent(r)
            assert (bb.x1 < x_left) if side == "left" else (bb.x0 > x_right)
            inside = (node_px[:, 0] >= bb.x0) & (node_px[:, 0] <= bb.x1) & (node_px[:, 1] >= bb.y0) & \
                (node_px[:, 1] <= bb.y1)
            assert not inside.any(), t.get_text()
    # neighbouring rings do not overlap: diameter (points) below the row pitch
    ys = np.sort(ax.transData.transform(rings.get_offsets())[:, 1])
    assert np.sqrt(ring) * fig.dpi / 72 < np.diff(ys).min()
    save_figure(fig, tmp_path / "g.png")


def test_themes_and_formats(tmp_path):
    from PIL import Image

    m = brain_matrix()
    for fmt in ("png", "svg", "pdf"):
        fig = plot_graph(m, BRAIN, BRAIN, theme=LIGHT)
        p = save_figure(fig, tmp_path / f"g.{fmt}")
        head = p.read_bytes()[:5]
        assert {"png": head[:4] == b"\x89PNG", "svg": b"<?xml" == head, "pdf": head == b"%PDF-"}[fmt]
    img = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert (img[2, 2] == 255).all() and (img[-3, -3] == 255).all()
    svg = (tmp_path / "g.svg").read_text(encoding="utf-8")
    assert re.search(r'id="patch_1">\s*<path[^>]*style="fill: #ffffff"', svg)
    fig = plot_heatmap(m, BRAIN, BRAIN, theme=DARK)
    p = save_figure(fig, tmp_path / "h.png")
    img = np.asarray(Image.open(p).convert("RGB"))
    assert tuple(img[2, 2]) == (0x26, 0x29, 0x30)
    ax = fig.axes[0]
    assert ax.xaxis.label.get_color() == DARK.text and ax.get_xticklabels()[0].get_color() == DARK.text


def test_boxplots_and_given_axes():
    res = fake_result(n=8)
    fig = Figure()
    ax = fig.add_subplot(121)
    out = plot_boxplots(res, "liver", ax=ax)
    assert out is fig
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(labels) == sorted(COLS)
    assert "liver" in ax.get_title()
    # into a given figure (e.g. the dock's canvas figure)
    fig2 = Figure()
    plot_heatmap(res, fig=fig2, colorbar=False)
    assert len(fig2.axes) == 1
    out = plot_boxplots(res, 3, regions=["liver", "lesion"], sort=False)
    assert [t.get_text() for t in out.axes[0].get_xticklabels()] == ["liver", "lesion"]


def test_no_method_name_in_the_agg2exp_sources():
    """Issue 12: what a method is comes from the registry; no name is compared here."""
    from seg_explain.explainers.registry import methods

    src = Path(__file__).resolve().parents[1] / "src" / "seg_explain"
    for f in (src / "_napari" / "agg_dock.py", src / "_napari" / "agg_plots.py", src / "frontend" / "agg2exp.py",
              src / "plots.py"):
        text = f.read_text(encoding="utf-8")
        for name in methods():
            assert not re.search(rf"""["']{re.escape(name)}["']""", text), (f.name, name)
