"""nnU-Net v2 trained-model folders (TotalSegmentator and the like) -> :class:`NnUNetModel`.

A folder as nnU-Net leaves it on disk::

    DatasetXXX_Name/Trainer__Plans__Configuration/
        dataset.json            labels (name -> class index), channel names
        plans.json              configurations: patch, spacing, normalisation, architecture
        fold_0/checkpoint_final.pth   (or checkpoint_best.pth), fold_1/ ...

``load_model(folder)`` accepts the trainer folder, one of its ``fold_N`` folders (that fold
only) or the ``DatasetXXX_Name`` folder when it holds a single trainer folder. Only the
``[nnunet]`` extra (``dynamic-network-architectures``) is needed; nnU-Net itself is not
imported and nothing is downloaded.

What is reproduced, and how exactly (``tests/test_nnunet.py`` compares with
``nnUNetPredictor`` on held-out images):

- **Geometry.** nnU-Net works on the voxel array as SimpleITK reads the file (axes
  ``(k, j, i)``, never reoriented), transposed by ``transpose_forward``. An image from
  :func:`seg_explain.load_image` keeps its file's orientation in ``meta``, so the LPS array is
  turned back into that array (``orientation="RAS"`` instead reorients every image to that
  orientation first, as TotalSegmentator does before calling nnU-Net). Arrays without a file
  are taken to be nnU-Net's array already, at the configuration's spacing.
- **Cropping** to the nonzero region (``crop_to_nonzero``: any channel != 0, holes filled);
  outside it the network is never run and the label is background, as in nnU-Net.
- **Normalisation** per channel as ``plans.json`` says, with the stored intensity
  properties: ``CTNormalization``, ``ZScoreNormalization`` (also inside the nonzero mask),
  ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``; the same numpy
  operations in float32, before resampling (nnU-Net's order).
- **Resampling** ``resample_data_or_seg_to_shape`` with the plans' kwargs: the very
  ``scipy.ndimage.zoom`` / ``map_coordinates`` calls scikit-image's ``resize`` makes for
  nnU-Net (order 3, edge mode, clipped to the input range; "separate z" with order 0 along
  an axis more than 3x coarser). Logits go back to the image with the plans' probability
  resampling (order 1), then nnU-Net's argmax. Gradient maps go back through the exact
  adjoint of the data resampling's linear part (sparse per-axis matrices; the final clip
  to the input range is not differentiated).
- **Sliding windows** ``compute_steps_for_sliding_window`` (tile step 0.5), padding to the
  patch, nnU-Net's float16 Gaussian (sigma 1/8, scaled to 10, zeros lifted to the minimum).
  Sums are kept in float32 (nnU-Net 2.8 keeps them in float16, which costs it up to ~0.5
  logit where the Gaussian weights underflow; ``accumulate_dtype = torch.float16``
  reproduces that too).
- **Folds**: the network is the mean of the folds' logits (nnU-Net's ensemble).
- **Mirroring** (test-time flips over ``inference_allowed_mirroring_axes``) is **off by
  default**: an explanation then explains one network pass per window, and CAMs can hook a
  layer that runs once. ``mirror=True`` averages the flipped passes as nnU-Net does.
- **Labels** from ``dataset.json``; region-based (sigmoid) models are refused.

Explainers call :meth:`SegModel.forward` on patch-sized windows; this model always windows
at the patch size (also images smaller than the patch are padded to it), so instance
normalisation sees what it sees in nnU-Net. The explainers blend their windows with MONAI's
geometry and Gaussian (``seg_explain.windows``, ``explainers.engine``): MONAI centres its
Gaussian half a voxel from nnU-Net's (even patches), does not quantise it to float16 and may
place windows elsewhere, so where windows overlap the explained f-hat is not exactly
``logits_tensor``'s (on the test fixture 0.4-9 % of f-hat). :meth:`NnUNetModel.tiling` and
:meth:`NnUNetModel.importance_map` give nnU-Net's windows and weights for the explainers to use.

Safety (docs/SECURITY.md): files must be regular files inside the trainer folder; JSON is
size-capped; the architecture is validated whole before anything is built, from an
allow-list of ``dynamic_network_architectures`` classes and the torch.nn classes named in
``_kw_requires_import`` (never a function; refusals name the key path); checkpoints are
scanned for the globals they reference and loaded with ``torch.load(weights_only=True)``
allowing exactly the numpy scalar types nnU-Net's trainer writes in its logs.
"""
from __future__ import annotations

import inspect
import itertools
import math
import os
import re
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..budget import check_bytes
from ..errors import InputMismatchError, ModelLoadError, UnsafeConfigError
from ..files import read_json, regular_file
from ..io import LoadedImage
from ..model_grid import ModelGrid, orientation_transform
from .network_size import check_network_size
from .nnunet_layout import has_plans, is_nnunet_folder, trainer_folders  # noqa: F401 (is_nnunet_folder: public here too)
from .segmodel import Prepared, SegModel, resolve_device
from .torch_errors import is_restricted_refusal, refused_global

ANISO_THRESHOLD = 3          # nnunetv2.configuration.ANISO_THRESHOLD
TWO_D_THICKNESS = 999.0      # slice thickness nnU-Net's 2D readers give a 2D image
OUTSIDE_LOGIT = -30.0        # non-background logits where nnU-Net never runs (softmax bg ~ 1)
MAX_MODEL_VOXELS = 2 ** 31
MAX_PARAMETERS = 2e9         # TotalSegmentator's networks have ~30 million
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")

# ------------------------------------------------------------------ allow-lists --
# network classes: nnU-Net resolves network_class_name with pydoc.locate and, failing
# that, by class name inside dynamic_network_architectures.architectures
NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")
_DNA_ARCH = "dynamic_network_architectures.architectures.unet"
# classes a key listed in _kw_requires_import may name, by role
_TORCH = {
    "conv_op": ("Conv1d", "Conv2d", "Conv3d"),
    "norm_op": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d", "BatchNorm2d",
                "BatchNorm3d", "GroupNorm", "LayerNorm"),
    "dropout_op": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    "nonlin": ("ReLU", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid",
               "Hardswish", "Identity"),
}
_BLOCKS = ("BasicBlockD", "BottleneckD")
IMPORTABLE_KEYS = tuple(_TORCH) + ("block",)
# sanity bounds on architecture numbers (a plans.json cannot ask for a terabyte network)
_BOUNDS = {"n_stages": 16, "features_per_stage": 4096, "kernel_sizes": 15, "strides": 8,
           "n_conv_per_stage": 16, "n_blocks_per_stage": 64, "n_conv_per_stage_decoder": 16,
           "bottleneck_channels": 4096, "stem_channels": 4096}
# exactly what nnU-Net's trainer pickles besides tensors and plain containers: numpy float
# scalars in its logs (np.float32 / np.float64 = "scalar" called with a "dtype", whose state
# is set on a Float32DType / Float64DType instance). The numpy<2 module name is the same
# function under its old path (checkpoints written with numpy 1.x, e.g. TotalSegmentator's).
CHECKPOINT_GLOBALS = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype")


def _q(path: str) -> str:
    return f"'{path}'"


def _resolve_folder(p: Path) -> tuple[Path, list[str] | None]:
    """(trainer folder, folds named by the path or None)."""
    if has_plans(p):
        return p, None
    if p.name.startswith("fold_") and has_plans(p.parent):
        return p.parent, [p.name[len("fold_"):]]
    found = trainer_folders(p)
    if len(found) == 1:
        return found[0], None
    if not found:
        raise ModelLoadError(f"{p.name} holds no nnU-Net trainer folder (Trainer__Plans__Configuration "
                             "with plans.json and dataset.json)")
    raise ModelLoadError(f"{p.name} holds {len(found)} nnU-Net trainer folders; pick one: "
                         + ", ".join(f.name for f in found))


# ----------------------------------------------------------------- plans.json --
def _configuration(plans: dict, name: str, where: str, seen: tuple = ()) -> dict:
    """nnU-Net's configuration with ``inherits_from`` resolved."""
    confs = plans.get("configurations")
    if not isinstance(confs, dict) or not isinstance(confs.get(name), dict):
        avail = ", ".join(sorted(confs)) if isinstance(confs, dict) else "none"
        raise ModelLoadError(f"{where}: configuration {name!r} is not in plans.json (it has: {avail})")
    conf = deepcopy(confs[name])
    parent = conf.get("inherits_from")
    if parent is not None:
        if not isinstance(parent, str) or parent in seen + (name,):
            raise ModelLoadError(f"{where}: configuration {name!r} inherits in a circle ({parent!r})")
        base = _configuration(plans, parent, where, seen + (name,))
        base.update(conf)
        conf = base
    return conf


def _old_format_architecture(conf: dict, where: str) -> dict:
    """The ``architecture`` entry nnU-Net (ConfigurationManager) builds from plans written by
    nnU-Net < 2.4 (``UNet_class_name`` & co., e.g. TotalSegmentator's)."""
    key = f"{where}.UNet_class_name"
    cls = conf.get("UNet_class_name")
    if cls not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise UnsafeConfigError(f"{_q(key)}: refusing {cls!r}: an old-format plans.json may only name "
                                "PlainConvUNet or ResidualEncoderUNet")
    try:
        n = len(conf["n_conv_per_stage_encoder"])
        dim = len(conf["patch_size"])
        base, cap = conf["UNet_base_num_features"], conf["unet_max_num_features"]
        feats = [min(base * 2 ** i, cap) for i in range(n)]
    except (KeyError, TypeError) as exc:
        raise ModelLoadError(f"{where}: old-format plans without a usable network description ({exc})") from None
    convs = "n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"
    return {
        "network_class_name": f"{_DNA_ARCH}.{cls}",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": feats, "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": deepcopy(conf.get("conv_kernel_sizes")),
            "strides": deepcopy(conf.get("pool_op_kernel_sizes")),
            convs: deepcopy(conf.get("n_conv_per_stage_encoder")),
            "n_conv_per_stage_decoder": deepcopy(conf.get("n_conv_per_stage_decoder")),
            "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def _class_for(role: str, name: Any, key: str):
    """The allow-listed class ``name`` may denote in ``role`` (never imported by name)."""
    if not isinstance(name, str) or not name:
        raise UnsafeConfigError(f"{_q(key)}: expected a class name, got {name!r}")
    prefix, _, short = name.rpartition(".")
    if role == "block":
        ok = short in _BLOCKS and (not prefix or prefix.startswith("dynamic_network_architectures"))
        if ok:
            from dynamic_network_architectures.building_blocks import residual

            return getattr(residual, short)
        allowed = _BLOCKS
    else:
        allowed = _TORCH[role]
        ok = short in allowed and (not prefix or prefix == "torch.nn" or prefix.startswith("torch.nn.modules"))
        if ok:
            return getattr(torch.nn, short)
    raise UnsafeConfigError(f"{_q(key)}: refusing {name!r}: only these {role} classes may be named in "
                            f"plans.json: {', '.join(allowed)}")


def _network_class(name: Any, key: str):
    if not isinstance(name, str) or not name:
        raise UnsafeConfigError(f"{_q(key)}: expected a class name, got {name!r}")
    prefix, _, short = name.rpartition(".")
    if short in NETWORKS and (not prefix or prefix.startswith("dynamic_network_architectures.architectures")):
        return short
    raise UnsafeConfigError(f"{_q(key)}: refusing {name!r}: only these dynamic_network_architectures "
                            f"networks may be built from plans.json: {', '.join(NETWORKS)}")


def _check_plain(value: Any, key: str, depth: int = 0) -> None:
    if depth > 8:
        raise UnsafeConfigError(f"{_q(key)}: nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{key}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise UnsafeConfigError(f"{_q(key)}: unsupported value of type {type(value).__name__}")


def _check_bounds(name: str, value: Any, key: str) -> None:
    cap = _BOUNDS.get(name)
    if cap is None or value is None:
        return
    flat = value if isinstance(value, list) else [value]
    stack = list(flat)
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= cap:
            raise ModelLoadError(f"{_q(key)}: {v!r} is not a whole number in [0, {cap}]")


@dataclass
class Architecture:
    """A validated architecture: the network class name and its keyword arguments with the
    allow-listed classes already in place."""

    cls_name: str
    kwargs: dict


def validate_architecture(arch: Any, where: str) -> Architecture:
    """Validate plans.json's ``architecture`` entry whole; refusals name the key path.

    Nothing is imported by name: every class comes from the allow-lists above."""
    if not isinstance(arch, dict):
        raise ModelLoadError(f"{_q(where)} must be an object")
    cls_short = _network_class(arch.get("network_class_name"), f"{where}.network_class_name")
    kwargs = arch.get("arch_kwargs")
    if not isinstance(kwargs, dict):
        raise ModelLoadError(f"{_q(where + '.arch_kwargs')} must be an object")
    req = arch.get("_kw_requires_import", [])
    if not isinstance(req, (list, tuple)) or not all(isinstance(r, str) for r in req):
        raise UnsafeConfigError(f"{_q(where + '._kw_requires_import')} must be a list of argument names")
    for r in req:
        if r not in IMPORTABLE_KEYS:
            raise UnsafeConfigError(f"{_q(where + '._kw_requires_import')}: refusing {r!r}: only "
                                    f"{', '.join(IMPORTABLE_KEYS)} may name classes")
        if r not in kwargs:
            raise ModelLoadError(f"{_q(where + '._kw_requires_import')}: {r!r} is not in arch_kwargs")
    out = {}
    for k, v in kwargs.items():
        key = f"{where}.arch_kwargs.{k}"
        if k in req:
            out[k] = None if v is None else _class_for(k, v, key)
            continue
        _check_plain(v, key)
        _check_bounds(k, v, key)
        if k in IMPORTABLE_KEYS and isinstance(v, str):
            raise UnsafeConfigError(f"{_q(key)}: {v!r} names a class but {k!r} is not in _kw_requires_import")
        out[k] = deepcopy(v)
    for role in _TORCH:
        _check_op_kwargs(out.get(role), out.get(f"{role}_kwargs"), f"{where}.arch_kwargs.{role}_kwargs")
    n = _param_estimate(out)
    if n > MAX_PARAMETERS:
        raise ModelLoadError(f"{_q(where + '.arch_kwargs')} describes a network of about {n / 1e9:.1f} billion "
                             f"parameters (more than {MAX_PARAMETERS / 1e9:.0f} billion); refusing to build it")
    return Architecture(cls_short, out)


# numeric keyword arguments of the allow-listed torch classes that have a meaningful range (a
# negative eps gives NaN logits; a dropout p outside [0, 1] fails later): name -> (test, text)
_KW_RANGES = {"eps": (lambda v: v > 0, "> 0"), "p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
              "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"), "num_parameters": (lambda v: v >= 1, ">= 1")}


def _check_op_kwargs(cls, kwargs, key: str) -> None:
    """``<op>_kwargs`` against the allow-listed class's own signature: known names, values of
    the annotated type (a string ``negative_slope`` would only fail inside a forward pass),
    finite and in range."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise ModelLoadError(f"{_q(key)} must be an object of keyword arguments, got {kwargs!r}"[:300])
    if cls is None:
        return
    params = inspect.signature(cls.__init__).parameters
    for name, v in kwargs.items():
        where = f"{key}.{name}"
        if name not in params or name in ("self", "device", "dtype"):
            raise ModelLoadError(f"{_q(where)}: {cls.__name__} takes no argument {name!r} here")
        ann = params[name].annotation
        ann = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        ann = ann.replace("typing.", "")
        optional = "Optional" in ann or "None" in ann
        if v is None and optional:
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ann.strip() == "bool" and not isinstance(v, bool):
            raise ModelLoadError(f"{_q(where)} must be true or false, got {v!r}"[:200])
        if ("float" in ann or "int" in ann) and ann.strip() != "bool" and not number:
            raise ModelLoadError(f"{_q(where)} must be a number, got {v!r}"[:200])
        if number:
            ok, text = _KW_RANGES.get(name, (lambda v: True, "finite"))
            if not (math.isfinite(v) and ok(v)):
                raise ModelLoadError(f"{_q(where)} must be {text}, got {v!r}")


def window_bytes(kw: dict, patch: Sequence[int]) -> float:
    """Rough memory of one inference pass on a ``patch`` window: every stage's feature maps
    (kept as skips, plus the decoder's maps and concatenations) in float32."""
    n = kw.get("n_stages") or 1
    feats = kw.get("features_per_stage") or 1
    feats = feats if isinstance(feats, list) else [feats] * n
    strides = kw.get("strides") or 1
    strides = strides if isinstance(strides, list) else [strides] * n
    vox = float(np.prod(patch))
    total = 0.0
    for i, f in enumerate(feats):
        st = strides[i] if i < len(strides) else 1
        vox /= float(np.prod(st)) if isinstance(st, list) else float(st) ** len(patch)
        total += max(vox, 1.0) * float(f) * 3
    return 4.0 * total


def _param_estimate(kw: dict) -> float:
    """Rough upper bound of the parameter count (features^2 x kernel volume x convolutions
    per stage, encoder and decoder), to refuse absurd networks before allocating them."""
    n = kw.get("n_stages") or 1
    feats = kw.get("features_per_stage") or 1
    feats = feats if isinstance(feats, list) else [feats] * n
    kern = kw.get("kernel_sizes") or 3
    kern = kern if isinstance(kern, list) else [kern] * n
    convs = kw.get("n_conv_per_stage", kw.get("n_blocks_per_stage")) or 2
    convs = convs if isinstance(convs, list) else [convs] * n
    total = 0.0
    for i, f in enumerate(feats):
        k = kern[i] if i < len(kern) else 3
        vol = float(np.prod(k)) if isinstance(k, list) else float(k) ** 3
        c = convs[i] if i < len(convs) and isinstance(convs[i], int) else 2
        total += 4.0 * float(f) ** 2 * vol * (2 * c + 2)
    return total


def _build_network(arch: Architecture, in_channels: int, n_out: int, where: str) -> torch.nn.Module:
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError:
        raise ModelLoadError("nnU-Net model folders need the [nnunet] extra: pip install "
                             "'napari-seg-explain[nnunet]' (dynamic-network-architectures)") from None
    cls = getattr(unet, arch.cls_name)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(arch.kwargs) - set(params) - {"input_channels", "num_classes"})
    if unknown:
        raise ModelLoadError(f"{where}: {arch.cls_name} takes no argument(s) {', '.join(unknown)}")
    kw = dict(arch.kwargs, input_channels=in_channels, num_classes=n_out)
    if "deep_supervision" in params:
        kw["deep_supervision"] = False
    try:
        return cls(**kw)
    except Exception as exc:  # noqa: BLE001 - any construction failure is a bad plans.json
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{where}: cannot build {arch.cls_name}: {first[:300]}") from exc


# --------------------------------------------------------------- dataset.json --
def parse_labels(ds: dict, where: str) -> list[str]:
    """Class names by index from dataset.json ``labels`` (region-based models refused)."""
    labels = ds.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelLoadError(f"{where}: dataset.json has no 'labels' object")
    if "regions_class_order" in ds or any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise ModelLoadError(
            f"{where} is a region-based nnU-Net model (labels as lists of classes, one sigmoid output "
            "per overlapping region, regions_class_order): not supported; seg-explain explains "
            "softmax models (one label map) or single-channel sigmoid models")
    by_index: dict[int, str] = {}
    for name, v in labels.items():
        if name == "ignore":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ModelLoadError(f"{where}: dataset.json label {name!r} must be a class index >= 0, got {v!r}")
        if v in by_index:
            raise ModelLoadError(f"{where}: dataset.json names class {v} twice ({by_index[v]!r}, {name!r})")
        by_index[v] = str(name)
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) < 2:
        raise ModelLoadError(f"{where}: dataset.json labels must be 0, 1, ..., K-1 (nnU-Net's rule), got "
                             f"{sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _channels(ds: dict, where: str) -> int:
    ch = ds.get("channel_names", ds.get("modality"))
    if not isinstance(ch, dict) or not ch or len(ch) > 1024:
        raise ModelLoadError(f"{where}: dataset.json needs 'channel_names' (channel index -> name)")
    return len(ch)


# ---------------------------------------------------------------- checkpoints --
def _safe_globals():
    import numpy as _np

    core = getattr(_np, "_core", None)
    scalar = getattr(getattr(core, "multiarray", None), "scalar", None) if core is not None else None
    if scalar is None:  # numpy < 2
        scalar = _np.core.multiarray.scalar
    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"),
            (_np.dtype, "numpy.dtype"), type(_np.dtype(_np.float32)), type(_np.dtype(_np.float64))]


def load_checkpoint(path: Path, root: Path) -> dict:
    """An nnU-Net checkpoint, unpickled by torch's restricted unpickler only.

    Its pickle is scanned first: any global outside torch's own safe set and
    :data:`CHECKPOINT_GLOBALS` is refused by name before anything is unpickled."""
    real = regular_file(path, "nnU-Net checkpoint", inside=root, error=ModelLoadError)
    ser = torch.serialization
    if not hasattr(ser, "safe_globals"):
        raise ModelLoadError("loading nnU-Net checkpoints safely needs torch >= 2.5 "
                             "(torch.serialization.safe_globals)")
    scan = getattr(ser, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        try:
            needed = set(scan(str(real)))
        except Exception:  # noqa: BLE001 - not a zip checkpoint: the restricted load decides
            needed = set()
        extra = sorted(needed - set(CHECKPOINT_GLOBALS))
        if extra:
            raise UnsafeConfigError(
                f"{path.parent.name}/{path.name} references {', '.join(extra[:5])}"
                + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
                + ", beyond the tensors, containers and numpy float scalars an nnU-Net checkpoint holds; "
                "nothing was unpickled (re-save it as {'network_weights': state_dict} with torch.save "
                "if you trust it)")
    try:
        with ser.safe_globals(_safe_globals()):
            ck = torch.load(str(real), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        msg = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if is_restricted_refusal(exc):
            found = refused_global(exc) or "a pickled Python object"
            raise UnsafeConfigError(f"{path.parent.name}/{path.name} holds {found[:160]}, beyond the tensors, "
                                    "containers and numpy float scalars an nnU-Net checkpoint holds; it was not "
                                    "unpickled") from None
        raise ModelLoadError(f"{path.parent.name}/{path.name} is not a readable checkpoint: {msg[:200]}") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("network_weights"), dict):
        raise ModelLoadError(f"{path.parent.name}/{path.name} is not an nnU-Net checkpoint (no network_weights)")
    w = ck["network_weights"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in w.items()):
        raise ModelLoadError(f"{path.parent.name}/{path.name}: network_weights must map names to tensors")
    return ck


def _fold_dirs(root: Path, folds: Sequence | None, checkpoint: str | None) -> list[tuple[str, Path]]:
    """(fold name, checkpoint path) per fold: ``folds`` as given, else every ``fold_N``
    with a checkpoint (``fold_all`` only when there is none), as nnU-Net auto-detects."""
    names = (checkpoint,) if checkpoint else CHECKPOINTS
    if checkpoint and checkpoint not in CHECKPOINTS + ("checkpoint_latest.pth",):
        raise ModelLoadError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, checkpoint_latest.pth")

    def ckpt(d: Path) -> Path | None:
        for n in names:
            if os.path.lexists(d / n):
                return d / n
        return None

    if folds is not None:
        out = []
        for f in folds:
            d = root / f"fold_{f}"
            c = ckpt(d) if d.is_dir() else None
            if c is None:
                raise ModelLoadError(f"{root.name}: fold_{f} has no {' or '.join(names)}")
            out.append((str(f), c))
        return out
    found = []
    for d in sorted(root.iterdir()):
        m = re.fullmatch(r"fold_(\d+)", d.name)
        if m and d.is_dir() and ckpt(d) is not None:
            found.append((int(m.group(1)), d.name[5:], ckpt(d)))
    if found:
        return [(n, c) for _, n, c in sorted(found)]
    d = root / "fold_all"
    if d.is_dir() and ckpt(d) is not None:
        return [("all", ckpt(d))]
    raise ModelLoadError(f"{root.name} has no fold_N/{' or '.join(names)}")


# ---------------------------------------------------------------- resampling --
def compute_new_shape(old_shape, old_spacing, new_spacing) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``."""
    return tuple(int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape))


def _separate_z(force, current, new, threshold) -> int | None:
    """nnU-Net's ``determine_do_sep_z_and_axis`` -> the axis resampled separately, or None."""
    def lowres(sp):
        sp = np.asarray(sp, float)
        return np.where(max(sp) / sp == 1)[0]

    def aniso(sp):
        return (np.max(sp) / np.min(sp)) > threshold

    if force is not None:
        axis = lowres(current) if force else None
    elif aniso(current):
        axis = lowres(current)
    elif aniso(new):
        axis = lowres(new)
    else:
        axis = None
    if axis is None or len(axis) != 1:
        return None
    return int(axis[0])


def _sk_resize(img: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(img, shape, order, mode="edge", anti_aliasing=False)`` on a
    float64 array: the scipy call it makes, then its clip to the input's range."""
    from scipy import ndimage as ndi

    factors = np.divide(img.shape, shape)
    out = ndi.zoom(img, [1 / f for f in factors], order=order, mode="nearest", cval=0, grid_mode=True)
    if out.shape != tuple(shape):  # pragma: no cover - scipy rounds like skimage expects
        raise RuntimeError(f"zoom gave {out.shape}, expected {tuple(shape)}")
    np.clip(out, np.asarray(np.min(img)), np.asarray(np.max(img)), out=out)
    return out


@lru_cache(maxsize=256)
def _axis_matrix(n_in: int, n_out: int, order: int, separate: bool):
    """Sparse ``(n_out, n_in)`` matrix of one axis of the resampling (without the clip):
    ``ndimage.zoom`` in grid mode (``separate=False``) or nnU-Net's separate-z
    ``map_coordinates`` along that axis. The n-D resampling is the tensor product of these
    (scipy's splines are separable), which is what makes its exact adjoint cheap."""
    from scipy import ndimage as ndi
    from scipy import sparse

    eye = np.eye(n_in)
    cols = []
    for j in range(n_in):
        if separate:
            coords = (float(n_in) / n_out) * (np.arange(n_out) + 0.5) - 0.5
            cols.append(ndi.map_coordinates(eye[j], [coords], order=order, mode="nearest"))
        else:
            cols.append(ndi.zoom(eye[j], n_out / n_in, order=order, mode="nearest", cval=0, grid_mode=True))
    m = np.stack(cols, axis=1)
    m[np.abs(m) < 1e-13 * max(1.0, np.abs(m).max())] = 0.0
    return sparse.csr_matrix(m)


@dataclass(frozen=True)
class Resampling:
    """nnU-Net's ``resample_data_or_seg(is_seg=False)`` from ``in_shape`` to ``out_shape``.

    ``axis`` is the separately resampled ("z") axis or None; ``order`` the in-plane / n-D
    spline order and ``order_z`` the order along ``axis``."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    order: int
    order_z: int
    axis: int | None

    @classmethod
    def plan(cls, in_shape, out_shape, current_spacing, new_spacing, order=3, order_z=0,
             force_separate_z=None, threshold=ANISO_THRESHOLD) -> Resampling:
        axis = _separate_z(force_separate_z, current_spacing, new_spacing, threshold)
        return cls(tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape), int(order),
                   int(order_z), axis)

    @property
    def identity(self) -> bool:
        return self.in_shape == self.out_shape

    def with_order(self, order: int) -> Resampling:
        return Resampling(self.in_shape, self.out_shape, order, min(order, self.order_z), self.axis)

    def apply(self, data: np.ndarray) -> np.ndarray:
        """``(L, *in_shape)`` -> ``(L, *out_shape)`` float64, as nnU-Net computes it."""
        if self.identity:
            return np.asarray(data, np.float64)
        data = np.asarray(data, np.float64)
        out = np.zeros((data.shape[0],) + self.out_shape)
        a = self.axis
        for c in range(data.shape[0]):
            if a is None:
                out[c] = _sk_resize(data[c], self.out_shape, self.order)
                continue
            plane = tuple(s for i, s in enumerate(self.out_shape) if i != a)
            tmp = list(self.out_shape)
            tmp[a] = self.in_shape[a]
            here = np.zeros(tmp)
            for s in range(self.in_shape[a]):
                sl = (slice(None),) * a + (s,)
                here[sl] = _sk_resize(data[c][sl], plane, self.order)
            if self.in_shape[a] == self.out_shape[a]:
                out[c] = here
            elif self.order_z == 0:
                idx = self._z_index()
                out[c] = np.take(here, idx, axis=a)
            else:
                m = _axis_matrix(self.in_shape[a], self.out_shape[a], self.order_z, True)
                out[c] = _along(m, here, a)
        return out

    def _z_index(self) -> np.ndarray:
        from scipy import ndimage as ndi

        n_in, n_out = self.in_shape[self.axis], self.out_shape[self.axis]
        coords = (float(n_in) / n_out) * (np.arange(n_out) + 0.5) - 0.5
        return np.rint(ndi.map_coordinates(np.arange(n_in, dtype=float), [coords], order=0,
                                           mode="nearest")).astype(np.int64)

    def matrices(self) -> list:
        """Per-axis sparse matrices (None: the axis is unchanged)."""
        mats = []
        for i, (n_in, n_out) in enumerate(zip(self.in_shape, self.out_shape)):
            if n_in == n_out:
                mats.append(None)
            elif i == self.axis:
                mats.append(_axis_matrix(n_in, n_out, self.order_z, True))
            else:
                mats.append(_axis_matrix(n_in, n_out, self.order, False))
        return mats

    def linear(self, data: np.ndarray) -> np.ndarray:
        """The linear part (no clip) of :meth:`apply`, from per-axis matrices (float64)."""
        out = np.asarray(data, np.float64)
        if self.identity:
            return out
        for i, m in enumerate(self.matrices()):
            if m is not None:
                out = _along(m, out, out.ndim - len(self.in_shape) + i)
        return out

    def adjoint(self, data: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`linear`: ``(..., *out_shape)`` -> ``(..., *in_shape)``."""
        out = np.asarray(data, np.float64)
        if self.identity:
            return out
        for i, m in enumerate(self.matrices()):
            if m is not None:
                out = _along(m.T.tocsr(), out, out.ndim - len(self.in_shape) + i)
        return out


def _along(m, arr: np.ndarray, axis: int) -> np.ndarray:
    """Sparse matrix ``m`` applied along ``axis`` of ``arr``."""
    moved = np.moveaxis(arr, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    res = np.asarray(m @ flat).reshape((m.shape[0],) + moved.shape[1:])
    return np.moveaxis(res, 0, axis)


# ------------------------------------------------------------- normalisation --
def _normalize(img: np.ndarray, scheme: str, use_mask: bool, props: dict, mask: np.ndarray) -> np.ndarray:
    """One channel, as nnU-Net's ``ImageNormalization.run`` (float32 numpy)."""
    eps = 1e-8
    if scheme == "ZScoreNormalization":
        image = img.astype(np.float32, copy=False)
        if use_mask:
            mean = image[mask].mean()
            std = image[mask].std()
            image[mask] = (image[mask] - mean) / (max(std, eps))
        else:
            mean = image.mean()
            std = image.std()
            image -= mean
            image /= (max(std, eps))
        return image
    if scheme == "CTNormalization":
        image = img.astype(np.float32, copy=False)
        np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
        image -= props["mean"]
        image /= max(props["std"], eps)
        return image
    if scheme == "NoNormalization":
        return img.astype(np.float32, copy=False)
    if scheme == "RescaleTo01Normalization":
        image = img.astype(np.float32, copy=False)
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
        return image
    if scheme == "RGBTo01Normalization":
        if img.min() < 0 or img.max() > 255:
            raise InputMismatchError("this nnU-Net model normalises RGB images (0..255); the image has "
                                     f"values in [{img.min()}, {img.max()}]")
        image = img.astype(np.float32, copy=False)
        image /= 255.
        return image
    raise AssertionError(scheme)  # pragma: no cover - validated at load


NORMALIZATIONS = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")


def _intensity(props: Any, scheme: str, key: str) -> dict:
    if scheme != "CTNormalization":
        return {}
    need = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if not isinstance(props, dict) or not all(
            isinstance(props.get(k), (int, float)) and not isinstance(props.get(k), bool)
            and math.isfinite(props[k]) for k in need):
        raise ModelLoadError(f"{_q(key)}: CTNormalization needs finite {', '.join(need)}")
    return {k: float(props[k]) for k in need}


def crop_to_nonzero(data: np.ndarray) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """nnU-Net's ``crop_to_nonzero``: (bbox, nonzero mask inside it) of a (C, *S) array."""
    from scipy.ndimage import binary_fill_holes

    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    mask = binary_fill_holes(mask)
    bbox = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        bbox.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, mask.shape[ax]))
    sl = tuple(slice(a, b) for a, b in bbox)
    return tuple(bbox), mask[sl]


# ---------------------------------------------------------------------- grid --
@dataclass
class NnUNetGrid(ModelGrid):
    """Image grid <-> nnU-Net's model grid: reorientation to the array nnU-Net reads,
    ``transpose_forward``, crop to the nonzero box, nnU-Net's resampling.

    Internally every array is 3D in nnU-Net's (transposed) axes; a 2D model's images are
    one slice ``(1, Y, X)``."""

    transpose: tuple[int, ...] | None = None
    two_d: bool = False
    t_shape: tuple[int, ...] = ()
    bbox: tuple[tuple[int, int], ...] = ()
    data_rs: Resampling | None = None        # cropped -> model (image data)
    prob_rs: Resampling | None = None        # model -> cropped (nnU-Net's probability resampling)

    @property
    def cropped(self) -> bool:
        return any(a != 0 or b != n for (a, b), n in zip(self.bbox, self.t_shape))

    @property
    def identity(self) -> bool:
        tr = self.transpose is None or tuple(self.transpose) == tuple(range(len(self.transpose)))
        return self.ornt is None and tr and not self.cropped and self.data_rs.identity

    # -- image grid <-> nnU-Net's full (transposed) array
    def _to_t(self, arr: np.ndarray) -> np.ndarray:
        a = self.reorient(np.asarray(arr), inverse=False)
        lead = a.ndim - len(self.image_shape)
        if self.two_d:
            return a[(slice(None),) * lead + (None,)]
        return a.transpose(list(range(lead)) + [lead + t for t in self.transpose])

    def _from_t(self, arr: np.ndarray) -> np.ndarray:
        lead = arr.ndim - 3
        if self.two_d:
            a = arr[(slice(None),) * lead + (0,)]
        else:
            back = np.argsort(self.transpose)
            a = arr.transpose(list(range(lead)) + [lead + int(t) for t in back])
        return self.reorient(np.ascontiguousarray(a), inverse=True)

    def _crop(self, arr: np.ndarray) -> np.ndarray:
        lead = arr.ndim - 3
        return arr[(slice(None),) * lead + tuple(slice(a, b) for a, b in self.bbox)]

    def _uncrop(self, arr: np.ndarray, fill=0.0) -> np.ndarray:
        lead = arr.shape[:arr.ndim - 3]
        out = np.empty(lead + tuple(self.t_shape), dtype=arr.dtype)
        f = np.asarray(fill, dtype=arr.dtype)
        out[...] = f.reshape(f.shape + (1, 1, 1)) if f.ndim else f
        out[(slice(None),) * len(lead) + tuple(slice(a, b) for a, b in self.bbox)] = arr
        return out

    def _model3(self, arr: np.ndarray) -> np.ndarray:
        a = np.asarray(arr)
        return a[(slice(None),) * (a.ndim - 2) + (None,)] if self.two_d else a

    def _model_out(self, arr: np.ndarray) -> np.ndarray:
        return arr[(slice(None),) * (arr.ndim - 3) + (0,)] if self.two_d else arr

    @staticmethod
    def _each(rs: Resampling, arr: np.ndarray, fn: str) -> np.ndarray:
        lead = arr.shape[:arr.ndim - 3]
        flat = arr.reshape((-1,) + arr.shape[-3:])
        out = getattr(rs, fn)(flat)
        return out.reshape(lead + out.shape[-3:])

    # -- ModelGrid interface
    def to_model(self, arr: np.ndarray, order: int = 1) -> np.ndarray:
        """Image-grid array (leading axes allowed) -> model grid; ``order`` 0 for masks,
        1 for maps, 3 for image data (nnU-Net's data resampling)."""
        dtype = np.asarray(arr).dtype
        c = self._crop(self._to_t(arr))
        rs = self.data_rs if order == self.data_rs.order else self.data_rs.with_order(order)
        out = self._each(rs, c, "apply") if not rs.identity else c
        out = self._model_out(out)
        if order == 0:   # nearest neighbour copies values: back to the input's type exactly
            return np.ascontiguousarray(out.astype(dtype))
        return np.ascontiguousarray(out.astype(np.float32) if out.dtype == np.float64 else out)

    def to_image(self, arr, order: int = 1, fill=0.0) -> np.ndarray:
        """Model-grid array -> image grid: nnU-Net's probability resampling (``order`` >= 1;
        order 1 by its plans) or nearest neighbour (``order=0``), then the crop undone with
        ``fill`` (a scalar, or one value per leading channel)."""
        a = self._model3(arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr))
        dtype = a.dtype
        rs = self.prob_rs if order > 0 else self.prob_rs.with_order(0)
        out = self._each(rs, a, "apply") if not rs.identity else a
        if order == 0:   # nearest neighbour copies values: back to the input's type exactly
            out = out.astype(dtype)
        elif out.dtype == np.float64:   # nnU-Net keeps the input's float type
            out = out.astype(dtype if np.issubdtype(dtype, np.floating) else np.float32)
        return self._from_t(self._uncrop(out, fill))

    def adjoint_to_image(self, arr) -> np.ndarray:
        """Adjoint of :meth:`to_model` for image data: gradients w.r.t. the model input ->
        gradients w.r.t. the image the user gave (exact for the linear part of nnU-Net's
        resampling; zeros outside the crop, which the network never sees)."""
        a = self._model3(arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr))
        out = self._each(self.data_rs, a, "adjoint") if not self.data_rs.identity else a.astype(np.float64)
        return self._from_t(self._uncrop(out, 0.0)).astype(np.float32)


# -------------------------------------------------------------------- network --
class NnUNetEnsemble(torch.nn.Module):
    """The folds' networks as one module: mean of their logits, optionally averaged over
    nnU-Net's test-time mirroring (flips over ``mirror_axes``)."""

    def __init__(self, nets: Sequence[torch.nn.Module], mirror_axes: Sequence[int] | None):
        super().__init__()
        self.folds = torch.nn.ModuleList(nets)
        self.mirror_axes = tuple(int(a) for a in mirror_axes) if mirror_axes else ()
        self.mirror = False

    def _one(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = net(x)
        if isinstance(y, (list, tuple)):
            y = y[0]
        if not (self.mirror and self.mirror_axes):
            return y
        axes = [a + 2 for a in self.mirror_axes]
        combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for c in combos:
            yc = net(torch.flip(x, c))
            if isinstance(yc, (list, tuple)):
                yc = yc[0]
            y = y + torch.flip(yc, c)
        return y / (len(combos) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for net in self.folds:
            y = self._one(net, x)
            out = y if out is None else out + y
        return out / len(self.folds) if len(self.folds) > 1 else out


@lru_cache(maxsize=8)
def nnunet_gaussian(patch: tuple[int, ...], sigma_scale: float = 1. / 8,
                    value_scaling_factor: float = 10) -> torch.Tensor:
    """nnU-Net's ``compute_gaussian`` (float16, as its predictor uses it)."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(patch)
    tmp[tuple(i // 2 for i in patch)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in patch], 0, mode="constant", cval=0)
    g /= (np.max(g) / value_scaling_factor)
    g = torch.from_numpy(g).to(dtype=torch.float16)
    mask = g == 0
    g[mask] = torch.min(g[~mask])
    return g


def sliding_window_steps(image_size, tile_size, tile_step_size: float) -> list[list[int]]:
    """nnU-Net's ``compute_steps_for_sliding_window``."""
    target = [i * tile_step_size for i in tile_size]
    num = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size)]
    steps = []
    for d in range(len(tile_size)):
        top = image_size[d] - tile_size[d]
        size = top / (num[d] - 1) if num[d] > 1 else 99999999999
        steps.append([int(np.round(size * i)) for i in range(num[d])])
    return steps


# ---------------------------------------------------------------------- model --
def _divisor(strides, sd: int) -> int:
    """Least common multiple of the per-axis products of the stage strides."""
    per_axis = [1] * sd
    for st in strides or []:
        vals = st if isinstance(st, list) else [st] * sd
        for i, v in enumerate(vals[:sd]):
            per_axis[i] *= int(v) if isinstance(v, int) and v > 0 else 1
    return int(np.lcm.reduce(per_axis))


def _check_orientation(orientation) -> str:
    from nibabel.orientations import axcodes2ornt

    o = str(orientation).upper()
    try:
        ok = len(o) == 3 and not np.isnan(axcodes2ornt(tuple(o))).any()
    except Exception:  # noqa: BLE001 - nibabel refuses repeated / unknown axes
        ok = False
    if not ok:
        raise ModelLoadError(f"orientation must be three axis codes such as 'RAS' or 'LPS', got {orientation!r}")
    return o


class NnUNetModel(SegModel):
    """A :class:`SegModel` that prepares images and runs windows exactly as nnU-Net v2 does.

    Extra attributes: ``mirror`` (test-time mirroring, off by default), ``tile_step_size``
    (0.5), ``accumulate_dtype`` (float32; float16 reproduces nnUNetPredictor's float16
    buffers), ``orientation`` (None: each file's own, as nnU-Net), ``folds``,
    ``configuration``, ``trainer``, ``checkpoints``."""

    def __init__(self, network: NnUNetEnsemble, *, plans: dict, conf: dict, configuration: str,
                 in_channels: int, class_names: Sequence[str], orientation: str | None = None,
                 tile_step_size: float = 0.5, **kw):
        sd = len(conf["patch_size"])
        self.transpose_forward = tuple(int(t) for t in plans.get("transpose_forward", range(3)))
        self.conf_spacing = tuple(float(s) for s in conf["spacing"])
        tb = np.argsort(self.transpose_forward)
        spacing = self.conf_spacing if sd == 2 else tuple(self.conf_spacing[int(i)] for i in tb)
        divisor = _divisor(conf["architecture"]["arch_kwargs"].get("strides"), sd)
        super().__init__(network, spatial_dims=sd, in_channels=in_channels, class_names=class_names,
                         patch_size=conf["patch_size"], spacing=spacing, axcodes=None, divisor=divisor,
                         overlap=0.5, blend="gaussian", owns_network=True, **kw)
        self.sigma_scale = 1.0 / 8
        self.plans = plans
        self.conf = conf
        self.configuration = configuration
        self.orientation = orientation
        self.tile_step_size = float(tile_step_size)
        self.accumulate_dtype = torch.float32
        self.schemes = list(conf["normalization_schemes"])
        self.use_mask = [bool(v) for v in conf["use_mask_for_norm"]]
        fip = plans.get("foreground_intensity_properties_per_channel",
                        plans.get("foreground_intensity_properties_by_modality", {})) or {}
        self.intensity = [_intensity(fip.get(str(c)), s,
                                     f"plans.json.foreground_intensity_properties_per_channel.{c}")
                          for c, s in enumerate(self.schemes)]
        self.data_kwargs = dict(conf.get("resampling_fn_data_kwargs") or {})
        self.prob_kwargs = dict(conf.get("resampling_fn_probabilities_kwargs") or {})

    # ------------------------------------------------------------------ options --
    @property
    def mirror(self) -> bool:
        """nnU-Net's test-time mirroring (off by default for explanations)."""
        return bool(self.network.mirror)

    @mirror.setter
    def mirror(self, value: bool) -> None:
        self.network.mirror = bool(value)

    @property
    def folds(self) -> list[str]:
        return list(self.meta["nnunet"]["folds"])

    def __repr__(self) -> str:
        n = self.meta.get("nnunet", {})
        return (f"NnUNetModel({self.name!r}, {self.spatial_dims}D, folds={n.get('folds')}, "
                f"mirror={self.mirror}, in={self.in_channels}, classes={len(self.class_names)}, "
                f"patch={self.patch_size}, spacing={self.conf_spacing}, device={self.device})")

    # ------------------------------------------------------------------ geometry --
    def _sitk_codes(self, image) -> tuple[str, ...] | None:
        if self.orientation:
            return tuple(reversed(tuple(self.orientation.upper())))
        if isinstance(image, LoadedImage) and image.spatial_dims == 3:
            m = image.meta or {}
            if m.get("src_affine") is not None:
                import nibabel as nib

                return tuple(reversed(nib.aff2axcodes(np.asarray(m["src_affine"], float))))
            so = m.get("sitk_orientation")
            if isinstance(so, str) and len(so) == 3:
                return tuple(reversed(tuple(so.upper())))
        return None

    def _slicing(self, image: LoadedImage) -> tuple[ModelGrid, tuple[int, ...], list[float]]:
        if not isinstance(image, LoadedImage) or image.spatial_dims != 3:
            raise InputMismatchError("a 2D nnU-Net configuration slices a 3D image from load_image")
        codes = self._sitk_codes(image)
        ornt = orientation_transform(codes) if codes else None
        grid = ModelGrid(image.spatial_shape, image.spatial_shape, ornt)
        order = np.argsort(ornt[:, 0]) if ornt is not None else range(3)
        sp_q = [float(image.spacing[int(i)]) for i in order]
        return grid, self.transpose_forward, sp_q

    def _to_t(self, arr: np.ndarray, image: LoadedImage) -> np.ndarray:
        """A volume-grid array ``(C, *volume)`` -> nnU-Net's transposed array ``(C, Zt, Yt, Xt)``."""
        grid, tf, _ = self._slicing(image)
        return grid.reorient(np.asarray(arr), inverse=False).transpose([0] + [a + 1 for a in tf])

    def n_slices(self, image: LoadedImage) -> int:
        """How many slices :meth:`volume_slice` can take from ``image``."""
        grid, tf, _ = self._slicing(image)
        return int(grid.oriented_shape[tf[0]])

    def slice_of(self, arr, image: LoadedImage, index: int) -> np.ndarray:
        """Slice ``index`` of a volume-grid array (an RoI, a label map) in nnU-Net's plane."""
        a = np.asarray(arr)
        t = self._to_t(a[None], image)
        if not 0 <= int(index) < t.shape[1]:
            raise InputMismatchError(f"slice {index} is outside 0..{t.shape[1] - 1}")
        return np.ascontiguousarray(t[0, int(index)])

    def volume_slice(self, image: LoadedImage, index: int) -> LoadedImage:
        """Slice ``index`` of a 3D image as the 2D image a 2D configuration sees: the plane
        nnU-Net slices (its first axis after ``transpose_forward``, usually axial), in the
        file's voxel order, with the in-plane spacing. It is prepared as nnU-Net prepares
        the whole volume (crop to the *volume's* nonzero box, normalisation over the cropped
        volume, in-plane resampling), so explaining a slice explains what
        :meth:`predict` outputs on it. :meth:`embed_slice` puts a result back on the volume."""
        arr = image.data if image.data.ndim == 4 else image.data[None]
        k = int(index)
        if not 0 <= k < self.n_slices(image):
            raise InputMismatchError(f"slice {index} is outside 0..{self.n_slices(image) - 1}")
        sl = np.ascontiguousarray(self._to_t(arr, image)[:, k])
        x3, grid3 = self._prepare_volume(image)
        (z0, z1), bb_y, bb_x = grid3.bbox
        if not z0 <= k < z1:
            raise InputMismatchError(
                f"slice {k} lies outside the image's nonzero box (slices {z0}..{z1 - 1} in nnU-Net's plane): "
                "nnU-Net predicts background there without running the network, so there is nothing to explain")
        _, _, sp_q = self._slicing(image)
        tf = self.transpose_forward
        sp = (sp_q[tf[1]], sp_q[tf[2]])
        crop = (int(bb_y[0]), int(bb_y[1])), (int(bb_x[0]), int(bb_x[1]))
        box, model_plane = (1, crop[0][1] - crop[0][0], crop[1][1] - crop[1][0]), (1,) + tuple(x3.shape[2:])

        def in_plane(r: Resampling, src, dst) -> Resampling:
            # the volume's resampling restricted to one slice (the slice axis keeps its size)
            return Resampling(src, dst, r.order, r.order_z, 0 if r.axis is None else r.axis)

        grid2 = NnUNetGrid(tuple(sl.shape[1:]), tuple(x3.shape[2:]), None, transpose=None, two_d=True,
                           t_shape=(1,) + tuple(sl.shape[1:]), bbox=((0, 1),) + crop,
                           data_rs=in_plane(grid3.data_rs, box, model_plane),
                           prob_rs=in_plane(grid3.prob_rs, model_plane, box))
        data = sl[0] if image.data.ndim == 3 else sl
        prep = Prepared(torch.from_numpy(np.ascontiguousarray(x3[:, k - z0])), grid2, tuple(sl.shape[1:]))
        return LoadedImage(data, sp, np.diag([sp[0], sp[1], 1.0, 1.0]), image.path, 2,
                           {"format": "array", "nnunet_slice": k, "nnunet_prepared": (data, prep)})

    def embed_slice(self, arr, image: LoadedImage, index: int, fill=0) -> np.ndarray:
        """A map on :meth:`volume_slice` ``(..., Y, X)`` -> ``image``'s 3D grid, ``fill``
        on every other voxel."""
        grid, tf, _ = self._slicing(image)
        a = np.asarray(arr)
        q_shape = grid.oriented_shape
        t_shape = tuple(q_shape[i] for i in tf)
        if a.shape[-2:] != t_shape[1:]:
            raise InputMismatchError(f"a map of shape {a.shape} is not on this volume's slices {t_shape[1:]}")
        vol = np.full(a.shape[:-2] + t_shape, fill, dtype=a.dtype)
        vol[..., int(index), :, :] = a
        lead = a.ndim - 2
        back = vol.transpose(list(range(lead)) + [lead + int(i) for i in np.argsort(tf)])
        return grid.reorient(np.ascontiguousarray(back), inverse=True)

    def _prepare_volume(self, image: LoadedImage) -> tuple[np.ndarray, NnUNetGrid]:
        """A 2D configuration's preprocessing of a whole volume, as nnU-Net runs it: the
        volume in nnU-Net's axes, cropped to its 3D nonzero box, normalised over that box,
        resampled in plane to the configuration's spacing (the slice axis keeps its own)
        -> (model-space volume ``(C, Z, Y', X')``, its 3D grid)."""
        key = id(image.data)
        cached = getattr(self, "_volume_cache", None)
        if cached is not None and cached[0] == key and cached[1] is image.data:
            return cached[2], cached[3]
        arr, spacing = self._as_volume(image)
        x, grid = self._preprocess(arr, spacing, image, two_d_volume=True)
        self._volume_cache = (key, image.data, x, grid)
        return x, grid

    def _as_volume(self, image: LoadedImage):
        arr = image.data if image.data.ndim == 4 else image.data[None]
        if arr.shape[0] != self.in_channels:
            raise InputMismatchError(
                f"The model expects {self.in_channels} channel(s) but the image has {arr.shape[0]}")
        from ..checks import require_finite

        require_finite(arr, "The image")
        return arr, image.spacing

    def volume_logits(self, image: LoadedImage) -> np.ndarray:
        """A 2D configuration's logits of a whole volume on its grid, as nnUNetPredictor
        computes them: the volume prepared once (:meth:`_prepare_volume`), each slice of the
        model-space volume through the 2D windows, nnU-Net's probability resampling back,
        background outside the nonzero box."""
        x3, grid3 = self._prepare_volume(image)
        lg = np.stack([self.logits_tensor(torch.from_numpy(np.ascontiguousarray(x3[:, z]))).numpy()
                       for z in range(x3.shape[1])], axis=1)
        return self._fill_to_image(grid3, lg)

    def _fill_to_image(self, grid, lg: np.ndarray) -> np.ndarray:
        if self.accumulate_dtype == torch.float16:
            lg = lg.astype(np.float16)        # nnU-Net resamples its float16 logits as float16
        fill = np.full(lg.shape[0], OUTSIDE_LOGIT, lg.dtype)
        fill[0] = 0.0
        return grid.to_image(lg, order=1, fill=fill).astype(np.float32)

    def prepare(self, image) -> Prepared:
        """nnU-Net's preprocessing for inference -> :class:`Prepared` (model space)."""
        if isinstance(image, Prepared):
            return image
        own = image.meta.get("nnunet_prepared") if isinstance(image, LoadedImage) else None
        if own is not None and own[0] is image.data:     # a slice cut by volume_slice
            return own[1]
        arr, spacing = self._as_channels_first(image)
        x, grid = self._preprocess(arr, spacing, image)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return Prepared(xt, grid, tuple(arr.shape[1:]))

    def _preprocess(self, arr: np.ndarray, spacing, image, two_d_volume: bool = False):
        """nnU-Net's ``DefaultPreprocessor`` for inference: reorient and transpose, crop to
        the nonzero box, normalise, resample -> (model-space array, its grid)."""
        image_shape = tuple(arr.shape[1:])
        if self.spatial_dims == 3 or two_d_volume:
            codes = self._sitk_codes(image)
            ornt = orientation_transform(codes) if codes else None
            grid0 = ModelGrid(image_shape, image_shape, ornt)
            q = grid0.reorient(arr, inverse=False)
            if spacing is None:
                sp_q = list(self.spacing)
            else:
                order = np.argsort(ornt[:, 0]) if ornt is not None else range(3)
                sp_q = [float(spacing[int(i)]) for i in order]
            tf = self.transpose_forward
            t = q.transpose([0] + [a + 1 for a in tf])
            sp_t = [sp_q[a] for a in tf]
            # a 2D configuration keeps the slice axis' own spacing (nnU-Net's preprocessor)
            target = [sp_t[0]] + list(self.conf_spacing) if two_d_volume else list(self.conf_spacing)
        else:
            ornt, tf = None, None
            t = arr[:, None]
            sp_t = [TWO_D_THICKNESS] + list(spacing if spacing is not None else self.conf_spacing)
            target = [sp_t[0]] + list(self.conf_spacing)
        t = t.astype(np.float32)
        bbox, mask = crop_to_nonzero(t)
        c = t[(slice(None),) + tuple(slice(a, b) for a, b in bbox)]
        c = np.ascontiguousarray(c)
        for ch in range(c.shape[0]):
            c[ch] = _normalize(c[ch], self.schemes[ch], self.use_mask[ch], self.intensity[ch], mask)
        new_shape = compute_new_shape(c.shape[1:], sp_t, target)
        if int(np.prod(new_shape, dtype=np.int64)) * c.shape[0] > MAX_MODEL_VOXELS:
            raise InputMismatchError(f"The image would be {new_shape} voxels on this nnU-Net model's grid "
                                     f"(spacing {self.conf_spacing}); check its voxel spacing")
        kw = self.data_kwargs
        data_rs = Resampling.plan(c.shape[1:], new_shape, sp_t, target, kw.get("order", 3), kw.get("order_z", 0),
                                  kw.get("force_separate_z"), kw.get("separate_z_anisotropy_threshold",
                                                                     ANISO_THRESHOLD))
        pk = self.prob_kwargs
        prob_rs = Resampling.plan(new_shape, c.shape[1:], target, sp_t, pk.get("order", 1), pk.get("order_z", 0),
                                  pk.get("force_separate_z"), pk.get("separate_z_anisotropy_threshold",
                                                                     ANISO_THRESHOLD))
        x = c if data_rs.identity else data_rs.apply(c).astype(np.float32)
        two_d = self.spatial_dims == 2 and not two_d_volume
        if two_d:
            x = x[:, 0]
        grid = NnUNetGrid(image_shape, tuple(x.shape[1:]), ornt, transpose=tf, two_d=two_d,
                          t_shape=tuple(t.shape[1:]), bbox=bbox, data_rs=data_rs, prob_rs=prob_rs)
        from ..checks import require_finite

        require_finite(x, "The preprocessed image (after nnU-Net's normalisation)")
        return np.ascontiguousarray(x, dtype=np.float32), grid

    # --------------------------------------------------------------- inference --
    def needs_windows(self, shape: Sequence[int]) -> bool:
        """Always windows of the patch size (smaller images are padded to it), as nnU-Net."""
        return tuple(int(s) for s in shape) != tuple(self.patch_size)

    def window_starts(self, shape: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], list[list[int]]]:
        """(padding per axis, window start positions per axis) nnU-Net uses for a model-grid
        image of ``shape``."""
        patch = self.patch_size
        padded = [max(int(s), p) for s, p in zip(shape, patch)]
        pads = tuple(((p - int(s)) // 2, (p - int(s)) - (p - int(s)) // 2) for s, p in zip(shape, padded))
        return pads, sliding_window_steps(padded, patch, self.tile_step_size)

    def tiling(self, shape: Sequence[int]):
        """nnU-Net's windows as a :class:`seg_explain.windows.Tiling`."""
        from ..windows import Tiling

        pads, steps = self.window_starts(shape)
        wins = tuple(tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))
                     for starts in itertools.product(*steps))
        return Tiling(tuple(int(s) for s in shape), tuple(self.patch_size), pads, wins)

    def importance_map(self) -> torch.Tensor:
        """nnU-Net's blending weights for one window (its float16 Gaussian, as float32)."""
        return nnunet_gaussian(tuple(self.patch_size)).float()

    def _blend(self, x: torch.Tensor, run) -> torch.Tensor:
        """nnU-Net's ``predict_sliding_window_return_logits`` with ``run`` as the network:
        pad to the patch, windows at its steps, Gaussian-weighted sums in
        ``accumulate_dtype``, divide, crop."""
        shape = tuple(x.shape[1:])
        pads, steps = self.window_starts(shape)
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        xp = torch.nn.functional.pad(x, flat) if any(flat) else x
        padded = tuple(xp.shape[1:])
        dt = self.accumulate_dtype
        g = nnunet_gaussian(tuple(self.patch_size)).to(self.device).clone()   # cached: maybe an inference tensor
        acc = torch.zeros((self.out_channels,) + padded, dtype=dt, device=self.device)
        norm = torch.zeros(padded, dtype=dt, device=self.device)
        for starts in itertools.product(*steps):
            sl = tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))
            pred = run(xp[(slice(None),) + sl][None].to(self.device))[0].float()
            pred = pred * g
            acc[(slice(None),) + sl] += pred
            norm[sl] += g
        out = torch.div(acc, norm)
        return out[(slice(None),) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))]

    def blended_logits(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of prepared images ``(B, C, *S)`` as nnU-Net blends them (the
        explainers' f̂ of a batch, e.g. KernelSHAP's coalitions)."""
        return torch.stack([self._blend(x, self.forward).float() for x in xb])

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(L, *S)`` of one prepared image: nnU-Net's sliding windows and blending
        (several folds: the mean of their logits)."""
        with torch.inference_mode():
            if self.accumulate_dtype == torch.float32 or len(self.network.folds) == 1:
                return self._blend(x, self.forward).float().cpu()
            # nnUNetPredictor's own order: each fold blended, then summed and divided, all in
            # accumulate_dtype (only matters for its float16 rounding)
            total = None
            for net in self.network.folds:
                out = self._blend(x, lambda xb, n=net: self.network._one(n, xb)).cpu()
                total = out if total is None else total + out
            total /= len(self.network.folds)
            return total.float()

    def image_logits(self, prep: Prepared, logits) -> np.ndarray:
        """Logits on the image's grid: nnU-Net's probability resampling; outside the
        nonzero box nnU-Net never runs (background there: 0 for background, -30 others)."""
        lg = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        return self._fill_to_image(prep.grid, lg)

    def labels_from_logits(self, logits):
        """nnU-Net's ``convert_logits_to_segmentation``: argmax of the softmax."""
        if isinstance(logits, np.ndarray):
            return torch.softmax(torch.from_numpy(logits), 0).argmax(0).numpy()
        return torch.softmax(logits.float(), 0).argmax(0)

    def cam_networks(self) -> list[torch.nn.Module]:
        """One network per fold: a CAM hooks the same layer in each and is their mean."""
        return list(self.network.folds)


# ---------------------------------------------------------------------- load --
def load_nnunet(path: str | os.PathLike, device: str = "auto", *, folds: Sequence | None = None,
                checkpoint: str | None = None, mirror: bool = False, orientation: str | None = None,
                tile_step_size: float = 0.5) -> NnUNetModel:
    """Load an nnU-Net v2 model folder as a :class:`NnUNetModel`.

    ``path``: the ``Trainer__Plans__Configuration`` folder, a ``fold_N`` folder inside it
    (that fold only), or a ``DatasetXXX_Name`` folder holding one trainer folder.
    ``folds``: e.g. ``[0, 1]`` or ``["all"]`` (default: every ``fold_N`` with a checkpoint,
    as nnU-Net auto-detects). ``checkpoint``: ``"checkpoint_final.pth"`` (default, falling back
    to ``checkpoint_best.pth`` per fold) or ``"checkpoint_best.pth"``. ``mirror``: nnU-Net's
    test-time mirroring (off by default). ``orientation``: ``None`` = each image file as stored
    (nnU-Net's behaviour) or three axis codes, e.g. ``"RAS"`` to reorient every image to the
    closest RAS orientation first (what TotalSegmentator does before calling nnU-Net).
    """
    p = Path(path).expanduser()
    root_dir, named = _resolve_folder(p)
    root = root_dir.resolve()
    if folds is None and named is not None:
        folds = named
    where = root_dir.name
    if orientation is not None:
        orientation = _check_orientation(orientation)
    ds = read_json(root_dir / "dataset.json", "nnU-Net dataset.json", inside=root, error=ModelLoadError)
    plans = read_json(root_dir / "plans.json", "nnU-Net plans.json", inside=root, error=ModelLoadError)
    class_names = parse_labels(ds, where)
    in_ch = _channels(ds, where)
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise ModelLoadError(f"{where}: label manager {plans.get('label_manager')!r} is not supported")

    fold_list = _fold_dirs(root_dir, folds, checkpoint)
    parts = root_dir.name.split("__")
    confs = plans.get("configurations") if isinstance(plans.get("configurations"), dict) else {}
    conf_name = parts[-1] if len(parts) >= 3 and parts[-1] in confs else None
    if conf_name is None and len(confs) == 1:
        conf_name = next(iter(confs))

    # validate plans (the configuration's architecture, whole) before unpickling anything
    ckpts: list[dict] = []
    if conf_name is None:
        ckpts.append(load_checkpoint(fold_list[0][1], root))
        conf_name = (ckpts[0].get("init_args") or {}).get("configuration")
        if not isinstance(conf_name, str):
            raise ModelLoadError(f"{where}: cannot tell the configuration (folder name or checkpoint init_args)")
    cwhere = f"plans.json.configurations.{conf_name}"
    conf = _configuration(plans, conf_name, where)
    if conf.get("previous_stage"):
        raise ModelLoadError(f"{where}: configuration {conf_name!r} is a cascade stage (it needs the "
                             f"{conf['previous_stage']!r} prediction as input); not supported")
    if "architecture" not in conf:
        conf["architecture"] = _old_format_architecture(conf, cwhere)
    arch = validate_architecture(conf["architecture"], f"{cwhere}.architecture")
    patch = conf.get("patch_size")
    if not (isinstance(patch, list) and len(patch) in (2, 3)
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in patch)):
        raise ModelLoadError(f"{_q(cwhere + '.patch_size')} must be 2 or 3 whole numbers in [1, 4096], got {patch!r}")
    sd = len(patch)
    # sizes before allocation: one window (nnU-Net always runs the full patch) and the weights
    # of every fold (checkpoint + network), against the memory budget
    check_bytes(window_bytes(arch.kwargs, patch), f"{where}: one {'x'.join(map(str, patch))} window "
                "(plans.json patch_size) of this network")
    check_network_size(lambda: _build_network(arch, in_ch, len(class_names), where),
                       f"{where}: {len(fold_list)} fold(s) of the network plans.json describes", 2 * len(fold_list))
    conv = arch.kwargs.get("conv_op")
    if conv is not None and conv is not getattr(torch.nn, f"Conv{sd}d"):
        raise ModelLoadError(f"{where}: a {sd}D patch with {conv.__name__}")
    sp = conf.get("spacing")
    if not (isinstance(sp, list) and len(sp) == sd and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in sp)):
        raise ModelLoadError(f"{_q(cwhere + '.spacing')} must be {sd} positive voxel sizes, got {sp!r}")
    tf = plans.get("transpose_forward", [0, 1, 2])
    if not (isinstance(tf, list) and sorted(tf) == [0, 1, 2]):
        raise ModelLoadError(f"'plans.json.transpose_forward' must be a permutation of 0, 1, 2, got {tf!r}")
    for key in ("normalization_schemes", "use_mask_for_norm"):
        v = conf.get(key)
        if not isinstance(v, list) or len(v) != in_ch:
            raise ModelLoadError(f"{_q(cwhere + '.' + key)} must have one entry per channel ({in_ch})")
    for i, s in enumerate(conf["normalization_schemes"]):
        if s not in NORMALIZATIONS:
            raise ModelLoadError(f"{_q(cwhere + f'.normalization_schemes[{i}]')}: {s!r} is not one of "
                                 f"{', '.join(NORMALIZATIONS)}")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        fn = conf.get(key, "resample_data_or_seg_to_shape")
        if fn != "resample_data_or_seg_to_shape":
            raise ModelLoadError(f"{_q(cwhere + '.' + key)}: {fn!r} is not supported (only nnU-Net's "
                                 "default resample_data_or_seg_to_shape)")
        kw = conf.get(key + "_kwargs") or {}
        allowed = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}
        if not isinstance(kw, dict) or set(kw) - allowed or kw.get("is_seg"):
            raise ModelLoadError(f"{_q(cwhere + '.' + key + '_kwargs')}: unsupported {kw!r}")
        for k in ("order", "order_z"):
            if k in kw and (isinstance(kw[k], bool) or kw[k] not in (0, 1, 2, 3, 4, 5)):
                raise ModelLoadError(f"{_q(cwhere + '.' + key + '_kwargs.' + k)} must be 0..5")

    # checkpoints (restricted unpickling), then the networks
    while len(ckpts) < len(fold_list):
        ckpts.append(load_checkpoint(fold_list[len(ckpts)][1], root))
    first = ckpts[0]
    c_conf = (first.get("init_args") or {}).get("configuration") if isinstance(first.get("init_args"), dict) else None
    if isinstance(c_conf, str) and c_conf != conf_name:
        raise ModelLoadError(f"{where}: the checkpoint was trained for configuration {c_conf!r}, the folder "
                             f"says {conf_name!r}")
    mirror_axes = first.get("inference_allowed_mirroring_axes")
    if mirror_axes is not None and not (isinstance(mirror_axes, (list, tuple)) and all(
            isinstance(a, int) and 0 <= a < sd for a in mirror_axes)):
        raise ModelLoadError(f"{where}: inference_allowed_mirroring_axes {mirror_axes!r} is not a list of axes")
    nets = []
    for (fold, cp), ck in zip(fold_list, ckpts):
        net = _build_network(arch, in_ch, len(class_names), where)
        try:
            net.load_state_dict(ck["network_weights"], strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:2]
            raise ModelLoadError(
                f"{where}: fold_{fold}/{cp.name} does not fit the network plans.json describes "
                f"({' '.join(lines)[:300]}); a trainer that changes the architecture is not supported") from exc
        nets.append(net.eval())
    ens = NnUNetEnsemble(nets, mirror_axes)
    trainer = parts[0] if len(parts) >= 3 else str(first.get("trainer_name", ""))
    meta = {"sigmoid": False, "min_size": 1, "nnunet": {
        "dataset": str(plans.get("dataset_name", "")), "configuration": conf_name, "trainer": trainer,
        "plans": parts[1] if len(parts) >= 3 else str(plans.get("plans_name", "")),
        "folds": [f for f, _ in fold_list], "checkpoints": [str(cp.relative_to(root_dir)) for _, cp in fold_list],
        "mirror_axes": list(ens.mirror_axes), "transpose_forward": list(tf),
        "normalization": list(conf["normalization_schemes"])}}
    folds_txt = ", ".join(meta["nnunet"]["folds"])
    name = f"{plans.get('dataset_name', root_dir.parent.name)} {conf_name} (nnU-Net, folds {folds_txt})"
    model = NnUNetModel(ens, plans=plans, conf=conf, configuration=conf_name, in_channels=in_ch,
                        class_names=class_names, orientation=orientation, tile_step_size=tile_step_size,
                        name=name, source=str(root_dir), device=resolve_device(device), hookable=True, meta=meta)
    model.trainer = trainer
    model.checkpoints = meta["nnunet"]["checkpoints"]
    model.mirror = mirror
    return model
