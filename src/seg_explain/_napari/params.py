"""A form for one explainer's parameters, built from the method registry.

Each :class:`~seg_explain.explainers.registry.Param` picks its editor from its kind: ``int``
-> spin box (range from the registry), ``float`` -> double spin box, ``bool`` and
``bool_or_fraction`` -> check box, ``choice`` -> combo box, ``baseline`` -> editable combo (a name or a number), the
"auto" kinds -> a line edit with an "auto" placeholder; parameters whose values are objects
(``bank``, ``label_map``, ``layer``) get choosers the dock owns (passed as ``extra_rows``,
keyed by the parameter kind). Every editor carries the parameter's help, range and unit as
its tooltip. Values typed by the user are kept per method across method switches;
:meth:`ParamForm.restore_defaults` puts the registry's defaults back (the 3D GUI default
for a 3D model). Text is parsed by :meth:`Param.parse`, the same parser as the CLI's.
"""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QScrollArea,
    QSpinBox,
    QWidget,
)

INT_MAX = 2 ** 31 - 1


def compact(combo: QComboBox, chars: int = 8) -> QComboBox:
    """Long entries (layer paths, file paths, module names) must not widen the dock and
    squeeze the canvas: size the box to ``chars`` characters and, unless the box already
    explains itself in a tooltip, show the full current text as its tooltip."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    if not combo.toolTip():
        combo.currentTextChanged.connect(combo.setToolTip)
        combo.setToolTip(combo.currentText())
    return combo


def compact_all(widget: QWidget) -> None:
    """:func:`compact` every combo box inside ``widget`` (to its ``compact_chars`` property
    when it has one, e.g. the short device box)."""
    for combo in widget.findChildren(QComboBox):
        compact(combo, int(combo.property("compact_chars") or 8))


FIELD_MIN_PX = {"combo": 90, "spin": 64}


def fit_to_dock(dock: QWidget, scroll: QScrollArea) -> None:
    """No horizontal scrolling inside a dock: the form fields may shrink below their size
    hints (a spin box sized for 2^31, a combo sized for 8 characters), the scroll area
    scrolls vertically only, and the dock asks napari for the width its content needs, so
    nothing is cut at the right edge."""
    inner = scroll.widget()
    for w in inner.findChildren(QComboBox):   # a ``min_px`` property keeps a key box readable
        w.setMinimumWidth(int(w.property("min_px") or min(w.minimumSizeHint().width(), FIELD_MIN_PX["combo"])))
    for w in inner.findChildren(QAbstractSpinBox):
        w.setMinimumWidth(min(w.minimumSizeHint().width(), FIELD_MIN_PX["spin"]))
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    need = inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4
    dock.setMinimumWidth(need)


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "false", "no", "off", "0", "none")
    return bool(v)


def tooltip(p) -> str:
    """A parameter's help with its default, range/choices and unit."""
    extra = p.describe().split("=", 1)[1]
    return f"{p.help}\n{p.name} = {extra}"


class ParamForm(QWidget):
    """Editors for one method's parameters; :meth:`values` reads them back (typed, checked)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.spec = None
        self.spatial_dims = 2
        self.editors: dict[str, QWidget] = {}
        self._getters: dict[str, Any] = {}
        self._setters: dict[str, Any] = {}
        self._kept: dict[str, dict[str, Any]] = {}     # method -> values typed by the user
        self.layer_names: list[str] = []
        self._persistent: list[QWidget] = []

    @property
    def method(self) -> str | None:
        return self.spec.name if self.spec is not None else None

    # -------------------------------------------------------------------- building --
    def clear(self) -> None:
        """Remove every row; choosers owned by the dock (``extra_rows``) are kept alive."""
        if self.spec is not None:
            self._kept[self.spec.name] = self._raw_values()
        while self.form.rowCount():
            row = self.form.takeRow(0)
            for item in (row.labelItem, row.fieldItem):
                w = item.widget() if item is not None else None
                if w is None:
                    continue
                w.hide()
                if any(w is p for p in self._persistent):
                    w.setParent(self)
                else:
                    w.deleteLater()
        self.editors.clear()
        self._getters.clear()
        self._setters.clear()

    def set_method(self, spec, spatial_dims: int = 2, extra_rows: dict[str, QWidget] | None = None,
                   layer_choices: list[str] | None = None) -> None:
        """Rebuild the form for the registry entry ``spec``; ``extra_rows`` maps a parameter
        *kind* (``bank``, ``label_map``) to the dock's chooser widget. Values the user typed
        for this method earlier (and the same model dimensionality) come back."""
        self.clear()
        self.spec = spec
        self.spatial_dims = int(spatial_dims)
        self.layer_names = list(layer_choices or [])
        extra_rows = extra_rows or {}
        defaults = spec.gui_defaults(self.spatial_dims)
        kept = self._kept.get(spec.name, {})
        for p in spec.params:
            if p.kind in extra_rows:
                w = extra_rows[p.kind]
                if not any(w is q for q in self._persistent):
                    self._persistent.append(w)
                self._add(p, w, None, None)
                w.show()
                continue
            if p.kind in ("bank", "label_map"):
                continue
            w, get, put = self._editor(p)
            self._add(p, w, get, put)
            put(kept.get(p.name, defaults[p.name]))

    def _add(self, p, w: QWidget, getter, setter) -> None:
        label = QLabel(p.name.replace("_", " ") + (f" ({p.unit})" if p.unit and len(p.unit) < 14 else ""))
        tip = tooltip(p)
        label.setToolTip(tip)
        w.setToolTip(tip)
        w.setObjectName(f"param_{p.name}")
        self.form.addRow(label, w)
        self.editors[p.name] = w
        if getter is not None:
            self._getters[p.name] = getter
            self._setters[p.name] = setter

    def _editor(self, p):
        if p.kind in ("bool", "bool_or_fraction"):
            # a fraction (the CLI's adaptive=0.3) reads as "on" here; the box says true/false
            w = QCheckBox()
            return w, w.isChecked, lambda v: w.setChecked(_truthy(v))
        if p.kind == "int":
            w = QSpinBox()
            w.setRange(int(p.lo) if p.lo is not None else -INT_MAX, int(min(p.hi, INT_MAX)) if p.hi is not None
                       else INT_MAX)
            return w, w.value, lambda v: w.setValue(int(v))
        if p.kind == "float":
            w = QDoubleSpinBox()
            w.setDecimals(4)
            w.setRange(p.lo if p.lo is not None else -1e9, p.hi if p.hi is not None else 1e9)
            w.setSingleStep(max(abs(float(p.default or 0)) / 10, 0.001))
            return w, w.value, lambda v: w.setValue(float(v))
        if p.kind == "choice":
            w = QComboBox()
            w.addItems(list(p.choices))
            return w, w.currentText, lambda v: w.setCurrentText(str(v))
        if p.kind == "baseline":
            w = compact(QComboBox())
            w.setEditable(True)
            w.addItems(list(p.choices))
            return w, w.currentText, lambda v: w.setCurrentText(p.text(v))
        if p.kind == "layer":
            # network layers by a short name (the end of the module path), the full path in
            # each entry's tooltip and in the value; a typed path is taken as typed
            from ..frontend.reading import short_name

            w = compact(QComboBox())
            w.setEditable(True)
            w.addItem("", "")
            for full in self.layer_names:
                w.addItem(short_name(full), full)
                w.setItemData(w.count() - 1, full, Qt.ItemDataRole.ToolTipRole)
            w.lineEdit().setPlaceholderText("bottleneck (auto)")

            def get():
                i = w.currentIndex()
                if i >= 0 and w.itemText(i) == w.currentText() and w.itemData(i) is not None:
                    return w.itemData(i)
                return w.currentText()

            def put(v):
                i = w.findData("" if v is None else str(v))
                if i >= 0:
                    w.setCurrentIndex(i)
                else:
                    w.setCurrentText("" if v is None else str(v))
            return w, get, put
        w = QLineEdit()   # auto_int, auto_ints
        w.setPlaceholderText("auto" if p.kind.startswith("auto") else "")
        return w, w.text, lambda v: w.setText("" if v is None else p.text(v))

    # --------------------------------------------------------------------- values --
    def _raw_values(self) -> dict[str, Any]:
        return {k: g() for k, g in self._getters.items()}

    def values(self) -> dict[str, Any]:
        """The parameters with an editor, typed and checked (MethodError names a bad one)."""
        return {k: self.spec.param(k).parse(v, self.spec.name) for k, v in self._raw_values().items()}

    def set_value(self, name: str, value: Any) -> None:
        """Set an editor programmatically (scripts, tests)."""
        self._setters[name](value)

    def restore_defaults(self) -> None:
        """The registry's defaults (for this model's dimensionality) back in every editor."""
        if self.spec is None:
            return
        d = self.spec.gui_defaults(self.spatial_dims)
        for k, put in self._setters.items():
            put(d[k])
        self._kept.pop(self.spec.name, None)
