"""SegExplain: explain segmentation models on the volumes and segments of a 3D Slicer scene.

The module, its Widget and its self-test, as Slicer's scripted modules are laid out. All the
work is done by ``SegExplainLib.logic.SegExplainLogic`` (tested headless with PyPI's
slicer-core); this file only builds the panel and runs the Logic's computations in a worker
thread so that Slicer never freezes.

Why a worker thread and not a ``seg-explain`` subprocess (as TotalSegmentator runs its
command line): the core's explainers are generators that report ``(done, total)`` and stop
between steps (and inside network passes) when a ``CancelToken`` is set, so progress and
Cancel need no output parsing or process killing; the model stays loaded between runs; RoIs
from segments need no temporary files; and the thread runs exactly the Logic the tests check.
MRML is only read and written on the main thread (a QTimer collects the worker's results).
The cost: a crash inside torch would take Slicer down with it, and pure-Python steps share
the GIL with the GUI (torch releases it during network passes, where the time goes).

Slicer-only imports (qt, ctk, slicer.ScriptedLoadableModule) stay in this file; the Logic
imports none of them. ``seg_explain`` and torch are imported only after the first-use check
offered to install them.
"""
from __future__ import annotations

import logging
import os
import queue
import threading

import ctk
import qt
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

import slicer

PIP_NAME = "napari-seg-explain"           # the core and CLI, without the napari/Qt extra
NNUNET_PIP = "dynamic-network-architectures"  # nnU-Net v2 folders (installed with --no-deps: keeps torch)
POLL_MS = 100


# --------------------------------------------------------------------------- the module --
class SegExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Segmentation Explainer"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["napari-seg-explain developers"]
        self.parent.helpText = (
            "Explain what a segmentation model (MONAI bundle, TorchScript / torch.export with a JSON "
            "sidecar, nnU-Net v2 trained-model folder) looked at: gradients, SmoothGrad, Integrated "
            "Gradients, Seg-Grad-CAM, Seg-HiRes-Grad-CAM, PdCR and KernelSHAP maps on the input's own "
            "grid, Agg2Exp class-to-region tables, and the model's segmentation. The same core as "
            "napari-seg-explain's plugin and its seg-explain command line.")
        self.parent.acknowledgementText = (
            "Built on napari-seg-explain (BSD-3-Clause), MONAI and PyTorch (via the SlicerPyTorch extension).")


# --------------------------------------------------------------------------- first use --
def ensure_dependencies(need_nnunet: bool = False) -> bool:
    """torch (from SlicerPyTorch) and napari-seg-explain installed, asking the user first.
    Returns False when the user declined or an install failed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay("SegExplain needs PyTorch: install the 'PyTorch' extension from the "
                                     "Extensions Manager, restart Slicer and try again.")
            return False
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
            return False
    try:
        import seg_explain  # noqa: F401
    except ImportError:
        if not slicer.util.confirmOkCancelDisplay(
                f"SegExplain needs the Python package '{PIP_NAME}' (the explainers; no Qt, torch is kept). "
                "Install it now? This can take a minute.", "SegExplain: install"):
            return False
        if not _pip([PIP_NAME]):
            return False
    if need_nnunet:
        import importlib.util

        if importlib.util.find_spec("dynamic_network_architectures") is None:
            if not slicer.util.confirmOkCancelDisplay(
                    f"nnU-Net folders need '{NNUNET_PIP}' (installed without dependencies, so torch stays as "
                    "it is). Install it now?", "SegExplain: install"):
                return False
            if not _pip([NNUNET_PIP, "--no-deps"]):
                return False
    return True


KEEP = ("torch", "SimpleITK", "numpy", "vtk", "requests")   # Slicer's own builds: never replaced by pip


def _pip(args: list[str]) -> bool:
    """``pip install args`` with Slicer's torch, SimpleITK, numpy, VTK pinned to what is installed."""
    import tempfile
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in KEEP:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    try:
        with tempfile.TemporaryDirectory() as d:
            constraints = os.path.join(d, "constraints.txt")
            with open(constraints, "w") as fh:
                fh.write("\n".join(pins) + "\n")
            with _busy():
                slicer.util.pip_install(list(args) + ["-c", constraints])
        return True
    except Exception as exc:   # noqa: BLE001 - no network, no permission, a conflict: say so and stop
        logging.error("SegExplain: pip install %s failed", " ".join(args), exc_info=exc)
        slicer.util.errorDisplay(f"Installing {' '.join(args)} failed: {exc}\n(details in the Python console)")
        return False


class _busy:
    """A wait cursor for the duration of a blocking step."""

    def __enter__(self):
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)

    def __exit__(self, *exc):
        qt.QApplication.restoreOverrideCursor()


class user_errors:
    """Bad input -> one message box with the core's one-line message (no traceback); anything
    else -> a message box, the traceback only in the Python console. The slot returns."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        try:
            from seg_explain.errors import SegExplainError
        except ImportError:   # pragma: no cover - the first-use check ran before
            SegExplainError = ()
        if isinstance(exc, SegExplainError):
            slicer.util.errorDisplay(str(exc))
        elif isinstance(exc, Exception):
            logging.error("SegExplain: %s", self.what, exc_info=(kind, exc, tb))
            slicer.util.errorDisplay(f"{self.what}: {exc}\n(details in the Python console)")
        else:
            return False
        return True


def is_nnunet_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "plans.json"))


# ------------------------------------------------------------------------------ worker --
class Job:
    """``fn(token, progress)`` in a daemon thread; the main thread polls :meth:`poll`."""

    def __init__(self, fn, title: str):
        from seg_explain.jobs import CancelToken

        self.title = title
        self.token = CancelToken()
        self.events: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(fn,), name=f"SegExplain {title}", daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.events.put(("done", fn(self.token, self._progress)))
        except BaseException as exc:   # noqa: BLE001 - handed to the main thread, shown there
            self.events.put(("error", exc))

    def _progress(self, done, total):
        self.events.put(("progress", (int(done), int(total))))

    def poll(self):
        """The latest progress and, when finished, ``("done", result)`` / ``("error", exc)``."""
        progress, final = None, None
        while True:
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                return progress, final
            if kind == "progress":
                progress = value
            else:
                final = (kind, value)


# ------------------------------------------------------------------------------ widget --
class SegExplainWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.job = None
        self.model = None
        self.param_widgets = {}
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._poll)

    # ---- layout ----------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        inputs = ctk.ctkCollapsibleButton()
        inputs.text = "Inputs"
        self.layout.addWidget(inputs)
        form = qt.QFormLayout(inputs)

        self.volume = self._node_combo(["vtkMRMLScalarVolumeNode"], none=False)
        self.volume.setToolTip("The image to explain (its own IJK→RAS is kept for the results).")
        form.addRow("Input volume:", self.volume)

        self.model_path = ctk.ctkPathLineEdit()
        self.model_path.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.model_path.settingKey = "SegExplain/ModelPath"
        self.model_path.setToolTip("A MONAI bundle folder, a TorchScript (.ts/.pt) or torch.export (.pt2) file "
                                   "with its JSON sidecar, or an nnU-Net v2 trained-model folder.")
        self.load_button = qt.QPushButton("Load")
        row = qt.QHBoxLayout()
        row.addWidget(self.model_path, 1)
        row.addWidget(self.load_button)
        form.addRow("Model:", row)

        self.target = qt.QComboBox()
        self.target.setToolTip("The class whose segmentation is explained (load the model first).")
        form.addRow("Class:", self.target)

        self.roi = slicer.qMRMLSegmentSelectorWidget()
        self.roi.setMRMLScene(slicer.mrmlScene)
        self.roi.noneEnabled = True
        self.roi.setToolTip("RoI: a segment (default: the voxels the model predicts as the class).")
        form.addRow("RoI segment:", self.roi)
        self.roi_labelmap = self._node_combo(["vtkMRMLLabelMapVolumeNode"], none=True)
        self.roi_labelmap.setToolTip("Or an RoI label map on the input's grid (all non-zero voxels).")
        form.addRow("or RoI label map:", self.roi_labelmap)

        method_box = ctk.ctkCollapsibleButton()
        method_box.text = "Method"
        self.layout.addWidget(method_box)
        mform = qt.QFormLayout(method_box)
        self.method = qt.QComboBox()
        mform.addRow("Method:", self.method)
        self.params_box = qt.QGroupBox("Parameters")
        self.params_form = qt.QFormLayout(self.params_box)
        mform.addRow(self.params_box)
        self.legend = qt.QLabel("")
        self.legend.wordWrap = True
        mform.addRow(self.legend)

        agg_box = ctk.ctkCollapsibleButton()
        agg_box.text = "Agg2Exp (several volumes)"
        agg_box.collapsed = True
        self.layout.addWidget(agg_box)
        aform = qt.QFormLayout(agg_box)
        self.agg_volumes = slicer.qMRMLCheckableNodeComboBox()
        self.agg_volumes.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.agg_volumes.setMRMLScene(slicer.mrmlScene)
        aform.addRow("Volumes:", self.agg_volumes)

        buttons = qt.QHBoxLayout()
        self.explain_button = qt.QPushButton("Explain")
        self.predict_button = qt.QPushButton("Segment")
        self.agg_button = qt.QPushButton("Agg2Exp")
        for b in (self.explain_button, self.predict_button, self.agg_button):
            buttons.addWidget(b)
        self.layout.addLayout(buttons)
        prow = qt.QHBoxLayout()
        self.progress = qt.QProgressBar()
        self.progress.setRange(0, 1000)
        self.cancel_button = qt.QPushButton("Cancel")
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        self.layout.addLayout(prow)
        self.status = qt.QLabel("")
        self.status.wordWrap = True
        self.layout.addWidget(self.status)
        self.layout.addStretch(1)

        self.load_button.connect("clicked(bool)", self.onLoadModel)
        self.explain_button.connect("clicked(bool)", self.onExplain)
        self.predict_button.connect("clicked(bool)", self.onPredict)
        self.agg_button.connect("clicked(bool)", self.onAgg2Exp)
        self.cancel_button.connect("clicked(bool)", self.onCancel)
        self.method.connect("currentIndexChanged(int)", self._build_params)
        self._set_running(False)
        self.status.text = "Choose a volume and a model, then Load."

    def _node_combo(self, types, none: bool):
        c = slicer.qMRMLNodeComboBox()
        c.nodeTypes = types
        c.selectNodeUponCreation = True
        c.addEnabled = False
        c.removeEnabled = False
        c.noneEnabled = none
        c.showHidden = False
        c.setMRMLScene(slicer.mrmlScene)
        return c

    def cleanup(self):
        self.onCancel()
        self.timer.stop()

    # ---- first use / methods -----------------------------------------------------------
    def _ready(self) -> bool:
        if self.logic is not None:
            return True
        if not ensure_dependencies(is_nnunet_folder(self.model_path.currentPath)):
            return False
        from SegExplainLib.logic import SegExplainLogic

        from seg_explain.explainers.registry import specs

        self.logic = SegExplainLogic()
        self.method.blockSignals(True)
        for s in specs():
            if 3 in s.caps.dims:
                self.method.addItem(s.title, s.name)
                self.method.setItemData(self.method.count - 1, s.question, qt.Qt.ToolTipRole)
        self.method.blockSignals(False)
        self._build_params()
        return True

    def _build_params(self, *_):
        """One field per registry parameter (type, range, choices, unit and help from the registry)."""
        from seg_explain.explainers.registry import COMMON, get_spec

        while self.params_form.rowCount() > 0:
            self.params_form.removeRow(0)
        self.param_widgets = {}
        name = self.method.currentData
        if not name:
            return
        spec = get_spec(name)
        defaults = spec.gui_defaults(3)
        for p in list(spec.params) + list(COMMON):
            value = defaults.get(p.name, p.default)
            if p.kind == "bool":
                w = qt.QCheckBox()
                w.checked = bool(value)
            elif p.kind == "choice":
                w = qt.QComboBox()
                w.addItems(list(p.choices))
                w.currentText = str(value)
            else:   # numbers, auto values, baselines, layers, banks: typed, parsed by the registry
                w = qt.QLineEdit(p.text(value))
            w.setToolTip(p.help + (f" ({p.unit})" if p.unit else "") + f"\n{p.describe()}")
            self.params_form.addRow(p.name + ":", w)
            self.param_widgets[p.name] = (p, w)
        self.legend.text = spec.question

    def _params(self) -> dict:
        """The form's values, parsed and checked by the registry (MethodError on bad input)."""
        name = self.method.currentData
        out = {}
        for key, (p, w) in self.param_widgets.items():
            if isinstance(w, qt.QCheckBox):
                raw = w.checked
            elif isinstance(w, qt.QComboBox):
                raw = w.currentText
            else:
                raw = w.text
            out[key] = p.parse(raw, name)
        return out

    # ---- actions -----------------------------------------------------------------------
    def onLoadModel(self):
        path = self.model_path.currentPath
        if not self._ready() or not ensure_dependencies(is_nnunet_folder(path)):
            return
        self.model_path.addCurrentPathToHistory()
        self._start(lambda token, progress: self.logic.load(path), f"Loading {os.path.basename(path)}",
                    self._model_loaded)

    def _model_loaded(self, model):
        self.model = model
        self.target.clear()
        for i, n in enumerate(model.class_names):
            self.target.addItem(f"{i}: {n}", i)
        self.target.currentIndex = 1 if len(model.class_names) > 1 else 0
        self.status.text = f"Loaded: {len(model.class_names)} classes, {model.spatial_dims}D."

    def onExplain(self):
        if not self._ready() or not self._have_model():
            return
        logic, volume = self.logic, self.volume.currentNode()
        with user_errors("SegExplain could not start"):
            image = logic.image(volume)
            seg, sid = self.roi.currentNode(), self.roi.currentSegmentID()
            roi = (logic.roi_mask(volume, seg, sid) if seg is not None and sid
                   else logic.roi_mask(volume, self.roi_labelmap.currentNode()))
            params, method, target, model = self._params(), self.method.currentData, self.target.currentData, self.model

            def run(token, progress):
                return logic.compute_explanation(model, image, method, target, roi, params, progress, token)

            def show(exp):
                node = logic.attribution_node(volume, image, exp)
                slicer.util.setSliceViewerLayers(background=volume, foreground=node, foregroundOpacity=0.5)
                self.legend.text = node.GetAttribute("legend")
                self.status.text = (f"{node.GetName()}: {exp.elapsed_s:.1f} s, {exp.n_forward} forward / "
                                    f"{exp.n_backward} backward passes. Values: {node.GetAttribute('unit')}")

            self._start(run, f"Explaining ({self.method.currentText})", show)

    def onPredict(self):
        if not self._ready() or not self._have_model():
            return
        logic, volume, model = self.logic, self.volume.currentNode(), self.model
        with user_errors("SegExplain could not start"):
            image = logic.image(volume)

            def show(labels):
                seg = logic.segmentation_node(volume, image, labels, model.class_names)
                self.status.text = f"{seg.GetName()}: {seg.GetSegmentation().GetNumberOfSegments()} segments"

            self._start(lambda token, progress: model.predict(image), "Segmenting", show)

    def onAgg2Exp(self):
        if not self._ready() or not self._have_model():
            return
        logic, model = self.logic, self.model
        nodes = list(self.agg_volumes.checkedNodes()) or [self.volume.currentNode()]
        with user_errors("SegExplain could not start"):
            images = [logic.image(n) for n in nodes]
            names = [n.GetName() for n in nodes]
            params, method = self._params(), self.method.currentData

            def run(token, progress):
                return logic.compute_agg2exp(model, images, names, method, params, None, progress, token)

            def show(res):
                local, glob = logic.table_nodes(slicer.mrmlScene, res, f"Agg2Exp {method}")
                slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
                slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(glob.GetID())
                slicer.app.applicationLogic().PropagateTableSelection()
                self.status.text = res.summary()

            self._start(run, f"Agg2Exp ({self.method.currentText})", show)

    def _have_model(self) -> bool:
        if self.model is None:
            slicer.util.errorDisplay("Load a model first.")
            return False
        return True

    # ---- running -----------------------------------------------------------------------
    def _start(self, fn, title, on_done):
        if self.job is not None:
            slicer.util.errorDisplay("A job is running; wait for it or press Cancel.")
            return
        self.on_done = on_done
        self.job = Job(fn, title)
        self.status.text = title + " ..."
        self.progress.value = 0
        self._set_running(True)
        self.timer.start()

    def onCancel(self):
        if self.job is not None:
            self.job.token.cancel()
            self.status.text = "Cancelling ..."

    def _poll(self):
        if self.job is None:
            self.timer.stop()
            return
        progress, final = self.job.poll()
        if progress is not None and progress[1]:
            self.progress.value = int(1000 * progress[0] / progress[1])
            self.status.text = f"{self.job.title}: {progress[0]}/{progress[1]}"
        if final is None:
            return
        job, self.job = self.job, None
        self.timer.stop()
        self._set_running(False)
        kind, value = final
        if kind == "done":
            self.progress.value = 1000
            with user_errors("SegExplain could not show the result"):
                self.on_done(value)
            return
        from seg_explain.errors import Cancelled, SegExplainError

        self.progress.value = 0
        if isinstance(value, Cancelled):
            self.status.text = f"{job.title}: cancelled"
        elif isinstance(value, SegExplainError):
            self.status.text = str(value)
            slicer.util.errorDisplay(str(value))
        else:
            logging.error("SegExplain: %s failed", job.title, exc_info=value)
            self.status.text = f"{job.title} failed: {value}"
            slicer.util.errorDisplay(f"{job.title} failed: {value}\n(details in the Python console)")

    def _set_running(self, running: bool):
        for b in (self.load_button, self.explain_button, self.predict_button, self.agg_button):
            b.enabled = not running
        self.cancel_button.enabled = running


# -------------------------------------------------------------------------------- test --
class SegExplainTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test). The same Logic is tested headless in
    the project's suite (tests/test_slicer_logic.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_explain_the_sample()

    def test_explain_the_sample(self):
        if not ensure_dependencies():
            self.skipTest("dependencies not installed")
        import numpy as np
        from SegExplainLib.logic import SegExplainLogic, array_from_volume

        from seg_explain.paths import sample_path

        self.delayDisplay("Loading the 3D sample")
        volume = slicer.util.loadVolume(str(sample_path("brain3d", "colin27_t1_2mm.nii.gz")))
        roi = slicer.util.loadLabelVolume(str(sample_path("brain3d", "colin27_roi_temporal_R.nii.gz")))
        logic = SegExplainLogic()
        self.delayDisplay("Explaining (gradient, right temporal lobe)")
        node = logic.explain(volume, str(sample_path("models", "brain3d")), "gradient", "temporal_R",
                             roi_segmentation=roi)
        a = array_from_volume(node)
        self.assertEqual(a.shape, array_from_volume(volume).shape)
        self.assertTrue(np.abs(a).max() > 0)
        self.assertEqual(node.GetAttribute("method"), "gradient")
        self.assertIsNotNone(node.GetDisplayNode().GetColorNode())
        self.delayDisplay("Test passed")
