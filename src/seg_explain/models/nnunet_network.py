"""``plans.json``'s architecture -> the network, safely; the folds' networks as one module.

**Safety** (docs/SECURITY.md). The architecture is validated whole before anything is built
(:func:`validate_architecture`), from an allow-list of ``dynamic_network_architectures``
classes and the torch.nn classes a key named in ``_kw_requires_import`` may denote (never a
function, and nothing is imported by name; refusals name the key path). Numbers are bounded,
layer keyword arguments are checked against the layer's own signature, and a network of more
than :data:`MAX_PARAMETERS` (estimated) is refused before anything is allocated;
:func:`window_bytes` estimates one window's memory for the loader to check against the
memory budget. Plans written by
nnU-Net < 2.4 (``UNet_class_name`` & co.) are turned into the ``architecture`` entry nnU-Net
builds from them (:func:`old_format_architecture`).

**Folds**: the model's network is the mean of the folds' logits (nnU-Net's ensemble,
:class:`NnUNetEnsemble`). **Mirroring** (test-time flips over
``inference_allowed_mirroring_axes``) is **off by default**: an explanation then explains one
network pass per window, and CAMs can hook a layer that runs once. ``mirror = True`` averages
the flipped passes as nnU-Net does.
"""
from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ModelLoadError, UnsafeConfigError, first_line
from .nnunet_plans import quote_key

MAX_PARAMETERS = 2e9         # TotalSegmentator's networks have ~30 million

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


def old_format_architecture(conf: dict, where: str) -> dict:
    """The ``architecture`` entry nnU-Net (ConfigurationManager) builds from plans written by
    nnU-Net < 2.4 (``UNet_class_name`` & co., e.g. TotalSegmentator's)."""
    key = f"{where}.UNet_class_name"
    cls = conf.get("UNet_class_name")
    if cls not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise UnsafeConfigError(f"{quote_key(key)}: refusing {cls!r}: an old-format plans.json may only name "
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
        raise UnsafeConfigError(f"{quote_key(key)}: expected a class name, got {name!r}")
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
    raise UnsafeConfigError(f"{quote_key(key)}: refusing {name!r}: only these {role} classes may be named in "
                            f"plans.json: {', '.join(allowed)}")


def _network_class(name: Any, key: str):
    if not isinstance(name, str) or not name:
        raise UnsafeConfigError(f"{quote_key(key)}: expected a class name, got {name!r}")
    prefix, _, short = name.rpartition(".")
    if short in NETWORKS and (not prefix or prefix.startswith("dynamic_network_architectures.architectures")):
        return short
    raise UnsafeConfigError(f"{quote_key(key)}: refusing {name!r}: only these dynamic_network_architectures "
                            f"networks may be built from plans.json: {', '.join(NETWORKS)}")


def _check_plain(value: Any, key: str, depth: int = 0) -> None:
    if depth > 8:
        raise UnsafeConfigError(f"{quote_key(key)}: nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{key}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise UnsafeConfigError(f"{quote_key(key)}: unsupported value of type {type(value).__name__}")


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
            raise ModelLoadError(f"{quote_key(key)}: {v!r} is not a whole number in [0, {cap}]")


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
        raise ModelLoadError(f"{quote_key(where)} must be an object")
    cls_short = _network_class(arch.get("network_class_name"), f"{where}.network_class_name")
    kwargs = arch.get("arch_kwargs")
    if not isinstance(kwargs, dict):
        raise ModelLoadError(f"{quote_key(where + '.arch_kwargs')} must be an object")
    req = arch.get("_kw_requires_import", [])
    if not isinstance(req, (list, tuple)) or not all(isinstance(r, str) for r in req):
        raise UnsafeConfigError(f"{quote_key(where + '._kw_requires_import')} must be a list of argument names")
    for r in req:
        if r not in IMPORTABLE_KEYS:
            raise UnsafeConfigError(f"{quote_key(where + '._kw_requires_import')}: refusing {r!r}: only "
                                    f"{', '.join(IMPORTABLE_KEYS)} may name classes")
        if r not in kwargs:
            raise ModelLoadError(f"{quote_key(where + '._kw_requires_import')}: {r!r} is not in arch_kwargs")
    out = {}
    for k, v in kwargs.items():
        key = f"{where}.arch_kwargs.{k}"
        if k in req:
            out[k] = None if v is None else _class_for(k, v, key)
            continue
        _check_plain(v, key)
        _check_bounds(k, v, key)
        if k in IMPORTABLE_KEYS and isinstance(v, str):
            raise UnsafeConfigError(f"{quote_key(key)}: {v!r} names a class but {k!r} is not in _kw_requires_import")
        out[k] = deepcopy(v)
    for role in _TORCH:
        _check_op_kwargs(out.get(role), out.get(f"{role}_kwargs"), f"{where}.arch_kwargs.{role}_kwargs")
    n = _param_estimate(out)
    if n > MAX_PARAMETERS:
        raise ModelLoadError(f"{quote_key(where + '.arch_kwargs')} describes a network of about {n / 1e9:.1f} billion "
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
        raise ModelLoadError(f"{quote_key(key)} must be an object of keyword arguments, got {kwargs!r}"[:300])
    if cls is None:
        return
    params = inspect.signature(cls.__init__).parameters
    for name, v in kwargs.items():
        where = f"{key}.{name}"
        if name not in params or name in ("self", "device", "dtype"):
            raise ModelLoadError(f"{quote_key(where)}: {cls.__name__} takes no argument {name!r} here")
        ann = params[name].annotation
        ann = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        ann = ann.replace("typing.", "")
        optional = "Optional" in ann or "None" in ann
        if v is None and optional:
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ann.strip() == "bool" and not isinstance(v, bool):
            raise ModelLoadError(f"{quote_key(where)} must be true or false, got {v!r}"[:200])
        if ("float" in ann or "int" in ann) and ann.strip() != "bool" and not number:
            raise ModelLoadError(f"{quote_key(where)} must be a number, got {v!r}"[:200])
        if number:
            ok, text = _KW_RANGES.get(name, (lambda v: True, "finite"))
            if not (math.isfinite(v) and ok(v)):
                raise ModelLoadError(f"{quote_key(where)} must be {text}, got {v!r}")


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


def build_network(arch: Architecture, in_channels: int, n_out: int, where: str) -> torch.nn.Module:
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
        raise ModelLoadError(f"{where}: cannot build {arch.cls_name}: {first_line(exc)[:300]}") from exc


# -------------------------------------------------------------------- network --
class NnUNetEnsemble(torch.nn.Module):
    """The folds' networks as one module: mean of their logits, optionally averaged over
    nnU-Net's test-time mirroring (flips over ``mirror_axes``)."""

    def __init__(self, nets: Sequence[torch.nn.Module], mirror_axes: Sequence[int] | None):
        super().__init__()
        self.folds = torch.nn.ModuleList(nets)
        self.mirror_axes = tuple(int(a) for a in mirror_axes) if mirror_axes else ()
        self.mirror = False

    def run_one(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
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
            y = self.run_one(net, x)
            out = y if out is None else out + y
        return out / len(self.folds) if len(self.folds) > 1 else out
