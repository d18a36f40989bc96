"""The Explain dock: paint an RoI, see what it will cost, press Explain, read the result.

Everything the user picks is a widget of this dock (image layer, model, device, class, RoI
layer + label, method and that method's parameters). What the dock knows about a method
comes from the registry (:mod:`seg_explain.explainers.registry`): human names with what each
method asks and its cost class, the parameter forms with ranges, units and tooltips (values
kept per method, "Restore defaults", cheaper defaults for 3D models), the cost estimate
before running, the sign convention and unit for the legend. No method is named here.

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
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
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

from ..frontend.reading import (
    RAW,
    display_defaults,
    distinct_colour,
    legend,
    legend_short,
    scale_text,
    shape_mismatch,
    short_unit,
    shown_sign,
    shown_unit,
)
from .layers import (
    GEOMETRY_KEY,
    META_KEY,
    RAW_KEY,
    attribution_colormap,
    attribution_limits,
    body_mask,
    bounded_volume,
    class_features,
    current_index,
    display_limits,
    display_map,
    evidence_volumes,
    image_from_layer,
    is_result_layer,
    make_loaded,
    model_grid_shape,
    spatial_dims_of,
    spatial_shape_of,
    sync_attribution_colormaps,
)
from .model_picker import settings
from .params import ParamForm, compact, compact_all, fit_to_dock
from .stage import ResultStage
from .ui import ClosingDock, notify_error, notify_info, notify_warning
from .workers import ExplainRequest, explain_job, one_line, scalar_items, show_progress

log = logging.getLogger(__name__)

NO_ROI = "(predicted class)"
SAMPLE_BANK = "sample bank (MNI152)"
ZERO_BANK = "zero occlusion"
BANK_FOLDER = "folder…"
ALL_LAYERS = "all other image layers"
REF_PRED = "(none: the model's own prediction)"
OUTLINE_COLOR = (0.2, 1.0, 0.3, 1.0)
EVIDENCE_TOP = 5.0                      # 3D surfaces: the strongest 5 % of each sign
EVIDENCE_SMOOTH = 1.5                   # σ (voxels) that turns speckled voxel maps into regions in 3D


class ExplainWidget(ClosingDock, QWidget):
    """Dock widget: explain a segmentation model's prediction inside a painted RoI."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.start_jobs(napari_viewer)   # viewer, runner, picker, cache (see ClosingDock)
        self._current_req: ExplainRequest | None = None
        self._bank_folder: str | None = None
        self._updating = False
        self._raw: dict[str, dict[str, Any]] = {}      # result layer key -> raw map + spec + roi
        self._evidence: dict[str, list] = {}           # result layer key -> its 3D surface layers
        self._legend_for: str | None = None            # result layer key the canvas legend describes
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
        self.watch_closing(self.viewer)

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

        # object-valued parameters: choosers owned by the dock, shown through the form
        self.bank_combo = compact(QComboBox(self))
        self.bank_combo.setObjectName("bank_combo")
        self.bank_combo.setToolTip("where replacement blocks come from: real blocks of other images "
                                   "(never the explained image), or zeros (occlusion)")
        self.reference_combo = compact(QComboBox(self))
        self.reference_combo.setObjectName("reference_combo")
        self.reference_combo.setToolTip("a ground-truth label map the RoI Dice is measured against; without "
                                        "it effects that would improve the Dice cannot be measured")
        self.bank_combo.hide()
        self.reference_combo.hide()

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

        rbox = QGroupBox("Result")
        rf = QVBoxLayout(rbox)
        self.legend = QLabel("")
        self.legend.setObjectName("legend_label")
        self.legend.setWordWrap(True)
        rf.addWidget(self.legend)
        self.summary = QLabel("")
        self.summary.setObjectName("summary_label")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rf.addWidget(self.summary)
        df = QFormLayout()
        self.smooth_spin = QDoubleSpinBox()
        self.smooth_spin.setObjectName("smooth_spin")
        self.smooth_spin.setRange(0.0, 10.0)
        self.smooth_spin.setSingleStep(0.5)
        self.smooth_spin.setToolTip("Gaussian smoothing of the shown map, σ in voxels (in-plane); File > Save "
                                    "Layer writes the raw values")
        df.addRow("smooth (σ, voxels)", self.smooth_spin)
        self.top_spin = QDoubleSpinBox()
        self.top_spin.setObjectName("top_spin")
        self.top_spin.setRange(0.1, 100.0)
        self.top_spin.setValue(100.0)
        self.top_spin.setSuffix(" %")
        self.top_spin.setToolTip("show only the strongest voxels (by |value|)")
        df.addRow("show top", self.top_spin)
        self.body_check = QCheckBox("mask to the body")
        self.body_check.setObjectName("body_check")
        self.body_check.setToolTip("hide evidence outside the body (the predicted foreground, else the image "
                                   "above Otsu's threshold)")
        df.addRow(self.body_check)
        self.surfaces_check = QCheckBox("3D view: evidence surfaces")
        self.surfaces_check.setObjectName("surfaces_check")
        self.surfaces_check.setChecked(True)
        self.surfaces_check.setToolTip(f"in the 3D view, the strongest {EVIDENCE_TOP:g} % supporting (red) and "
                                       "opposing (blue) evidence as two surfaces instead of a signed cloud (voxel maps "
                                       f"smoothed with σ = {EVIDENCE_SMOOTH:g} voxels first)")
        df.addRow(self.surfaces_check)
        self.raw_button = QPushButton("Show raw values")
        self.raw_button.setObjectName("raw_button")
        self.raw_button.setToolTip("no smoothing, no mask, every voxel: the values as computed (each method "
                                   "opens with the display chosen for it; this undoes it)")
        df.addRow(self.raw_button)
        rf.addLayout(df)
        lay.addWidget(rbox)
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
        self.bank_combo.activated.connect(self._on_bank_activated)
        self.bank_combo.currentIndexChanged.connect(lambda _i: self._update_cost())
        self.cheaper_button.clicked.connect(self._use_cheaper)
        self.explain_button.clicked.connect(self._on_explain_clicked)
        for w in (self.smooth_spin, self.top_spin):
            w.valueChanged.connect(lambda _v: self._redisplay())
        self.body_check.toggled.connect(lambda _v: self._redisplay())
        self.surfaces_check.toggled.connect(lambda _v: self._sync_3d())
        self.raw_button.clicked.connect(lambda: self.set_display(RAW))
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

    @staticmethod
    def _refill(combo: QComboBox, items: list[str], keep: str | None, fixed_first=()) -> None:
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(list(fixed_first) + items)
        if keep is not None and combo.findText(keep) >= 0:
            combo.setCurrentIndex(combo.findText(keep))
        combo.blockSignals(False)

    def _refresh_layers(self) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            images = [ly.name for ly in self._layers_of("image")
                      if not is_result_layer(ly, ("attribution", "evidence"))]
            old_image = self.image_combo.currentText()
            keep = old_image if old_image in images else (images[-1] if images else None)
            self._refill(self.image_combo, images, keep)
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
        self._refill(self.roi_combo, names, pref, [NO_ROI])
        # label layers of another shape: listed, greyed out, with why (not silently missing)
        for ly in wrong:
            self.roi_combo.addItem(f"{ly.name} (other shape)")
            i = self.roi_combo.count() - 1
            self.roi_combo.model().item(i).setEnabled(False)
            self.roi_combo.setItemData(i, shape_mismatch(ly.name, np.shape(ly.data), shape),
                                       Qt.ItemDataRole.ToolTipRole)
        refs = [ly.name for ly in labels if (ly.metadata.get(META_KEY, {}) or {}).get("kind") not in
                ("roi", "prediction")]
        self._refill(self.reference_combo, refs, self.reference_combo.currentText(), [REF_PRED])
        if self.roi_combo.currentText() != old:
            self._on_roi_changed()

    def _refresh_bank_choices(self) -> None:
        from ..bank import default_bank_path

        info = self.model_info
        items = []
        if info is None or default_bank_path(info["spatial_dims"]) is not None:
            items.append(SAMPLE_BANK)
        items.append(ZERO_BANK)
        if self._bank_folder:
            items.append(f"folder: {self._bank_folder}")
        items.append(BANK_FOLDER)
        cur = self.image_combo.currentText()
        others = [ly.name for ly in self._layers_of("image")
                  if not is_result_layer(ly, ("attribution", "evidence")) and ly.name != cur]
        if len(others) > 1:
            items.append(ALL_LAYERS)
        items += [f"layer: {n}" for n in others]
        self._refill(self.bank_combo, items, self.bank_combo.currentText())

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
        """Add an empty Labels layer on the image's grid to paint in, in a colour unlike every
        visible Labels layer's (:func:`~seg_explain.frontend.reading.distinct_colour`)."""
        from napari.utils.colormaps import DirectLabelColormap

        img = self.image_layer()
        if img is None:
            notify_error("Add an image layer first: the RoI layer is made on the image's grid")
            return None
        sd = spatial_dims_of(img)
        shape = spatial_shape_of(img)
        colour = (*distinct_colour(self._label_colours()), 1.0)     # strokes must show over the labels
        cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: colour})
        n = sum(1 for ly in self._layers_of("labels") if ly.name.startswith("RoI"))
        layer = self.viewer.add_labels(
            np.zeros(shape, np.uint8), name="RoI" if n == 0 else f"RoI {n + 1}", scale=tuple(img.scale)[-sd:],
            translate=tuple(img.translate)[-sd:], colormap=cmap, opacity=0.7,
            metadata={META_KEY: {"kind": "roi", "image": img.name, "target": self.class_combo.currentText()}})
        layer.brush_size = 6
        layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self._refresh_roi_choices()
        self.roi_combo.setCurrentText(layer.name)
        self.roi_label.setValue(1)
        return layer

    def _label_colours(self) -> list:
        """The colours the visible Labels layers draw (at most 64 labels each)."""
        out = []
        for ly in self._layers_of("labels"):
            if not ly.visible:
                continue
            vals = np.unique(np.asarray(ly.data))
            for v in vals[vals != 0][:64]:
                out.append(tuple(np.asarray(ly.colormap.map(np.array([v]))).reshape(-1)[:3]))
        return out

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
        self.params.set_method(spec, sd, {"bank": self.bank_combo, "label_map": self.reference_combo},
                               info.get("layers", []) if info else [])
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

    def _on_bank_activated(self, _i=None) -> None:
        if self.bank_combo.currentText() == BANK_FOLDER:
            path = QFileDialog.getExistingDirectory(self, "Folder of reference images for PdCR", str(Path.home()))
            if path:
                self._bank_folder = path
            self._refresh_bank_choices()
            if self._bank_folder:
                self.bank_combo.setCurrentText(f"folder: {self._bank_folder}")

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
            self.cost.setText(f"Cost: — ({one_line(exc)})")
            return
        if self.bank_combo.currentText() == ZERO_BANK:
            params["bank"] = "zero"
        roi = None
        rl = self.roi_layer()
        if rl is not None and tuple(np.shape(rl.data)) == spatial_shape_of(img) and len(mshape) == np.ndim(rl.data):
            from ..model_grid import ModelGrid

            try:
                r = np.asarray(rl.data) == int(self.roi_label.value())
                roi = ModelGrid(r.shape, mshape).to_model(r.astype(np.uint8), order=0).astype(bool)
            except Exception:  # noqa: BLE001 - the estimate then assumes one window
                roi = None
        est = estimate(model, spec.name, params, mshape, roi)
        self.cost.setText(f"Cost: {est.text}")
        self._cheaper = est.cheaper
        if est.warning:
            self.cost_warning.setText(f"⚠ {est.warning}")
            self.cheaper_button.setVisible(bool(est.cheaper))

    def _use_cheaper(self) -> None:
        for k, v in (getattr(self, "_cheaper", None) or {}).items():
            if k in self.params.editors:
                self.params.set_value(k, v)
        self._update_cost()

    # ------------------------------------------------------------- explain --
    def why_not(self) -> str:
        """Why Explain is unavailable right now ('' when it is available)."""
        img, info = self.image_layer(), self.model_info
        if img is None:
            return "Add or choose an image layer"
        if info is None:
            return "Loading the model …" if self.picker.runner.running else "Choose a model that loads"
        isd, msd = spatial_dims_of(img), info["spatial_dims"]
        if msd == 3 and isd == 2:
            return f"'{Path(info['name']).name}' is a 3D model but '{img.name}' is a 2D image: choose a 2D model"
        spec = self.spec
        if spec is not None and spec.caps.hooks and not info.get("hookable", True):
            return f"{spec.title} needs the network's layers; this compiled model has none: pick a gradient method"
        if not self.class_combo.currentText():
            return "Choose the class to explain"
        return ""

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
                  self.bank_combo, self.reference_combo, self.defaults_button, self.cheaper_button):
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
        target = self.class_combo.currentText()
        roi, roi_name = None, "predicted"
        rl = self.roi_layer()
        if rl is not None:
            lab = int(self.roi_label.value())
            mask = np.asarray(rl.data) == lab
            if mask.shape != li.spatial_shape:
                raise InputMismatchError(f"RoI layer '{rl.name}' has shape {mask.shape}, the image {li.spatial_shape}")
            painted = mask[slice_index] if slice_index is not None else mask
            if not painted.any():
                where = f" on slice {slice_index}" if slice_index is not None else ""
                raise InputMismatchError(f"Label {lab} is not painted in RoI layer '{rl.name}'{where}; "
                                         "paint it or pick another label")
            roi, roi_name = mask, (rl.name if lab == 1 else f"{rl.name}:{lab}")
        params = self.params.values()
        for p in spec.params:
            if p.kind == "bank":
                params[p.name] = self._bank_value(img, slice_index)
            elif p.kind == "label_map":
                params[p.name] = self._reference_value()
        bs = self.batch_edit.text().strip()
        from ..explainers.registry import COMMON

        batch = COMMON[1].parse(bs or None)
        return ExplainRequest(info["path"], self.picker.device_name, li, spec.name, target, roi, params,
                              int(self.seed_spin.value()), batch, slice_index, img.name, roi_name)

    def _bank_value(self, img, slice_index):
        from ..errors import InputMismatchError

        choice = self.bank_combo.currentText()
        if choice == SAMPLE_BANK or not choice:
            return None
        if choice == ZERO_BANK:
            return "zero"
        if choice.startswith("folder: "):
            return choice[len("folder: "):]
        if choice == BANK_FOLDER:
            raise InputMismatchError("Choose the folder of reference images for the replacement blocks")
        names = ([ly.name for ly in self._layers_of("image")
                  if not is_result_layer(ly, ("attribution", "evidence")) and ly.name != img.name]
                 if choice == ALL_LAYERS else [choice[len("layer: "):]])
        out = []
        for n in names:
            b = image_from_layer(self.viewer.layers[n])
            if slice_index is not None and b.spatial_dims == 3:   # 2D model: slices of the volume
                for z in range(0, b.data.shape[-3], max(1, b.data.shape[-3] // 16)):
                    out.append(make_loaded(np.ascontiguousarray(b.data[..., z, :, :]), b.spacing[1:],
                                           b.origin[1:], 2))
            else:
                out.append(b)
        return out

    def _reference_value(self):
        ref = self.reference_combo.currentText()
        if ref and ref != REF_PRED and ref in self.viewer.layers:
            return np.array(self.viewer.layers[ref].data, copy=True)
        return None

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

    def wait_model(self, timeout_s: float = 60.0) -> bool:
        """Block (processing Qt events) until the model is loaded; for scripts."""
        import time

        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        while self.model_info is None and time.perf_counter() - t0 < timeout_s:
            QApplication.processEvents()
            time.sleep(0.01)
        return self.model_info is not None

    # ------------------------------------------------------------- results --
    def _geometry(self, req):
        img = self.viewer.layers[req.image_layer_name] if req.image_layer_name in self.viewer.layers else None
        sd = req.image.spatial_dims
        if img is not None:
            return tuple(img.scale)[-sd:], tuple(img.translate)[-sd:], img
        return tuple(req.image.spacing), tuple(req.image.origin), None

    def _prediction_layer(self, img_name: str, model_path: str, slice_index):
        for ly in self._layers_of("labels"):
            md = (ly.metadata.get(META_KEY, {}) or {}) if isinstance(ly.metadata, dict) else {}
            if (md.get("kind") == "prediction" and md.get("model") == model_path
                    and md.get("image") == img_name and md.get("slice_index") == slice_index):
                return ly
        return None

    def _on_result(self, disp) -> None:
        exp, req = disp.exp, self._current_req
        spec = exp.spec
        scale, translate, img = self._geometry(req)
        geo = ({GEOMETRY_KEY: img.metadata[GEOMETRY_KEY]}
               if img is not None and isinstance(img.metadata, dict) and GEOMETRY_KEY in img.metadata else {})
        z = f" · z={req.slice_index}" if req.slice_index is not None else ""
        if exp.prediction is not None and self._prediction_layer(req.image_layer_name, req.model_path,
                                                                 req.slice_index) is None:
            md = {META_KEY: {"kind": "prediction", "model": req.model_path, "image": req.image_layer_name,
                             "slice_index": req.slice_index, "class_names": list(self.model_info["class_names"])},
                  **geo}
            self.viewer.add_labels(np.asarray(exp.prediction).astype(np.int32),
                                   name=f"prediction · {Path(disp.model_name).name}{z}", scale=scale,
                                   translate=translate, metadata=md, opacity=0.35,
                                   features=class_features(self.model_info["class_names"]))
        if req.roi_name == "predicted":
            name = f"{spec.title} · {exp.target_name}{z}"
        elif exp.target_name in req.roi_name:      # "RoI · frontal_L": do not repeat the class
            name = f"{spec.title} · {req.roi_name}{z}"
        else:
            name = f"{spec.title} · {exp.target_name} in {req.roi_name}{z}"
        one = spec.is_one_sided(exp.params)
        legend = _legend(spec, exp)
        info = {"kind": "attribution", "method": exp.method, "target": exp.target_name,
                "target_index": exp.target, "roi": req.roi_name, "image": req.image_layer_name,
                "model": req.model_path, "device": disp.device, "params": scalar_items(exp.params),
                "seed": req.seed, "elapsed_s": round(exp.elapsed_s, 3), "n_forward": exp.n_forward,
                "n_backward": exp.n_backward, "limit": disp.limit, "max_abs": disp.max_abs,
                "slice_index": req.slice_index, "extras": scalar_items(exp.extras), "unit": spec.unit,
                "legend": legend, "legend_short": _legend_short(spec, exp)}
        lim = float(disp.limit)
        # shown so that positive = supports (PdCR: Dice lost when replaced); saved raw
        sign = shown_sign(spec)
        info["shown_unit"] = shown_unit(spec)
        layer = self.viewer.add_image(
            sign * np.asarray(exp.attribution, np.float32), name=name, scale=scale, translate=translate,
            metadata={META_KEY: info, RAW_KEY: np.asarray(exp.attribution, np.float32), **geo},
            colormap=attribution_colormap(volume=self.viewer.dims.ndisplay == 3, one_sided=one),
            contrast_limits=attribution_limits(lim, one, False), blending="translucent",
            rendering="translucent", opacity=1.0)
        mx = max(float(disp.max_abs), lim)
        layer.contrast_limits_range = attribution_limits(mx, one, False)
        layer.contrast_limits = attribution_limits(lim, one, False)
        layer.events.contrast_limits.connect(self._on_limits_changed)   # (a bound method: held weakly)
        self._raw[_key(layer)] = {"raw": np.asarray(exp.attribution, np.float32), "spec": spec, "layer": layer,
                                "pred": exp.prediction, "image": req.image.data, "params": dict(exp.params)}
        outline = self._add_outline(disp.outline, req, scale, translate, geo)
        self.result_stage.present(layer, keep=[outline])
        self.viewer.layers.selection.active = layer
        self.set_display(display_defaults(spec), layer)     # the method's readable view (display only)
        self._show_legend(layer)
        self.status.setText(f"Done: {spec.title} of '{exp.target_name}' in {exp.elapsed_s:.1f} s "
                            f"({exp.n_forward} forward / {exp.n_backward} backward passes). "
                            f"Colour limits {_range_text(layer.contrast_limits)} (max |value| {disp.max_abs:.3g}) "
                            f"{spec.unit}.")
        lines = [f"{w}" for w in exp.warnings]
        report = exp.extras.get("report") if isinstance(exp.extras, dict) else None
        if report:
            lines.append(str(report))
        else:
            fields = [(k, exp.extras.get(k)) for k in spec.summary_fields if exp.extras.get(k) is not None]
            if fields:
                lines.append(", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in fields))
        self.summary.setText("\n".join(lines))
        for w in exp.warnings:
            notify_warning(w)
        if report:
            notify_info(str(report).splitlines()[0])

    def _add_outline(self, outline, req, scale, translate, geo):
        from napari.utils.colormaps import DirectLabelColormap

        cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: OUTLINE_COLOR})
        z = f" · z={req.slice_index}" if req.slice_index is not None else ""
        roi = "predicted " + str(req.target) if req.roi_name == "predicted" else req.roi_name
        outline = np.asarray(outline, np.uint8)
        for ly in self._layers_of("labels"):      # the same RoI explained again: one outline, on top
            md = ly.metadata.get(META_KEY) if isinstance(ly.metadata, dict) else None
            if (md or {}).get("kind") == "roi_outline" and ly.name == f"outline · {roi}{z}" \
                    and ly.data.shape == outline.shape and np.array_equal(ly.data, outline):
                ly.visible = True
                self.viewer.layers.move(self.viewer.layers.index(ly), len(self.viewer.layers))
                return ly
        return self.viewer.add_labels(np.asarray(outline, np.uint8), name=f"outline · {roi}{z}", scale=scale,
                                      translate=translate, colormap=cmap, opacity=1.0,
                                      metadata={META_KEY: {"kind": "roi_outline", "roi": req.roi_name,
                                                           "image": req.image_layer_name}, **geo})

    def _on_layer_removed(self, event=None) -> None:
        gone = getattr(event, "value", None)
        if gone is not None and _key(gone) in self._raw:
            self._raw.pop(_key(gone))
            for ly in self._evidence.pop(_key(gone), []):
                if ly in self.viewer.layers:
                    self.viewer.layers.remove(ly)
        self.result_stage.release()      # no result visible any more: the label layers come back

    def _on_active_changed(self, event=None) -> None:
        ly = self.viewer.layers.selection.active
        self.result_stage.select(ly)
        if ly is not None and _key(ly) in self._raw:
            self._show_legend(ly)

    def _on_limits_changed(self, event=None) -> None:
        self._on_active_changed()

    def _show_legend(self, layer) -> None:
        self._legend_for = _key(layer)      # the result the canvas legend describes
        md = (layer.metadata.get(META_KEY) or {}) if isinstance(layer.metadata, dict) else {}
        self.legend.setText(md.get("legend", ""))
        ov = self.viewer.text_overlay
        lo, hi = (float(v) for v in layer.contrast_limits)
        # the colour bar's own ticks can be as sparse as a lone "0": three values and the unit
        full = (f"{hi:.3g}" if lo == 0 else f"{lo:.3g}" if hi == 0 else f"±{max(abs(lo), abs(hi)):.3g}")
        shown = f"full colour at {full} · {scale_text(lo, hi)}"
        if self._evidence.get(_key(layer)):
            shown = f"3D: surfaces enclose the strongest {EVIDENCE_TOP:g} % of each sign"
        # short lines: the canvas text must not run under the colour bar
        unit = short_unit(md.get("shown_unit", md.get("unit", "")))
        ov.text = f"{layer.name}\n{md.get('legend_short', '')}\n{shown}\nvalues: {unit}"
        ov.visible = True
        ov.position = "top_left"
        ov.font_size = 9

    def set_display(self, d, layer=None) -> None:
        """Put display settings ``d`` (:class:`~seg_explain.frontend.reading.DisplayDefaults`)
        in the controls and show the result with them (the raw values are kept)."""
        for w in (self.smooth_spin, self.top_spin, self.body_check):
            w.blockSignals(True)
        self.smooth_spin.setValue(d.smooth)
        self.top_spin.setValue(d.top_percent)
        self.body_check.setChecked(d.body)
        for w in (self.smooth_spin, self.top_spin, self.body_check):
            w.blockSignals(False)
        self._redisplay(layer)

    def _active_result(self):
        ly = self.viewer.layers.selection.active
        if ly is not None and _key(ly) in self._raw:
            return ly
        results = [v["layer"] for v in self._raw.values() if v["layer"] in self.viewer.layers]
        return results[-1] if results else None

    def _redisplay(self, layer=None) -> None:
        """Apply the display helpers (smoothing, top-k %, body mask) to the shown values."""
        layer = layer or self._active_result()
        if layer is None:
            return
        rec = self._raw[_key(layer)]
        mask = body_mask(rec["image"], rec["pred"]) if self.body_check.isChecked() else None
        shown = shown_sign(rec["spec"]) * display_map(rec["raw"], self.smooth_spin.value(), self.top_spin.value(),
                                                      mask, spatial_dims=rec["raw"].ndim)
        if not np.array_equal(shown, layer.data):
            layer.data = shown
            # colour limits from the displayed values (smoothing lowers the peaks: not faint)
            spec, one = rec["spec"], rec["spec"].is_one_sided(rec["params"])
            lim, _ = display_limits(shown if np.any(shown) else rec["raw"], spec.caps.map_kind)
            layer.contrast_limits = attribution_limits(lim, one, False)
        self._update_evidence(layer)

    # ------------------------------------------------------------------ 3D --
    def _sync_3d(self) -> None:
        for rec in list(self._raw.values()):
            if rec["layer"] in self.viewer.layers:
                self._update_evidence(rec["layer"])

    def _update_evidence(self, layer) -> None:
        """In the 3D view: two surfaces (supporting / opposing evidence) replace the cloud."""
        rec = self._raw[_key(layer)]
        want = (int(self.viewer.dims.ndisplay) == 3 and np.ndim(layer.data) == 3
                and self.surfaces_check.isChecked())
        for ly in self._evidence.pop(_key(layer), []):
            if ly in self.viewer.layers:
                self.viewer.layers.remove(ly)
        if not want:
            if rec.pop("hidden", False):
                layer.visible = True
            if self._legend_for == _key(layer):
                self._show_legend(layer)
            return
        spec = rec["spec"]
        sigma = EVIDENCE_SMOOTH if spec.caps.map_kind == "voxel" else 0.0
        sup, opp, t_sup, t_opp = evidence_volumes(np.asarray(layer.data), False, EVIDENCE_TOP,  # shown: + = support
                                                  smooth=sigma)
        parts = [(sup, t_sup, "red", "supports")]
        if not spec.is_one_sided(rec["params"]):
            parts.append((opp, t_opp, "blue", "opposes"))
        made = []
        md = {META_KEY: {"kind": "evidence", "of": layer.name}}
        active = self.viewer.layers.selection.active
        for arr, thr, cmap, what in parts:
            if not np.any(arr > 0):
                continue
            # bounded in size: software OpenGL ray-casts every voxel of every iso layer per frame
            arr, sc, tr = bounded_volume(arr, layer.scale, layer.translate)
            made.append(self.viewer.add_image(
                arr, name=f"{layer.name} · strongest {EVIDENCE_TOP:g} % {what} the RoI", scale=sc,
                translate=tr, colormap=cmap, rendering="iso", iso_threshold=thr,
                # the surface sits at the threshold: map it to the colormap's full colour
                contrast_limits=(0.0, thr), blending="translucent", metadata=md))
        self._evidence[_key(layer)] = made
        if self._legend_for == _key(layer):
            self._show_legend(layer)
        if layer.visible:
            layer.visible = False
            rec["hidden"] = True
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    # ------------------------------------------------------------ failures --
    def _on_failure(self, failure) -> None:
        self.status.setText(f"Failed: {failure.message}")
        notify_error(f"Explain failed: {failure.message}")

    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled.")

    # ------------------------------------------------------------- helpers --
    def set_target(self, name: str) -> None:
        i = self.class_combo.findText(name)
        if i < 0:
            raise ValueError(f"unknown class {name!r}")
        self.class_combo.setCurrentIndex(i)

    def _shutdown_workers(self) -> None:
        """Stop and join every worker (the viewer or the dock is closing; see ClosingDock)."""
        self._cost_timer.stop()
        super()._shutdown_workers()


def _range_text(limits) -> str:
    lo, hi = (float(v) for v in limits)
    return f"±{hi:.3g}" if lo == -hi else f"{lo:.3g} to {hi:.3g}"


def _key(layer) -> str:
    """A layer's identity that survives napari's proxy objects (the dock gets a proxied viewer)."""
    return str(getattr(layer, "unique_id", None) or id(layer))


def _legend(spec, exp) -> str:
    """Plain words first (colour words that match the colormap), then the unit."""
    return legend(spec, exp.target_name, exp.params)


def _legend_short(spec, exp) -> str:
    """The canvas version: the colours in a few words (the unit has its own line)."""
    return legend_short(spec, exp.target_name, exp.params)


__all__ = ["ExplainWidget"]
