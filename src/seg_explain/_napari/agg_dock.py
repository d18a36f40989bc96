"""The Agg2Exp dock: class-to-region importance of the current image or a list of files.

Runs :class:`seg_explain.aggregate.Agg2ExpRun` in a worker (progress bar, Cancel) and
draws the heatmap and the importance graph (:mod:`seg_explain.plots`) on matplotlib
canvases that follow the viewer's theme (as napari-matplotlib does). Clicking a heatmap
cell (explained class a, region b) adds class a's attribution masked to region b as a
layer; the tables and the figures can be exported (CSV / PNG).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from qtpy.QtWidgets import (QButtonGroup, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
                            QLabel, QListWidget, QPushButton, QRadioButton, QSpinBox, QTabWidget,
                            QVBoxLayout, QWidget)

from ..allocator import tune_allocator
from .layers import (GEOMETRY_KEY, META_KEY, attribution_colormap, image_from_layer, is_result_layer,
                     spatial_dims_of, symmetric_limits)
from .params import ParamForm, compact_all
from .widget import BROWSE_DIR, BROWSE_FILE, notify_error, notify_info, sample_models, settings
from .workers import CancelToken, JobRunner, ModelCache, scalar_items

log = logging.getLogger(__name__)
KINDS = {"mass": "|e| mass", "mass_pos": "positive mass", "mass_neg": "negative mass",
         "mass_mean": "per-voxel (mean |e|, 1 = average)"}


# ------------------------------------------------------------------------- jobs --
def agg_job(cache: ModelCache, model_path: str, device: str, images: list, names: list[str], method: str,
            params: dict[str, Any], keep_maps: bool, token: CancelToken) -> Iterator:
    """Agg2Exp over ``images`` (LoadedImage copies or paths); returns (result, maps).

    ``maps`` (when ``keep_maps``): the last image's per-class attributions and label map,
    so a heatmap click can show them without recomputing."""
    from ..aggregate import Agg2ExpRun
    from .workers import cancel_hooks

    yield ("status", "Loading model")
    model = cache.get(model_path, device)
    token.check()
    stash: dict[str, Any] = {}

    class _Run(Agg2ExpRun):
        def _labels(self, image, exps, shape):  # called once per image with every class's map
            labels = super()._labels(image, exps, shape)
            if keep_maps:
                stash.clear()
                stash.update({"attributions": {int(e.target): np.asarray(e.attribution, np.float32) for e in exps},
                              "labels": np.asarray(labels).astype(np.int32)})
            return labels

    run = _Run(model, images, method, names=names, on_error="skip" if len(images) > 1 else "raise", **params)
    with cancel_hooks(model, token):
        for done, total in run.run_iter():
            token.check()
            yield ("progress", int(done), int(total))
            if run.status:
                yield ("status", run.status)
    res = run.result()
    if res.n_images == 0:
        from ..errors import InputMismatchError

        raise InputMismatchError("No image could be explained: " + "; ".join(f"{n}: {m}" for n, m in res.skipped))
    return res, dict(stash)


def cell_job(cache: ModelCache, model_path: str, device: str, image, method: str, params: dict[str, Any],
             target: int, token: CancelToken) -> Iterator:
    """Class ``target``'s attribution (RoI = its predicted voxels) and the label map."""
    from ..explainers.base import explain_iter
    from .workers import cancel_hooks

    model = cache.get(model_path, device)
    with cancel_hooks(model, token):
        yield ("status", "Predicting")
        labels = np.asarray(model.predict(image)).astype(np.int32)
        gen = explain_iter(model, image, method, target=target, **params)
        while True:
            token.check()
            try:
                d, t = next(gen)
            except StopIteration as stop:
                exp = stop.value
                break
            yield ("progress", int(d), int(t))
    return {"attributions": {int(target): np.asarray(exp.attribution, np.float32)}, "labels": labels}


# ------------------------------------------------------------------------ theme --
def theme_colors(viewer) -> dict[str, str]:
    """Background / foreground / text colours of the viewer's current theme."""
    try:
        from napari.utils.theme import get_theme

        th = get_theme(viewer.theme)
        return {"background": th.background.as_hex(), "canvas": th.canvas.as_hex(),
                "text": th.text.as_hex(), "foreground": th.foreground.as_hex(),
                "primary": th.primary.as_hex()}
    except Exception:  # noqa: BLE001 - a plain light look if the theme cannot be read
        return {"background": "#ffffff", "canvas": "#ffffff", "text": "#000000", "foreground": "#cccccc",
                "primary": "#888888"}


def apply_theme(fig, colors: dict[str, str], recolor_texts: bool = False) -> None:
    """Paint a matplotlib Figure with the viewer's theme (axes, ticks, labels, colorbars)."""
    fig.patch.set_facecolor(colors["background"])
    for ax in fig.axes:
        ax.set_facecolor(colors["background"])
        ax.tick_params(colors=colors["text"], which="both")
        for sp in ax.spines.values():
            sp.set_color(colors["foreground"])
        ax.xaxis.label.set_color(colors["text"])
        ax.yaxis.label.set_color(colors["text"])
        ax.title.set_color(colors["text"])
        if recolor_texts:
            for t in ax.texts:
                t.set_color(colors["text"])


# ----------------------------------------------------------------------- widget --
class Agg2ExpWidget(QWidget):
    """Dock widget: Agg2Exp heatmap + graph; click a cell to see the evidence as a layer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # on the GUI thread, before any worker thread has its own malloc arena
        tune_allocator()
        self.viewer = napari_viewer
        self.cache = ModelCache()
        self.runner = JobRunner()
        self.result = None
        self.maps: dict[str, Any] = {}
        self._maps_image: str | None = None
        self._run_info: dict[str, Any] = {}
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._pending_cell: tuple[int, int] | None = None
        from ..explainers.base import get_spec, methods

        self._get_spec = get_spec
        self._methods = [m for m in methods() if m != "pdcr"] + (["pdcr"] if "pdcr" in methods() else [])
        self._build_ui()
        compact_all(self)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.events.theme.connect(self._on_theme)
        self.viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        self._refresh_images()
        self._on_method_changed()
        self.draw()

    # ------------------------------------------------------------------ UI --
    def _build_ui(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        lay = QVBoxLayout(self)
        src = QGroupBox("Images")
        sf = QVBoxLayout(src)
        self.use_current = QRadioButton("current image layer")
        self.use_files = QRadioButton("files (global view)")
        self.use_current.setChecked(True)
        grp = QButtonGroup(self)
        grp.addButton(self.use_current)
        grp.addButton(self.use_files)
        row = QHBoxLayout()
        row.addWidget(self.use_current)
        self.image_combo = QComboBox()
        self.image_combo.setObjectName("agg_image_combo")
        row.addWidget(self.image_combo, 1)
        sf.addLayout(row)
        sf.addWidget(self.use_files)
        self.file_list = QListWidget()
        self.file_list.setObjectName("agg_file_list")
        self.file_list.setMaximumHeight(70)
        sf.addWidget(self.file_list)
        frow = QHBoxLayout()
        self.add_files_button = QPushButton("Add files…")
        self.clear_files_button = QPushButton("Clear")
        frow.addWidget(self.add_files_button)
        frow.addWidget(self.clear_files_button)
        sf.addLayout(frow)
        lay.addWidget(src)

        mbox = QGroupBox("Model and method")
        mf = QFormLayout(mbox)
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("agg_model_combo")
        self._fill_models()
        mf.addRow("model", self.model_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        mf.addRow("device", self.device_combo)
        self.method_combo = QComboBox()
        self.method_combo.setObjectName("agg_method_combo")
        self.method_combo.addItems(self._methods)
        self.method_combo.setCurrentText("smoothgrad" if "smoothgrad" in self._methods else self._methods[0])
        mf.addRow("method", self.method_combo)
        self.params = ParamForm()
        mf.addRow(self.params)
        lay.addWidget(mbox)

        self.run_button = QPushButton("Run Agg2Exp")
        self.run_button.setObjectName("agg_run_button")
        self.run_button.setMinimumHeight(30)
        lay.addWidget(self.run_button)

        vrow = QHBoxLayout()
        self.scope_combo = QComboBox()
        self.scope_combo.setObjectName("agg_scope_combo")
        self.scope_combo.setToolTip("global = mean over the images; or one image's local matrix")
        self.kind_combo = QComboBox()
        for k, label in KINDS.items():
            self.kind_combo.addItem(label, k)
        self.topk = QSpinBox()
        self.topk.setRange(1, 20)
        self.topk.setValue(3)
        self.topk.setToolTip("graph: strongest incoming regions per class")
        vrow.addWidget(QLabel("view"))
        vrow.addWidget(self.scope_combo, 1)
        vrow.addWidget(self.kind_combo, 1)
        lay.addLayout(vrow)
        krow = QHBoxLayout()  # its own row, so the dock stays narrow enough for the canvas
        krow.addWidget(QLabel("graph: top-k incoming edges per class"))
        krow.addWidget(self.topk)
        krow.addStretch(1)
        lay.addLayout(krow)

        self.tabs = QTabWidget()
        self.heat_fig = Figure(figsize=(5, 4.5), layout="constrained")
        self.heat_canvas = FigureCanvasQTAgg(self.heat_fig)
        self.heat_canvas.setMinimumHeight(340)
        self.graph_fig = Figure(figsize=(5, 4.5), layout="constrained")
        self.graph_canvas = FigureCanvasQTAgg(self.graph_fig)
        self.graph_canvas.setMinimumHeight(340)
        self.tabs.addTab(self.heat_canvas, "Heatmap")
        self.tabs.addTab(self.graph_canvas, "Graph")
        lay.addWidget(self.tabs, 1)

        erow = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV…")
        self.png_button = QPushButton("Export PNG…")
        erow.addWidget(self.csv_button)
        erow.addWidget(self.png_button)
        lay.addLayout(erow)
        self.status = QLabel("Click a heatmap cell (class a, region b) to see a's evidence inside b.")
        self.status.setWordWrap(True)
        self.status.setObjectName("agg_status")
        lay.addWidget(self.status)

        self.use_files.toggled.connect(self._show_files)
        self._show_files(False)
        self.add_files_button.clicked.connect(self._add_files)
        self.clear_files_button.clicked.connect(self.file_list.clear)
        self.model_combo.activated.connect(self._on_model_activated)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.scope_combo.currentIndexChanged.connect(lambda _i: self.draw())
        self.kind_combo.currentIndexChanged.connect(lambda _i: self.draw())
        self.topk.valueChanged.connect(lambda _v: self.draw())
        self.csv_button.clicked.connect(lambda: self.export_csv())
        self.png_button.clicked.connect(lambda: self.export_png())
        self.heat_canvas.mpl_connect("button_press_event", self._on_click)

    def _show_files(self, on: bool) -> None:
        for w in (self.file_list, self.add_files_button, self.clear_files_button):
            w.setVisible(bool(on))

    def _fit_fonts(self, fig, ax, n_rows: int, n_cols: int) -> None:
        """Tick labels small enough that every class name fits the canvas."""
        h_px = max(self.heat_canvas.height(), 200)
        w_px = max(self.heat_canvas.width(), 200)
        pt_per_px = 72.0 / fig.dpi
        size_y = 0.55 * h_px / max(n_rows, 1) * pt_per_px
        size_x = 0.6 * w_px / max(n_cols, 1) * pt_per_px
        size = float(np.clip(min(size_x, size_y), 5.0, 9.0))
        ax.tick_params(labelsize=size)
        ax.xaxis.label.set_size(size + 1)
        ax.yaxis.label.set_size(size + 1)
        ax.title.set_size(size + 2)
        for cax in fig.axes[1:]:
            cax.tick_params(labelsize=size)
            cax.yaxis.label.set_size(size + 1)

    def _fill_models(self, select: str | None = None) -> None:
        self.model_combo.clear()
        for label, path in sample_models():
            self.model_combo.addItem(label, path)
        rec = settings().value("recent_models", []) or []
        for p in ([rec] if isinstance(rec, str) else rec):
            if self.model_combo.findData(str(p)) < 0 and Path(str(p)).exists():
                self.model_combo.addItem(Path(str(p)).name, str(p))
        self.model_combo.addItem("Bundle folder…", BROWSE_DIR)
        self.model_combo.addItem("Model file (.ts/.pt/.pt2)…", BROWSE_FILE)
        if select and self.model_combo.findData(select) >= 0:
            self.model_combo.setCurrentIndex(self.model_combo.findData(select))

    def select_model(self, path: str) -> None:
        path = str(path)
        if self.model_combo.findData(path) < 0:
            self.model_combo.insertItem(max(0, self.model_combo.count() - 2), Path(path).name, path)
        self.model_combo.setCurrentIndex(self.model_combo.findData(path))

    def _on_model_activated(self, _i=None) -> None:
        data = self.model_combo.currentData()
        if data == BROWSE_DIR:
            path = QFileDialog.getExistingDirectory(self, "MONAI bundle folder", str(Path.home()))
        elif data == BROWSE_FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Model file", str(Path.home()),
                                                  "Models (*.ts *.pt *.pth *.jit *.pt2);;All files (*)")
        else:
            return
        if path:
            self.select_model(path)
        else:
            self.model_combo.setCurrentIndex(0)

    def _on_method_changed(self, _i=None) -> None:
        m = self.method_combo.currentText()
        if m:
            self.params.set_method(m, self._get_spec(m).defaults)

    def _refresh_images(self, event=None) -> None:
        from napari.layers import Image

        names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image) and not is_result_layer(ly)]
        cur = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if cur in names:
            self.image_combo.setCurrentText(cur)
        elif names:
            self.image_combo.setCurrentIndex(0)
        self.image_combo.blockSignals(False)
        if names and not self.model_combo.currentData() in (None, BROWSE_DIR, BROWSE_FILE):
            self._match_sample_model()

    def _match_sample_model(self) -> None:
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return
        sd = spatial_dims_of(self.viewer.layers[name])
        cur = self.model_combo.currentData()
        samples = sample_models()
        if cur in [p for _l, p in samples]:
            for lbl, p in samples:
                if f"{sd}D" in lbl:
                    self.model_combo.setCurrentIndex(self.model_combo.findData(p))
                    break

    def _add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Images for the global view", str(Path.home()),
            "Images (*.nii *.nii.gz *.mha *.mhd *.nrrd *.tif *.tiff *.png);;All files (*)")
        for f in files:
            self.file_list.addItem(f)
        if files:
            self.use_files.setChecked(True)

    def add_files(self, files) -> None:
        """Add image files for the global view (scripts, tests)."""
        for f in files:
            self.file_list.addItem(str(f))
        self.use_files.setChecked(True)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API: refit the fonts
        super().resizeEvent(event)
        if self.result is not None:
            self.draw()

    # ---------------------------------------------------------------- run --
    @property
    def running(self) -> bool:
        return self.runner.running

    def _on_run_clicked(self) -> None:
        if self.runner.running:
            self.status.setText("Cancelling …")
            self.runner.cancel()
            return
        path = self.model_combo.currentData()
        if not path or path in (BROWSE_DIR, BROWSE_FILE):
            notify_error("Choose a model for Agg2Exp")
            return
        method = self.method_combo.currentText()
        params = {k: v for k, v in self.params.values().items()}
        if self.use_files.isChecked():
            images = [self.file_list.item(i).text() for i in range(self.file_list.count())]
            if not images:
                notify_error("Add image files for the global view (or use the current image layer)")
                return
            names = None
            keep = False
            self._maps_image = None
        else:
            name = self.image_combo.currentText()
            if not name or name not in self.viewer.layers:
                notify_error("Choose an image layer for Agg2Exp")
                return
            try:
                images = [image_from_layer(self.viewer.layers[name])]
            except Exception as exc:  # noqa: BLE001
                notify_error(str(exc))
                return
            names = [name]
            keep = True
            self._maps_image = name
        if names is None:
            names = [Path(p).name.split(".")[0] for p in images]
        self._run_info = {"model": str(path), "device": self.device_combo.currentText(), "method": method,
                          "params": params}
        self.maps = {}
        self.status.setText(f"Agg2Exp ({method}) on {len(images)} image(s) …")
        self.runner.start(agg_job, self.cache, str(path), self.device_combo.currentText(), images, names,
                          method, params, keep, desc=f"Agg2Exp ({method})", on_message=self._on_message,
                          on_result=self._on_result, on_failure=self._on_failure,
                          on_cancelled=lambda: self.status.setText("Cancelled."), on_idle=self._update_buttons)
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.runner.running
        self.run_button.setText("Cancel" if running else "Run Agg2Exp")
        for w in (self.model_combo, self.device_combo, self.method_combo, self.params, self.image_combo,
                  self.add_files_button, self.clear_files_button, self.use_current, self.use_files):
            w.setEnabled(not running)

    def _on_message(self, msg) -> None:
        if isinstance(msg, tuple) and msg[0] == "status":
            self.status.setText(str(msg[1]))

    def _on_failure(self, failure) -> None:
        self.status.setText(f"Failed: {failure.message}")
        notify_error(f"Agg2Exp failed: {failure.message}")

    def _on_result(self, value) -> None:
        res, maps = value
        self.result = res
        self.maps = maps
        self.scope_combo.blockSignals(True)
        self.scope_combo.clear()
        self.scope_combo.addItem("global (mean over images)" if res.n_images > 1 else "global", None)
        for i, n in enumerate(res.image_names):
            self.scope_combo.addItem(f"image: {n}", i)
        self.scope_combo.blockSignals(False)
        self.status.setText(res.summary() + ". Click a heatmap cell to show that evidence as a layer.")
        if res.skipped:
            notify_info(res.summary())
        self.draw()

    # --------------------------------------------------------------- plots --
    def current_matrix(self):
        res = self.result
        if res is None:
            return None
        return res.matrix(self.scope_combo.currentData(), kind=self.kind_combo.currentData() or "mass")

    def draw(self) -> None:
        """(Re)draw the heatmap and the graph with the viewer's theme."""
        from ..plots import plot_graph, plot_heatmap

        colors = theme_colors(self.viewer)
        self.heat_fig.clear()
        self.graph_fig.clear()
        m = self.current_matrix()
        if m is None:
            for fig in (self.heat_fig, self.graph_fig):
                ax = fig.add_subplot(111)
                ax.set_axis_off()
                ax.text(0.5, 0.5, "Run Agg2Exp to see which regions\nthe model uses for each class",
                        ha="center", va="center", transform=ax.transAxes)
                apply_theme(fig, colors, recolor_texts=True)
        else:
            res = self.result
            rows = [i for i in range(m.shape[0]) if not np.isnan(m[i]).all()]
            self._rows, self._cols = rows, list(range(m.shape[1]))
            title = f"{res.method}: {self.kind_combo.currentText()}"
            ax = self.heat_fig.add_subplot(111)
            plot_heatmap(m[rows], [res.row_names[i] for i in rows], res.col_names, ax=ax, title=title,
                         annotate=len(rows) * m.shape[1] <= 100, fmt="{:.2f}")
            self._fit_fonts(self.heat_fig, ax, len(rows), m.shape[1])
            apply_theme(self.heat_fig, colors)
            for cax in self.heat_fig.axes[1:]:  # colorbar
                cax.yaxis.label.set_color(colors["text"])
            gax = self.graph_fig.add_subplot(111)
            excl = ["background"] if "background" in res.row_names else []
            try:
                plot_graph(m, res.row_names, res.col_names, top_k=int(self.topk.value()), ax=gax,
                           title=f"top-{self.topk.value()} regions per class", exclude=excl)
            except TypeError:  # older plots without exclude=
                plot_graph(m, res.row_names, res.col_names, top_k=int(self.topk.value()), ax=gax,
                           title=f"top-{self.topk.value()} regions per class")
            apply_theme(self.graph_fig, colors, recolor_texts=True)
        self.heat_canvas.draw_idle()
        self.graph_canvas.draw_idle()

    def _on_theme(self, event=None) -> None:
        self.draw()

    def _on_ndisplay(self, event=None) -> None:
        from .layers import sync_attribution_colormaps

        sync_attribution_colormaps(self.viewer)

    # --------------------------------------------------------------- click --
    def _on_click(self, event) -> None:
        if self.result is None or event.inaxes is None or event.inaxes is not self.heat_fig.axes[0]:
            return
        if event.xdata is None or event.ydata is None:
            return
        r, c = int(round(event.ydata)), int(round(event.xdata))
        if not (0 <= r < len(self._rows) and 0 <= c < len(self._cols)):
            return
        self.show_cell(self._rows[r], self._cols[c])

    def show_cell(self, a: int, b: int):
        """Add class ``a``'s attribution masked to region ``b`` as a layer (computing it
        for the current image if the last run did not keep it)."""
        res = self.result
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            notify_error("Choose the image layer the evidence should be shown on")
            return None
        if self.maps and self._maps_image == name and a in self.maps.get("attributions", {}):
            return self._add_cell_layer(a, b, self.maps)
        if self.runner.running:
            notify_error("Wait for the running Agg2Exp to finish")
            return None
        info = self._run_info
        try:
            image = image_from_layer(self.viewer.layers[name])
        except Exception as exc:  # noqa: BLE001
            notify_error(str(exc))
            return None
        self._pending_cell = (a, b)
        self.status.setText(f"Explaining {res.row_names[a]} on {name} …")

        def done(maps, a=a, b=b, name=name):
            self.maps, self._maps_image = maps, name
            self._add_cell_layer(a, b, maps)

        self.runner.start(cell_job, self.cache, info["model"], info["device"], image, info["method"],
                          info["params"], a, desc=f"{info['method']}: {res.row_names[a]}",
                          on_result=done, on_failure=self._on_failure, on_idle=self._update_buttons)
        self._update_buttons()
        return None

    def _add_cell_layer(self, a: int, b: int, maps: dict[str, Any]):
        res = self.result
        img = self.viewer.layers[self._maps_image]
        attr = maps["attributions"][a]
        labels = maps["labels"]
        n_classes = len(res.row_names)
        if b < n_classes:
            region = labels == b
        else:
            notify_error("Extra RoI columns cannot be shown as a layer here")
            return None
        masked = np.where(region, attr, 0).astype(np.float32)
        lim, mx = symmetric_limits(masked if region.any() else attr)
        sd = spatial_dims_of(img)
        method = self._run_info.get("method", res.method)
        val = res.matrix(self.scope_combo.currentData(), kind="mass")[a, b]
        md = {META_KEY: {"kind": "attribution", "method": method, "target": res.row_names[a], "target_index": a,
                         "region": res.col_names[b], "region_index": b, "agg2exp_mass": float(val),
                         "image": self._maps_image, "model": self._run_info.get("model"),
                         "params": scalar_items(self._run_info.get("params", {})), "limit": lim, "max_abs": mx,
                         "source": "agg2exp"}}
        if isinstance(img.metadata, dict) and GEOMETRY_KEY in img.metadata:
            md[GEOMETRY_KEY] = img.metadata[GEOMETRY_KEY]
        layer = self.viewer.add_image(
            masked, name=f"agg2exp · {method} · {res.row_names[a]} in {res.col_names[b]}",
            scale=tuple(img.scale)[-sd:], translate=tuple(img.translate)[-sd:], metadata=md,
            colormap=attribution_colormap(volume=self.viewer.dims.ndisplay == 3), contrast_limits=(-lim, lim),
            blending="translucent",
            rendering="translucent")
        self.status.setText(f"{res.row_names[a]} ← {res.col_names[b]}: {100 * val:.1f}% of the |evidence| "
                            f"({int(region.sum())} voxels)")
        return layer

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
        out = [self.result.to_csv(p)]
        g = p.with_name(p.stem.replace("local", "global") if "local" in p.stem else p.stem + "_global").with_suffix(".csv")
        out.append(self.result.global_to_csv(g))
        self.status.setText("Wrote " + ", ".join(str(o) for o in out))
        return out

    def export_png(self, path: str | None = None) -> list[Path]:
        """Save the heatmap and the graph (``<name>.png`` and ``<name>_graph.png``)."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export Agg2Exp figures", "agg2exp_heatmap.png",
                                                  "PNG (*.png)")
            if not path:
                return []
        p = Path(path)
        g = p.with_name(p.stem + "_graph.png")
        self.heat_fig.savefig(p, dpi=150, facecolor=self.heat_fig.get_facecolor())
        self.graph_fig.savefig(g, dpi=150, facecolor=self.graph_fig.get_facecolor())
        self.status.setText(f"Wrote {p} and {g}")
        return [p, g]
