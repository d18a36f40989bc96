"""Instantiate MONAI-bundle-style config dicts without running arbitrary code.

Only ``_target_`` names that resolve to callables in ``torch``, ``monai`` or
``seg_explain`` are allowed; ``$`` expressions (which MONAI evaluates with ``eval``),
``@`` references and other ``_underscore_`` directives are refused. We never hand a
config to ``monai.bundle.ConfigParser``.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import UnsafeConfigError

ALLOWED_PREFIXES = ("torch.", "monai.", "seg_explain.")
_ALLOWED_KEYS = {"_target_", "_disabled_"}


def check_config(node: Any, where: str = "config") -> None:
    """Raise UnsafeConfigError if ``node`` contains anything we would refuse to run."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and k.startswith("_") and k not in _ALLOWED_KEYS:
                raise UnsafeConfigError(f"{where}: directive '{k}' is not allowed in bundle configs")
            if k == "_target_":
                resolve_target(v, where)
            else:
                check_config(v, f"{where}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            check_config(v, f"{where}[{i}]")
    elif isinstance(node, str) and (node.startswith("$") or node.startswith("@") or node.startswith("%")):
        raise UnsafeConfigError(
            f"{where}: expressions/references ('{node[:40]}') are not allowed in bundle configs; "
            "write plain values")


def resolve_target(name: Any, where: str = "config"):
    """Resolve a ``_target_`` string to an allow-listed callable."""
    if not isinstance(name, str) or not name:
        raise UnsafeConfigError(f"{where}: _target_ must be a class name, got {name!r}")
    if "." in name:
        if not name.startswith(ALLOWED_PREFIXES):
            raise UnsafeConfigError(
                f"{where}: refusing to instantiate '{name}' (only torch, monai and seg_explain "
                "classes are allowed in bundle configs)")
        mod, _, attr = name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise UnsafeConfigError(f"{where}: unknown target '{name}'") from exc
    else:
        obj = None
        for mod in ("monai.networks.nets", "monai.transforms", "monai.inferers", "torch.nn"):
            m = importlib.import_module(mod)
            if hasattr(m, name):
                obj = getattr(m, name)
                break
        if obj is None:
            raise UnsafeConfigError(f"{where}: unknown target '{name}' (not a MONAI/torch class)")
    module = getattr(obj, "__module__", "") or ""
    if not (module + ".").startswith(ALLOWED_PREFIXES):
        raise UnsafeConfigError(f"{where}: refusing to instantiate '{name}' from module '{module}'")
    return obj


def instantiate(node: Any, where: str = "config") -> Any:
    """Instantiate a checked config node recursively (dicts with ``_target_`` become objects)."""
    check_config(node, where)
    return _inst(node, where)


def _inst(node: Any, where: str) -> Any:
    if isinstance(node, dict):
        if "_target_" in node:
            if node.get("_disabled_") in (True, "true", "True"):
                return None
            fn = resolve_target(node["_target_"], where)
            kwargs = {k: _inst(v, f"{where}.{k}") for k, v in node.items() if not k.startswith("_")}
            try:
                return fn(**kwargs)
            except Exception as exc:
                raise UnsafeConfigError(f"{where}: cannot build {node['_target_']}: {exc}") from exc
        return {k: _inst(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_inst(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node
