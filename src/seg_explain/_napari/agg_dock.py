"""The Agg2Exp dock: class-to-region importance of the current image or a list of files.

Runs :class:`seg_explain.aggregate.Agg2ExpRun` in a worker (progress bar with the stage,
"image i/n" and an ETA inside the dock; the Run button becomes Cancel) and draws the
heatmap and the importance graph (:mod:`seg_explain.plots`) on matplotlib canvases in the
viewer's theme; with several files, the heatmap fills in as images finish. Hovering a
heatmap cell names it in full; clicking it (explained class a, region b) adds class a's
attribution masked to region b as a layer (from the maps the run kept for the current
image, or one explanation of class a, which carries its own prediction). The tables (CSV)
and the figures (PNG / SVG / PDF, optionally in a light theme for papers) can be exported.

Everything about a method comes from the registry (title, question, cost class,
multi-class sharing, parameters, sign convention): no method is named here.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..frontend.agg2exp import (
    agg_job,
    cell_job,
    cell_layer,
    cell_status,
    default_method,
    method_order,
    method_tooltip,
    run_key,
)
from ..frontend.messages import cost_lines, cost_unknown, method_unavailable, one_line
from .agg_plots import PlotsMixin
from .layers import (
    GEOMETRY_KEY,
    META_KEY,
    attribution_colormap,
    image_from_layer,
    is_result_layer,
    model_grid_shape,
    spatial_dims_of,
)
from .model_picker import settings
from .params import ParamForm, compact_all
from .stage import ResultStage
from .ui import ClosingDock, notify_error, notify_info
from .workers import show_progress

log = logging.getLogger(__name__)

DOCK_WIDTH = 400          # px: what the dock asks for (canvas included)
PARTIAL_DRAW_S = 1.0      # while running, redraw partial results at most once a second


# ----------------------------------------------------------------------- widget --
class Agg2ExpWidget(PlotsMixin, ClosingDock, QWidget):
    """Dock widget: Agg2Exp heatmap + graph; click a cell to see the evidence as a layer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.start_jobs(napari_viewer)   # viewer, runner, picker, cache (see ClosingDock)
        self.settings = settings()
        self.result = None                     # the result shown (partial while a run goes on)
        self._previous = None                  # the result before the running job (cancel = back)
        self.maps: dict[str, Any] = {}         # image, key, labels, attributions {class: map}
        self._run_info: dict[str, Any] = {}    # model, device, method, params, key of self.result
        self._pending: dict[str, Any] = {}     # the same for the run in progress
        self._previous_info: dict[str, Any] = {}
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._stale = {"heat": True, "graph": True}
        self._last_partial_draw = 0.0
        self.timings: dict[str, float] = {}
        self._model_chosen = False
        self._closed = False
        from ..explainers.registry import specs

        self._specs = {s.name: s for s in specs()}
        self._build_ui()
        compact_all(self)
        self._connect()
        self._refresh_images()
        img = self.image_layer()
        if img is not None:
            self._choose_model(spatial_dims_of(img))
        self._on_method_changed()
        self.draw()

    # ------------------------------------------------------------------ UI --
    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        src = QGroupBox("Images")
        sf = QVBoxLayout(src)
        sf.setContentsMargins(6, 4, 6, 4)
        self.use_current = QRadioButton("layer")
        self.use_current.setToolTip("explain every predicted class of this image layer")
        self.use_files = QRadioButton("files (global view)")
        self.use_files.setToolTip("explain image files one at a time (loaded in the worker) and average "
                                  "their matrices; the heatmap fills in as images finish")
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
        frow = QHBoxLayout()
        frow.addWidget(self.use_files, 1)
        self.add_files_button = QPushButton("Add…")
        self.add_files_button.setToolTip("add image files (NIfTI, MHA, NRRD, TIFF, PNG)")
        self.clear_files_button = QPushButton("Clear")
        frow.addWidget(self.add_files_button)
        frow.addWidget(self.clear_files_button)
        sf.addLayout(frow)
        self.file_list = QListWidget()
        self.file_list.setObjectName("agg_file_list")
        self.file_list.setMaximumHeight(64)
        sf.addWidget(self.file_list)
        lay.addWidget(src)

        mbox = QGroupBox("Model and method")
        mf = QFormLayout(mbox)
        mf.setContentsMargins(6, 4, 6, 4)
        mf.addRow("model", self.picker)
        self.model_combo, self.device_combo = self.picker.combo, self.picker.device
        mrow = QHBoxLayout()
        self.method_combo = QComboBox()
        self.method_combo.setObjectName("agg_method_combo")
        self.defaults_button = QToolButton()
        self.defaults_button.setText("↺")
        self.defaults_button.setToolTip("restore this method's default parameters")
        mrow.addWidget(self.method_combo, 1)
        mrow.addWidget(self.defaults_button)
        mf.addRow("method", mrow)
        self.params = ParamForm()
        mf.addRow(self.params)
        lay.addWidget(mbox)

        self.cost = QLabel("")
        self.cost.setObjectName("agg_cost_label")
        self.cost.setWordWrap(True)
        self.cost.setStyleSheet("color: gray; font-size: 10px;")
        lay.addWidget(self.cost)
        self.cost_warning = QLabel("")
        self.cost_warning.setObjectName("agg_cost_warning")
        self.cost_warning.setWordWrap(True)
        lay.addWidget(self.cost_warning)
        self.run_button = QPushButton("Run Agg2Exp")
        self.run_button.setObjectName("agg_run_button")
        self.run_button.setMinimumHeight(30)
        lay.addWidget(self.run_button)
        self.progress = QProgressBar()
        self.progress.setObjectName("agg_progress")
        self.progress.setTextVisible(True)
        self.progress.setMaximumHeight(16)
        self.progress.hide()
        lay.addWidget(self.progress)
        self.stage = QLabel("")
        self.stage.setObjectName("agg_stage")
        self.stage.setWordWrap(True)
        self.stage.setStyleSheet("color: gray; font-size: 10px;")
        self.stage.hide()
        lay.addWidget(self.stage)
        self._build_plots(lay)
        self.status = QLabel("Run Agg2Exp, then hover a heatmap cell to name it and click it to show "
                             "class a's evidence inside region b as a layer.")
        self.status.setWordWrap(True)
        self.status.setObjectName("agg_status")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.status)

        self._draw_timer = QTimer(self)
        self._draw_timer.setSingleShot(True)
        self._draw_timer.timeout.connect(self.draw)
        self._show_files(False)

    def sizeHint(self):  # noqa: N802 - Qt API: a narrow dock that leaves room for the canvas
        s = super().sizeHint()
        s.setWidth(min(s.width(), DOCK_WIDTH))
        return s

    def _connect(self) -> None:
        self.use_files.toggled.connect(self._show_files)
        self.use_files.toggled.connect(lambda _on: self.update_cost())
        self.image_combo.currentIndexChanged.connect(lambda _i: self.update_cost())
        self.add_files_button.clicked.connect(self._add_files)
        self.clear_files_button.clicked.connect(self.file_list.clear)
        self.picker.loaded.connect(self._on_model_loaded)
        self.picker.status.connect(lambda t: self.status.setText(t) if not self.runner.running else None)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.defaults_button.clicked.connect(self.params.restore_defaults)
        self.run_button.clicked.connect(self._on_run_clicked)
        self._connect_plots()
        ev = self.viewer.layers.events
        self.result_stage = ResultStage(self.viewer)    # one result, one colour bar, labels hidden
        self._viewer_hooks = [(ev.inserted, self._refresh_images), (ev.removed, self._refresh_images),
                              (ev.removed, lambda _e=None: self.result_stage.release()),
                              (self.viewer.layers.selection.events.active,
                               lambda _e=None: self.result_stage.select(self.viewer.layers.selection.active)),
                              (self.viewer.events.theme, self._on_theme),
                              (self.viewer.dims.events.ndisplay, self._on_ndisplay)]
        for emitter, cb in self._viewer_hooks:
            emitter.connect(cb)

    def _show_files(self, on: bool) -> None:
        self.file_list.setVisible(bool(on))

    # ------------------------------------------------------------- methods --
    def _fill_methods(self) -> None:
        """Registry entries, natural Agg2Exp choices first: methods that explain every class
        from shared passes, then by cost; the cost class is in the item text."""
        specs = method_order(self._specs.values())
        cur = self.method_combo.currentData()
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        for s in specs:
            self.method_combo.addItem(f"{s.title} · {s.cost_class}", s.name)
            self.method_combo.setItemData(self.method_combo.count() - 1, method_tooltip(s),
                                          Qt.ItemDataRole.ToolTipRole)
        want = cur or self.settings.value("agg_method", None)
        names = [s.name for s in specs]
        i = self.method_combo.findData(want if want in names else default_method(names))
        self.method_combo.setCurrentIndex(max(i, 0))
        self.method_combo.blockSignals(False)
        self._update_method_availability()

    def _update_method_availability(self) -> None:
        """Grey out what the loaded model cannot do (dimensionality, hookable layers)."""
        info = self.picker.info
        model = self.method_combo.model()
        for i in range(self.method_combo.count()):
            why = method_unavailable(self._specs[self.method_combo.itemData(i)], info)
            item = model.item(i) if hasattr(model, "item") else None
            if item is not None:
                item.setEnabled(not why)
                if why:
                    item.setToolTip(why)

    @property
    def method(self) -> str:
        return str(self.method_combo.currentData())

    def set_method(self, name: str) -> None:
        """Choose a method by its registry name (scripts, tests)."""
        i = self.method_combo.findData(name)
        if i < 0:
            raise ValueError(f"unknown method {name!r}")
        self.method_combo.setCurrentIndex(i)

    def _spatial_dims(self) -> int:
        if self.picker.info is not None:
            return int(self.picker.info["spatial_dims"])
        img = self.image_layer()
        return spatial_dims_of(img) if img is not None else 2

    def _on_method_changed(self, _i=None) -> None:
        if self.method_combo.count() == 0:
            self._fill_methods()
        name = self.method_combo.currentData()
        if not name:
            return
        spec = self._specs[name]
        info = self.picker.info or {}
        self.params.set_method(spec, self._spatial_dims(), layer_choices=info.get("layers", []))
        for w in self.params.editors.values():
            for sig in ("valueChanged", "currentTextChanged", "textChanged", "toggled"):
                if hasattr(w, sig):
                    getattr(w, sig).connect(lambda *_a: self.update_cost())
        compact_all(self.params)
        self.update_cost()
        self.method_combo.setToolTip(self.method_combo.itemData(self.method_combo.currentIndex(),
                                                                Qt.ItemDataRole.ToolTipRole) or "")
        self.settings.setValue("agg_method", name)

    # --------------------------------------------------------------- model --
    def _choose_model(self, spatial_dims: int | None) -> None:
        if not self._model_chosen:
            self._model_chosen = True
            self.picker.select_for_dims(spatial_dims)

    def select_model(self, path) -> None:
        """Pick (and load) a model by path (scripts, tests)."""
        self._model_chosen = True
        self.picker.select(str(path))

    def _on_model_loaded(self, info: dict) -> None:
        self._update_method_availability()
        self._on_method_changed()
        self.update_cost()

    # -------------------------------------------------------------- images --
    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _refresh_images(self, event=None) -> None:
        from napari.layers import Image

        if self._closed:
            return
        names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image) and not is_result_layer(ly)]
        cur = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if cur in names:
            self.image_combo.setCurrentText(cur)
        self.image_combo.blockSignals(False)
        img = self.image_layer()
        if img is not None:
            self._choose_model(spatial_dims_of(img))
        self.update_cost()

    def update_cost(self) -> None:
        """The estimate before running (on the chosen image layer; the file list's images are
        taken to be of its size): passes, seconds on this machine, a warning when long."""
        from ..explainers.cost import estimate_agg2exp

        if not hasattr(self, "cost"):
            return
        self.cost.setText("")
        self.cost_warning.setText("")
        info, img, name, path = self.picker.info, self.image_layer(), self.method_combo.currentData(), self.picker.path
        model = self.cache.cached(str(path), self.picker.device_name) if info and path else None
        shape = model_grid_shape(img, info)
        if model is None or shape is None or not name:
            return
        try:
            params = self.params.values()
        except Exception as exc:  # noqa: BLE001 - a half-typed value: say it, no estimate
            self.cost.setText(cost_unknown(exc))
            return
        n = self.file_list.count() if self.use_files.isChecked() else 1
        est = estimate_agg2exp(model, name, params, shape, len(info["class_names"]) - 1, max(n, 1))
        line, warning = cost_lines(est)
        self.cost.setText(line)
        self.cost_warning.setText(warning)

    def _add_files(self) -> None:
        start = self.settings.value("agg_files_dir", str(Path.home()))
        files, _ = QFileDialog.getOpenFileNames(
            self, "Images for the global view", str(start),
            "Images (*.nii *.nii.gz *.mha *.mhd *.nrrd *.tif *.tiff *.png);;All files (*)")
        if files:
            self.settings.setValue("agg_files_dir", str(Path(files[0]).parent))
            self.add_files(files)

    def add_files(self, files) -> None:
        """Add image files for the global view (scripts, tests)."""
        for f in files:
            self.file_list.addItem(str(f))
        self.use_files.setChecked(True)

    # ---------------------------------------------------------------- run --
    @property
    def running(self) -> bool:
        return self.runner.running

    def _on_run_clicked(self) -> None:
        if self.runner.running:
            self.stage.setText("Cancelling …")
            self.runner.cancel()
            return
        self.run()

    def run(self) -> bool:
        """Start Agg2Exp with the dock's settings; False (and a message) if something is missing."""
        from ..errors import SegExplainError

        path = self.picker.path
        if not path:
            notify_error("Choose a model for Agg2Exp")
            return False
        method = self.method
        spec = self._specs[method]
        try:
            params = self.params.values()
        except (SegExplainError, ValueError) as exc:
            notify_error(one_line(exc))
            return False
        info = self.picker.info
        if self.use_files.isChecked():
            images = [self.file_list.item(i).text() for i in range(self.file_list.count())]
            if not images:
                notify_error("Add image files for the global view (or use an image layer)")
                return False
            names, keep, image_name = None, False, None
        else:
            img = self.image_layer()
            if img is None:
                notify_error("Choose an image layer for Agg2Exp")
                return False
            sd = spatial_dims_of(img)
            if info is not None and int(info["spatial_dims"]) != sd:
                notify_error(f"The model is {info['spatial_dims']}D and the image {sd}D: choose a "
                             f"{sd}D model")
                return False
            try:
                images = [image_from_layer(img)]
            except Exception as exc:  # noqa: BLE001 - one line for the user
                notify_error(one_line(exc))
                return False
            names, keep, image_name = [img.name], True, img.name
        device = self.picker.device_name
        key = run_key(path, device, method, params)
        self._pending = {"model": str(path), "device": device, "method": method, "params": params,
                         "key": key, "image": image_name, "n": len(images)}
        self._previous, self._previous_info = self.result, dict(self._run_info)
        self._start(agg_job, self.cache, str(path), device, images, names, method, params, keep,
                    desc=f"Agg2Exp ({spec.title})", on_result=self._on_result,
                    on_cancelled=self._on_run_cancelled,
                    text=f"Agg2Exp ({spec.title}) on {len(images)} image(s) …")
        return True

    def _start(self, job, *args, desc: str, on_result, on_cancelled, text: str) -> None:
        self.stage.setText(text)
        self.stage.show()
        self.progress.setRange(0, 0)         # busy until the first event
        self.progress.show()
        self.runner.start(job, *args, desc=desc, on_message=self._on_message, on_result=on_result,
                          on_failure=self._on_failure, on_cancelled=on_cancelled, on_idle=self._on_idle)
        self._update_buttons()

    def _on_idle(self) -> None:
        if self._closed:
            return
        self.progress.hide()
        self.stage.hide()
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.runner.running
        self.run_button.setText("Cancel" if running else "Run Agg2Exp")
        for w in (self.picker, self.method_combo, self.defaults_button, self.params, self.image_combo,
                  self.add_files_button, self.clear_files_button, self.use_current, self.use_files):
            w.setEnabled(not running)

    def _on_message(self, msg) -> None:
        if show_progress(msg, self.progress, self.stage):
            return
        if isinstance(msg, tuple) and len(msg) == 3 and msg[0] == "partial":
            self._show_result(msg[2], partial=True)

    def _on_failure(self, failure) -> None:
        self.status.setText(f"Failed: {failure.message}")
        notify_error(f"Agg2Exp failed: {failure.message}")
        if self._previous is not None and self.result is not self._previous:
            self._show_result(self._previous, info=self._previous_info)

    def _on_run_cancelled(self) -> None:
        part = self.result if self.result is not self._previous else None
        if part is not None and part.n_images:
            n = self._pending.get("n", part.n_images)
            self._show_result(part)
            self.status.setText(f"Cancelled after {part.n_images} of {n} image(s): showing those.")
        else:
            if self._previous is not None:
                self._show_result(self._previous, info=self._previous_info)
            self.status.setText("Cancelled." + (" Showing the previous result." if self._previous is not None
                                                else ""))

    def _on_result(self, value) -> None:
        res, maps = value
        self._show_result(res)
        self.maps = {**maps, "key": self._pending["key"]} if maps else {}
        self.status.setText(res.summary() + ". Click a heatmap cell: that evidence as a layer.")
        if res.skipped:
            notify_info(res.summary())

    def _show_result(self, res, partial: bool = False, info: dict | None = None) -> None:
        """Show ``res`` (a partial one while running: redrawn at most once a second)."""
        self.result = res
        self._run_info = dict(info if info is not None else self._pending)
        sel = self.scope_combo.currentData()
        self.scope_combo.blockSignals(True)
        self.scope_combo.clear()
        n = res.n_images
        self.scope_combo.addItem(f"global (mean of {n} images)" if n > 1 else "global", None)
        for i, nm in enumerate(res.image_names):
            self.scope_combo.addItem(f"image: {nm}", i)
        if sel is not None and isinstance(sel, int) and sel < n:
            self.scope_combo.setCurrentIndex(sel + 1)
        self.scope_combo.blockSignals(False)
        if partial:
            self.status.setText(f"{n} of {self._pending.get('n', n)} image(s) done; the view shows them")
            now = time.perf_counter()
            if now - self._last_partial_draw < PARTIAL_DRAW_S:
                self._stale = {"heat": True, "graph": True}
                self.schedule_draw(int(1000 * PARTIAL_DRAW_S))
                return
            self._last_partial_draw = now
        self.redraw(now=not partial)

    def show_cell(self, a: int, b: int):
        """Add class ``a``'s attribution masked to region ``b`` as a layer on the current image
        layer; explains class ``a`` there first (in the worker) if the run did not keep it.
        Returns the layer, or None (computing, or nothing to show)."""
        res = self.result
        if res is None:
            return None
        if b >= res.n_classes:
            notify_error("Extra RoI columns cannot be shown as a layer here")
            return None
        img = self.image_layer()
        if img is None:
            notify_error("Choose the image layer the evidence should be shown on")
            return None
        info = self._run_info
        maps = self.maps
        if maps and maps.get("image") == img.name and maps.get("key") == info.get("key") \
                and a in maps.get("attributions", {}):
            return self._add_cell_layer(a, b, maps)
        if self.runner.running:
            notify_error("Wait for the running job to finish (or cancel it)")
            return None
        try:
            image = image_from_layer(img)
        except Exception as exc:  # noqa: BLE001
            notify_error(one_line(exc))
            return None
        spec = self._specs[info["method"]]

        def done(new, a=a, b=b):
            if maps.get("image") == new["image"] and maps.get("key") == info.get("key"):
                new["attributions"] = {**maps.get("attributions", {}), **new["attributions"]}
            self.maps = {**new, "key": info.get("key")}
            self._add_cell_layer(a, b, self.maps)

        self._start(cell_job, self.cache, info["model"], info["device"], image, img.name, info["method"],
                    info["params"], a, desc=f"{spec.title}: {res.row_names[a]}", on_result=done,
                    on_cancelled=lambda: self.status.setText("Cancelled: no layer added."),
                    text=f"Explaining {res.row_names[a]} on {img.name} ({spec.title}) …")
        return None

    def _add_cell_layer(self, a: int, b: int, maps: dict[str, Any]):
        res, info = self.result, self._run_info
        name = maps["image"]
        if name not in self.viewer.layers:
            notify_error(f"The image layer {name!r} is gone")
            return None
        img = self.viewer.layers[name]
        spec = self._specs[info["method"]]
        scope = self.scope_combo.currentData()
        cell = cell_layer(res, spec, info, maps, a, b, scope)
        md = {META_KEY: cell.info}
        if isinstance(img.metadata, dict) and GEOMETRY_KEY in img.metadata:
            md[GEOMETRY_KEY] = img.metadata[GEOMETRY_KEY]
        sd = spatial_dims_of(img)
        layer = self.viewer.add_image(
            cell.data, name=cell.name, scale=tuple(img.scale)[-sd:], translate=tuple(img.translate)[-sd:],
            metadata=md, colormap=attribution_colormap(reverse=cell.red_is_negative,
                                                       volume=self.viewer.dims.ndisplay == 3,
                                                       one_sided=cell.one_sided),
            contrast_limits=cell.limits, blending="translucent", rendering="translucent")
        layer.contrast_limits_range = cell.range
        layer.contrast_limits = cell.limits
        self.result_stage.present(layer)
        self.viewer.layers.selection.active = layer
        where = "global mean" if scope is None else self.scope_combo.currentText()
        self.status.setText(cell_status(res, cell, a, b, where))
        return layer

    def _on_ndisplay(self, event=None) -> None:
        from .layers import sync_attribution_colormaps

        sync_attribution_colormaps(self.viewer)

    # ------------------------------------------------------------- closing --
    def _shutdown_workers(self) -> None:
        """Stop and join every worker (the dock or the viewer is closing; see ClosingDock)."""
        self._draw_timer.stop()
        super()._shutdown_workers()


__all__ = ["Agg2ExpWidget"]
