"""The Agg2Exp dock's view: the heatmap and the graph, hovering and clicking a cell, exports.

:class:`PlotsMixin` is the half of :class:`~seg_explain._napari.agg_dock.Agg2ExpWidget` that
shows a result: the view controls (scope, kind, top-k, background), the matplotlib canvases
in the viewer's theme (:mod:`seg_explain.plots`), the words for a hovered cell
(:func:`seg_explain.frontend.agg2exp.cell_text`), and the CSV / figure exports. A click
calls the dock's ``show_cell``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..frontend.agg2exp import cell_text, global_csv_path
from .ui import notify_error

FIGSIZE = (3.7, 3.9)      # inches at 100 dpi: the canvases' size hint, and the exported figures'


def theme_colors(viewer) -> dict[str, str]:
    """Background / text / foreground colours of the viewer's current theme."""
    try:
        from napari.utils.theme import get_theme

        th = get_theme(viewer.theme)
        return {"background": th.background.as_hex(), "text": th.text.as_hex(),
                "foreground": th.foreground.as_hex()}
    except Exception:  # noqa: BLE001 - a plain light look if the theme cannot be read
        return {"background": "#ffffff", "text": "#000000", "foreground": "#000000"}



class PlotsMixin:
    """Plots of ``self.result`` for a dock with ``viewer``, ``settings``, ``status``,
    ``runner``, ``_specs``, ``_run_info`` and ``show_cell`` (see Agg2ExpWidget)."""

    def _build_plots(self, lay) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        vrow = QHBoxLayout()
        self.scope_combo = QComboBox()
        self.scope_combo.setObjectName("agg_scope_combo")
        self.scope_combo.setToolTip("global = mean over the images; or one image's local matrix")
        self.scope_combo.addItem("global (mean over images)", None)
        self.kind_combo = QComboBox()
        self.kind_combo.setObjectName("agg_kind_combo")
        from ..plots import KIND_TEXT

        for k, t in KIND_TEXT.items():
            self.kind_combo.addItem(t["short"], k)
            self.kind_combo.setItemData(self.kind_combo.count() - 1, t["cell"], Qt.ItemDataRole.ToolTipRole)
        self.kind_combo.setToolTip("what a cell is: " + "; ".join(f"{t['short']}: {t['cell']}"
                                                                    for t in KIND_TEXT.values()))
        vrow.addWidget(QLabel("view"))
        vrow.addWidget(self.scope_combo, 1)
        vrow.addWidget(self.kind_combo, 1)
        lay.addLayout(vrow)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("agg_tabs")
        self.heat_fig = Figure(figsize=FIGSIZE, dpi=100, layout="constrained")
        self.heat_canvas = FigureCanvasQTAgg(self.heat_fig)
        self.graph_fig = Figure(figsize=FIGSIZE, dpi=100, layout="constrained")
        self.graph_canvas = FigureCanvasQTAgg(self.graph_fig)
        for c in (self.heat_canvas, self.graph_canvas):
            c.setMinimumSize(240, 320)
        self.tabs.addTab(self.heat_canvas, "Heatmap")
        gpage = QWidget()
        gl = QVBoxLayout(gpage)
        gl.setContentsMargins(0, 2, 0, 0)
        grow = QHBoxLayout()
        self.topk = QSpinBox()
        self.topk.setObjectName("agg_topk")
        self.topk.setRange(1, 20)
        self.topk.setValue(3)
        self.topk.setToolTip("the graph keeps each class's k strongest regions (incoming edges)")
        self.show_background = QCheckBox("background as a source")
        self.show_background.setToolTip("the background region often holds most evidence by sheer volume; "
                                        "unchecked, its edges are left out of the graph")
        grow.addWidget(QLabel("top-k"))
        grow.addWidget(self.topk)
        grow.addWidget(self.show_background)
        grow.addStretch(1)
        gl.addLayout(grow)
        gl.addWidget(self.graph_canvas, 1)
        self.tabs.addTab(gpage, "Graph")
        lay.addWidget(self.tabs, 1)

        erow = QHBoxLayout()
        self.fig_button = QPushButton("Figures…")
        self.fig_button.setToolTip("the heatmap and the graph as PNG, SVG or PDF (<name> and <name>_graph)")
        self.csv_button = QPushButton("CSV…")
        self.csv_button.setToolTip("the local table (every image, class, region) and the global one")
        self.light_export = QCheckBox("light theme (for papers)")
        self.light_export.setObjectName("agg_light_export")
        self.light_export.setToolTip("exported figures on a white background with black text, whatever "
                                     "the viewer's theme")
        self.light_export.setChecked(bool(self.settings.value("agg_light_export", True, type=bool)))
        erow.addWidget(QLabel("export"))
        erow.addWidget(self.fig_button)
        erow.addWidget(self.light_export)
        erow.addStretch(1)
        erow.addWidget(self.csv_button)
        lay.addLayout(erow)

    def _connect_plots(self) -> None:
        self.scope_combo.currentIndexChanged.connect(lambda _i: self.redraw())
        self.kind_combo.currentIndexChanged.connect(lambda _i: self.redraw())
        self.topk.valueChanged.connect(lambda _v: self.redraw())
        self.show_background.toggled.connect(lambda _v: self.redraw())
        self.tabs.currentChanged.connect(lambda _i: self.schedule_draw())
        self.csv_button.clicked.connect(lambda: self.export_csv())
        self.fig_button.clicked.connect(lambda: self.export_figures())
        self.light_export.toggled.connect(lambda on: self.settings.setValue("agg_light_export", bool(on)))
        self.heat_canvas.mpl_connect("button_press_event", self._on_click)
        self.heat_canvas.mpl_connect("motion_notify_event", self._on_hover)
        for c in (self.heat_canvas, self.graph_canvas):
            c.mpl_connect("resize_event", lambda _e: self.redraw())

    # --------------------------------------------------------------- plots --
    def current_matrix(self):
        res = self.result
        if res is None:
            return None
        return res.matrix(self.scope_combo.currentData(), kind=self.kind_combo.currentData() or "mass")

    def theme(self, light: bool = False):
        from ..plots import LIGHT, as_theme

        return LIGHT if light else as_theme(theme_colors(self.viewer))

    def redraw(self, now: bool = False) -> None:
        """Mark both figures stale; draw the visible one (now, or on the next event loop pass)."""
        self._stale = {"heat": True, "graph": True}
        if now:
            self.draw()
        else:
            self.schedule_draw()

    def schedule_draw(self, delay_ms: int = 120) -> None:
        """Draw on the next event-loop pass after ``delay_ms`` (coalesces resizes and clicks)."""
        if not self._closed:
            self._draw_timer.start(int(delay_ms))

    def draw(self, which: str | None = None) -> None:
        """Draw the visible figure (or ``which``: "heat", "graph", "both") in the viewer's theme."""
        if self._closed:
            return
        if which is None:
            which = "heat" if self.tabs.currentIndex() == 0 else "graph"
        for key in (("heat", "graph") if which == "both" else (which,)):
            t0 = time.perf_counter()
            if key == "heat":
                self.draw_heatmap(self.heat_fig, self.theme())
                self.heat_canvas.draw_idle()
            else:
                self.draw_graph(self.graph_fig, self.theme())
                self.graph_canvas.draw_idle()
            self.timings[key] = time.perf_counter() - t0
            self._stale[key] = False

    def _title(self) -> str:
        res = self.result
        spec = self._specs.get(self._run_info.get("method", res.method))
        scope = self.scope_combo.currentText()
        return f"{spec.title if spec else res.method} · {scope}"

    def _placeholder(self, fig, theme) -> None:
        from ..plots import apply_theme

        ax = fig.add_subplot(111)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "Run Agg2Exp to see, for every class a,\nwhich regions b hold its evidence",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
        apply_theme(fig, theme)

    def _fresh_figure(self, fig, theme):
        """Clear ``fig``; the matrix to draw, or None after drawing the placeholder."""
        fig.clear()
        m = self.current_matrix()
        if m is None:
            self._placeholder(fig, theme)
        return m

    def draw_heatmap(self, fig, theme) -> None:
        from ..plots import plot_heatmap

        m = self._fresh_figure(fig, theme)
        if m is None:
            return
        res = self.result
        rows = [i for i in range(m.shape[0]) if not np.isnan(m[i]).all()]
        self._rows, self._cols = rows, list(range(m.shape[1]))
        ax = fig.add_subplot(111)
        plot_heatmap(m[rows], [res.row_names[i] for i in rows], res.col_names, ax=ax, title=self._title(),
                     kind=self.kind_combo.currentData() or "mass", theme=theme)

    def draw_graph(self, fig, theme) -> None:
        from ..plots import plot_graph

        m = self._fresh_figure(fig, theme)
        if m is None:
            return
        res = self.result
        excl = [] if self.show_background.isChecked() else [n for n in res.col_names if n.lower() == "background"]
        k = int(self.topk.value())
        plot_graph(m, res.row_names, res.col_names, top_k=k, ax=fig.add_subplot(111), exclude=excl,
                   title=f"{self._title()} · top-{k}", kind=self.kind_combo.currentData() or "mass",
                   theme=theme)

    def _on_theme(self, event=None) -> None:
        self.redraw(now=True)

    def _cell_at(self, event) -> tuple[int, int] | None:
        if self.result is None or not self.heat_fig.axes or event.inaxes is not self.heat_fig.axes[0]:
            return None
        if event.xdata is None or event.ydata is None:
            return None
        r, c = int(round(event.ydata)), int(round(event.xdata))
        if not (0 <= r < len(self._rows) and 0 <= c < len(self._cols)):
            return None
        return self._rows[r], self._cols[c]

    def _on_hover(self, event) -> None:
        cell = self._cell_at(event)
        if cell is None or self.runner.running:
            return
        kind = self.kind_combo.currentData() or "mass"
        self.status.setText(cell_text(self.result, self.current_matrix(), kind, *cell))

    def _on_click(self, event) -> None:
        cell = self._cell_at(event)
        if cell is not None:
            self.show_cell(*cell)

    # -------------------------------------------------------------- export --
    def export_csv(self, path: str | None = None) -> list[Path]:
        """Write the long local table (and the global table next to it)."""
        if self.result is None:
            notify_error("Run Agg2Exp first")
            return []
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export Agg2Exp table", "local_importance.csv",
                                                  "CSV (*.csv)")
            if not path:
                return []
        p = Path(path)
        out = [self.result.to_csv(p), self.result.global_to_csv(global_csv_path(p))]
        self.status.setText("Wrote " + ", ".join(str(o) for o in out))
        return out

    def export_figures(self, path: str | None = None, light: bool | None = None, dpi: int = 200) -> list[Path]:
        """Save the heatmap as ``path`` and the graph as ``<stem>_graph<suffix>`` (PNG, SVG or
        PDF by the suffix), at the canvases' size or larger where the labels and cell values
        need it, in a light theme (``light``; default: the check box) or the viewer's."""
        from matplotlib.figure import Figure

        from ..plots import FIGURE_FORMATS, graph_figsize, heatmap_figsize, save_figure

        if self.result is None:
            notify_error("Run Agg2Exp first")
            return []
        if path is None:
            path, filt = QFileDialog.getSaveFileName(
                self, "Export Agg2Exp figures", "agg2exp_heatmap.png",
                "PNG (*.png);;SVG (*.svg);;PDF (*.pdf)")
            if not path:
                return []
            if not Path(path).suffix:
                path = path + "." + filt.split("(*.")[1].rstrip(")")
        p = Path(path)
        if p.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
            notify_error(f"Figures are written as {', '.join(FIGURE_FORMATS)}: {p.name}")
            return []
        light = self.light_export.isChecked() if light is None else bool(light)
        theme = self.theme(light)
        out = []
        res = self.result
        natural = {"heat": heatmap_figsize(res.n_classes, len(res.col_names)),
                   "graph": graph_figsize(len(set(res.row_names) | set(res.col_names)))}
        # the visible canvas' size (a hidden tab's canvas keeps a stale size), or more: room for
        # every label and cell value on paper
        w, h = (self.heat_fig if self.tabs.currentIndex() == 0 else self.graph_fig).get_size_inches()
        for key, draw, target in (("heat", self.draw_heatmap, p),
                                  ("graph", self.draw_graph, p.with_name(p.stem + "_graph" + p.suffix))):
            f = Figure(figsize=(max(w, natural[key][0]), max(h, natural[key][1])), dpi=100,
                       layout="constrained")
            draw(f, theme)
            out.append(save_figure(f, target, dpi=dpi))
        self.status.setText("Wrote " + " and ".join(str(o) for o in out) + (" (light theme)" if light else ""))
        return out

