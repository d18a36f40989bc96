"""The Explain dock's results: result layers, legends, display controls and 3D surfaces.

:class:`ResultsMixin` is the half of :class:`~seg_explain._napari.explain_dock.ExplainWidget`
that listens to finished explanations: it adds the layers (prediction, attribution, RoI
outline), writes the legend in the dock and on the canvas, applies the display controls
(smoothing, top-k %, body mask, "Show raw values") to the shown values, and in the 3D view
replaces the signed cloud by two evidence surfaces. What the layers are called, what they
record, their colour limits, display maps and surfaces come from :mod:`seg_explain.frontend`.
"""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout

from ..frontend.anatomy import CONTEXT_ATTENUATION, CONTEXT_OPACITY, context_volume
from ..frontend.evidence import EVIDENCE_SMOOTH, EVIDENCE_TOP, evidence_surfaces
from ..frontend.reading import RAW, display_defaults, shown_sign
from ..frontend.results import (
    attribution_limits,
    body_mask,
    canvas_text,
    done_text,
    outline_name,
    prediction_name,
    result_info,
    result_name,
    shown_limits,
    shown_map,
    summary_lines,
)
from .layers import GEOMETRY_KEY, META_KEY, RAW_KEY, attribution_colormap, class_features
from .stage import layer_key
from .ui import notify_info, notify_warning

OUTLINE_COLOR = (0.2, 1.0, 0.3, 1.0)


class ResultsMixin:
    """Result layers and their display for a dock with ``viewer``, ``result_stage``,
    ``model_info``, ``status`` and ``_layers_of`` (see ExplainWidget)."""

    def _init_results(self) -> None:
        self._raw: dict[str, dict] = {}         # result layer key -> raw map + spec + roi
        self._evidence: dict[str, list] = {}    # result layer key -> its 3D surface layers
        self._legend_for: str | None = None     # result layer key the canvas legend describes
        self._context: dict = {}                # 3D: {"layer": the anatomy context, "hidden": [image layers]}

    # ------------------------------------------------------------------ UI --
    def _build_result_box(self) -> QGroupBox:
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
        return rbox

    def _connect_results(self) -> None:
        for w in (self.smooth_spin, self.top_spin):
            w.valueChanged.connect(lambda _v: self._redisplay())
        self.body_check.toggled.connect(lambda _v: self._redisplay())
        self.surfaces_check.toggled.connect(lambda _v: self._sync_3d())
        self.raw_button.clicked.connect(lambda: self.set_display(RAW))

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
        if exp.prediction is not None and self._prediction_layer(req.image_layer_name, req.model_path,
                                                                 req.slice_index) is None:
            md = {META_KEY: {"kind": "prediction", "model": req.model_path, "image": req.image_layer_name,
                             "slice_index": req.slice_index, "class_names": list(self.model_info["class_names"])},
                  **geo}
            self.viewer.add_labels(np.asarray(exp.prediction).astype(np.int32),
                                   name=prediction_name(disp.model_name, req.slice_index), scale=scale,
                                   translate=translate, metadata=md, opacity=0.35,
                                   features=class_features(self.model_info["class_names"]))
        one = spec.is_one_sided(exp.params)
        info = result_info(exp, req, disp)
        lim = float(disp.limit)
        raw = np.asarray(exp.attribution, np.float32)
        # shown so that positive = supports (PdCR: Dice lost when replaced); saved raw
        layer = self.viewer.add_image(
            shown_sign(spec) * raw, name=result_name(spec.title, exp.target_name, req.roi_name, req.slice_index),
            scale=scale, translate=translate, metadata={META_KEY: info, RAW_KEY: raw, **geo},
            colormap=attribution_colormap(volume=self.viewer.dims.ndisplay == 3, one_sided=one),
            contrast_limits=attribution_limits(lim, one, False), blending="translucent",
            rendering="translucent", opacity=1.0)
        mx = max(float(disp.max_abs), lim)
        layer.contrast_limits_range = attribution_limits(mx, one, False)
        layer.contrast_limits = attribution_limits(lim, one, False)
        layer.events.contrast_limits.connect(self._on_limits_changed)   # (a bound method: held weakly)
        self._raw[layer_key(layer)] = {"raw": raw, "spec": spec, "layer": layer, "pred": exp.prediction,
                                       "image": req.image.data, "params": dict(exp.params)}
        outline = self._add_outline(disp.outline, req, scale, translate, geo)
        self.result_stage.present(layer, keep=[outline])
        self._retire_evidence(layer_key(layer))
        self.viewer.layers.selection.active = layer
        self.set_display(display_defaults(spec), layer)     # the method's readable view (display only)
        self._show_legend(layer)
        self.status.setText(done_text(exp, layer.contrast_limits, disp.max_abs))
        lines, report = summary_lines(exp)
        self.summary.setText("\n".join(lines))
        for w in exp.warnings:
            notify_warning(w)
        if report:
            notify_info(report.splitlines()[0])

    def _add_outline(self, outline, req, scale, translate, geo):
        from napari.utils.colormaps import DirectLabelColormap

        cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: OUTLINE_COLOR})
        name = outline_name(req.roi_name, req.target, req.slice_index)
        outline = np.asarray(outline, np.uint8)
        for ly in self._layers_of("labels"):      # the same RoI explained again: one outline, on top
            md = ly.metadata.get(META_KEY) if isinstance(ly.metadata, dict) else None
            if (md or {}).get("kind") == "roi_outline" and ly.name == name \
                    and ly.data.shape == outline.shape and np.array_equal(ly.data, outline):
                ly.visible = True
                self.viewer.layers.move(self.viewer.layers.index(ly), len(self.viewer.layers))
                return ly
        return self.viewer.add_labels(outline, name=name, scale=scale, translate=translate, colormap=cmap,
                                      opacity=1.0, metadata={META_KEY: {"kind": "roi_outline", "roi": req.roi_name,
                                                                        "image": req.image_layer_name}, **geo})

    def _on_layer_removed(self, event=None) -> None:
        gone = getattr(event, "value", None)
        was_result = gone is not None and layer_key(gone) in self._raw
        if was_result:
            self._raw.pop(layer_key(gone))
            for ly in self._evidence.pop(layer_key(gone), []):
                if ly in self.viewer.layers:
                    self.viewer.layers.remove(ly)
        if was_result:                   # (surfaces and the 3D context come and go with the view)
            self.result_stage.release()  # no result visible any more: the label layers come back
            if not any(self._evidence.values()):
                self._drop_context()

    def _retire_evidence(self, keep_key: str) -> None:
        """A new result is on stage: the other results' 3D surfaces go (their layers stay hidden,
        one click away; showing one again in 3D draws its surfaces anew)."""
        for key in [k for k in self._evidence if k != keep_key]:
            for ly in self._evidence.pop(key, []):
                if ly in self.viewer.layers:
                    self.viewer.layers.remove(ly)
            if key in self._raw:
                self._raw[key].pop("hidden", None)

    def _on_active_changed(self, event=None) -> None:
        ly = self.viewer.layers.selection.active
        self.result_stage.select(ly)
        if ly is not None and layer_key(ly) in self._raw:
            self._show_legend(ly)

    def _on_limits_changed(self, event=None) -> None:
        self._on_active_changed()

    def _show_legend(self, layer) -> None:
        self._legend_for = layer_key(layer)      # the result the canvas legend describes
        md = (layer.metadata.get(META_KEY) or {}) if isinstance(layer.metadata, dict) else {}
        self.legend.setText(md.get("legend", ""))
        ov = self.viewer.text_overlay
        ov.text = canvas_text(layer.name, md, layer.contrast_limits, bool(self._evidence.get(layer_key(layer))))
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
        if ly is not None and layer_key(ly) in self._raw:
            return ly
        results = [v["layer"] for v in self._raw.values() if v["layer"] in self.viewer.layers]
        return results[-1] if results else None

    def _redisplay(self, layer=None) -> None:
        """Apply the display helpers (smoothing, top-k %, body mask) to the shown values."""
        layer = layer or self._active_result()
        if layer is None:
            return
        rec = self._raw[layer_key(layer)]
        mask = body_mask(rec["image"], rec["pred"]) if self.body_check.isChecked() else None
        shown = shown_map(rec["raw"], rec["spec"], self.smooth_spin.value(), self.top_spin.value(), mask)
        if not np.array_equal(shown, layer.data):
            layer.data = shown
            layer.contrast_limits = shown_limits(shown, rec["raw"], rec["spec"], rec["params"])
        self._update_evidence(layer)

    # ------------------------------------------------------------------ 3D --
    def _show_context(self, rec: dict, layer) -> None:
        """3D: the anatomy inside the body as a faint attenuated MIP under the surfaces (the
        image layers it stands for are hidden until the view goes back to 2D)."""
        ctx = self._context.get("layer")
        if ctx is not None and ctx in self.viewer.layers:
            return
        if np.ndim(rec["image"]) < 3:
            return
        cv = context_volume(rec["image"], rec["pred"], str((layer.metadata.get(META_KEY) or {}).get("image")
                                                            or "anatomy"))
        hidden = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image" and ly.visible
                  and (ly.metadata.get(META_KEY) or {}).get("kind") not in ("attribution", "evidence")]
        for ly in hidden:
            ly.visible = False
        active = self.viewer.layers.selection.active
        ctx = self.viewer.add_image(cv.data, name=cv.name, scale=layer.scale, translate=layer.translate,
                                    colormap="gray", rendering="attenuated_mip", attenuation=CONTEXT_ATTENUATION,
                                    opacity=CONTEXT_OPACITY, contrast_limits=cv.contrast_limits,
                                    metadata={META_KEY: {"kind": "context"}})
        self.viewer.layers.move(self.viewer.layers.index(ctx), 0)
        self._context = {"layer": ctx, "hidden": hidden}
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _drop_context(self) -> None:
        """Back to 2D (or no surface left): the context goes, the image layers come back."""
        ctx, hidden = self._context.get("layer"), self._context.get("hidden", [])
        self._context = {}
        if ctx is not None and ctx in self.viewer.layers:
            self.viewer.layers.remove(ctx)
        for ly in hidden:
            if ly in self.viewer.layers:
                ly.visible = True

    def _sync_3d(self) -> None:
        for rec in list(self._raw.values()):
            if rec["layer"] in self.viewer.layers:
                self._update_evidence(rec["layer"])

    def _update_evidence(self, layer) -> None:
        """In the 3D view: two surfaces (supporting / opposing evidence) replace the cloud."""
        key = layer_key(layer)
        rec = self._raw[key]
        want = (int(self.viewer.dims.ndisplay) == 3 and np.ndim(layer.data) == 3
                and self.surfaces_check.isChecked()
                and (layer.visible or bool(rec.get("hidden"))))     # results off stage draw nothing
        if not want and rec.pop("hidden", False):
            layer.visible = True             # back on stage before its surfaces go
        for ly in self._evidence.pop(key, []):
            if ly in self.viewer.layers:
                self.viewer.layers.remove(ly)
        if not want:
            if not any(self._evidence.values()):
                self._drop_context()
            if self._legend_for == key:
                self._show_legend(layer)
            return
        self._show_context(rec, layer)
        md = {META_KEY: {"kind": "evidence", "of": layer.name}}
        active = self.viewer.layers.selection.active
        self._evidence[key] = [
            self.viewer.add_image(s.data, name=s.name, scale=s.scale, translate=s.translate, colormap=s.colour,
                                  rendering="iso", iso_threshold=s.threshold,
                                  # the surface sits at the threshold: map it to the colormap's full colour
                                  contrast_limits=(0.0, s.threshold), blending="translucent", metadata=md)
            for s in evidence_surfaces(np.asarray(layer.data), rec["spec"], rec["params"], layer.name,
                                       layer.scale, layer.translate)]
        if self._legend_for == key:
            self._show_legend(layer)
        if layer.visible:
            layer.visible = False
            rec["hidden"] = True
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
