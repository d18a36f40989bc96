"""SegExplainLogic: 3D Slicer's MRML nodes in, MRML nodes out, the seg_explain core in between.

Importable with PyPI ``slicer-core`` (MRML, segmentations, colours, tables; no Qt) and
``napari-seg-explain`` alone, so it runs headless in the project's tests and in Slicer.
Nothing here imports ``qt``, ``ctk`` or touches ``slicer.app``.

Geometry: a volume node holds a ``(k, j, i[, C])`` array and an IJK→RAS matrix; the core is
given ``LoadedImage.from_ijk(array (i, j, k[, C]), IJK→RAS)``, exactly what ``load_image``
returns for a NIfTI file with that array and matrix, so results equal the core's on the same
file (the stored voxel order rides along for nnU-Net models). Results go back with
``LoadedImage.to_ijk`` onto the input's own IJK→RAS, voxel for voxel.

Threads: the MRML reads (:meth:`SegExplainLogic.image`, :meth:`SegExplainLogic.roi_mask`) and
writes (:meth:`SegExplainLogic.attribution_node`, :meth:`SegExplainLogic.table_nodes`,
:meth:`SegExplainLogic.segmentation_node`) belong on Slicer's main thread; the computations
between them (:meth:`SegExplainLogic.load`, :func:`seg_explain.explainers.job.explain_job`, the core's
``agg2exp`` and ``predict``) touch no node and may run in a worker thread (the Widget does).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIntArray, vtkStringArray
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

import slicer
from seg_explain import LoadedImage, load_model
from seg_explain.errors import InputMismatchError, ModelLoadError
from seg_explain.explainers.job import explain_job
from seg_explain.explainers.registry import get_spec, legend
from seg_explain.jobs import CancelToken, drive

Progress = Callable[[int, int], Any]
GEOMETRY_TOL = 0.01      # fraction of a voxel two grids may differ by (as the CLI's require_same_grid)
N_COLOURS = 256


# ----------------------------------------------------------------------- arrays <-> nodes --
def matrix_to_array(m: vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def array_to_matrix(a: np.ndarray) -> vtkMatrix4x4:
    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def ijk_to_ras(node) -> np.ndarray:
    m = vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_array(m)


def array_from_volume(node) -> np.ndarray:
    """The voxels of a volume node as ``(k, j, i)`` or ``(k, j, i, C)`` (Slicer's order), a view."""
    data = node.GetImageData() if node is not None else None
    scalars = data.GetPointData().GetScalars() if data is not None else None
    if scalars is None:
        name = node.GetName() if node is not None else "None"
        raise InputMismatchError(f"Volume '{name}' holds no image data; load or choose a volume first")
    dims = data.GetDimensions()
    arr = numpy_support.vtk_to_numpy(scalars)
    nc = data.GetNumberOfScalarComponents()
    return arr.reshape(tuple(dims[::-1]) + ((nc,) if nc > 1 else ()))


def set_volume_array(node, arr_kji: np.ndarray, matrix: np.ndarray) -> None:
    """Put a ``(k, j, i)`` array on ``node`` with IJK→RAS ``matrix`` (data copied)."""
    arr = np.ascontiguousarray(arr_kji)
    img = vtkImageData()
    img.SetDimensions(int(arr.shape[2]), int(arr.shape[1]), int(arr.shape[0]))
    vtk_arr = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    img.GetPointData().SetScalars(vtk_arr)
    node.SetIJKToRASMatrix(array_to_matrix(matrix))
    node.SetAndObserveImageData(img)


def _same_grid(a, b) -> bool:
    da, db = a.GetImageData(), b.GetImageData()
    if da is None or db is None or tuple(da.GetDimensions()) != tuple(db.GetDimensions()):
        return False
    ma, mb = ijk_to_ras(a), ijk_to_ras(b)
    spacing = float(min(np.linalg.norm(ma[:3, :3], axis=0)))
    return bool(np.allclose(ma, mb, atol=GEOMETRY_TOL * spacing))


def _unique_name(scene, base: str) -> str:
    return scene.GenerateUniqueName(base) if scene is not None else base


# ------------------------------------------------------------------------ colour nodes --
def colour_node(scene, one_sided: bool, red_is_negative: bool, values_negative: bool = False):
    """A 256-entry colour table centred on 0 for a window symmetric about 0.

    Two-sided maps: blue → white → red (red = positive, or red = negative for methods whose
    registry says so). One-sided maps: white on the empty half, a single-hue ramp on the
    values' side. One node per kind, reused across explanations."""
    from matplotlib import colormaps

    if one_sided:
        kind = "one-sided " + ("negative" if values_negative else "positive")
    else:
        kind = "diverging red=" + ("negative" if red_is_negative else "positive")
    name = f"SegExplain {kind}"
    node = scene.GetFirstNodeByName(name)
    if node is not None and node.IsA("vtkMRMLColorTableNode"):
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(N_COLOURS)
    half = N_COLOURS // 2
    if one_sided:
        ramp = colormaps["Reds"]
        for i in range(N_COLOURS):
            d = (i - (half - 0.5)) / (half - 0.5)   # -1 .. 1
            d = -d if values_negative else d
            rgb = ramp(float(d))[:3] if d > 0 else (1.0, 1.0, 1.0)
            node.SetColor(i, f"{i}", *rgb, 1.0)
    else:
        cmap = colormaps["RdBu"] if red_is_negative else colormaps["RdBu_r"]
        for i in range(N_COLOURS):
            node.SetColor(i, f"{i}", *cmap(i / (N_COLOURS - 1))[:3], 1.0)
    node.SetAttribute("SegExplain.kind", kind)
    return node


def class_colour(index: int) -> tuple[float, float, float]:
    """A stable colour per class index (matplotlib's tab20, background never shown)."""
    from matplotlib import colormaps

    return tuple(float(v) for v in colormaps["tab20"]((int(index) - 1) % 20)[:3])


# ------------------------------------------------------------------------------ logic --
class SegExplainLogic:
    """Explain, aggregate and predict with seg_explain on 3D Slicer nodes.

    ``model`` arguments are a path (MONAI bundle folder, TorchScript/``.pt2`` file with its
    JSON sidecar, nnU-Net v2 trained-model folder) or a model ``load_model`` returned. Models
    are loaded once per path (reloaded when the path's modification time changes).
    Every bad input raises a :class:`seg_explain.errors.SegExplainError` subclass whose message
    is one line for the user.
    """

    def __init__(self, device: str = "auto"):
        self.device = device
        self._models: dict[tuple[str, float], Any] = {}

    # ---- models -----------------------------------------------------------------------
    def load(self, model):
        """A loaded model for ``model`` (a path, or a model already loaded)."""
        if hasattr(model, "class_names") and hasattr(model, "predict"):
            return model
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ModelLoadError("Choose a model: a MONAI bundle folder, a TorchScript/.pt2 file or an "
                                 "nnU-Net v2 trained-model folder")
        p = Path(model).expanduser()
        try:
            key = (str(p.resolve()), p.stat().st_mtime)
        except OSError:
            raise ModelLoadError(f"No such model file or folder: {p}") from None
        if key not in self._models:
            self._models = {k: v for k, v in self._models.items() if k[0] != key[0]}
            self._models[key] = load_model(p, device=self.device)
        return self._models[key]

    # ---- reading nodes (main thread) ------------------------------------------------------
    def image(self, volume_node) -> LoadedImage:
        """The core's image for a scalar or vector volume node (its own IJK→RAS)."""
        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputMismatchError("Choose an input volume (a scalar volume node)")
        arr = array_from_volume(volume_node)
        ijk = arr.transpose(2, 1, 0, 3) if arr.ndim == 4 else arr.transpose(2, 1, 0)
        return LoadedImage.from_ijk(ijk, ijk_to_ras(volume_node), path=None)

    def roi_mask(self, volume_node, roi_node=None, segment_id: str | int | None = None) -> np.ndarray | None:
        """A boolean RoI on the core's grid of ``volume_node``'s image, or None.

        ``roi_node``: a segmentation node (``segment_id`` picks the segment; may be omitted
        when it has one) resampled onto the volume's grid by Slicer's own export, or a
        label-map (scalar) volume on exactly the volume's grid (``segment_id``: a label
        value; default: every non-zero voxel)."""
        if roi_node is None:
            return None
        if roi_node.IsA("vtkMRMLSegmentationNode"):
            mask_kji, what = self._segment_on_grid(volume_node, roi_node, segment_id)
        elif roi_node.IsA("vtkMRMLScalarVolumeNode"):
            what = f"label map '{roi_node.GetName()}'"
            if not _same_grid(volume_node, roi_node):
                raise InputMismatchError(f"The {what} is not on the grid of '{volume_node.GetName()}' "
                                         "(dimensions or IJK→RAS differ); resample it to the volume first")
            lab = array_from_volume(roi_node)
            if lab.ndim != 3:
                raise InputMismatchError(f"The {what} has {lab.shape[-1]} components; use a single-component label map")
            if segment_id is None or segment_id == "":
                mask_kji = lab != 0
            else:
                mask_kji = lab == int(segment_id)
                what += f" (label {int(segment_id)})"
        else:
            raise InputMismatchError(f"'{roi_node.GetName()}' is neither a segmentation nor a label map")
        if not mask_kji.any():
            raise InputMismatchError(f"The RoI ({what}) is empty on the grid of '{volume_node.GetName()}'")
        mask = LoadedImage.from_ijk(np.ascontiguousarray(mask_kji.transpose(2, 1, 0)), ijk_to_ras(volume_node)).data
        return mask.astype(bool)

    def _segment_on_grid(self, volume_node, seg_node, segment_id):
        segm = seg_node.GetSegmentation()
        ids = [segm.GetNthSegmentID(i) for i in range(segm.GetNumberOfSegments())]
        if segment_id is None or segment_id == "":
            if len(ids) != 1:
                raise InputMismatchError(f"Segmentation '{seg_node.GetName()}' has {len(ids)} segments; choose one")
            segment_id = ids[0]
        if segment_id not in ids:   # a name is accepted too
            named = [i for i in ids if segm.GetSegment(i).GetName() == segment_id]
            if len(named) != 1:
                raise InputMismatchError(f"Segmentation '{seg_node.GetName()}' has no segment {segment_id!r}")
            segment_id = named[0]
        what = f"segment '{segm.GetSegment(segment_id).GetName()}'"
        if volume_node is None or volume_node.GetImageData() is None:
            raise InputMismatchError("Choose an input volume (a scalar volume node)")
        scene = seg_node.GetScene()
        lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", _unique_name(scene, "SegExplain RoI"))
        try:
            wanted = vtkStringArray()
            wanted.InsertNextValue(segment_id)
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, wanted, lm,
                                                                                      volume_node)
            if not ok or lm.GetImageData() is None:
                raise InputMismatchError(f"Could not resample {what} onto '{volume_node.GetName()}'")
            if not _same_grid(volume_node, lm):   # pragma: no cover - Slicer exports onto the reference grid
                raise InputMismatchError(f"{what} could not be put on the grid of '{volume_node.GetName()}'")
            mask = array_from_volume(lm) != 0
        finally:
            if lm.GetDisplayNode() is not None:
                scene.RemoveNode(lm.GetDisplayNode())
            scene.RemoveNode(lm)
        return mask, what

    # ---- writing nodes (main thread) ----------------------------------------------------
    def attribution_node(self, volume_node, image: LoadedImage, exp, name: str | None = None):
        """An :class:`~seg_explain.Explanation` as a scalar volume on ``volume_node``'s IJK→RAS,
        with a colour node centred on 0, a symmetric window/level and the registry's unit,
        method, class and legend as node attributes."""
        scene = volume_node.GetScene()
        spec = get_spec(exp.method)
        a = np.asarray(exp.attribution, dtype=np.float32)
        name = name or f"{volume_node.GetName()} {exp.method} {exp.target_name}"
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", _unique_name(scene, name))
        set_volume_array(node, image.to_ijk(a).transpose(2, 1, 0), ijk_to_ras(volume_node))
        parent = volume_node.GetParentTransformNode()
        if parent is not None:
            node.SetAndObserveTransformNodeID(parent.GetID())
        one_sided = spec.is_one_sided(exp.params)
        peak = float(np.max(np.abs(a))) if a.size else 0.0
        negative = one_sided and float(a.min(initial=0.0)) < 0 and float(a.max(initial=0.0)) <= 0
        colours = colour_node(scene, one_sided, spec.red_is_negative, negative)
        node.CreateDefaultDisplayNodes()
        disp = node.GetDisplayNode()
        disp.SetAndObserveColorNodeID(colours.GetID())
        disp.AutoWindowLevelOff()
        disp.SetWindowLevel(2.0 * peak if peak > 0 else 1.0, 0.0)
        disp.SetInterpolate(False)
        attrs = {"unit": spec.unit, "method": exp.method, "target": exp.target_name,
                 "legend": legend(spec, exp.target_name, exp.params),
                 "params": json.dumps(exp.params, default=str), "SegExplain.source": volume_node.GetID()}
        for k, v in attrs.items():
            node.SetAttribute(k, str(v))
        return node

    def table_nodes(self, scene, result, name: str = "SegExplain Agg2Exp"):
        """An Agg2Exp result as two table nodes (local, global) with the CSVs' columns."""
        local = self._table(scene, f"{name} local", result.records())
        glob = self._table(scene, f"{name} global", result.global_records())
        for t in (local, glob):
            t.SetAttribute("method", result.method)
            t.SetAttribute("unit", get_spec(result.method).unit)
            t.SetAttribute("params", json.dumps(result.params, default=str))
        return local, glob

    @staticmethod
    def _table(scene, name: str, rows: Sequence[dict]):
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", _unique_name(scene, name))
        table = node.GetTable()
        if rows:
            for col in rows[0]:
                sample = rows[0][col]
                arr = (vtkStringArray() if isinstance(sample, str)
                       else vtkIntArray() if isinstance(sample, (int, np.integer)) else vtkDoubleArray())
                arr.SetName(col)
                for r in rows:
                    arr.InsertNextValue(r[col] if isinstance(arr, vtkStringArray) else r[col])
                table.AddColumn(arr)
        node.Modified()
        return node

    def segmentation_node(self, volume_node, image: LoadedImage, labels: np.ndarray, class_names: Sequence[str],
                          name: str | None = None):
        """A label map on ``image``'s grid as a segmentation node: one segment per class
        present (background excluded), named and coloured by class."""
        scene = volume_node.GetScene()
        lab_kji = image.to_ijk(np.asarray(labels).astype(np.int16)).transpose(2, 1, 0)
        lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", _unique_name(scene, "SegExplain labels"))
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                      _unique_name(scene, name or f"{volume_node.GetName()} segmentation"))
        try:
            set_volume_array(lm, lab_kji, ijk_to_ras(volume_node))
            seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg):
                raise InputMismatchError("Slicer could not turn the prediction into a segmentation")
        finally:
            scene.RemoveNode(lm)
        segm = seg.GetSegmentation()
        for i in range(segm.GetNumberOfSegments()):
            s = segm.GetNthSegment(i)
            v = int(s.GetLabelValue())
            if 0 <= v < len(class_names):
                s.SetName(str(class_names[v]))
                s.SetColor(*class_colour(v))
        parent = volume_node.GetParentTransformNode()
        if parent is not None:
            seg.SetAndObserveTransformNodeID(parent.GetID())
        seg.CreateDefaultDisplayNodes()
        seg.SetAttribute("SegExplain.classes", json.dumps(list(class_names)))
        return seg

    # ---- the three operations (synchronous; the Widget splits them across threads) ----------
    def explain(self, volume_node, model, method: str, target, roi_segmentation=None, segment_id=None,
                params: dict | None = None, progress: Progress | None = None,
                token: CancelToken | None = None):
        """Explain ``model``'s segmentation of ``target`` in ``volume_node`` with ``method``.

        ``roi_segmentation`` + ``segment_id``: the RoI (default: the voxels predicted as
        ``target``). ``params``: the method's parameters plus ``seed`` / ``batch_size``.
        ``progress(done, total)``; ``token``: a :class:`seg_explain.jobs.CancelToken` (a
        cancel raises :class:`seg_explain.errors.Cancelled`). Returns the attribution as a
        new ``vtkMRMLScalarVolumeNode`` on the input's IJK→RAS."""
        image = self.image(volume_node)
        roi = self.roi_mask(volume_node, roi_segmentation, segment_id)
        exp = self.compute_explanation(model, image, method, target, roi, params, progress, token)
        return self.attribution_node(volume_node, image, exp)

    def compute_explanation(self, model, image: LoadedImage, method: str, target, roi=None,
                            params: dict | None = None, progress: Progress | None = None,
                            token: CancelToken | None = None):
        """The core's explanation of ``image`` (no MRML: safe in a worker thread)."""
        m = self.load(model)
        return drive(explain_job(m, image, method, target, roi, token=token, **dict(params or {})), progress)

    def agg2exp(self, volume_nodes, model, method: str = "smoothgrad", params: dict | None = None,
                classes=None, progress: Progress | None = None, token: CancelToken | None = None):
        """Agg2Exp over volumes -> ``(local, global)`` table nodes, the same rows as the CLI's
        ``local_importance.csv`` / ``global_importance.csv`` (images named by node name)."""
        nodes = [volume_nodes] if hasattr(volume_nodes, "IsA") else list(volume_nodes or [])
        if not nodes:
            raise InputMismatchError("Choose at least one volume for Agg2Exp")
        images = [self.image(n) for n in nodes]
        names = [n.GetName() for n in nodes]
        if len(set(names)) != len(names):
            raise InputMismatchError("Agg2Exp names its rows by volume name; give the volumes distinct names")
        res = self.compute_agg2exp(model, images, names, method, params, classes, progress, token)
        return self.table_nodes(nodes[0].GetScene(), res, f"{names[0]} Agg2Exp {method}" if len(nodes) == 1
                                else f"Agg2Exp {method}")

    def compute_agg2exp(self, model, images: Sequence[LoadedImage], names: Sequence[str], method: str,
                        params: dict | None = None, classes=None, progress: Progress | None = None,
                        token: CancelToken | None = None):
        """The core's Agg2Exp result (no MRML: safe in a worker thread)."""
        from seg_explain import agg2exp

        m = self.load(model)
        return agg2exp(m, list(images), method, names=list(names), classes=classes,
                       progress=_with_token(progress, token), **dict(params or {}))

    def predict(self, volume_node, model):
        """``model``'s label map of ``volume_node`` as a segmentation node (classes named and coloured)."""
        image = self.image(volume_node)
        m = self.load(model)
        labels = m.predict(image)
        return self.segmentation_node(volume_node, image, labels, m.class_names)


def _with_token(progress: Progress | None, token: CancelToken | None) -> Progress | None:
    """A progress callback that also checks ``token`` (the core's agg2exp takes a callback)."""
    if token is None:
        return progress

    def call(done, total):
        token.check()
        if progress is not None:
            progress(done, total)
    return call
