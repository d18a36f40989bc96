"""Attack run, load side: new hostile model folders, compiled programs and images (beyond the
cases of issues 20 and 25), each handed to the CLI in a fresh process with a deadline.

    PYTHONPATH=src python benchmarks/attack_load.py [--only NAME] [--timeout 150]

Prints one row per case and the counts per category:
clear (exit 2, one line of ours) / unclear (one line, but library text in it) / traceback /
silent-wrong (exit 0 where a refusal was due) / code-exec (a marker file appeared) /
data-loss (a user file changed) / hang (deadline passed) / crash (killed, other exit code).
Every case runs under the default memory budget (half this machine's memory) unless it says
otherwise; "bombs" declare sizes far above it rather than holding them.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SIDE = {"network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
                                "outputs": {"pred": {"num_channels": 4}}}}
LIBRARY_TEXT = ("Exception thrown", "itk::", ".cxx", ".cpp", "Weights only load failed", "PyTorch 2.6",
                "weights_only", "RuntimeError:", "File \"", "libgomp", "\x1b")
CASES: dict = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------- helpers --
def _image2d(d: Path) -> Path:
    p = d / "img.npy"
    np.save(p, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    return p


def _script(mod, d: Path, side=SIDE) -> Path:
    import torch

    p = d / "m.ts"
    torch.jit.script(mod).save(str(p))
    (d / "m.json").write_text(json.dumps(side))
    return p


def _bundle2d(d: Path) -> Path:
    from conftest import UNET_DEF, make_unet, write_bundle

    return write_bundle(d / "b", {**UNET_DEF, "spatial_dims": 2}, make_unet(2), ["bg", "a", "b", "c"], (16, 16))


def _export(d: Path) -> Path:
    import torch
    from conftest import make_unet

    prog = torch.export.export(make_unet(2).eval(), (torch.zeros(1, 1, 32, 32),))
    p = d / "m.pt2"
    torch.export.save(prog, str(p))
    (d / "m.json").write_text(json.dumps({**SIDE, "network_data_format": {
        **SIDE["network_data_format"], "inputs": {"image": {"num_channels": 1, "spatial_shape": [32, 32]}}}}))
    return p


def _forge_declared_size(p: Path, member_part: str, size: int) -> None:
    """Rewrite a zip so that the member whose name contains ``member_part`` *declares* ``size``
    bytes (the data stays small: what a deflate bomb's directory says)."""
    tmp = p.with_suffix(".forge")
    with zipfile.ZipFile(p) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        for info in zout.filelist:
            if member_part in info.filename:
                info.file_size = size
    tmp.replace(p)


def _nnunet(d: Path, edit) -> Path:
    import shutil

    src = ROOT / "tests/data/nnunet/Dataset901_TinyBrain/nnUNetTrainer__nnUNetPlans__3d_fullres"
    dst = d / "Dataset901_TinyBrain" / src.name
    shutil.copytree(src, dst)
    plans = json.loads((dst / "plans.json").read_text())
    edit(plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"])
    (dst / "plans.json").write_text(json.dumps(plans))
    return dst


def _image3d(d: Path) -> Path:
    import nibabel as nib

    p = d / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32), np.eye(4)), p)
    return p


# --------------------------------------------------------------- compiled programs --
@case
def ts_profiler_namespace(d: Path):
    """an op outside aten/prim (profiler::_record_function_enter_new) in forward"""
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            h = torch.ops.profiler._record_function_enter_new("x", None)
            torch.ops.profiler._record_function_exit(h)
            return x.repeat(1, 4, 1, 1)
    return _image2d(d), _script(M(), d), {}


@case
def ts_print_escape(d: Path):
    """print() of a terminal escape sequence in forward (prim::Print)"""
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            print("\x1b[2J\x1b[31mseg-explain: error: all images are fine")
            return x.repeat(1, 4, 1, 1)
    return _image2d(d), _script(M(), d), {}


@case
def ts_setstate_in_submodule(d: Path):
    """__setstate__ of a nested submodule writes a file while torch.jit.load opens it"""
    import torch

    marker = str(d / "PWNED")

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = marker

        def forward(self, x):
            return x

        @torch.jit.export
        def __getstate__(self):
            return (self.p, self.training)

        @torch.jit.export
        def __setstate__(self, s: tuple[str, bool]):
            self.p = s[0]
            self.training = s[1]
            torch.save(torch.zeros(1), self.p)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x).repeat(1, 4, 1, 1)
    p = _script(M(), d)
    (d / "PWNED").unlink(missing_ok=True)
    return _image2d(d), p, {"marker": d / "PWNED"}


@case
def ts_dotdot_member(d: Path):
    """a TorchScript archive with a member named ../../x"""
    import torch
    from conftest import make_unet

    p = d / "m.ts"
    torch.jit.trace(make_unet(2).eval(), torch.rand(1, 1, 16, 16)).save(str(p))
    (d / "m.json").write_text(json.dumps(SIDE))
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("m/../../x.py", b"x")
    return _image2d(d), p, {}


@case
def ts_huge_allocation(d: Path):
    """forward allocates 2**40 floats (4 TB) on the probe"""
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            y = torch.zeros([1099511627776])
            return x.repeat(1, 4, 1, 1) + y[0]
    return _image2d(d), _script(M(), d), {}


@case
def ts_bounded_but_endless_loop(d: Path):
    """a for loop of 10**15 iterations (bounded, so no while: only the deadline stops it)"""
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            s = 0
            for i in range(1000000000000000):
                s += i
            return x.repeat(1, 4, 1, 1)
    return _image2d(d), _script(M(), d), {"env": {"SEG_EXPLAIN_PROBE_TIMEOUT": "30"}}


@torch.jit.interface
class _Iface(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pass


class _Impl(torch.nn.Module):
    def forward(self, x):
        return x


class _ViaInterface(torch.nn.Module):
    sub: _Iface

    def __init__(self):
        super().__init__()
        self.sub = _Impl()

    def forward(self, x):
        return self.sub.forward(x).repeat(1, 4, 1, 1)


@case
def ts_interface_call(d: Path):
    """a submodule typed as an interface: the callee cannot be inlined (prim::CallMethod stays)"""
    return _image2d(d), _script(_ViaInterface(), d), {}


@case
def ts_code_bomb(d: Path):
    """a TorchScript archive whose code member declares 40 GB"""
    import torch
    from conftest import make_unet

    p = d / "m.ts"
    torch.jit.trace(make_unet(2).eval(), torch.rand(1, 1, 16, 16)).save(str(p))
    (d / "m.json").write_text(json.dumps(SIDE))
    _forge_declared_size(p, "code/__torch__", 40 * 10 ** 9)
    return _image2d(d), p, {}


@case
def pt2_absolute_member(d: Path):
    """a .pt2 with a member named /etc/seg-explain-x"""
    p = _export(d)
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("/etc/seg-explain-x", b"x")
    return _image2d(d), p, {}


@case
def pt2_weight_bomb(d: Path):
    """a .pt2 whose weight member declares 60 GB"""
    p = _export(d)
    _forge_declared_size(p, "data/weights/", 60 * 10 ** 9)
    return _image2d(d), p, {}


@case
def pt2_print_op(d: Path):
    """a .pt2 whose graph calls aten::_print"""
    import torch

    class M(torch.nn.Module):
        def forward(self, x):
            torch.ops.aten._print("hello")
            return x.repeat(1, 4, 1, 1)
    prog = torch.export.export(M(), (torch.zeros(1, 1, 32, 32),))
    p = d / "m.pt2"
    torch.export.save(prog, str(p))
    (d / "m.json").write_text(json.dumps(SIDE))
    return _image2d(d), p, {}


# ------------------------------------------------------------------- bundles / nnU-Net --
@case
def bundle_swinunetr_huge(d: Path):
    """network_def: a SwinUNETR of feature_size 1200 (tens of GB; built with .item() calls)"""
    b = _bundle2d(d)
    cfg = json.loads((b / "configs/inference.json").read_text())
    cfg["network_def"] = {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 4, "feature_size": 1200,
                          "spatial_dims": 2}
    (b / "configs/inference.json").write_text(json.dumps(cfg))
    return _image2d(d), b, {}


@case
def bundle_weights_bomb(d: Path):
    """models/model.pt (torch.save zip) whose tensor member declares 50 GB"""
    b = _bundle2d(d)
    _forge_declared_size(b / "models/model.pt", "/data/", 50 * 10 ** 9)
    return _image2d(d), b, {}


@case
def bundle_budget_setting_garbage(d: Path):
    """SEG_EXPLAIN_MEMORY_LIMIT=lots"""
    return _image2d(d), _bundle2d(d), {"env": {"SEG_EXPLAIN_MEMORY_LIMIT": "lots"}}


@case
def nnunet_dropout_p_2(d: Path):
    """plans: dropout_op Dropout3d with p = 2"""
    def edit(kw):
        kw["dropout_op"] = "torch.nn.Dropout3d"
        kw["dropout_op_kwargs"] = {"p": 2}
    return _image3d(d), _nnunet(d, edit), {}


@case
def nnunet_momentum_text(d: Path):
    """plans: norm_op_kwargs momentum "fast" """
    return _image3d(d), _nnunet(d, lambda kw: kw["norm_op_kwargs"].update(momentum="fast")), {}


@case
def nnunet_wide_network(d: Path):
    """plans: features_per_stage [2048, 4096, 4096] (24 billion parameters by plans.json)"""
    return _image3d(d), _nnunet(d, lambda kw: kw.update(features_per_stage=[2048, 4096, 4096])), {}


@case
def sidecar_to_dev_zero(d: Path):
    """a TorchScript sidecar that is a symlink to /dev/zero"""
    import torch
    from conftest import make_unet

    p = d / "m.ts"
    torch.jit.trace(make_unet(2).eval(), torch.rand(1, 1, 16, 16)).save(str(p))
    os.symlink("/dev/zero", d / "m.json")
    return _image2d(d), p, {}


# ------------------------------------------------------------------------- images --
@case
def nifti_5d_claim(d: Path):
    """a 100-byte .nii.gz whose header claims 512x512x512x1x64 float32"""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 512, 1, 64))
    hdr.set_data_dtype(np.float32)
    p = d / "bomb.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
    return p, _bundle2d(d), {}


@case
def nifti_scaled_int8_claim(d: Path):
    """int8 voxels with scl_slope (read as floats): 3000^3 declared"""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((3000, 3000, 3000))
    hdr.set_data_dtype(np.int8)
    hdr.set_slope_inter(2.0, 1.0)
    p = d / "scaled.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
    return p, _bundle2d(d), {}


@case
def mha_billion_channels(d: Path):
    """an MHA header with 4x4 pixels of 10^9 components"""
    p = d / "v.mha"
    p.write_text("ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementNumberOfChannels = 1000000000\n"
                 "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return p, _bundle2d(d), {}


@case
def nrrd_garbage_header(d: Path):
    """a .nrrd with a broken header line"""
    p = d / "v.nrrd"
    p.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 x\nencoding: raw\n\n")
    return p, _bundle2d(d), {}


@case
def npy_fortran_huge(d: Path):
    """a .npy header claiming a (65536, 65536, 16) Fortran-ordered float64 array, no data"""
    p = d / "big.npy"
    with open(p, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": True, "shape": (65536, 65536, 16)})
    return p, _bundle2d(d), {}


@case
def tiff_complex(d: Path):
    """a complex64 2D TIFF"""
    import tifffile

    p = d / "c.tif"
    tifffile.imwrite(p, (np.ones((32, 32)) + 1j).astype(np.complex64))
    return p, _bundle2d(d), {}


@case
def dicom_series_uid_with_escape(d: Path):
    """a DICOM folder with 2 series; --series given with a terminal escape sequence"""
    import SimpleITK as sitk

    folder = d / "dcm"
    folder.mkdir()
    for uid, z0 in (("1.2.3.1", 0.0), ("1.2.3.2", 50.0)):
        vol = sitk.GetImageFromArray((np.random.default_rng(1).random((3, 16, 16)) * 100).astype(np.int16))
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        for k in range(3):
            s = vol[:, :, k]
            for tag, val in [("0008|0060", "MR"), ("0020|000e", uid), ("0020|000d", "1.2.3"),
                             ("0020|0032", f"0\\0\\{z0 + k}"), ("0020|0013", str(k)), ("0020|0037", "1\\0\\0\\0\\1\\0")]:
                s.SetMetaData(tag, val)
            w.SetFileName(str(folder / f"{uid}_{k}.dcm"))
            w.Execute(s)
    return folder, _bundle2d(d), {"extra": ["--series", "9.9\x1b[2J"]}


# ---------------------------------------------------------------------- the runner --
def classify(rc: int | None, err: str, marker: Path | None, guard: Path | None, guard_text: str | None) -> str:
    if marker is not None and marker.exists():
        return "code-exec"
    if guard is not None and (not guard.exists() or guard.read_text() != guard_text):
        return "data-loss"
    if rc is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    if rc == 0:
        return "silent-wrong"
    if rc != 2:
        return "crash"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith("seg-explain: error:") or any(t in err for t in LIBRARY_TEXT):
        return "unclear"
    return "clear"


def run_case(name: str, timeout: float) -> tuple[str, str, float]:
    with tempfile.TemporaryDirectory(prefix=f"attack-{name}-") as tmp:
        d = Path(tmp)
        image, model, opts = CASES[name](d)
        guard = d / "notes.txt"
        guard.write_text("the user's notes")
        out = d / "out.npy"
        argv = ["explain", str(image), "--model", str(model), "--method", "gradient", "--target", "1",
                "--out", str(out), "--quiet", *opts.get("extra", [])]
        code = "import sys; from seg_explain.cli import main; sys.exit(main(sys.argv[1:]))"
        env = dict(os.environ, **opts.get("env", {}))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        t0 = time.monotonic()
        try:
            r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                               timeout=timeout)
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired as exc:
            rc, err = None, (exc.stderr or b"").decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
        dt = time.monotonic() - t0
        cat = classify(rc, err, opts.get("marker"), guard, "the user's notes")
        if out.exists() and cat == "clear":
            cat = "silent-wrong"
        line = err.strip().splitlines()[-1] if err.strip() else f"(exit {rc})"
        return cat, line, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--timeout", type=float, default=150.0)
    args = ap.parse_args()
    names = [args.only] if args.only else list(CASES)
    counts = {k: 0 for k in ("clear", "unclear", "traceback", "silent-wrong", "code-exec", "data-loss", "hang",
                             "crash")}
    for name in names:
        try:
            cat, line, dt = run_case(name, args.timeout)
        except Exception as exc:  # noqa: BLE001 - a case that could not be built is reported, not counted
            print(f"{name:32s} {'(not built)':12s} {type(exc).__name__}: {str(exc).strip()[:120]!r}", flush=True)
            continue
        counts[cat] += 1
        print(f"{name:32s} {cat:12s} {dt:6.1f}s  {line[:150]!r}", flush=True)
    print()
    print(" | ".join(f"{k} {v}" for k, v in counts.items()), f"| total {len(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
