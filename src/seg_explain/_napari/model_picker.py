"""One model chooser for both docks: samples, recent models, a folder or a file; a device.

Predictable by design:

- the model only changes when the user picks one (never because the image changed; a model
  that does not fit the image is *said*, not swapped);
- loading runs in a worker (with a warm-up that also times the network for cost estimates);
  a model that fails to load is reported in one line, removed from the list and from the
  remembered models, and the previous working model comes back;
- the device list holds only what this torch build can use (``auto``, ``cpu``, and ``cuda``
  / ``mps`` when present);
- nnU-Net v2 trained-model folders and MONAI bundle folders are both "model folders".

Signals: ``loaded(dict)`` with the model description (class names, dims, layers, path,
device), ``cleared()`` while a model is loading or after a failure, ``status(str)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qtpy.QtCore import QSettings, Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QSizePolicy, QWidget

from ..frontend.jobs import ModelCache, available_devices, load_model_job
from ..models.formats import file_suffixes, formats_help
from .params import compact
from .workers import JobRunner

BROWSE_DIR = "__browse_dir__"
BROWSE_FILE = "__browse_file__"
MAX_RECENT = 8


def settings() -> QSettings:
    """Where the docks remember models and choices (``SEG_EXPLAIN_SETTINGS`` = an .ini path)."""
    path = os.environ.get("SEG_EXPLAIN_SETTINGS")
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings("napari-seg-explain", "napari-seg-explain")


def sample_models() -> list[tuple[str, str, int]]:
    """(label, path, spatial dims) of the shipped sample models that exist."""
    out = []
    try:
        from ..paths import sample_path

        for key, label, sd in (("brain3d", "brain3d sample (3D)", 3), ("brain2d", "brain2d sample (2D)", 2)):
            p = sample_path("models", key)
            if (p / "configs" / "metadata.json").is_file():
                out.append((label, str(p), sd))
    except FileNotFoundError:
        pass
    return out


class ModelPicker(QWidget):
    """Model combo + device combo; loads the chosen model in a worker (see module doc)."""

    loaded = Signal(dict)
    cleared = Signal()
    status = Signal(str)

    def __init__(self, cache: ModelCache | None = None, parent=None):
        super().__init__(parent)
        self.cache = cache or ModelCache()
        self.runner = JobRunner()
        self.settings = settings()
        self.info: dict[str, Any] | None = None
        self._wanted: tuple[str, str] | None = None
        self._loading: tuple[str, str] | None = None
        self._last_good: str | None = None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.combo = compact(QComboBox(), chars=14)
        self.combo.setObjectName("model_combo")
        self.combo.setProperty("min_px", 150)          # the model's name stays readable in a narrow dock
        self.combo.setToolTip("the segmentation model: a shipped sample, a recent model, or "
                              f"{formats_help()}; remembered between sessions")
        self.device = QComboBox()
        self.device.setObjectName("device_combo")
        self.device.setProperty("compact_chars", 4)
        self.device.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.device.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.device.addItems(available_devices())
        self.device.setToolTip("where the network runs (auto: a GPU when there is one)")
        lay.addWidget(self.combo, 1)
        lay.addWidget(self.device)
        dev = self.settings.value("device", "auto")
        if self.device.findText(str(dev)) >= 0:
            self.device.setCurrentText(str(dev))
        self.fill()
        self.combo.activated.connect(self._on_activated)
        self.device.activated.connect(lambda _i: self.request())

    # ------------------------------------------------------------------ list --
    def recent(self) -> list[str]:
        val = self.settings.value("recent_models", [])
        if isinstance(val, str):
            val = [val]
        return [str(v) for v in (val or [])]

    def _set_recent(self, paths: list[str]) -> None:
        self.settings.setValue("recent_models", paths[:MAX_RECENT])
        self.settings.sync()

    def fill(self, select: str | None = None) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        seen = set()
        for label, path, _sd in sample_models():
            self.combo.addItem(label, path)
            seen.add(path)
        for path in self.recent():
            if path not in seen and Path(path).exists():
                self.combo.addItem(Path(path).name, path)
                self.combo.setItemData(self.combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
                seen.add(path)
        self.combo.addItem("Model folder…", BROWSE_DIR)
        self.combo.addItem("Model file (.ts/.pt/.pt2)…", BROWSE_FILE)
        if select is not None and self.combo.findData(select) >= 0:
            self.combo.setCurrentIndex(self.combo.findData(select))
        self.combo.blockSignals(False)

    @property
    def path(self) -> str | None:
        d = self.combo.currentData()
        return None if d in (None, BROWSE_DIR, BROWSE_FILE) else str(d)

    @property
    def device_name(self) -> str:
        return self.device.currentText() or "auto"

    # ----------------------------------------------------------------- choose --
    def select(self, path: str | os.PathLike, load: bool = True) -> None:
        """Pick a model by path (added to the list) and load it."""
        path = str(path)
        if self.combo.findData(path) < 0:
            self.combo.insertItem(max(0, self.combo.count() - 2), Path(path).name, path)
        self.combo.setCurrentIndex(self.combo.findData(path))
        if load:
            self.request()

    def select_for_dims(self, spatial_dims: int | None) -> None:
        """The remembered model, else the sample model that fits images of ``spatial_dims``."""
        last = self.settings.value("last_model", None)
        if last and self.combo.findData(str(last)) >= 0:
            self.select(str(last))
            return
        for _label, p, sd in sample_models():
            if spatial_dims is None or sd == spatial_dims:
                self.select(p)
                return

    def _on_activated(self, _i=None) -> None:
        data = self.combo.currentData()
        if data in (BROWSE_DIR, BROWSE_FILE):
            start = str(Path(self.recent()[0]).parent) if self.recent() else str(Path.home())
            if data == BROWSE_DIR:
                path = QFileDialog.getExistingDirectory(self, "Model folder (MONAI bundle or nnU-Net)", start)
            else:
                path, _ = QFileDialog.getOpenFileName(
                    self, "Model file", start, "Models (" + " ".join(f"*{x}" for x in file_suffixes())
                    + ");;All files (*)")
            if not path:
                self._back_to_last()
                return
            self.select(path)
            return
        self.request()

    def _back_to_last(self) -> None:
        i = self.combo.findData(self._last_good) if self._last_good else -1
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(max(i, 0))
        self.combo.blockSignals(False)

    def request(self) -> None:
        """Load the model shown in the combo on the chosen device (if not loaded already)."""
        path = self.path
        if path is None:
            return
        self.settings.setValue("device", self.device_name)
        want = (path, self.device_name)
        if self._wanted == want and (self.info is not None or self.runner.running):
            return
        self._wanted = want
        self.info = None
        self.cleared.emit()
        if not self.runner.running:  # else _on_idle starts the wanted one
            self._start()

    def _start(self) -> None:
        path, device = self._loading = self._wanted
        self.status.emit(f"Loading model {Path(path).name} …")
        self.runner.start(load_model_job, self.cache, path, device, desc="Loading model", pass_token=False,
                          on_result=lambda info, w=(path, device): self._on_loaded(w, info),
                          on_failure=lambda f, w=(path, device): self._on_failed(w, f),
                          on_idle=self._on_idle)

    def _on_idle(self) -> None:
        if self._wanted is not None and self._wanted != self._loading:
            self._start()

    def _on_loaded(self, want, info) -> None:
        if want != self._wanted:
            return
        self.info = info
        self._last_good = want[0]
        self._set_recent([want[0]] + [p for p in self.recent() if p != want[0]])
        self.settings.setValue("last_model", want[0])
        self.settings.sync()
        self.status.emit(f"Model {Path(info['name']).name}: {info['spatial_dims']}D, {info['in_channels']} "
                         f"channel(s), {len(info['class_names'])} classes, on {info['device']}")
        self.loaded.emit(info)

    def _on_failed(self, want, failure) -> None:
        from napari.utils.notifications import show_error

        if want != self._wanted:
            return
        bad = want[0]
        # a model that cannot be loaded leaves the list and the remembered models
        self._set_recent([p for p in self.recent() if p != bad])
        if self.settings.value("last_model", None) == bad:
            self.settings.remove("last_model")
        samples = {p for _l, p, _sd in sample_models()}
        i = self.combo.findData(bad)
        if i >= 0 and bad not in samples:
            self.combo.removeItem(i)
        self._wanted = None
        msg = f"Cannot load the model {Path(bad).name}: {failure.message}"
        show_error(msg)
        self.status.emit(msg)
        if self._last_good and self._last_good != bad and self.combo.findData(self._last_good) >= 0:
            self.select(self._last_good)          # the previous working model comes back
        else:
            self._back_to_last()
            self.cleared.emit()

    def shutdown(self) -> None:
        self.runner.shutdown()
