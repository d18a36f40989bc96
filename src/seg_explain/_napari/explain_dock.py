"""The Explain dock: paint an RoI, see what it will cost, press Explain, read the result.

Everything the user picks is a widget of this dock (image layer, model, device, class, RoI
layer + label, method and that method's parameters). What the dock knows about a method
comes from the registry (:mod:`seg_explain.explainers.registry`): human names with what each
method asks and its cost class, the parameter forms with ranges, units and tooltips (values
kept per method, "Restore defaults", cheaper defaults for 3D models), the cost estimate
before running, the sign convention and unit for the legend. No method is named here.

Parameters whose values are objects get a chooser by their registry *kind*, not by method or
parameter name (:class:`~seg_explain._napari.choosers.KindChoosers`: ``bank`` -> images,
``label_map`` -> a label layer). What the dock says and builds (why Explain is unavailable,
the cost line, the request) is viewer-agnostic (:mod:`seg_explain.frontend`); the result
layers, their display and 3D surfaces are :class:`~seg_explain._napari.explain_results.ResultsMixin`.

The computation runs in a worker thread (:mod:`.workers`, the core's job driver) on copies of
the layers' arrays taken on the main thread; progress (stage, ETA) shows in the dock next to
Cancel. It comes back as new layers (the user's layers are never changed or removed):

- ``prediction · <model>``: the clean label map the RoI was fixed from (carried by the
  explanation; added once per model and image);
- ``<Method> · <class> · <RoI>``: the attribution (Image) on the image's grid, raw values
  (display helpers change what is shown, never the data kept for saving), a colour bar, a
  colormap transparent at 0 (diverging; one-sided for one-sided maps), and a legend in the
  dock and on the canvas saying in plain words what the colours mean, then the unit and
  three values of the colour scale; each method opens with its display defaults
  (:func:`seg_explain.frontend.reading.display_defaults`), "Show raw values" undoes them;
- ``RoI outline · ...``: the RoI's outline for every method;
- in the 3D view: the strongest supporting and opposing evidence as two surfaces (red / blue)
  instead of a signed cloud.

One result on stage (:class:`~seg_explain._napari.stage.ResultStage`): a new result hides the
previous ones (kept in the list), only the selected result shows a colour bar, and label
layers are hidden while a result is shown (their colours clash with the map's hues), shown
again when no result is visible.
"""
from __future__ import annotations

import logging

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..frontend.messages import cost_lines, cost_unknown, explain_why_not, one_line
from ..frontend.reading import shape_mismatch
from ..frontend.requests import ExplainRequest, explain_job, make_request, roi_for_estimate, roi_from_labels
from .choosers import KindChoosers, refill
from .explain_results import ResultsMixin
from .layers import (
    META_KEY,
    add_roi_layer,
    current_index,
    image_from_layer,
    is_result_layer,
    model_grid_shape,
    spatial_dims_of,
    spatial_shape_of,
    sync_attribution_colormaps,
)
from .model_picker import settings
from .params import ParamForm, compact_all, fit_to_dock
from .stage import ResultStage
from .ui import ClosingDock, notify_error
from .workers import show_progress

log = logging.getLogger(__name__)

NO_ROI = "(predicted class)"


class ExplainWidget(ResultsMixin, ClosingDock, QWidget):
    """Dock widget: explain a segmentation model's prediction inside a painted RoI."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.start_jobs(napari_viewer)   # viewer, runner, picker, cache (see ClosingDock)
        self._current_req: ExplainRequest | None = None
        self._updating = False
        self._init_results()
        self.settings = settings()
        from ..explainers.registry import specs

        self._specs = {s.name: s for s in specs()}
        self.result_stage = ResultStage(self.viewer)           # one result, one colour bar, labels hidden
        self._build_ui()
        compact_all(self)
        fit_to_dock(self, self._scroll)
        self._connect_viewer()
        self._refresh_layers()
        img = self.image_layer()
        self.picker.select_for_dims(spatial_dims_of(img) if img is not None else None)
        self._on_method_changed()

    # ------------------------------------------------------------------ UI --
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = self._scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        inner = QWidget()
        scroll.setWidget(inner)
        outer.addWidget(scroll)
        lay = QVBoxLayout(inner)
        box = QGroupBox("Input")
        f = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.setObjectName("image_combo")
        self.image_combo.setToolTip("the image layer to explain (its copy is sent to the model)")
        f.addRow("image", self.image_combo)
        f.addRow("model", self.picker)
        self.model_combo, self.device_combo = self.picker.combo, self.picker.device
        self.model_line = QLabel("")
        self.model_line.setObjectName("model_line")
        self.model_line.setWordWrap(True)
        self.model_line.setStyleSheet("color: gray; font-size: 10px;")
        f.addRow(self.model_line)
        self.class_combo = QComboBox()
        self.class_combo.setObjectName("class_combo")
        self.class_combo.setToolTip("the class whose segmentation inside the RoI is explained")
        f.addRow("class", self.class_combo)
        roi_row = QHBoxLayout()
        self.roi_combo = QComboBox()
        self.roi_combo.setObjectName("roi_combo")
        self.roi_combo.setToolTip("a Labels layer you paint (its label below); "
                                  f"'{NO_ROI}' = the voxels the model predicts as the class")
        self.new_roi_button = QPushButton("New RoI")
        self.new_roi_button.setObjectName("new_roi_button")
        self.new_roi_button.setToolTip("add an empty Labels layer on the image's grid and start painting")
        roi_row.addWidget(self.roi_combo, 1)
        roi_row.addWidget(self.new_roi_button)
        f.addRow("RoI", roi_row)
        self.roi_label = QSpinBox()
        self.roi_label.setObjectName("roi_label")
        self.roi_label.setRange(1, 65535)
        self.roi_label.setToolTip("which label value of the RoI layer is the RoI")
        f.addRow("RoI label", self.roi_label)
        lay.addWidget(box)

        mbox = QGroupBox("Method")
        mf = QVBoxLayout(mbox)
        top = QFormLayout()
        self.method_combo = QComboBox()
        self.method_combo.setObjectName("method_combo")
        for s in self._specs.values():
            self.method_combo.addItem(f"{s.title} · {s.cost_class}", s.name)
            self.method_combo.setItemData(self.method_combo.count() - 1,
                                          f"{s.question}\n({s.source}; {s.cost_class})", Qt.ItemDataRole.ToolTipRole)
        top.addRow("method", self.method_combo)
        mf.addLayout(top)
        self.method_doc = QLabel()
        self.method_doc.setObjectName("method_doc")
        self.method_doc.setWordWrap(True)
        self.method_doc.setStyleSheet("color: gray; font-size: 10px;")
        mf.addWidget(self.method_doc)
        self.params = ParamForm()
        mf.addWidget(self.params)
        common = QFormLayout()
        self.seed_spin = QSpinBox()
        self.seed_spin.setObjectName("seed_spin")
        self.seed_spin.setRange(0, 2 ** 31 - 1)
        self.seed_spin.setToolTip("random seed (noise, draws, coalitions): same seed, same map")
        common.addRow("seed", self.seed_spin)
        self.batch_edit = QLineEdit()
        self.batch_edit.setObjectName("batch_edit")
        self.batch_edit.setPlaceholderText("auto")
        self.batch_edit.setToolTip("images per network pass (empty = from free memory)")
        common.addRow("batch size", self.batch_edit)
        mf.addLayout(common)
        self.defaults_button = QPushButton("Restore defaults")
        self.defaults_button.setObjectName("defaults_button")
        self.defaults_button.setToolTip("the method's default parameters (cheaper ones for 3D models)")
        mf.addWidget(self.defaults_button)
        lay.addWidget(mbox)

        # object-valued parameters: one chooser per parameter kind, shown through the form
        self.choosers = KindChoosers(self, self.viewer)
        self.bank_combo, self.reference_combo = self.choosers.bank, self.choosers.label_map

        self.cost = QLabel("")
        self.cost.setObjectName("cost_label")
        self.cost.setWordWrap(True)
        lay.addWidget(self.cost)
        crow = QHBoxLayout()
        self.cost_warning = QLabel("")
        self.cost_warning.setObjectName("cost_warning")
        self.cost_warning.setWordWrap(True)
        self.cost_warning.setStyleSheet("color: #e69500;")
        self.cheaper_button = QPushButton("Use cheaper settings")
        self.cheaper_button.setObjectName("cheaper_button")
        crow.addWidget(self.cost_warning, 1)
        crow.addWidget(self.cheaper_button)
        lay.addLayout(crow)
        self.cheaper_button.hide()

        brow = QHBoxLayout()
        self.explain_button = QPushButton("Explain")
        self.explain_button.setObjectName("explain_button")
        self.explain_button.setMinimumHeight(32)
        brow.addWidget(self.explain_button, 1)
        lay.addLayout(brow)
        self.progress = QProgressBar()
        self.progress.setObjectName("progress_bar")
        self.progress.setTextVisible(True)
        self.progress.hide()
        lay.addWidget(self.progress)
        self.stage = QLabel("")
        self.stage.setObjectName("stage_label")
        self.stage.setStyleSheet("color: gray; font-size: 10px;")
        lay.addWidget(self.stage)

        self.status = QLabel("")
        self.status.setObjectName("status_label")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.status)

        lay.addWidget(self._build_result_box())
        lay.addStretch(1)

        m = self.settings.value("method", "")
        i = self.method_combo.findData(m)
        self.method_combo.setCurrentIndex(i if i >= 0 else 0)

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.picker.loaded.connect(self._on_model_loaded)
        self.picker.cleared.connect(self._on_model_cleared)
        self.picker.status.connect(self.model_line.setText)
        self.class_combo.currentIndexChanged.connect(lambda _i: self._update_cost())
        self.roi_combo.currentIndexChanged.connect(self._on_roi_changed)
        self.roi_label.valueChanged.connect(lambda _v: self._update_cost())
        self.new_roi_button.clicked.connect(self.new_roi_layer)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.defaults_button.clicked.connect(self._restore_defaults)
        self.bank_combo.currentIndexChanged.connect(lambda _i: self._update_cost())
        self.cheaper_button.clicked.connect(self._use_cheaper)
        self.explain_button.clicked.connect(self._on_explain_clicked)
        self._connect_results()
        self._cost_timer = QTimer(self)
        self._cost_timer.setSingleShot(True)
        self._cost_timer.setInterval(150)
        self._cost_timer.timeout.connect(self._update_cost)

    # -------------------------------------------------------------- viewer --
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        self._viewer_hooks = [(ev.inserted, self._on_layers_changed), (ev.removed, self._on_layers_changed),
                              (ev.removed, self._on_layer_removed), (ev.reordered, self._on_layers_changed),
                              (self.viewer.layers.selection.events.active, self._on_active_changed),
                              (self.viewer.dims.events.ndisplay, self._on_ndisplay)]
        for emitter, cb in self._viewer_hooks:
            emitter.connect(cb)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    def _on_ndisplay(self, event=None) -> None:
        sync_attribution_colormaps(self.viewer)
        self._sync_3d()

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            try:
                event.value.events.name.connect(self._on_layers_changed)
            except AttributeError:
                pass
        self._refresh_layers()

    def _layers_of(self, kind: str) -> list:
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        return [ly for ly in self.viewer.layers if isinstance(ly, cls)]

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def roi_layer(self):
        name = self.roi_combo.currentText()
        if not name or name == NO_ROI or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    @property
    def model_info(self) -> dict | None:
        return self.picker.info

    def _refresh_layers(self) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            images = [ly.name for ly in self._layers_of("image")
                      if not is_result_layer(ly, ("attribution", "evidence"))]
            old_image = self.image_combo.currentText()
            keep = old_image if old_image in images else (images[-1] if images else None)
            refill(self.image_combo, images, keep)
            self._refresh_roi_choices()
            self._refresh_bank_choices()
            if self.image_combo.currentText() != old_image:
                self._on_image_changed()
        finally:
            self._updating = False
        self._update_buttons()

    def _refresh_roi_choices(self) -> None:
        img = self.image_layer()
        shape = spatial_shape_of(img) if img is not None else None
        every = [ly for ly in self._layers_of("labels") if not is_result_layer(ly, ("roi_outline",))]
        labels = [ly for ly in every if shape is None or tuple(np.shape(ly.data)) == shape]
        wrong = [ly for ly in every if ly not in labels]
        names = [ly.name for ly in labels]
        old = self.roi_combo.currentText()
        pref = old if old in names else None
        if pref is None:  # prefer a layer that is an RoI over a prediction / atlas
            rois = [ly.name for ly in labels if (ly.metadata.get(META_KEY, {}) or {}).get("kind") == "roi"
                    or "roi" in ly.name.lower()]
            pref = rois[-1] if rois else NO_ROI
        refill(self.roi_combo, names, pref, [NO_ROI])
        # label layers of another shape: listed, greyed out, with why (not silently missing)
        for ly in wrong:
            self.roi_combo.addItem(f"{ly.name} (other shape)")
            i = self.roi_combo.count() - 1
            self.roi_combo.model().item(i).setEnabled(False)
            self.roi_combo.setItemData(i, shape_mismatch(ly.name, np.shape(ly.data), shape),
                                       Qt.ItemDataRole.ToolTipRole)
        refs = [ly.name for ly in labels if (ly.metadata.get(META_KEY, {}) or {}).get("kind") not in
                ("roi", "prediction")]
        self.choosers.refresh_label_maps(refs)
        if self.roi_combo.currentText() != old:
            self._on_roi_changed()

    def _refresh_bank_choices(self) -> None:
        self.choosers.refresh_bank(self.image_combo.currentText(), self.model_info)

    def _on_image_changed(self, _i=None) -> None:
        """A new image never changes the model; a model that does not fit it is *said*."""
        self._refresh_roi_choices()
        self._refresh_bank_choices()
        img = self.image_layer()      # the 3D-surfaces option only where there is a 3D view to use it
        self.surfaces_check.setVisible(img is not None and spatial_dims_of(img) == 3)
        self._update_buttons()
        self._schedule_cost()

    def _on_roi_changed(self, _i=None) -> None:
        ly = self.roi_layer()
        if ly is not None:
            data = np.asarray(ly.data)
            vals = np.unique(data[data > 0]) if data.size <= 50_000_000 else np.array([])
            sel = int(getattr(ly, "selected_label", 1) or 1)
            if vals.size and sel not in vals:
                sel = int(vals[0])
            self.roi_label.setValue(max(1, sel))
            hint = (ly.metadata.get(META_KEY, {}) or {}).get("target") if isinstance(ly.metadata, dict) else None
            if hint and self.class_combo.findText(str(hint)) >= 0:
                self.class_combo.setCurrentIndex(self.class_combo.findText(str(hint)))
        self._schedule_cost()

    def new_roi_layer(self):
        """Add an empty Labels layer on the image's grid to paint in (:func:`.layers.add_roi_layer`)."""
        img = self.image_layer()
        if img is None:
            notify_error("Add an image layer first: the RoI layer is made on the image's grid")
            return None
        layer = add_roi_layer(self.viewer, img, self.class_combo.currentText())
        self._refresh_roi_choices()
        self.roi_combo.setCurrentText(layer.name)
        self.roi_label.setValue(1)
        return layer

    # --------------------------------------------------------------- model --
    def select_model(self, path) -> None:
        """Pick a model by path (added to the list and remembered) and load it."""
        self.picker.select(path)

    def _on_model_cleared(self) -> None:
        self.class_combo.clear()
        self._update_buttons()

    def _on_model_loaded(self, info) -> None:
        names = info["class_names"]
        keep = self.class_combo.currentText()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItems(names)
        self.class_combo.blockSignals(False)
        hint = None
        roi = self.roi_layer()
        if roi is not None and isinstance(roi.metadata, dict):
            hint = (roi.metadata.get(META_KEY, {}) or {}).get("target")
        for cand in (hint, keep, names[1] if len(names) > 1 else names[0]):
            if cand and cand in names:
                self.class_combo.setCurrentText(cand)
                break
        self._refresh_bank_choices()
        self._on_method_changed()
        self._update_buttons()

    # -------------------------------------------------------------- method --
    @property
    def method(self) -> str:
        return self.method_combo.currentData() or ""

    def set_method(self, name: str) -> None:
        """Choose a method by its registry name (scripts, tests)."""
        i = self.method_combo.findData(name)
        if i < 0:
            raise ValueError(f"unknown method {name!r}")
        self.method_combo.setCurrentIndex(i)

    @property
    def spec(self):
        return self._specs.get(self.method)

    def _on_method_changed(self, _i=None) -> None:
        spec = self.spec
        if spec is None:
            return
        self.settings.setValue("method", spec.name)
        self.method_doc.setText(f"{spec.question}. Values: {spec.unit}.")
        self.cost.setText("")   # never show the previous method's estimate
        info = self.model_info
        sd = info["spatial_dims"] if info else 2
        self.params.set_method(spec, sd, self.choosers.widgets, info.get("layers", []) if info else [])
        for w in self.params.editors.values():
            for sig in ("valueChanged", "currentTextChanged", "textChanged", "toggled"):
                if hasattr(w, sig):
                    getattr(w, sig).connect(self._schedule_cost)
        if hasattr(self, "_scroll"):
            fit_to_dock(self, self._scroll)      # the new method's editors shrink like the rest
        self._update_buttons()
        self._schedule_cost()

    def _restore_defaults(self) -> None:
        self.params.restore_defaults()
        self.seed_spin.setValue(0)
        self.batch_edit.setText("")
        self._schedule_cost()

    # ---------------------------------------------------------------- cost --
    def _schedule_cost(self, *_a) -> None:
        self._cost_timer.start()

    def _model_grid_shape(self, img) -> tuple[int, ...] | None:
        return model_grid_shape(img, self.model_info)

    def _update_cost(self) -> None:
        from ..explainers.cost import estimate

        self.cheaper_button.hide()
        self.cost_warning.setText("")
        spec, info, img = self.spec, self.model_info, self.image_layer()
        if spec is None or info is None or img is None or self.running:
            self.cost.setText("")
            return
        mshape = self._model_grid_shape(img)
        model = self.cache.cached(info["path"], self.picker.device_name)
        if mshape is None or model is None:
            self.cost.setText("")
            return
        try:
            params = self.params.values()
        except Exception as exc:  # noqa: BLE001 - a half-typed value: say it, no estimate
            self.cost.setText(cost_unknown(exc))
            return
        for p in spec.params:       # object-valued parameters: their choosers' cheap stand-ins
            v = self.choosers.estimate_value(p.kind)
            if v is not None:
                params[p.name] = v
        rl = self.roi_layer()
        roi = (roi_for_estimate(rl.data, int(self.roi_label.value()), spatial_shape_of(img), mshape)
               if rl is not None else None)
        est = estimate(model, spec.name, params, mshape, roi)
        line, warning = cost_lines(est)
        self.cost.setText(line)
        self._cheaper = est.cheaper
        if warning:
            self.cost_warning.setText(warning)
            self.cheaper_button.setVisible(bool(est.cheaper))

    def _use_cheaper(self) -> None:
        for k, v in (getattr(self, "_cheaper", None) or {}).items():
            if k in self.params.editors:
                self.params.set_value(k, v)
        self._update_cost()

    # ------------------------------------------------------------- explain --
    def why_not(self) -> str:
        """Why Explain is unavailable right now ('' when it is available)."""
        img = self.image_layer()
        return explain_why_not(img.name if img is not None else None, spatial_dims_of(img) if img is not None
                               else None, self.model_info, self.spec, self.class_combo.currentText(),
                               self.picker.runner.running)

    def _update_buttons(self) -> None:
        running = self.runner.running
        self.explain_button.setText("Cancel" if running else "Explain")
        reason = "" if running else self.why_not()
        self.explain_button.setEnabled(running or not reason)
        self.explain_button.setToolTip(reason or ("stop the computation" if running else
                                                  "explain the class inside the RoI with the chosen method"))
        if reason and not running:
            self.stage.setText(reason)
        elif not running:
            self.stage.setText("")
        for w in (self.image_combo, self.picker, self.class_combo, self.roi_combo, self.roi_label,
                  self.method_combo, self.params, self.seed_spin, self.batch_edit, self.new_roi_button,
                  *self.choosers.widgets.values(), self.defaults_button, self.cheaper_button):
            w.setEnabled(not running)

    @property
    def running(self) -> bool:
        return self.runner.running

    def _on_explain_clicked(self) -> None:
        if self.runner.running:
            self.cancel()
            return
        try:
            req = self.build_request()
        except Exception as exc:  # noqa: BLE001 - every input problem is a one-line notification
            notify_error(one_line(exc))
            self.status.setText(one_line(exc))
            return
        self.start(req)

    def cancel(self) -> None:
        """Stop the running explanation (no result layer is added)."""
        self.status.setText("Cancelling …")
        self.runner.cancel()

    def build_request(self) -> ExplainRequest:
        """Copy what the job needs out of the layers (main thread) into a request."""
        from ..errors import InputMismatchError

        reason = self.why_not()
        if reason:
            raise InputMismatchError(reason)
        img, info, spec = self.image_layer(), self.model_info, self.spec
        isd = spatial_dims_of(img)
        li = image_from_layer(img, isd)
        slice_index = None
        if info["spatial_dims"] == 2 and isd == 3:   # a 2D model on a volume: the axial slice on screen
            slice_index = current_index(self.viewer, img, axis=img.ndim - 3)
        roi, roi_name = None, "predicted"
        rl = self.roi_layer()
        if rl is not None:
            roi, roi_name = roi_from_labels(rl.data, int(self.roi_label.value()), rl.name, li.spatial_shape,
                                            slice_index)
        params = self.params.values()
        for p in spec.params:       # object-valued parameters: from the chooser for their kind
            if p.kind in self.choosers.widgets:
                params[p.name] = self.choosers.value(p.kind, img.name, slice_index)
        return make_request(info["path"], self.picker.device_name, li, spec.name, self.class_combo.currentText(),
                            roi, roi_name, params, int(self.seed_spin.value()), self.batch_edit.text(),
                            slice_index, img.name)

    def start(self, req: ExplainRequest) -> None:
        self._current_req = req
        self.summary.setText("")
        self.status.setText(f"Explaining '{req.target}' with {self._specs[req.method].title} …")
        self.progress.setRange(0, 0)
        self.progress.show()
        self.runner.start(explain_job, req, self.cache, desc=f"{self._specs[req.method].title}: {req.target}",
                          on_message=self._on_job_message, on_result=self._on_result,
                          on_failure=self._on_failure, on_cancelled=self._on_cancelled,
                          on_idle=self._on_idle)
        self._update_buttons()

    def _on_idle(self) -> None:
        self.progress.hide()
        self._update_buttons()
        self._schedule_cost()

    def _on_job_message(self, msg) -> None:
        show_progress(msg, self.progress, self.stage)

    # ------------------------------------------------------------ failures --
    def _on_failure(self, failure) -> None:
        self.status.setText(f"Failed: {failure.message}")
        notify_error(f"Explain failed: {failure.message}")

    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled.")

    # ------------------------------------------------------------- helpers --
    def _shutdown_workers(self) -> None:
        """Stop and join every worker (the viewer or the dock is closing; see ClosingDock)."""
        self._cost_timer.stop()
        super()._shutdown_workers()


__all__ = ["ExplainWidget"]
