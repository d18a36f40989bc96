"""Agg2Exp plots (plots.py): labels, colormaps, graph edges, boxplots, drawing into given axes."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from seg_explain.aggregate import Agg2ExpResult
from seg_explain.plots import (importance_graph, plot_boxplots, plot_graph, plot_heatmap,
                               save_figure)

ROWS = ["background", "liver", "kidney", "spleen"]
COLS = ROWS + ["lesion"]


def fake_result(n=6, seed=0):
    rng = np.random.default_rng(seed)
    L, R = len(ROWS), len(COLS)
    loc = rng.dirichlet(np.ones(L), size=(n, L))
    loc = np.concatenate([loc, rng.random((n, L, 1)) * 0.2], -1)
    loc[2, 3] = np.nan                                   # spleen absent in image 2
    nan = np.full_like(loc, np.nan)
    return Agg2ExpResult(loc, loc, loc, nan, ROWS, COLS, [f"im{i}" for i in range(n)],
                         np.ones((n, R)), ~np.isnan(loc[:, :, 0]))


def test_heatmap_labels_and_annotations(tmp_path):
    res = fake_result()
    fig = plot_heatmap(res, title="global")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == COLS
    assert [t.get_text() for t in ax.get_yticklabels()] == ROWS
    assert len(ax.texts) == len(ROWS) * len(COLS)
    assert ax.images[0].get_cmap().name == "viridis"
    assert ax.get_title() == "global"
    p = save_figure(fig, tmp_path / "h.png")
    assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"


def test_heatmap_signed_uses_diverging_centred_map():
    m = np.array([[0.5, -0.2], [-1.0, 0.3]])
    fig = plot_heatmap(m, ["a", "b"], ["x", "y"], annotate=False)
    im = fig.axes[0].images[0]
    assert im.get_cmap().name == "RdBu_r"
    assert im.norm.vmin == -1.0 and im.norm.vmax == 1.0
    assert len(fig.axes[0].texts) == 0
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


def test_graph_draws_edges_with_width_proportional(tmp_path):
    res = fake_result()
    fig = plot_graph(res, top_k=2, title="g")
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * len(ROWS)
    widths = sorted(p.get_linewidth() for p in ax.patches)
    assert widths[0] < widths[-1]
    labels = {t.get_text() for t in ax.texts}
    g = importance_graph(res, top_k=2)
    assert {n for n in g.nodes if g.degree(n)} <= labels      # isolated nodes are not drawn
    save_figure(fig, tmp_path / "g.png")


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
