"""MONAI bundle directories and JSON sidecars -> SegModel settings.

What we read from a bundle:
- ``configs/metadata.json``: ``network_data_format`` -> channels, patch shape, ``channel_def``
  class names (a sidecar JSON next to a TorchScript/.pt2 file has the same content);
- ``configs/inference.json``: ``network_def`` (built through the allow-list), the intensity
  transforms of ``preprocessing`` (Spacingd / Orientationd give the model's geometry; loading
  and cropping transforms are ours to do), ``inferer`` roi_size/overlap/mode;
- ``models/model.pt`` (state dict, ``weights_only=True``) or ``models/model.ts`` (TorchScript).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .safe_config import check_config, instantiate, resolve_target

# transforms we apply ourselves (geometry) or that do not apply to an in-memory array
_GEOMETRY = {"LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd",
             "AddChannel", "AddChanneld", "Orientation", "Orientationd", "Spacing", "Spacingd",
             "EnsureType", "EnsureTyped", "ToTensor", "ToTensord", "CastToType", "CastToTyped",
             "ToDevice", "ToDeviced", "Identity", "Identityd"}


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{what} not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{what} {path.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {path.name} must hold a JSON object")
    return data


def parse_metadata(meta: dict, where: str) -> dict[str, Any]:
    """network_data_format -> in_channels, out_channels, class_names, patch, spatial_dims."""
    ndf = meta.get("network_data_format")
    if not isinstance(ndf, dict):
        raise ModelLoadError(f"{where}: missing 'network_data_format' (inputs/outputs description)")
    try:
        inp = next(iter(ndf["inputs"].values()))
        out = next(iter(ndf["outputs"].values()))
    except (KeyError, StopIteration, AttributeError) as exc:
        raise ModelLoadError(f"{where}: network_data_format needs 'inputs' and 'outputs'") from exc
    in_ch = int(inp.get("num_channels", 1))
    out_ch = int(out.get("num_channels", 0))
    cdef = out.get("channel_def") or {}
    names = [str(cdef[k]) for k in sorted(cdef, key=lambda k: int(k))] if cdef else []
    if out_ch == 1:
        names = names if len(names) == 2 else ["background", names[-1] if names else "foreground"]
    elif not names:
        names = ["background"] + [f"class_{i}" for i in range(1, out_ch)]
    if out_ch and out_ch != 1 and len(names) != out_ch:
        raise ModelLoadError(
            f"{where}: channel_def names {len(names)} classes but num_channels is {out_ch}")
    shape = inp.get("spatial_shape") or []
    patch = [int(s) for s in shape] if shape and all(str(s).isdigit() or isinstance(s, int) for s in shape) else None
    sd = meta.get("spatial_dims") or (len(shape) if shape else None)
    return {"in_channels": in_ch, "out_channels": out_ch or len(names), "class_names": names,
            "patch_size": patch, "spatial_dims": sd, "sigmoid": out_ch == 1,
            "name": meta.get("name", "")}


def parse_inference(cfg: dict, where: str) -> dict[str, Any]:
    """preprocessing/inferer sections -> preprocess callables, spacing, axcodes, window."""
    check_config({k: v for k, v in cfg.items() if k != "network_def"}, where)
    out: dict[str, Any] = {"preprocess": [], "spacing": None, "axcodes": None}
    pre = cfg.get("preprocessing")
    tlist = []
    if isinstance(pre, dict):
        tlist = pre.get("transforms", []) if "transforms" in pre else [pre]
    elif isinstance(pre, list):
        tlist = pre
    for i, t in enumerate(tlist):
        if not isinstance(t, dict) or "_target_" not in t:
            continue
        name = str(t["_target_"]).rpartition(".")[2]
        if name in ("Spacingd", "Spacing"):
            out["spacing"] = [float(v) for v in t.get("pixdim", [])] or None
        elif name in ("Orientationd", "Orientation"):
            out["axcodes"] = tuple(str(t.get("axcodes", "")))
        elif name in _GEOMETRY:
            continue
        else:
            cls = resolve_target(t["_target_"], f"{where}.preprocessing[{i}]")
            if not cls.__module__.startswith("monai.transforms.intensity"):
                raise ModelLoadError(
                    f"{where}: preprocessing transform {name} changes geometry or is not an intensity "
                    "transform; only intensity transforms are supported inside a bundle (crop/pad yourself)")
            tf = instantiate(t, f"{where}.preprocessing[{i}]")
            out["preprocess"].append(_DictAdapter(tf) if name.endswith("d") else tf)
    inf = cfg.get("inferer")
    if isinstance(inf, dict):
        if inf.get("roi_size"):
            out["patch_size"] = [int(v) for v in inf["roi_size"]]
        for k_src, k_dst in (("overlap", "overlap"), ("sw_batch_size", "sw_batch_size"), ("mode", "blend")):
            if k_src in inf:
                out[k_dst] = inf[k_src]
    return out


class _DictAdapter:
    """Run a MONAI dictionary transform keyed on 'image' on a bare tensor."""

    def __init__(self, tf):
        self.tf = tf
        self.keys = list(getattr(tf, "keys", ["image"]))

    def __call__(self, x):
        return self.tf({self.keys[0]: x})[self.keys[0]]

    def __repr__(self):
        return f"{type(self.tf).__name__}"


def load_state_dict_file(path: Path) -> dict:
    """Load a state dict with ``weights_only=True``; explain the common failure modes."""
    where = os.fspath(path)
    try:
        sd = torch.load(where, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise ModelLoadError(f"Weights file not found: {path}") from exc
    except Exception as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise ModelLoadError(
                f"{path.name} is a pickled Python object (e.g. a whole model), which is never "
                "unpickled for safety; save `model.state_dict()` with torch.save, or export TorchScript") from exc
        raise ModelLoadError(f"Cannot read weights {path.name}: {text.splitlines()[0] if text else exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{path.name} does not hold a state dict of tensors")
    return sd


def divisor_of(net) -> int:
    """Spatial size the network needs its input divisible by (UNet/SegResNet/SwinUNETR)."""
    name = type(net).__name__
    if hasattr(net, "strides") and name in ("UNet", "AttentionUnet", "BasicUNet"):
        d = 1
        for s in net.strides:
            d *= int(s if isinstance(s, int) else max(s))
        return d
    if name == "SegResNet" and hasattr(net, "blocks_down"):
        return 2 ** (len(net.blocks_down) - 1)
    if name in ("SwinUNETR", "UNETR"):
        return 32
    if name == "BasicUNet":
        return 16
    return 16
