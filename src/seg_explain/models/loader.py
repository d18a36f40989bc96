"""load_model: MONAI bundle folders, TorchScript files and torch.export programs."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..allocator import tune_allocator
from ..errors import ModelLoadError, SegExplainError
from .base import SegModel, resolve_device
from .bundle import divisor_of, load_state_dict_file, parse_inference, parse_metadata, read_json
from .safe_config import instantiate


def load_model(path: str | os.PathLike, device: str = "auto") -> SegModel:
    """Load a segmentation model.

    ``path`` is a MONAI bundle folder (``configs/metadata.json`` + ``models/model.pt`` with
    ``configs/inference.json`` ``network_def``, or ``models/model.ts``), a TorchScript file
    (``.ts``/``.pt``) or a ``torch.export`` program (``.pt2``) with a JSON sidecar of the same
    stem holding what metadata.json would hold (and optionally ``preprocessing``/``inferer``).
    ``device="auto"`` picks CUDA, then MPS, then CPU. Nothing is unpickled.
    """
    tune_allocator()  # reuse freed tensor buffers across passes (see seg_explain.allocator)
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"No such model file or bundle folder: {p}")
    try:
        if p.is_dir():
            return _load_bundle(p, device)
        if p.suffix.lower() == ".pt2":
            return _load_compiled(p, device, exported=True)
        if p.suffix.lower() in (".ts", ".pt", ".pth", ".jit"):
            return _load_compiled(p, device, exported=False)
    except SegExplainError:
        raise
    except Exception as exc:  # anything unexpected: one line, cause chained
        raise ModelLoadError(f"Cannot load model {p.name}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    raise ModelLoadError(
        f"Unsupported model '{p.name}': give a MONAI bundle folder, a TorchScript .ts/.pt file or "
        "a torch.export .pt2 file (each with a JSON sidecar of the same name)")


def _settings(meta: dict, cfg: dict | None, where: str) -> dict:
    s = parse_metadata(meta, where)
    if cfg:
        inf = parse_inference(cfg, where)
        s.update({k: v for k, v in inf.items() if v is not None or k not in s})
    if not s.get("spatial_dims"):
        s["spatial_dims"] = len(s["patch_size"]) if s.get("patch_size") else None
    if s["spatial_dims"] not in (2, 3):
        raise ModelLoadError(f"{where}: cannot tell if the model is 2D or 3D; give input spatial_shape")
    return s


def _check_network(net, s: dict, where: str) -> None:
    """A tiny forward pass: the network's channels must agree with the metadata."""
    if s.get("patch_size") and len(s["patch_size"]) == s["spatial_dims"]:
        shape = tuple(s["patch_size"])
    else:
        shape = (max(divisor_of(net), 16),) * s["spatial_dims"]
    x = torch.zeros((1, s["in_channels"]) + shape)
    try:
        with torch.inference_mode():
            y = net(x.to(next(iter(net.parameters()), x).device) if hasattr(net, "parameters") else x)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: the network does not accept {s['in_channels']}-channel {s['spatial_dims']}D input "
            f"as the metadata says ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    if isinstance(y, (list, tuple)):
        y = y[0]
    want = 1 if s.get("sigmoid") else len(s["class_names"])
    if y.shape[1] != want:
        raise ModelLoadError(
            f"{where}: the network outputs {y.shape[1]} channels but the metadata names {want} classes")


def _eval_mode(net) -> None:
    try:
        net.eval()
    except NotImplementedError:  # torch.export modules have no train/eval switch
        pass


def _build(net, s: dict, where: str, device, hookable: bool, source: str) -> SegModel:
    _eval_mode(net)
    _check_network(net, s, where)
    return SegModel(
        net, spatial_dims=s["spatial_dims"], in_channels=s["in_channels"],
        class_names=s["class_names"], patch_size=s.get("patch_size"), spacing=s.get("spacing"),
        axcodes=s.get("axcodes"), preprocess=s.get("preprocess", []),
        divisor=s.get("divisor") or divisor_of(net), overlap=float(s.get("overlap", 0.25)),
        sw_batch_size=int(s.get("sw_batch_size", 1)), blend=str(s.get("blend", "gaussian")),
        name=s.get("name", ""), source=source, device=resolve_device(device), hookable=hookable,
        meta={"sigmoid": s.get("sigmoid", False)})


def _load_bundle(p: Path, device) -> SegModel:
    where = f"bundle {p.name}"
    meta = read_json(p / "configs" / "metadata.json", "Bundle metadata")
    inf_path = p / "configs" / "inference.json"
    cfg = read_json(inf_path, "Bundle inference config") if inf_path.exists() else None
    s = _settings(meta, cfg, where)
    pt, ts = p / "models" / "model.pt", p / "models" / "model.ts"
    if pt.exists() and cfg and "network_def" in cfg:
        net = instantiate(cfg["network_def"], f"{where}: network_def")
        if not isinstance(net, torch.nn.Module):
            raise ModelLoadError(f"{where}: network_def does not build a torch.nn.Module")
        sd = load_state_dict_file(pt)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = [l.strip() for l in str(exc).splitlines() if l.strip()][:2]
            raise ModelLoadError(f"{where}: weights do not fit network_def ({' '.join(first)[:300]})") from exc
        return _build(net, s, where, device, True, str(p))
    if ts.exists():
        net = _jit_load(ts)
        return _build(net, s, where, device, False, str(p))
    raise ModelLoadError(
        f"{where}: needs models/model.pt with configs/inference.json 'network_def', or models/model.ts")


def _jit_load(path: Path):
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path.name} is not a TorchScript archive (not a zip file)")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} is not a TorchScript program (a state dict needs a MONAI bundle with "
            "network_def; a pickled whole model is never loaded)") from exc


def _load_compiled(p: Path, device, exported: bool) -> SegModel:
    side = p.with_suffix(".json")
    if not side.exists():
        raise ModelLoadError(
            f"{p.name} needs a JSON sidecar {side.name} with 'network_data_format' (channels, "
            "spatial_shape, channel_def class names) as in a MONAI bundle's metadata.json")
    meta = read_json(side, "Model sidecar")
    s = _settings(meta, meta, f"sidecar {side.name}")
    if exported:
        try:
            prog = torch.export.load(str(p))
        except Exception as exc:
            raise ModelLoadError(f"{p.name} is not a torch.export program: {str(exc).splitlines()[0][:200]}") from exc
        net = prog.module()
        s.setdefault("divisor", 1)
    else:
        net = _jit_load(p)
    return _build(net, s, f"model {p.name}", device, False, str(p))
