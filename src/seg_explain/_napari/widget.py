"""The Explain dock: paint an RoI, press Explain, browse the attribution as a layer.

Everything the user picks is a widget of this dock (image layer, model, device, class,
RoI layer + label, method and that method's parameters); the computation runs in a napari
thread worker (:mod:`.workers`) on copies of the layers' arrays taken here on the main
thread, and comes back as new layers (the user's layers are never changed or removed):

- ``prediction · <model>``: the model's label map (Labels; the class name shows under the cursor);
- ``<method> · <class> · <RoI>``: the attribution (Image) on the image's grid, with a
  diverging colormap that is transparent at 0 and symmetric contrast limits, so the
  anatomy stays visible where nothing is attributed;
- PdCR also: ``RoI outline · ...`` (Labels) and its positive / negative / irrelevant summary.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QSettings, Qt
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                            QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..allocator import tune_allocator
from .layers import (GEOMETRY_KEY, META_KEY, attribution_colormap, class_features, current_index,
                     image_from_layer, is_result_layer, make_loaded, spatial_dims_of, spatial_shape_of,
                     sync_attribution_colormaps)
from .params import ParamForm, compact_all, parse_text
from .workers import ExplainRequest, JobRunner, ModelCache, explain_job, load_model_job, scalar_items

log = logging.getLogger(__name__)

BROWSE_DIR = "__browse_dir__"
BROWSE_FILE = "__browse_file__"
NO_ROI = "(predicted class)"
SAMPLE_BANK = "sample bank (MNI152)"
BANK_FOLDER = "folder…"
ALL_LAYERS = "all other image layers"
REF_PRED = "(model prediction)"
DEFAULT_METHOD = "smoothgrad"
MAX_RECENT = 8


def settings() -> QSettings:
    """Where the dock remembers models and choices (``SEG_EXPLAIN_SETTINGS`` = an .ini path)."""
    path = os.environ.get("SEG_EXPLAIN_SETTINGS")
    if path:
        return QSettings(path, QSettings.IniFormat)
    return QSettings("napari-seg-explain", "napari-seg-explain")


def sample_models() -> list[tuple[str, str]]:
    """(label, path) of the shipped sample bundles that exist."""
    out = []
    try:
        from ..paths import sample_path

        for key, label in (("brain3d", "brain3d sample (3D)"), ("brain2d", "brain2d sample (2D)")):
            p = sample_path("models", key)
            if (p / "configs" / "metadata.json").is_file():
                out.append((label, str(p)))
    except FileNotFoundError:
        pass
    return out


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class ExplainWidget(QWidget):
    """Dock widget: explain a segmentation model's prediction inside a painted RoI."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # on the GUI thread, before any worker thread has its own malloc arena
        tune_allocator()
        self.viewer = napari_viewer
        self.cache = ModelCache()
        self.runner = JobRunner()
        self.loader = JobRunner()
        self.model_info: dict[str, Any] | None = None
        self._model_wanted: tuple[str, str] | None = None
        self._loading: tuple[str, str] | None = None
        self._current_req: ExplainRequest | None = None
        self._last_result_layers: list = []
        self._bank_folder: str | None = None
        self._updating = False
        self.settings = settings()
        from ..explainers.base import get_spec, methods

        self._get_spec = get_spec
        self._methods = methods()
        self._build_ui()
        compact_all(self)
        self._connect_viewer()
        self._refresh_layers()
        self._on_method_changed()
        self._restore_model()

    # ------------------------------------------------------------------ UI --
    def _build_ui(self) -> None:
        lay = QVBoxLayout(self)
        box = QGroupBox("Input")
        f = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.setObjectName("image_combo")
        f.addRow("image", self.image_combo)

        self.model_combo = QComboBox()
        self.model_combo.setObjectName("model_combo")
        self.model_combo.setToolTip("a MONAI bundle folder, or a TorchScript (.ts/.pt) / torch.export (.pt2) "
                                    "file with a JSON sidecar; remembered between sessions")
        f.addRow("model", self.model_combo)
        self.device_combo = QComboBox()
        self.device_combo.setObjectName("device_combo")
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        f.addRow("device", self.device_combo)
        self.class_combo = QComboBox()
        self.class_combo.setObjectName("class_combo")
        self.class_combo.setToolTip("the class whose segmentation inside the RoI is explained")
        f.addRow("class", self.class_combo)

        roi_row = QHBoxLayout()
        self.roi_combo = QComboBox()
        self.roi_combo.setObjectName("roi_combo")
        self.roi_combo.setToolTip("a Labels layer you paint; empty = the voxels predicted as the class")
        self.new_roi_button = QPushButton("New RoI")
        self.new_roi_button.setObjectName("new_roi_button")
        self.new_roi_button.setToolTip("add an empty Labels layer on the image's grid and start painting")
        roi_row.addWidget(self.roi_combo, 1)
        roi_row.addWidget(self.new_roi_button)
        f.addRow("RoI", roi_row)
        self.roi_label = QSpinBox()
        self.roi_label.setObjectName("roi_label")
        self.roi_label.setRange(1, 65535)
        self.roi_label.setToolTip("which label of the RoI layer is the RoI")
        f.addRow("RoI label", self.roi_label)
        lay.addWidget(box)

        mbox = QGroupBox("Method")
        mf = QVBoxLayout(mbox)
        top = QFormLayout()
        self.method_combo = QComboBox()
        self.method_combo.setObjectName("method_combo")
        self.method_combo.addItems(self._methods)
        top.addRow("method", self.method_combo)
        mf.addLayout(top)
        self.method_doc = QLabel()
        self.method_doc.setWordWrap(True)
        self.method_doc.setStyleSheet("color: gray; font-size: 10px;")
        mf.addWidget(self.method_doc)
        self.params = ParamForm()
        mf.addWidget(self.params)
        common = QFormLayout()
        self.seed_spin = QSpinBox()
        self.seed_spin.setObjectName("seed_spin")
        self.seed_spin.setRange(0, 2 ** 31 - 1)
        common.addRow("seed", self.seed_spin)
        self.batch_edit = QLineEdit()
        self.batch_edit.setObjectName("batch_edit")
        self.batch_edit.setPlaceholderText("auto")
        common.addRow("batch size", self.batch_edit)
        mf.addLayout(common)
        lay.addWidget(mbox)

        # PdCR choosers (shown through the param form)
        self.bank_combo = QComboBox(self)
        self.bank_combo.setObjectName("bank_combo")
        self.bank_combo.setToolTip("reference images the replacement blocks are cut from (never the explained image)")
        self.reference_combo = QComboBox(self)
        self.reference_combo.setObjectName("reference_combo")
        self.reference_combo.setToolTip("label map the RoI Dice is measured against (default: the prediction)")
        self.bank_combo.hide()
        self.reference_combo.hide()

        self.explain_button = QPushButton("Explain")
        self.explain_button.setObjectName("explain_button")
        self.explain_button.setMinimumHeight(32)
        lay.addWidget(self.explain_button)
        self.status = QLabel("")
        self.status.setObjectName("status_label")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)
        self.summary = QLabel("")
        self.summary.setObjectName("summary_label")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        lay.addStretch(1)

        self._fill_model_combo()
        dev = self.settings.value("device", "auto")
        if dev in ("auto", "cpu", "cuda"):
            self.device_combo.setCurrentText(dev)
        m = self.settings.value("method", DEFAULT_METHOD)
        self.method_combo.setCurrentText(m if m in self._methods else
                                         (DEFAULT_METHOD if DEFAULT_METHOD in self._methods else self._methods[0]))

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.model_combo.activated.connect(self._on_model_activated)
        self.device_combo.activated.connect(lambda _i: self._request_model())
        self.roi_combo.currentIndexChanged.connect(self._on_roi_changed)
        self.new_roi_button.clicked.connect(self.new_roi_layer)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.bank_combo.activated.connect(self._on_bank_activated)
        self.explain_button.clicked.connect(self._on_explain_clicked)

    def _fill_model_combo(self, select: str | None = None) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        seen = set()
        for label, path in sample_models():
            self.model_combo.addItem(label, path)
            seen.add(path)
        for path in self._recent():
            if path not in seen and Path(path).exists():
                self.model_combo.addItem(Path(path).name, path)
                self.model_combo.setItemData(self.model_combo.count() - 1, path, Qt.ToolTipRole)
                seen.add(path)
        self.model_combo.addItem("Bundle folder…", BROWSE_DIR)
        self.model_combo.addItem("Model file (.ts/.pt/.pt2)…", BROWSE_FILE)
        if select is not None:
            i = self.model_combo.findData(select)
            if i >= 0:
                self.model_combo.setCurrentIndex(i)
        self.model_combo.blockSignals(False)

    def _recent(self) -> list[str]:
        val = self.settings.value("recent_models", [])
        if isinstance(val, str):
            val = [val]
        return [str(v) for v in (val or [])]

    def _remember(self, path: str) -> None:
        rec = [path] + [p for p in self._recent() if p != path]
        self.settings.setValue("recent_models", rec[:MAX_RECENT])
        self.settings.setValue("last_model", path)
        self.settings.sync()

    # -------------------------------------------------------------- viewer --
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layers_changed)
        ev.reordered.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self.viewer.dims.events.ndisplay.connect(self._on_ndisplay)

    def _on_ndisplay(self, event=None) -> None:
        sync_attribution_colormaps(self.viewer)

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

    @staticmethod
    def _refill(combo: QComboBox, items: list[str], keep: str | None, fixed_first: list[str] = ()) -> None:
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
            images = [ly.name for ly in self._layers_of("image") if not is_result_layer(ly)]
            old_image = self.image_combo.currentText()
            keep = old_image if old_image in images else (images[-1] if images else None)
            self._refill(self.image_combo, images, keep)
            self._refresh_roi_choices()
            self._refresh_bank_choices()
            if self.image_combo.currentText() != old_image:
                self._on_image_changed()
        finally:
            self._updating = False

    def _refresh_roi_choices(self) -> None:
        img = self.image_layer()
        shape = spatial_shape_of(img) if img is not None else None
        labels = [ly for ly in self._layers_of("labels")
                  if not is_result_layer(ly, ("roi_outline",))
                  and (shape is None or tuple(np.shape(ly.data)) == shape)]
        names = [ly.name for ly in labels]
        old = self.roi_combo.currentText()
        pref = old if old in names else None
        if pref is None:  # prefer a layer that is an RoI over a prediction / atlas
            rois = [ly.name for ly in labels if (ly.metadata.get(META_KEY, {}) or {}).get("kind") == "roi"
                    or "roi" in ly.name.lower()]
            pref = rois[-1] if rois else NO_ROI
        self._refill(self.roi_combo, names, pref, [NO_ROI])
        self._refill(self.reference_combo, names, self.reference_combo.currentText(), [REF_PRED])
        if self.roi_combo.currentText() != old:
            self._on_roi_changed()

    def _refresh_bank_choices(self) -> None:
        from ..bank import default_bank_path

        items = []
        if self.model_info and default_bank_path(self.model_info["spatial_dims"]) is not None:
            items.append(SAMPLE_BANK)
        elif self.model_info is None:
            items.append(SAMPLE_BANK)
        if self._bank_folder:
            items.append(f"folder: {self._bank_folder}")
        items.append(BANK_FOLDER)
        cur = self.image_combo.currentText()
        others = [ly.name for ly in self._layers_of("image") if not is_result_layer(ly) and ly.name != cur]
        if len(others) > 1:
            items.append(ALL_LAYERS)
        items += [f"layer: {n}" for n in others]
        self._refill(self.bank_combo, items, self.bank_combo.currentText())

    def _on_image_changed(self, _i=None) -> None:
        self._refresh_roi_choices()
        self._refresh_bank_choices()
        img = self.image_layer()
        if img is None:
            return
        # a sample model of the other dimensionality -> the sample that fits
        sd = spatial_dims_of(img)
        path = self.model_combo.currentData()
        samples = dict((p, lbl) for lbl, p in sample_models())
        if path in samples and self.model_info is not None and self.model_info["spatial_dims"] != sd:
            for lbl, p in sample_models():
                if (sd == 3 and "3D" in lbl) or (sd == 2 and "2D" in lbl):
                    self.select_model(p)
                    break

    def _on_roi_changed(self, _i=None) -> None:
        ly = self.roi_layer()
        if ly is None:
            return
        data = np.asarray(ly.data)
        vals = np.unique(data[data > 0]) if data.size <= 50_000_000 else np.array([])
        sel = int(getattr(ly, "selected_label", 1) or 1)
        if vals.size and sel not in vals:
            sel = int(vals[0])
        self.roi_label.setValue(max(1, sel))
        hint = (ly.metadata.get(META_KEY, {}) or {}).get("target") if isinstance(ly.metadata, dict) else None
        if hint and self.class_combo.findText(str(hint)) >= 0:
            self.class_combo.setCurrentIndex(self.class_combo.findText(str(hint)))

    def new_roi_layer(self):
        """Add an empty Labels layer on the image's grid and select it for painting."""
        img = self.image_layer()
        if img is None:
            notify_error("Add an image layer first: the RoI layer is made on the image's grid")
            return None
        sd = spatial_dims_of(img)
        shape = spatial_shape_of(img)
        layer = self.viewer.add_labels(
            np.zeros(shape, np.uint8), name="RoI", scale=tuple(img.scale)[-sd:],
            translate=tuple(img.translate)[-sd:],
            metadata={META_KEY: {"kind": "roi", "image": img.name}})
        try:
            layer.brush_size = 6
            layer.selected_label = 1
            layer.mode = "paint"
        except Exception:  # noqa: BLE001 - cosmetic
            pass
        self.viewer.layers.selection.active = layer
        self._refresh_roi_choices()
        self.roi_combo.setCurrentText(layer.name)
        self.roi_label.setValue(1)
        return layer

    # --------------------------------------------------------------- model --
    def _restore_model(self) -> None:
        last = self.settings.value("last_model", None)
        img = self.image_layer()
        sd = spatial_dims_of(img) if img is not None else None
        choice = None
        if last and self.model_combo.findData(str(last)) >= 0:
            choice = str(last)
        samples = sample_models()
        if sd is not None and (choice is None or choice in dict((p, 1) for _l, p in samples)):
            for lbl, p in samples:
                if (sd == 3 and "3D" in lbl) or (sd == 2 and "2D" in lbl):
                    choice = p
        if choice is None and samples:
            choice = samples[0][1]
        if choice is not None:
            self.select_model(choice)

    def select_model(self, path: str | os.PathLike) -> None:
        """Pick a model by path (added to the list and remembered) and load it."""
        path = str(path)
        if self.model_combo.findData(path) < 0:
            self._fill_model_combo()
            if self.model_combo.findData(path) < 0:
                self.model_combo.insertItem(max(0, self.model_combo.count() - 2), Path(path).name, path)
        self.model_combo.setCurrentIndex(self.model_combo.findData(path))
        self._request_model()

    def _on_model_activated(self, _i=None) -> None:
        data = self.model_combo.currentData()
        if data in (BROWSE_DIR, BROWSE_FILE):
            start = str(Path(self._recent()[0]).parent) if self._recent() else str(Path.home())
            if data == BROWSE_DIR:
                path = QFileDialog.getExistingDirectory(self, "MONAI bundle folder", start)
            else:
                path, _ = QFileDialog.getOpenFileName(
                    self, "Model file", start, "Models (*.ts *.pt *.pth *.jit *.pt2);;All files (*)")
            if not path:
                prev = self._model_wanted[0] if self._model_wanted else None
                i = self.model_combo.findData(prev) if prev else 0
                self.model_combo.setCurrentIndex(max(i, 0))
                return
            self.select_model(path)
            return
        self._request_model()

    def _request_model(self) -> None:
        path = self.model_combo.currentData()
        if not path or path in (BROWSE_DIR, BROWSE_FILE):
            return
        device = self.device_combo.currentText()
        self.settings.setValue("device", device)
        want = (str(path), device)
        if self._model_wanted == want and (self.model_info is not None or self.loader.running):
            return
        self._model_wanted = want
        self.model_info = None
        self.class_combo.clear()
        self._update_buttons()
        if not self.loader.running:  # else _on_loader_idle starts the wanted one
            self._start_loader()

    def _start_loader(self) -> None:
        path, device = self._loading = self._model_wanted
        self.status.setText(f"Loading model {Path(path).name} …")
        self.loader.start(load_model_job, self.cache, path, device, desc="Loading model", pass_token=False,
                          on_result=lambda info, w=(path, device): self._on_model_loaded(w, info),
                          on_failure=lambda f, w=(path, device): self._on_model_failed(w, f),
                          on_idle=self._on_loader_idle)

    def _on_loader_idle(self) -> None:
        if self._model_wanted is not None and self._model_wanted != self._loading:
            self._start_loader()
        self._update_buttons()

    def _on_model_loaded(self, want, info) -> None:
        if want != self._model_wanted:
            return
        self.model_info = info
        self._remember(want[0])
        names = info["class_names"]
        keep = self.class_combo.currentText()
        self.class_combo.clear()
        self.class_combo.addItems(names)
        hint = None
        roi = self.roi_layer()
        if roi is not None and isinstance(roi.metadata, dict):
            hint = (roi.metadata.get(META_KEY, {}) or {}).get("target")
        for cand in (hint, keep, names[1] if len(names) > 1 else names[0]):
            if cand and cand in names:
                self.class_combo.setCurrentText(cand)
                break
        self.status.setText(f"Model {info['name']}: {info['spatial_dims']}D, {info['in_channels']} channel(s), "
                            f"{len(names)} classes, on {info['device']}")
        self._refresh_bank_choices()
        self._on_method_changed()
        self._update_buttons()

    def _on_model_failed(self, want, failure) -> None:
        if want != self._model_wanted:
            return
        self.status.setText(f"Cannot load the model: {failure.message}")
        notify_error(f"Cannot load the model: {failure.message}")
        self._update_buttons()

    # -------------------------------------------------------------- method --
    def _on_method_changed(self, _i=None) -> None:
        method = self.method_combo.currentText()
        if not method:
            return
        self.settings.setValue("method", method)
        spec = self._get_spec(method)
        first = spec.doc.strip().splitlines()[0] if spec.doc else ""
        self.method_doc.setText(first)
        extra = {}
        if method == "pdcr":
            extra = {"bank": self.bank_combo, "reference": self.reference_combo}
        layers = self.model_info.get("layers", []) if self.model_info else []
        self.params.set_method(method, spec.defaults, extra, layers)

    def _on_bank_activated(self, _i=None) -> None:
        if self.bank_combo.currentText() == BANK_FOLDER:
            path = QFileDialog.getExistingDirectory(self, "Folder of reference images for PdCR", str(Path.home()))
            if path:
                self._bank_folder = path
            self._refresh_bank_choices()
            if self._bank_folder:
                self.bank_combo.setCurrentText(f"folder: {self._bank_folder}")

    # ------------------------------------------------------------- explain --
    def _update_buttons(self) -> None:
        running = self.runner.running
        self.explain_button.setText("Cancel" if running else "Explain")
        self.explain_button.setEnabled(running or (self.model_info is not None and self.image_layer() is not None))
        for w in (self.image_combo, self.model_combo, self.device_combo, self.class_combo, self.roi_combo,
                  self.roi_label, self.method_combo, self.params, self.seed_spin, self.batch_edit,
                  self.new_roi_button, self.bank_combo, self.reference_combo):
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
            from .workers import one_line

            notify_error(one_line(exc))
            self.status.setText(one_line(exc))
            return
        if req is None:
            return
        self.start(req)

    def cancel(self) -> None:
        """Stop the running explanation (no result layer is added)."""
        self.status.setText("Cancelling …")
        self.runner.cancel()

    def build_request(self) -> ExplainRequest | None:
        """Copy what the job needs out of the layers (main thread) into a request."""
        from ..errors import InputMismatchError

        img = self.image_layer()
        if img is None:
            raise InputMismatchError("Choose an image layer")
        if self.model_info is None:
            raise InputMismatchError("The model is not loaded yet")
        msd = int(self.model_info["spatial_dims"])
        isd = spatial_dims_of(img)
        li = image_from_layer(img, isd)
        slice_index = full_shape = None
        if msd == 3 and isd == 2:
            raise InputMismatchError(f"'{self.model_info['name']}' is a 3D model but '{img.name}' is a 2D image")
        if msd == 2 and isd == 3:
            # a 2D model on a volume: explain the axial slice on screen
            slice_index = current_index(self.viewer, img, axis=img.ndim - 3)
            full_shape = li.spatial_shape
            data = li.data[slice_index] if li.data.ndim == 3 else li.data[:, slice_index]
            li = make_loaded(np.ascontiguousarray(data), li.spacing[1:], li.origin[1:], 2, li.path)
        target = self.class_combo.currentText()
        if not target:
            raise InputMismatchError("Choose the class to explain")
        roi = None
        roi_name = "predicted"
        rl = self.roi_layer()
        if rl is not None:
            lab = int(self.roi_label.value())
            mask = np.asarray(rl.data) == lab
            if mask.shape != tuple(full_shape or li.spatial_shape):
                raise InputMismatchError(f"RoI layer '{rl.name}' has shape {mask.shape}, the image "
                                         f"{tuple(full_shape or li.spatial_shape)}")
            if slice_index is not None:
                mask = mask[slice_index]
            if not mask.any():
                where = f" on slice {slice_index}" if slice_index is not None else ""
                raise InputMismatchError(f"Label {lab} is not painted in RoI layer '{rl.name}'{where}; "
                                         "paint it or pick another label")
            roi = mask
            roi_name = f"{rl.name}:{lab}"
        method = self.method_combo.currentText()
        params = self.params.values()
        bank_images = None
        if method == "pdcr":
            params, bank_images = self._pdcr_params(params, img, slice_index)
        seed = int(self.seed_spin.value())
        bs = parse_text(self.batch_edit.text())
        if bs is not None and (not isinstance(bs, int) or bs < 1):
            raise InputMismatchError(f"batch size must be a positive whole number or empty, got {bs!r}")
        need_pred = self._prediction_layer(img, slice_index) is None
        req = ExplainRequest(self.model_info["path"], self._model_wanted[1], li, method, target, roi,
                             params, seed, bs, need_pred, bank_images, slice_index, full_shape)
        req.image_layer_name = img.name  # type: ignore[attr-defined]
        req.roi_name = roi_name  # type: ignore[attr-defined]
        return req

    def _pdcr_params(self, params: dict, img, slice_index):
        from ..errors import InputMismatchError

        choice = self.bank_combo.currentText()
        bank_images = None
        if choice == SAMPLE_BANK or not choice:
            params["bank"] = None
        elif choice.startswith("folder: "):
            params["bank"] = choice[len("folder: "):]
        elif choice == BANK_FOLDER:
            raise InputMismatchError("Choose the folder of PdCR reference images")
        else:
            names = ([ly.name for ly in self._layers_of("image") if not is_result_layer(ly) and ly.name != img.name]
                     if choice == ALL_LAYERS else [choice[len("layer: "):]])
            bank_images = []
            for n in names:
                ly = self.viewer.layers[n]
                b = image_from_layer(ly)
                if slice_index is not None and b.spatial_dims == 3:  # 2D model: the slices of the volume
                    for z in range(0, b.data.shape[-3], max(1, b.data.shape[-3] // 16)):
                        bank_images.append(make_loaded(np.ascontiguousarray(b.data[..., z, :, :]),
                                                       b.spacing[1:], b.origin[1:], 2))
                else:
                    bank_images.append(b)
        ref = self.reference_combo.currentText()
        if ref and ref != REF_PRED and ref in self.viewer.layers:
            r = np.array(self.viewer.layers[ref].data, copy=True)
            params["reference"] = r[slice_index] if slice_index is not None else r
        else:
            params["reference"] = None
        return params, bank_images

    def start(self, req: ExplainRequest) -> None:
        self._current_req = req
        self.summary.setText("")
        self.status.setText(f"Explaining '{req.target}' with {req.method} …")
        self.runner.start(explain_job, req, self.cache, desc=f"{req.method}: {req.target}",
                          on_message=self._on_job_message, on_result=self._on_result,
                          on_failure=self._on_failure, on_cancelled=self._on_cancelled,
                          on_idle=self._update_buttons)
        self._update_buttons()

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
    def _image_geometry(self, req):
        img = self.viewer.layers[req.image_layer_name] if req.image_layer_name in self.viewer.layers else None
        sd = 3 if req.slice_index is not None else req.image.spatial_dims
        if img is not None:
            return tuple(img.scale)[-sd:], tuple(img.translate)[-sd:], img
        return tuple(req.image.spacing), tuple(req.image.origin), None

    def _prediction_layer(self, img, slice_index):
        for ly in self._layers_of("labels"):
            md = (ly.metadata.get(META_KEY, {}) or {}) if isinstance(ly.metadata, dict) else {}
            if (md.get("kind") == "prediction" and md.get("model") == (self.model_info or {}).get("path")
                    and md.get("image") == img.name and md.get("slice_index") == slice_index
                    and tuple(np.shape(ly.data)) == spatial_shape_of(img)):
                return ly
        return None

    def _on_job_message(self, msg) -> None:
        if not isinstance(msg, tuple):
            return
        if msg[0] == "status":
            self.status.setText(f"{msg[1]} …")
        elif msg[0] == "partial" and msg[1] == "prediction":
            req = self._current_req
            payload = msg[2]
            scale, translate, img = self._image_geometry(req)
            name = f"prediction · {Path(str(payload['model_name'])).name}"
            if req.slice_index is not None:
                name += f" · z={req.slice_index}"
            md = {META_KEY: {"kind": "prediction", "model": self.model_info["path"] if self.model_info else None,
                             "image": req.image_layer_name, "slice_index": req.slice_index,
                             "class_names": payload["class_names"]}}
            if img is not None and isinstance(img.metadata, dict) and GEOMETRY_KEY in img.metadata:
                md[GEOMETRY_KEY] = img.metadata[GEOMETRY_KEY]
            layer = self.viewer.add_labels(payload["labels"], name=name, scale=scale, translate=translate,
                                           metadata=md, features=class_features(payload["class_names"]),
                                           opacity=0.35, visible=True)
            self._last_result_layers.append(layer)

    def _on_result(self, res) -> None:
        req = self._current_req
        scale, translate, img = self._image_geometry(req)
        roi_name = getattr(req, "roi_name", "predicted")
        name = f"{res.method} · {res.target_name} · {roi_name}"
        if req.slice_index is not None:
            name += f" · z={req.slice_index}"
        reverse = res.method == "pdcr"  # PdCR: ATE < 0 is supporting evidence -> red
        info = {"kind": "attribution", "method": res.method, "target": res.target_name,
                "target_index": res.target, "roi": roi_name, "image": req.image_layer_name,
                "model": req.model_path, "device": res.device, "params": scalar_items(res.params),
                "seed": req.seed, "elapsed_s": round(res.elapsed_s, 3), "n_forward": res.n_forward,
                "n_backward": res.n_backward, "limit": res.limit, "max_abs": res.max_abs,
                "slice_index": req.slice_index, "extras": scalar_items(res.extras),
                "colormap": "red = positive, blue = negative, transparent = 0" if not reverse else
                "red = ATE < 0 (supports the RoI), blue = ATE > 0 (works against it), transparent = irrelevant"}
        if res.summary:
            info["summary"] = res.summary
        md = {META_KEY: info}
        if img is not None and isinstance(img.metadata, dict) and GEOMETRY_KEY in img.metadata:
            md[GEOMETRY_KEY] = img.metadata[GEOMETRY_KEY]
        lim = float(res.limit)
        layer = self.viewer.add_image(
            res.attribution, name=name, scale=scale, translate=translate, metadata=md,
            colormap=attribution_colormap(reverse=reverse, volume=self.viewer.dims.ndisplay == 3),
            contrast_limits=(-lim, lim),
            blending="translucent", rendering="translucent", opacity=1.0)
        mx = max(float(res.max_abs), lim)
        try:
            layer.contrast_limits_range = (-mx, mx)
            layer.contrast_limits = (-lim, lim)
        except Exception:  # noqa: BLE001
            pass
        added = [layer]
        if res.outline is not None:
            # a separate event-loop turn: each layer's controls take a while to build
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self._add_outline(res, roi_name, req, scale, translate))
        self._last_result_layers = added
        self.viewer.layers.selection.active = layer
        done = (f"{res.method} for '{res.target_name}' in {res.elapsed_s:.1f} s "
                f"({res.n_forward} forward / {res.n_backward} backward passes)")
        self.status.setText(f"Done: {done}. Colour limits ±{lim:.3g} (max |a| = {res.max_abs:.3g}).")
        if res.summary:
            s = res.summary
            neg = s.get("share_negative")
            neg_text = (f"{100 * neg:.0f}% work against it (blue to cyan)" if neg is not None else
                        "blocks working against it are not measurable without a reference segmentation")
            text = (f"PdCR: {100 * (s.get('share_positive') or 0):.0f}% of the blocks support the RoI "
                    f"(red to yellow), {neg_text}, {100 * (s.get('share_irrelevant') or 0):.0f}% are irrelevant; "
                    f"Dice before perturbation M0 = {100 * s.get('m0', float('nan')):.1f} points")
            self.summary.setText(text)
            notify_info(text)

    def _add_outline(self, res, roi_name, req, scale, translate) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.2, 1.0, 0.3, 1.0)})
        active = self.viewer.layers.selection.active
        outline = self.viewer.add_labels(res.outline, name=f"RoI outline · {roi_name}", scale=scale,
                                         translate=translate, colormap=cmap, opacity=1.0,
                                         metadata={META_KEY: {"kind": "roi_outline", "roi": roi_name,
                                                              "image": req.image_layer_name}})
        self._last_result_layers.append(outline)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

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

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.runner.cancel()
        self.loader.cancel()
        super().closeEvent(event)


__all__ = ["ExplainWidget"]
