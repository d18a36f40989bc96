"""MONAI bundle folders and JSON sidecars -> SegModel settings.

What we read from a bundle (nothing else in it is read, evaluated or imported):
- ``configs/metadata.json``: ``network_data_format`` -> channels, patch shape, ``channel_def``
  class names (a sidecar JSON next to a TorchScript/.pt2 file has the same content);
- ``configs/inference.json``: ``network_def`` (built through the allow-list of
  :mod:`.safe_config`), the transforms of ``preprocessing`` (``Spacingd`` / ``Orientationd``
  give the model's geometry and are read, not run; intensity transforms are built from the
  allow-list; loading and cropping transforms are ours to do), ``inferer``
  roi_size/overlap/mode;
- ``models/model.pt`` (a state dict, ``torch.load(weights_only=True)``) or
  ``models/model.ts`` (TorchScript).

Every file is opened only if it is a regular file inside the bundle folder (symlinks
resolved), and the JSON files are read with a size cap (:mod:`seg_explain.files`).
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..budget import check_zip_members
from ..errors import ModelLoadError, UnsafeConfigError
from ..files import read_json as _read_json
from ..files import regular_file
from .safe_config import INFERERS, INTENSITY, READ_ONLY, instantiate, target_name, validate
from .torch_errors import is_restricted_refusal, refused_global, torch_reason

MAX_CLASSES = 10_000
MAX_PATCH = 4096


def read_json(path: Path, what: str, inside: Path | None = None) -> dict:
    return _read_json(path, what, inside=inside, error=ModelLoadError)


def _int(v, where: str, lo: int = 1, hi: int | None = None) -> int:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and int(v) == v
    if ok and int(v) >= lo and (hi is None or int(v) <= hi):
        return int(v)
    raise ModelLoadError(f"{where} must be a whole number >= {lo}" + (f" and <= {hi}" if hi else "")
                         + f", got {v!r}")


def spacing_of(values, where: str) -> list[float] | None:
    """``pixdim`` -> positive finite floats (or None when empty)."""
    if values in (None, [], ()):
        return None
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ModelLoadError(f"{where} must be a list of voxel sizes in mm, got {values!r}")
    out = []
    for v in values:
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ModelLoadError(f"{where} must hold positive voxel sizes in mm, got {values!r}")
        out.append(float(v))
    return out


def parse_metadata(meta: dict, where: str) -> dict[str, Any]:
    """network_data_format -> in_channels, out_channels, class_names, patch, spatial_dims."""
    ndf = meta.get("network_data_format")
    if not isinstance(ndf, dict):
        raise ModelLoadError(f"{where}: missing 'network_data_format' (inputs/outputs description)")
    try:
        inp = next(iter(ndf["inputs"].values()))
        out = next(iter(ndf["outputs"].values()))
        if not isinstance(inp, dict) or not isinstance(out, dict):
            raise TypeError
    except (KeyError, StopIteration, AttributeError, TypeError) as exc:
        raise ModelLoadError(f"{where}: network_data_format needs 'inputs' and 'outputs' objects") from exc
    in_ch = _int(inp.get("num_channels", 1), f"{where}: inputs num_channels", 1, 1024)
    out_ch = _int(out.get("num_channels", 0), f"{where}: outputs num_channels", 0, MAX_CLASSES)
    cdef = out.get("channel_def") or {}
    if not isinstance(cdef, dict) or not all(str(k).lstrip("-").isdigit() for k in cdef):
        raise ModelLoadError(f"{where}: outputs channel_def must map channel numbers to class names")
    names = [str(cdef[k]) for k in sorted(cdef, key=lambda k: int(k))] if cdef else []
    if out_ch == 1:
        names = names if len(names) == 2 else ["background", names[-1] if names else "foreground"]
    elif not names:
        names = ["background"] + [f"class_{i}" for i in range(1, out_ch)]
    if out_ch and out_ch != 1 and len(names) != out_ch:
        raise ModelLoadError(
            f"{where}: channel_def names {len(names)} classes but num_channels is {out_ch}")
    if len(names) < 2:
        raise ModelLoadError(f"{where}: a segmentation model needs at least 2 classes (or 1 sigmoid channel)")
    shape = inp.get("spatial_shape") or []
    if not isinstance(shape, (list, tuple)):
        raise ModelLoadError(f"{where}: inputs spatial_shape must be a list")
    patch = None
    if shape and all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        patch = [_int(s, f"{where}: inputs spatial_shape", 1, MAX_PATCH) for s in shape]
    sd = meta.get("spatial_dims") or (len(shape) if shape else None)
    if sd is not None:
        sd = _int(sd, f"{where}: spatial_dims", 2, 3)
    return {"in_channels": in_ch, "out_channels": out_ch or len(names), "class_names": names,
            "patch_size": patch, "spatial_dims": sd, "sigmoid": out_ch == 1,
            "name": str(meta.get("name", ""))[:200]}


def _transforms(pre, where: str) -> list:
    """The preprocessing transform list (a Compose, a list, or one transform)."""
    if pre is None:
        return []
    if isinstance(pre, list):
        return pre
    if isinstance(pre, dict) and target_name(pre) == "Compose":
        validate({k: v for k, v in pre.items() if k != "transforms"}, where, "transform")
        tl = pre.get("transforms", [])
        if not isinstance(tl, list):
            raise ModelLoadError(f"{where}.transforms must be a list")
        return tl
    if isinstance(pre, dict):
        return [pre]
    raise ModelLoadError(f"{where} must be a Compose, a list of transforms or a transform")


def parse_inference(cfg: dict, where: str) -> dict[str, Any]:
    """Validate the sections we use, then read them: network_def (validated only; the loader
    builds it), preprocessing -> intensity callables, spacing, axcodes; inferer -> window."""
    net_def = cfg.get("network_def")
    if net_def is not None:
        validate(net_def, f"{where}: network_def", "network")
    tlist = _transforms(cfg.get("preprocessing"), "preprocessing")
    for i, t in enumerate(tlist):
        validate(t, f"{where}: preprocessing[{i}]", "transform")
    inf = cfg.get("inferer")
    if inf is not None:
        if not isinstance(inf, dict):
            raise ModelLoadError(f"{where}: inferer must be an object")
        if "_target_" in inf:
            validate(inf, f"{where}: inferer", "inferer")
    # -- everything validated: now read / build
    out: dict[str, Any] = {"preprocess": [], "spacing": None, "axcodes": None}
    for i, t in enumerate(tlist):
        name = target_name(t)
        if name in ("Spacingd", "Spacing"):
            out["spacing"] = spacing_of(t.get("pixdim"), f"{where}: preprocessing[{i}].pixdim")
        elif name in ("Orientationd", "Orientation"):
            codes = t.get("axcodes", "")
            if not (isinstance(codes, str) and len(codes) in (0, 3) and set(codes.upper()) <= set("LRAPSI")):
                raise ModelLoadError(f"{where}: preprocessing[{i}].axcodes must be 3 letters like 'RAS', got {codes!r}")
            out["axcodes"] = tuple(codes.upper()) or None
        elif name in READ_ONLY:
            continue
        elif name in INTENSITY:
            tf = instantiate(t, f"{where}: preprocessing[{i}]", "transform")
            out["preprocess"].append(_DictAdapter(tf) if name.endswith("d") else tf)
        else:  # pragma: no cover - validate() refused it
            raise UnsafeConfigError(f"{where}: preprocessing[{i}]: {name} is not allowed")
    if isinstance(inf, dict):
        if target_name(inf) not in ("", *INFERERS):
            raise UnsafeConfigError(f"{where}: inferer {target_name(inf)} is not allowed")
        if inf.get("roi_size"):
            rs = inf["roi_size"]
            if not isinstance(rs, list):
                raise ModelLoadError(f"{where}: inferer.roi_size must be a list")
            out["patch_size"] = [_int(v, f"{where}: inferer.roi_size", 1, MAX_PATCH) for v in rs]
        if "overlap" in inf:
            ov = inf["overlap"]
            if not (isinstance(ov, (int, float)) and not isinstance(ov, bool) and 0 <= ov < 1):
                raise ModelLoadError(f"{where}: inferer.overlap must be in [0, 1), got {ov!r}")
            out["overlap"] = float(ov)
        if "sw_batch_size" in inf:
            out["sw_batch_size"] = _int(inf["sw_batch_size"], f"{where}: inferer.sw_batch_size", 1, 4096)
        if "sigma_scale" in inf:
            ss = inf["sigma_scale"]
            if not (isinstance(ss, (int, float)) and not isinstance(ss, bool) and math.isfinite(ss) and ss > 0):
                raise ModelLoadError(f"{where}: inferer.sigma_scale must be a positive number, got {ss!r}")
            out["sigma_scale"] = float(ss)
        if "mode" in inf:
            if inf["mode"] not in ("gaussian", "constant"):
                raise ModelLoadError(f"{where}: inferer.mode must be 'gaussian' or 'constant', got {inf['mode']!r}")
            out["blend"] = inf["mode"]
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


def load_state_dict_file(path: Path, inside: Path | None = None) -> dict:
    """Load a state dict with ``weights_only=True``; explain the common failure modes."""
    real = regular_file(path, "weights file", inside, ModelLoadError)
    if zipfile.is_zipfile(real):   # torch.save's format: the members' sizes before reading them
        with zipfile.ZipFile(real) as z:
            check_zip_members(z.infolist(), path.name)
    try:
        sd = torch.load(os.fspath(real), weights_only=True, map_location="cpu")
    except Exception as exc:
        if is_restricted_refusal(exc):
            g = refused_global(exc)
            raise ModelLoadError(
                f"{path.name} is a pickled Python object" + (f" ({g})" if g else "") + " (e.g. a whole model), "
                "which is never unpickled for safety; save `model.state_dict()` with torch.save, or export "
                "TorchScript") from exc
        raise ModelLoadError(f"Cannot read weights {path.name}: {torch_reason(exc)}") from exc
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
