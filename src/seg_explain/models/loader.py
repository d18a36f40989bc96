"""load_model: MONAI bundle folders, TorchScript files and torch.export programs.

Everything read here is untrusted (see ``docs/SECURITY.md``): configs are validated against
allow-lists before anything is built (:mod:`.safe_config`), weights are loaded with
``torch.load(weights_only=True)``, TorchScript programs are checked before ``torch.jit.load``
and scanned whole after it against an allow-list of ops (:mod:`.torchscript_scan`), sizes are
checked against the memory budget before anything is built (:mod:`.network_size`,
:mod:`seg_explain.budget`), and ``.pt2`` archives are read once and refused when anything in
them would need more than torch's restricted unpickler (or is native code) before
``torch.export.load`` sees the same bytes.
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import torch

from ..allocator import tune_allocator
from ..budget import check_bytes, check_zip_members
from ..errors import ModelLoadError, SegExplainError, UnsafeConfigError, first_line
from ..files import regular_file
from .bundle import divisor_of, load_state_dict_file, parse_inference, parse_metadata, read_json
from .formats import formats_help, model_format
from .network_size import check_network_size
from .probe import forward_ok, probe, probe_isolated
from .safe_config import instantiate
from .segmodel import SegModel, resolve_device
from .torch_errors import torch_reason
from .torchscript_scan import load_torchscript, may_loop, scan_exported


def load_model(path: str | os.PathLike, device: str = "auto") -> SegModel:
    """Load a segmentation model.

    ``path`` is a MONAI bundle folder (``configs/metadata.json`` + ``models/model.pt`` with
    ``configs/inference.json`` ``network_def``, or ``models/model.ts``), a TorchScript file
    (``.ts``/``.pt``) or a ``torch.export`` program (``.pt2``) with a JSON sidecar of the same
    stem holding what metadata.json would hold (and optionally ``preprocessing``/``inferer``).
    ``device="auto"`` picks CUDA, then MPS, then CPU. Nothing is unpickled.

    The first call in a process also applies :func:`seg_explain.allocator.tune_allocator`
    (glibc keeps freed tensor buffers for reuse; opt out: ``SEG_EXPLAIN_MALLOC_TUNING=0``).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"No such model file or bundle folder: {p}")
    tune_allocator()   # every caller (API, notebooks, Dask workers, CLI, docks) gets it
    fmt = model_format(p)           # the one table of formats (models/formats.py)
    if fmt is None:
        raise ModelLoadError(f"Unsupported model '{p.name}': give {formats_help()}")
    if not p.is_dir():
        regular_file(p, "model file", error=ModelLoadError)
    try:
        return fmt.load(p, device)
    except SegExplainError:
        raise
    except Exception as exc:  # anything unexpected: one line, cause chained
        raise ModelLoadError(f"Cannot load model {p.name}: {first_line(exc)}") from exc


def load_torchscript_file(p: Path, device) -> SegModel:
    """A TorchScript file with its JSON sidecar (scanned before anything of it runs)."""
    return _load_compiled(Path(p), device, exported=False)


def load_export_file(p: Path, device) -> SegModel:
    """A torch.export ``.pt2`` program with its JSON sidecar (checked before it is loaded)."""
    return _load_compiled(Path(p), device, exported=True)


def _settings(meta: dict, cfg: dict | None, where: str) -> dict:
    s = parse_metadata(meta, where)
    if cfg:
        inf = parse_inference(cfg, where)
        s.update({k: v for k, v in inf.items() if v is not None or k not in s})
    if not s.get("spatial_dims"):
        s["spatial_dims"] = len(s["patch_size"]) if s.get("patch_size") else None
    if s["spatial_dims"] not in (2, 3):
        raise ModelLoadError(f"{where}: cannot tell if the model is 2D or 3D; give input spatial_shape")
    for key in ("patch_size", "spacing"):
        if s.get(key) and len(s[key]) != s["spatial_dims"]:
            raise ModelLoadError(f"{where}: {key} {s[key]} does not have {s['spatial_dims']} entries")
    return s


def _eval_mode(net) -> None:
    try:
        net.eval()
    except NotImplementedError:  # torch.export modules have no train/eval switch
        pass


def _build(net, s: dict, where: str, device, hookable: bool, source: str,
           program: bytes | None = None) -> SegModel:
    """``program``: the bytes of a TorchScript program with a loop; its probe then runs in a
    child process with a deadline (:func:`.probe.probe_isolated`)."""
    _eval_mode(net)
    s.setdefault("divisor", divisor_of(net))
    if program is not None:
        probe_isolated(program, s, where)
    else:
        probe(net, s, where)
    return SegModel(
        net, spatial_dims=s["spatial_dims"], in_channels=s["in_channels"],
        class_names=s["class_names"], patch_size=s.get("patch_size"), spacing=s.get("spacing"),
        axcodes=s.get("axcodes"), preprocess=s.get("preprocess", []),
        divisor=s["divisor"], overlap=float(s.get("overlap", 0.25)),
        sw_batch_size=int(s.get("sw_batch_size", 1)), blend=str(s.get("blend", "gaussian")),
        sigma_scale=float(s.get("sigma_scale", 0.125)),
        name=s.get("name", ""), source=source, device=resolve_device(device), hookable=hookable,
        meta={"sigmoid": s.get("sigmoid", False), "min_size": s.get("min_size", 1),
              "fixed_shape": s.get("fixed_shape"), "batch_range": s.get("batch_range")},
        owns_network=True)


def load_bundle(p: Path, device) -> SegModel:
    """A MONAI bundle folder."""
    where = f"bundle {p.name}"
    root = p.resolve()
    meta = read_json(p / "configs" / "metadata.json", "Bundle metadata", inside=root)
    inf_path = p / "configs" / "inference.json"
    cfg = read_json(inf_path, "Bundle inference config", inside=root) if os.path.lexists(inf_path) else None
    s = _settings(meta, cfg, where)
    pt, ts = p / "models" / "model.pt", p / "models" / "model.ts"
    if os.path.lexists(pt) and cfg and "network_def" in cfg:
        check_network_size(lambda: instantiate(cfg["network_def"], f"{where}: network_def", "network"),
                           f"{where}: network_def")
        net = instantiate(cfg["network_def"], f"{where}: network_def", "network")
        if not isinstance(net, torch.nn.Module):
            raise ModelLoadError(f"{where}: network_def does not build a torch.nn.Module")
        sd = load_state_dict_file(pt, inside=root)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = [l.strip() for l in str(exc).splitlines() if l.strip()][:2]
            raise ModelLoadError(f"{where}: weights do not fit network_def ({' '.join(first)[:300]})") from exc
        return _build(net, s, where, device, True, str(p))
    if os.path.lexists(ts):
        net, data = _jit_load(regular_file(ts, "TorchScript file", root, ModelLoadError))
        return _build(net, s, where, device, False, str(p), program=data)
    raise ModelLoadError(
        f"{where}: needs models/model.pt with configs/inference.json 'network_def', or models/model.ts")


# ------------------------------------------------------------------------ TorchScript --
def _jit_load(path: Path):
    """(the loaded program, its bytes or None): read once, checked before and after
    torch.jit.load (:mod:`.torchscript_scan`); nothing of the program has run. The bytes come
    back when the program has a loop: its probe then runs in a child process with a deadline
    (a loop-free program always finishes and is probed here)."""
    size = path.stat().st_size
    check_bytes(size, f"{path.name} ({size} bytes on disk)")
    with open(path, "rb") as fh:
        data = fh.read()
    net, kinds = load_torchscript(path, data)
    return net, (data if may_loop(kinds) else None)


# ------------------------------------------------------------------------ torch.export --
def check_pt2_archive(data: bytes, name: str) -> None:
    """Refuse a .pt2 archive (given as its bytes, the very bytes that are then loaded) that
    torch.export.load would load with a full unpickler or as native code: legacy pickled
    weight/constant files, payloads marked ``use_pickle``, custom or opaque objects, compiled
    AOTInductor packages, and sample inputs that torch's restricted (``weights_only=True``)
    unpickler refuses (torch.export.load retries those with the full unpickler). What passes
    holds nothing that torch.export.load unpickles beyond the restricted unpickler."""
    import io
    import json

    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{name} is not a torch.export archive (not a zip file)") from None
    with z:
        check_zip_members(z.infolist(), name)   # no ../ names; decompressed sizes within the budget
        for info in z.infolist():
            member = info.filename
            parts = member.split("/")
            folder = parts[-2] if len(parts) >= 2 else ""
            if "aotinductor" in parts[:-1]:
                raise UnsafeConfigError(f"{name}: {member} is a compiled AOTInductor package (native code); "
                                        "only torch.export programs are loaded")
            if folder in ("weights", "constants") and member.endswith(".pt"):
                raise UnsafeConfigError(f"{name}: {member} is a pickled legacy payload; re-save the "
                                        "program with a current torch.export.save")
            if folder == "sample_inputs":
                try:
                    torch.load(io.BytesIO(z.read(info)), weights_only=True, map_location="cpu")
                except SegExplainError:
                    raise
                except Exception:
                    raise UnsafeConfigError(f"{name}: {member} holds pickled objects beyond tensors; such a "
                                            "program is never loaded") from None
            if member.endswith("_config.json") and "/data/" in f"/{member}":
                if info.file_size > 64 * 1024 * 1024:
                    raise UnsafeConfigError(f"{name}: {member} is implausibly large")
                try:
                    cfg = json.loads(z.read(info).decode("utf-8")).get("config", {})
                except (ValueError, AttributeError):
                    raise ModelLoadError(f"{name}: {member} is not valid JSON") from None
                for fqn, meta in (cfg.items() if isinstance(cfg, dict) else []):
                    pn = str((meta or {}).get("path_name", ""))
                    if (meta or {}).get("use_pickle") or pn.startswith(("custom_obj", "opaque_obj")):
                        raise UnsafeConfigError(f"{name}: {fqn} is stored as a pickled object; "
                                                "such a program is never loaded")


def _load_export(p: Path):
    """torch.export.load on bytes read once and checked by :func:`check_pt2_archive` (no
    window between the check and the load in which the file could change)."""
    import io

    with open(regular_file(p, "model file", error=ModelLoadError), "rb") as fh:
        data = fh.read()
    check_pt2_archive(data, p.name)
    try:
        return torch.export.load(io.BytesIO(data))
    except SegExplainError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{p.name} is not a torch.export program: {torch_reason(exc)}") from exc


def export_constraints(prog, sd: int) -> dict:
    """What an exported program accepts for its first input: ``batch_range`` (lo, hi),
    ``fixed_shape`` (static spatial sizes) or ``divisor`` (from ``k*s`` symbolic sizes)."""
    ph = [n for n in prog.graph.nodes if n.op == "placeholder"]
    user = [s.arg.name for s in prog.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    node = next((n for n in ph if n.name in user), None)
    val = node.meta.get("val") if node is not None else None
    if val is None or len(val.shape) != sd + 2:
        axes = "Y, X" if sd == 2 else "Z, Y, X"
        raise ModelLoadError(f"the exported program's input is not a (batch, channels, {axes}) tensor")
    out: dict = {}

    def rng(sym):
        r = prog.range_constraints.get(sym)
        lo = int(r.lower) if r is not None and math.isfinite(float(r.lower)) else 1
        hi = int(r.upper) if r is not None and math.isfinite(float(r.upper)) else None
        return lo, hi

    b = val.shape[0]
    if isinstance(b, int):
        out["batch_range"] = (b, b)
    else:
        lo, hi = rng(next(iter(b.node.expr.free_symbols)))
        out["batch_range"] = (max(1, lo), min(hi or 64, 64))
    spatial = list(val.shape[2:])
    if all(isinstance(s, int) for s in spatial):
        out["fixed_shape"] = [int(s) for s in spatial]
        return out
    div = 1
    for s in spatial:
        if isinstance(s, int):
            raise ModelLoadError("the exported program fixes some spatial sizes but not others; export "
                                 "all spatial axes static or all dynamic")
        coeff, _ = s.node.expr.as_coeff_Mul()
        k = int(coeff) if float(coeff) == int(coeff) and int(coeff) > 0 else 1
        div = div * k // math.gcd(div, k)
    out["divisor"] = div
    return out


def _load_compiled(p: Path, device, exported: bool) -> SegModel:
    side = p.with_suffix(".json")
    if not os.path.lexists(side):
        raise ModelLoadError(
            f"{p.name} needs a JSON sidecar {side.name} with 'network_data_format' (channels, "
            "spatial_shape, channel_def class names) as in a MONAI bundle's metadata.json")
    meta = read_json(side, "Model sidecar", inside=p.parent.resolve())
    s = _settings(meta, meta, f"sidecar {side.name}")
    if exported:
        prog = _load_export(p)
        scan_exported(prog, p.name)
        s.update(export_constraints(prog, s["spatial_dims"]))
        if s.get("fixed_shape"):
            s["patch_size"] = list(s["fixed_shape"])
            s["divisor"] = 1
        elif s.get("divisor", 1) == 1:
            s["divisor"] = _probe_divisor(prog.module(), s)
        net = prog.module()
        return _build(net, s, f"model {p.name}", device, False, str(p))
    net, data = _jit_load(p)
    return _build(net, s, f"model {p.name}", device, False, str(p), program=data)


def _probe_divisor(net, s: dict) -> int:
    """Smallest power of two the program's spatial sizes must be divisible by (exports made
    with ``Dim.AUTO`` keep no divisibility, yet fail on other sizes)."""
    sd, c = s["spatial_dims"], s["in_channels"]
    lo = s.get("batch_range", (1, 1))[0]
    for d in (1, 2, 4, 8, 16, 32, 64):
        shapes = [(lo, c) + (d * k,) * sd for k in (3, 5)]
        if all(forward_ok(net, sh, "cpu")[0] is not None for sh in shapes):
            return d
    raise ModelLoadError("the exported program did not run on any probe size; export it with "
                         "dynamic_shapes (batch: Dim('batch'), spatial: 16*Dim(...)) from a batch-2 example")
