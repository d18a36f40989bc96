"""Build networks and transforms from untrusted JSON configs without running their code.

A MONAI bundle's ``configs/inference.json`` (or a model sidecar) is *data*. MONAI's own
``ConfigParser`` evaluates ``$`` expressions with ``eval``, follows ``@`` references and
instantiates any importable callable: handing it an untrusted config runs arbitrary code.
We never do that. Instead:

1. The sections we use (``network_def``, ``preprocessing``, ``inferer``) are **validated
   whole before anything is instantiated** (:func:`validate`): every ``_target_`` must name
   a class on an explicit allow-list for its role (:data:`NETWORKS` for ``network_def``,
   :data:`LAYERS` for objects nested inside a network's arguments, :data:`INTENSITY` and
   :data:`READ_ONLY` transforms in ``preprocessing``, :data:`INFERERS`); functions are never
   allowed (no ``torch.load``, ``torch.hub.load``, ``monai.bundle.scripts.run``, ...);
   arguments may only be JSON scalars, lists, dicts and nested allow-listed objects;
   ``$`` expressions, ``@`` references, ``%`` macros and directives other than
   ``_target_`` / ``_disabled_`` are refused. A refusal names the key path
   (``network_def.dropout._target_``).
2. Only then are the objects built (:func:`instantiate`). None of the allow-listed classes
   opens a file or the network when constructed.
3. Sections we do not use (``handlers``, ``evaluator``, ``datalist`` ...) are never read,
   so whatever they contain is never evaluated.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import UnsafeConfigError, first_line

# role -> {short name: "module:Class"}; a config may name a class by its short name or by
# the fully qualified "module.Class" (either the defining module or the public package).
NETWORKS = {n: f"monai.networks.nets:{n}" for n in (
    "UNet", "BasicUNet", "BasicUNetPlusPlus", "AttentionUnet", "SegResNet", "SegResNetDS",
    "SwinUNETR", "UNETR", "DynUNet", "VNet", "HighResNet")}
LAYERS = {n: f"torch.nn:{n}" for n in (
    "ReLU", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softmax", "Identity",
    "Dropout", "Dropout2d", "Dropout3d", "AlphaDropout",
    "BatchNorm2d", "BatchNorm3d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm", "LayerNorm")}
_INTENSITY = ("ScaleIntensity", "ScaleIntensityRange", "ScaleIntensityRangePercentiles",
              "NormalizeIntensity", "ThresholdIntensity", "ShiftIntensity", "ClipIntensityPercentiles")
INTENSITY = {n: f"monai.transforms:{n}" for base in _INTENSITY for n in (base, base + "d")}
# transforms whose arguments we read (geometry, spacing) or that do nothing to an array in
# memory; they are validated like everything else but never instantiated
READ_ONLY = {n: f"monai.transforms:{n}" for base in (
    "LoadImage", "EnsureChannelFirst", "AddChannel", "Orientation", "Spacing", "EnsureType",
    "ToTensor", "CastToType", "ToDevice", "Identity") for n in (base, base + "d")}
READ_ONLY["Compose"] = "monai.transforms:Compose"
INFERERS = {n: f"monai.inferers:{n}" for n in ("SlidingWindowInferer", "SimpleInferer")}

_ALLOWED_DIRECTIVES = {"_target_", "_disabled_"}
_NESTED = {"network": LAYERS, "transform": {}, "inferer": {}, "layer": LAYERS}


def _lookup(name: Any, table: dict[str, str], where: str, role: str) -> str:
    """The allow-listed short name a ``_target_`` refers to (or UnsafeConfigError)."""
    if not isinstance(name, str) or not name:
        raise UnsafeConfigError(f"{where}: _target_ must be a class name, got {name!r}")
    short = name.rpartition(".")[2]
    spec = table.get(short)
    if spec is not None and "." in name:
        mod = spec.split(":")[0]
        prefix = name.rpartition(".")[0]
        # the public package, or one of its sub-modules (monai.networks.nets.unet.UNet)
        if not (prefix == mod or prefix.startswith(mod + ".")):
            spec = None
    if spec is None and not table:
        raise UnsafeConfigError(f"{where}: refusing '{name}': no object may be nested here; "
                                "write plain values")
    if spec is None:
        raise UnsafeConfigError(
            f"{where}: refusing '{name}': only these {role} classes may be built from a config: "
            + ", ".join(sorted(table)))
    return short


def validate(node: Any, where: str, role: str) -> None:
    """Raise UnsafeConfigError unless ``node`` is plain data plus allow-listed objects.

    ``role``: ``"network"`` (``network_def``), ``"transform"`` (one preprocessing
    transform), ``"inferer"``."""
    table = {"network": NETWORKS, "transform": {**INTENSITY, **READ_ONLY}, "inferer": INFERERS,
             "layer": LAYERS}[role]
    if not (isinstance(node, dict) and "_target_" in node):
        raise UnsafeConfigError(f"{where}: expected an object with a '_target_' class name")
    _check(node, where, table, _NESTED[role], role)


def _check(node: Any, where: str, table: dict, nested: dict, role: str) -> None:
    """``table``: classes allowed for this node; ``nested``: for objects inside its arguments."""
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, str):
                raise UnsafeConfigError(f"{where}: keys must be strings, got {k!r}")
            if k.startswith("_") and k.endswith("_") and k not in _ALLOWED_DIRECTIVES:
                raise UnsafeConfigError(f"{where}.{k}: directive '{k}' is not allowed (only _target_)")
        if "_target_" in node:
            _lookup(node["_target_"], table, f"{where}._target_", role)
            table, role = nested, "layer"
        for k, v in node.items():
            if k not in _ALLOWED_DIRECTIVES:
                _check(v, f"{where}.{k}", table, nested, role)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check(v, f"{where}[{i}]", table, nested, role)
    elif isinstance(node, str):
        if node[:1] in ("$", "@", "%"):
            raise UnsafeConfigError(
                f"{where}: expressions, references and macros ('{node[:40]}') are not allowed in "
                "model configs; write plain values")
    elif not (node is None or isinstance(node, (bool, int, float))):
        raise UnsafeConfigError(f"{where}: unsupported value of type {type(node).__name__}")


def resolve_class(name: str, table: dict[str, str]):
    """Import the allow-listed class ``name`` (a short or qualified name in ``table``)."""
    short = name.rpartition(".")[2]
    mod, attr = table[short].split(":")
    cls = getattr(importlib.import_module(mod), attr)
    if not isinstance(cls, type):  # pragma: no cover - the tables hold classes only
        raise UnsafeConfigError(f"'{name}' is not a class")
    return cls


def instantiate(node: Any, where: str, role: str = "network") -> Any:
    """Validate ``node`` whole, then build it (dicts with ``_target_`` become objects)."""
    validate(node, where, role)
    table = {"network": NETWORKS, "transform": INTENSITY, "inferer": INFERERS, "layer": LAYERS}[role]
    return _build(node, where, table)


def _build(node: Any, where: str, table: dict) -> Any:
    if isinstance(node, dict):
        if "_target_" in node:
            if node.get("_disabled_") in (True, "true", "True"):
                return None
            short = node["_target_"].rpartition(".")[2]
            if short not in table:
                raise UnsafeConfigError(f"{where}: '{node['_target_']}' cannot be built here")
            cls = resolve_class(short, table)
            kwargs = {k: _build(v, f"{where}.{k}", LAYERS) for k, v in node.items()
                      if k not in _ALLOWED_DIRECTIVES}
            try:
                return cls(**kwargs)
            except Exception as exc:
                raise UnsafeConfigError(f"{where}: cannot build {node['_target_']}: {first_line(exc)}") from exc
        return {k: _build(v, f"{where}.{k}", table) for k, v in node.items()}
    if isinstance(node, list):
        return [_build(v, f"{where}[{i}]", table) for i, v in enumerate(node)]
    return node


def target_name(node: Any) -> str:
    """The short class name of a config node's ``_target_`` ("" if none)."""
    if isinstance(node, dict) and isinstance(node.get("_target_"), str):
        return node["_target_"].rpartition(".")[2]
    return ""
