"""Choosers for the registry's object-valued parameter *kinds* (no method or parameter named).

A method's :class:`~seg_explain.explainers.registry.Param` whose value is an object rather
than a number gets a chooser by its ``kind``: ``bank`` -> where replacement images come
from (the sample bank, zeros, a folder of images, other image layers), ``label_map`` -> a
label layer (or none). :class:`KindChoosers` owns one combo box per kind; the parameter
form shows it in the parameter's row (:meth:`~seg_explain._napari.params.ParamForm.set_method`
with :attr:`KindChoosers.widgets`) and the request reads it back with
:meth:`KindChoosers.value`. The entries' texts and their meaning are viewer-agnostic
(:mod:`seg_explain.frontend.requests`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QComboBox, QFileDialog

from ..frontend.requests import (
    BANK_FOLDER,
    FOLDER_PREFIX,
    REF_PRED,
    bank_choice,
    bank_items,
    estimate_value,
    volume_slices,
)
from .layers import image_from_layer, is_result_layer, make_loaded
from .params import compact


def refill(combo: QComboBox, items: list[str], keep: str | None, fixed_first=()) -> None:
    """Replace a combo box's entries (no signals), keeping ``keep`` selected when listed."""
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(list(fixed_first) + items)
    if keep is not None and combo.findText(keep) >= 0:
        combo.setCurrentIndex(combo.findText(keep))
    combo.blockSignals(False)


class KindChoosers:
    """One chooser per object-valued parameter kind, for the image layers of ``viewer``."""

    def __init__(self, parent, viewer) -> None:
        self.parent, self.viewer = parent, viewer
        self.folder: str | None = None
        self._image: str = ""
        self._info: dict | None = None
        self.bank = compact(QComboBox(parent))
        self.bank.setObjectName("bank_combo")
        self.bank.setToolTip("where replacement blocks come from: real blocks of other images "
                             "(never the explained image), or zeros (occlusion)")
        self.label_map = compact(QComboBox(parent))
        self.label_map.setObjectName("reference_combo")
        self.label_map.setToolTip("a ground-truth label map the RoI Dice is measured against; without "
                                  "it effects that would improve the Dice cannot be measured")
        self.widgets = {"bank": self.bank, "label_map": self.label_map}
        for w in self.widgets.values():
            w.hide()
        self.bank.activated.connect(self._on_bank_activated)

    # ------------------------------------------------------------------ entries --
    def other_images(self, image_name: str) -> list[str]:
        """The image layers other than ``image_name`` (results excluded): a bank's candidates."""
        from napari.layers import Image

        return [ly.name for ly in self.viewer.layers if isinstance(ly, Image)
                and not is_result_layer(ly, ("attribution", "evidence")) and ly.name != image_name]

    def refresh_bank(self, image_name: str, info: dict | None) -> None:
        """The ``bank`` entries for the explained image ``image_name`` and the model ``info``."""
        from ..bank import default_bank_path

        self._image, self._info = image_name, info
        sample = info is None or default_bank_path(info["spatial_dims"]) is not None
        refill(self.bank, bank_items(sample, self.folder, self.other_images(image_name)), self.bank.currentText())

    def refresh_label_maps(self, names: list[str]) -> None:
        """The ``label_map`` entries: none (the model's prediction), then ``names``."""
        refill(self.label_map, names, self.label_map.currentText(), [REF_PRED])

    def _on_bank_activated(self, _i=None) -> None:
        if self.bank.currentText() == BANK_FOLDER:
            path = QFileDialog.getExistingDirectory(self.parent, "Folder of reference images for PdCR",
                                                    str(Path.home()))
            if path:
                self.folder = path
            self.refresh_bank(self._image, self._info)
            if self.folder:
                self.bank.setCurrentText(FOLDER_PREFIX + self.folder)

    # ------------------------------------------------------------------- values --
    def estimate_value(self, kind: str):
        """The value for the cost estimate (no images copied; None = the parameter's default)."""
        w = self.widgets.get(kind)
        return estimate_value(kind, w.currentText()) if w is not None else None

    def value(self, kind: str, image_name: str, slice_index: int | None = None):
        """The chosen value of a parameter of ``kind`` (main thread: image layers are copied;
        a 2D model on a volume gets slices of each bank volume)."""
        if kind == "label_map":
            ref = self.label_map.currentText()
            if ref and ref != REF_PRED and ref in self.viewer.layers:
                return np.array(self.viewer.layers[ref].data, copy=True)
            return None
        choice = bank_choice(self.bank.currentText(), self.other_images(image_name))
        if not isinstance(choice, list):
            return choice
        out = []
        for n in choice:
            b = image_from_layer(self.viewer.layers[n])
            if slice_index is not None and b.spatial_dims == 3:   # 2D model: slices of the volume
                for z in volume_slices(b.data.shape[-3]):
                    out.append(make_loaded(np.ascontiguousarray(b.data[..., z, :, :]), b.spacing[1:],
                                           b.origin[1:], 2))
            else:
                out.append(b)
        return out
