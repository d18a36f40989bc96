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

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
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
    QSpinBox,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..frontend.reading import legend
from .layers import (
    GEOMETRY_KEY,
    META_KEY,
    attribution_colormap,
    attribution_limits,
    display_limits,
    image_from_layer,
    is_result_layer,
    model_grid_shape,
    spatial_dims_of,
)
from .model_picker import settings
from .params import ParamForm, compact_all
from .stage import ResultStage
from .ui import ClosingDock, notify_error, notify_info
from .workers import ModelCache, one_line, scalar_items, show_progress

log = logging.getLogger(__name__)

COST_ORDER = {"cheap": 0, "moderate": 1, "expensive": 2}
DOCK_WIDTH = 400          # px: what the dock asks for (canvas included)
FIGSIZE = (3.7, 3.9)      # inches at 100 dpi: the canvases' size hint, and the exported figures'
PARTIAL_DRAW_S = 1.0      # while running, redraw partial results at most once a second
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
    from ..errors import InputMismatchError
    from ..explainers.job import cancel_hooks
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
    with cancel_hooks(model, token):
        for ev in events(run.run_iter(), f"{title}", token):
            yield dataclasses.replace(ev, stage=f"{title} · {run.status}" if run.status else title)
            if finished:
                name = finished[-1]
                finished.clear()
                yield ("partial", name, run.result())
    res = run.result()
    if res.n_images == 0:
        raise InputMismatchError("No image could be explained: " + "; ".join(f"{n}: {m}" for n, m in res.skipped))
    return res, kept


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


# ------------------------------------------------------------------------ theme --
def theme_colors(viewer) -> dict[str, str]:
    """Background / text / foreground colours of the viewer's current theme."""
    try:
        from napari.utils.theme import get_theme

        th = get_theme(viewer.theme)
        return {"background": th.background.as_hex(), "text": th.text.as_hex(),
                "foreground": th.foreground.as_hex()}
    except Exception:  # noqa: BLE001 - a plain light look if the theme cannot be read
        return {"background": "#ffffff", "text": "#000000", "foreground": "#000000"}


def default_method(names: list[str]) -> str:
    """The core's Agg2Exp default (``Agg2ExpRun``'s ``method``), else the first name."""
    import inspect

    from ..dataset import Agg2ExpRun

    d = inspect.signature(Agg2ExpRun).parameters["method"].default
    return d if d in names else names[0]


# ----------------------------------------------------------------------- widget --
class Agg2ExpWidget(ClosingDock, QWidget):
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
        self.watch_closing(self.viewer)

    # ------------------------------------------------------------------ UI --
    def _build_ui(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

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
        specs = sorted(self._specs.values(),
                       key=lambda s: (not s.caps.multiclass, COST_ORDER.get(s.cost_class, 9), s.title.lower()))
        cur = self.method_combo.currentData()
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        for s in specs:
            self.method_combo.addItem(f"{s.title} · {s.cost_class}", s.name)
            share = ("explains every class from shared passes" if s.caps.multiclass
                     else "explains one class at a time (slower with many classes)")
            self.method_combo.setItemData(self.method_combo.count() - 1, f"{s.question}\n({share}; cost: "
                                          f"{s.cost_class})", Qt.ItemDataRole.ToolTipRole)
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
            spec = self._specs[self.method_combo.itemData(i)]
            why = ""
            if info is not None:
                if info["spatial_dims"] not in spec.caps.dims:
                    why = f"not for {info['spatial_dims']}D models"
                elif spec.caps.hooks and not info.get("hookable", True):
                    why = "needs a network whose layers can be hooked (not TorchScript / exported)"
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

    def wait_model(self, timeout_s: float = 60.0) -> bool:
        """Block (processing Qt events) until the model is loaded; for scripts and tests."""
        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        while self.picker.info is None and time.perf_counter() - t0 < timeout_s:
            QApplication.processEvents()
            time.sleep(0.01)
        return self.picker.info is not None

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
            self.cost.setText(f"Cost: — ({one_line(exc)})")
            return
        n = self.file_list.count() if self.use_files.isChecked() else 1
        est = estimate_agg2exp(model, name, params, shape, len(info["class_names"]) - 1, max(n, 1))
        self.cost.setText(f"Cost: {est.text}")
        if est.warning:
            self.cost_warning.setText(f"⚠ {est.warning}")

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
        key = (str(path), device, method, tuple(sorted((k, repr(v)) for k, v in params.items())))
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

    def _on_ndisplay(self, event=None) -> None:
        from .layers import sync_attribution_colormaps

        sync_attribution_colormaps(self.viewer)

    # --------------------------------------------------------------- click --
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
        from ..plots import KIND_TEXT

        a, b = cell
        res = self.result
        kind = self.kind_combo.currentData() or "mass"
        v = self.current_matrix()[a, b]
        info = KIND_TEXT[kind]
        val = (f"{100 * v:.1f} %" if info["share"] else f"{v:.2f}") if np.isfinite(v) else "n/a"
        what = info["cell"].replace("class a", res.row_names[a]).replace("region b", res.col_names[b])
        self.status.setText(f"{res.row_names[a]} ← {res.col_names[b]}: {val} ({what}). Click to show it as a layer.")

    def _on_click(self, event) -> None:
        cell = self._cell_at(event)
        if cell is not None:
            self.show_cell(*cell)

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
        attr = maps["attributions"][a]
        region = maps["labels"] == b
        masked = np.where(region, attr, 0).astype(np.float32)
        spec = self._specs[info["method"]]
        params = info.get("params", {})
        one = spec.is_one_sided(params)
        lim, mx = display_limits(masked if region.any() else attr, spec.caps.map_kind)
        sd = spatial_dims_of(img)
        scope = self.scope_combo.currentData()
        val = float(res.matrix(scope, kind="mass")[a, b])
        md = {META_KEY: {"kind": "attribution", "method": info["method"], "target": res.row_names[a],
                         "target_index": a, "region": res.col_names[b], "region_index": b,
                         "agg2exp_mass": val, "image": name, "model": info.get("model"),
                         "params": scalar_items(params), "limit": lim, "max_abs": mx, "unit": spec.unit,
                         "source": "agg2exp"}}
        if isinstance(img.metadata, dict) and GEOMETRY_KEY in img.metadata:
            md[GEOMETRY_KEY] = img.metadata[GEOMETRY_KEY]
        clim = attribution_limits(lim, one, spec.red_is_negative)
        layer = self.viewer.add_image(
            masked, name=f"{spec.title} · {res.row_names[a]} in {res.col_names[b]}",
            scale=tuple(img.scale)[-sd:], translate=tuple(img.translate)[-sd:], metadata=md,
            colormap=attribution_colormap(reverse=spec.red_is_negative, volume=self.viewer.dims.ndisplay == 3,
                                          one_sided=one),
            contrast_limits=clim, blending="translucent", rendering="translucent")
        mx = max(float(mx), float(lim))
        layer.contrast_limits_range = attribution_limits(mx, one, spec.red_is_negative)
        layer.contrast_limits = clim
        md[META_KEY]["legend"] = legend(spec, res.row_names[a], params)
        self.result_stage.present(layer)
        self.viewer.layers.selection.active = layer
        where = "global mean" if scope is None else self.scope_combo.currentText()
        self.status.setText(f"{res.row_names[a]} ← {res.col_names[b]}: {100 * val:.1f} % of "
                            f"{res.row_names[a]}'s |attribution| ({where}); layer shows {name}, "
                            f"{int(region.sum())} voxels")
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
        stem = p.stem.replace("local", "global") if "local" in p.stem else p.stem + "_global"
        g = p.with_name(stem).with_suffix(".csv")
        out.append(self.result.global_to_csv(g))
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

    # ------------------------------------------------------------- closing --
    def _shutdown_workers(self) -> None:
        """Stop and join every worker (the dock or the viewer is closing; see ClosingDock)."""
        self._draw_timer.stop()
        super()._shutdown_workers()


__all__ = ["Agg2ExpWidget", "agg_job", "cell_job"]
