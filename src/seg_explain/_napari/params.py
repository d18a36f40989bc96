"""A form that shows one explainer's parameters, built from ``get_spec(method).defaults``.

Each default's type picks the editor: ``bool`` -> check box, ``int`` -> spin box,
``float`` -> double spin box, ``str`` with known choices -> combo box, anything else
(``None`` = automatic) -> a line edit read as a number, a JSON list or text (empty =
``None``). Parameters that need the viewer (PdCR's ``bank`` and ``reference``) and the
CAM ``layer`` get dedicated choosers set up by the dock through :class:`ParamForm` hooks.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit,
                            QSpinBox, QWidget)

CHOICES: dict[tuple[str, str], list[str]] = {
    ("integrated_gradients", "baseline"): ["zero", "min", "mean", "blur"],
    ("kernel_shap", "baseline"): ["min", "zero", "mean", "blur"],
    ("kernel_shap", "features"): ["cubes", "semantic"],
}
TIPS: dict[str, str] = {
    "n_samples": "number of noisy copies (SmoothGrad) / coalitions (KernelSHAP; empty = automatic)",
    "noise_level": "noise σ as a fraction of the image intensity range",
    "steps": "Riemann steps from the baseline to the image",
    "baseline": "reference image the path starts from / removed features are set to",
    "layer": "network layer to hook (empty = the bottleneck)",
    "relu": "keep only positive evidence (ReLU of the CAM)",
    "block_size": "edge of the perturbed blocks, in model voxels",
    "n_screen": "random replacements per block in the screening pass",
    "n_draws": "replacements per relevant block for the average treatment effect",
    "tau": "screening threshold on |ΔDice| (0.02 = 2 Dice points)",
    "adaptive": "stop drawing for a block once its 95 % CI is narrower than tau",
    "bank": "reference images the replacement blocks are cut from",
    "reference": "label map the RoI Dice is computed against (default: the model's own prediction)",
    "features": "cubes: a regular grid; semantic: one feature per predicted class region",
    "grid": "cubes per axis, e.g. 4 or [4, 6, 6] (empty = automatic)",
    "seed": "random seed (noise, draws, coalitions)",
    "batch_size": "images per forward pass (empty = from free memory)",
}
FLOAT_RANGES: dict[str, tuple[float, float, float]] = {
    "noise_level": (0.0, 1.0, 0.01), "tau": (0.0, 1.0, 0.005),
}
HANDLED_ELSEWHERE = ("bank", "reference")


def compact(combo: QComboBox, chars: int = 8) -> QComboBox:
    """Long entries (layer paths, file paths, module names) must not widen the dock and
    squeeze the canvas: size the box to ``chars`` characters and, unless the box already
    explains itself in a tooltip, show the full current text as its tooltip."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    if not combo.toolTip():
        combo.currentTextChanged.connect(combo.setToolTip)
        combo.setToolTip(combo.currentText())
    return combo


def compact_all(widget: QWidget) -> None:
    """:func:`compact` every combo box inside ``widget``."""
    for combo in widget.findChildren(QComboBox):
        compact(combo)


def parse_text(text: str) -> Any:
    """Line-edit text -> None / int / float / list / str."""
    t = text.strip()
    if not t or t.lower() in ("none", "auto"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t[0] in "[(":
        try:
            return json.loads(t.replace("(", "[").replace(")", "]"))
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


class ParamForm(QWidget):
    """Editors for one method's parameters; :meth:`values` reads them back."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.method: str | None = None
        self.editors: dict[str, QWidget] = {}
        self.getters: dict[str, Callable[[], Any]] = {}
        self.defaults: dict[str, Any] = {}
        self.layer_names: list[str] = []
        self.persistent: list[QWidget] = []

    def clear(self) -> None:
        """Remove every row; choosers owned by the dock (``extra_rows``) are kept alive."""
        while self.form.rowCount():
            row = self.form.takeRow(0)
            for item in (row.labelItem, row.fieldItem):
                w = item.widget() if item is not None else None
                if w is None:
                    continue
                if any(w is p for p in self.persistent):
                    w.hide()
                    w.setParent(self)
                else:
                    w.hide()
                    w.deleteLater()
        self.editors.clear()
        self.getters.clear()

    def set_method(self, method: str, defaults: dict[str, Any], extra_rows: dict[str, QWidget] | None = None,
                   layer_choices: list[str] | None = None) -> None:
        """Rebuild the form for ``method`` (``extra_rows`` replace the generic editor)."""
        self.clear()
        self.method = method
        self.defaults = dict(defaults)
        self.layer_names = list(layer_choices or [])
        extra_rows = extra_rows or {}
        for name, default in defaults.items():
            if name in extra_rows:
                w = extra_rows[name]
                if not any(w is p for p in self.persistent):
                    self.persistent.append(w)
                self._add(name, w, None)
                w.show()
                continue
            if name in HANDLED_ELSEWHERE:
                continue
            self._add(name, *self._editor(method, name, default))

    def _add(self, name: str, w: QWidget, getter) -> None:
        label = QLabel(name.replace("_", " "))
        tip = TIPS.get(name, "")
        if tip:
            label.setToolTip(tip)
            w.setToolTip(tip)
        w.setObjectName(f"param_{name}")
        self.form.addRow(label, w)
        self.editors[name] = w
        if getter is not None:
            self.getters[name] = getter

    def _editor(self, method: str, name: str, default: Any):
        if isinstance(default, bool):
            w = QCheckBox()
            w.setChecked(default)
            return w, w.isChecked
        if isinstance(default, int):
            w = QSpinBox()
            w.setRange(0, 1_000_000)
            w.setValue(default)
            return w, w.value
        if isinstance(default, float):
            w = QDoubleSpinBox()
            lo, hi, step = FLOAT_RANGES.get(name, (-1e6, 1e6, max(abs(default) / 10, 0.01)))
            w.setDecimals(4)
            w.setRange(lo, hi)
            w.setSingleStep(step)
            w.setValue(default)
            return w, w.value
        choices = CHOICES.get((method, name))
        if isinstance(default, str) and choices:
            w = QComboBox()
            w.addItems(choices if default in choices else [default] + choices)
            w.setCurrentText(default)
            return w, w.currentText
        if name == "layer":
            w = compact(QComboBox())
            w.setEditable(True)
            w.addItem("")
            w.addItems(self.layer_names)
            w.lineEdit().setPlaceholderText("bottleneck (default)")
            return w, lambda: parse_text(w.currentText())
        w = QLineEdit()
        w.setPlaceholderText("auto" if default is None else "")
        if default is not None:
            w.setText(json.dumps(default) if not isinstance(default, str) else default)
        return w, lambda: parse_text(w.text())

    def set_value(self, name: str, value: Any) -> None:
        """Set an editor programmatically (scripts, tests)."""
        w = self.editors[name]
        if isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(value)
        elif isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, QLineEdit):
            w.setText("" if value is None else (json.dumps(value) if not isinstance(value, str) else value))

    def values(self) -> dict[str, Any]:
        """The parameters as typed values (only those that have a generic editor)."""
        return {k: g() for k, g in self.getters.items()}
