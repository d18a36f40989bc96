"""Untrusted model folders, sidecars and images: nothing in them runs code or opens other files.

Every attack here is real: a pickle that would create a marker file when unpickled, a hub
folder whose hubconf.py would create one, TorchScript programs that read or write files,
a .pt2 archive with a pickled payload. Each must be refused (exit 2 from the CLI, one line)
and the marker must never appear.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import UNET_DEF, Payload, make_unet, write_bundle

from seg_explain import ModelLoadError, UnsafeConfigError, load_model
from seg_explain.cli import main


def _payload_file(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def _bundle2d(tmp_path: Path, name: str = "b") -> Path:
    return write_bundle(tmp_path / name, {**UNET_DEF, "spatial_dims": 2}, make_unet(2),
                        ["bg", "a", "b", "c"], (16, 16))


def _edit(bundle: Path, fn) -> Path:
    cfg = json.loads((bundle / "configs/inference.json").read_text())
    fn(cfg)
    (bundle / "configs/inference.json").write_text(json.dumps(cfg))
    return bundle


def _cli_refuses(tmp_path, model, capsys, match: str | None = None) -> str:
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    rc = main(["explain", str(img), "--model", str(model), "--method", "gradient",
               "--target", "1", "--out", str(tmp_path / "out.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("seg-explain: error:")
    assert not (tmp_path / "out.npy").exists()
    if match:
        assert match in err, err
    return err


# --------------------------------------------------------------------------- configs --
ATTACKS = {
    # a callable target at the top
    "torch.load": lambda c, pl, hub: c.update(network_def={"_target_": "torch.load", "f": str(pl),
                                                            "weights_only": False}),
    # the pickle payload nested as a UNet argument (was run, then the clean model returned)
    "nested dropout": lambda c, pl, hub: c["network_def"].update(
        dropout={"_target_": "torch.load", "f": str(pl), "weights_only": False}),
    "hub.load": lambda c, pl, hub: c.update(network_def={
        "_target_": "torch.hub.load", "repo_or_dir": str(hub), "model": "evil", "source": "local"}),
    "torch.save": lambda c, pl, hub: c["network_def"].update(
        act={"_target_": "torch.save", "obj": 1, "f": str(pl.with_suffix(".written"))}),
    "bundle run": lambda c, pl, hub: c.update(inferer={"_target_": "monai.bundle.scripts.run",
                                                       "config_file": str(pl)}),
    "expression": lambda c, pl, hub: c["network_def"].update(
        channels="$__import__('os').system('touch " + str(pl.with_suffix(".expr")) + "')"),
    "reference": lambda c, pl, hub: c["network_def"].update(channels="@evil"),
    "macro": lambda c, pl, hub: c["network_def"].update(channels="%/etc/passwd#x"),
    "_requires_": lambda c, pl, hub: c["network_def"].update(_requires_="os"),
    "_mode_ callable": lambda c, pl, hub: c["network_def"].update(_mode_="callable"),
    "transform nested load": lambda c, pl, hub: c["preprocessing"]["transforms"].append(
        {"_target_": "NormalizeIntensityd", "keys": "image",
         "subtrahend": {"_target_": "torch.load", "f": str(pl), "weights_only": False}}),
    "subprocess transform": lambda c, pl, hub: c["preprocessing"]["transforms"].append(
        {"_target_": "subprocess.Popen", "args": ["touch", str(pl.with_suffix(".sub"))]}),
    "spoofed prefix": lambda c, pl, hub: c["network_def"].update(_target_="evil.monai.networks.nets.UNet"),
    "os.system": lambda c, pl, hub: c["network_def"].update(_target_="os.system", command="true"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_config_attacks_are_refused_and_run_nothing(tmp_path, capsys, name):
    marker = tmp_path / "PWNED"
    payload = _payload_file(tmp_path / "payload.pkl", marker)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef evil():\n    return None\n")
    bundle = _edit(_bundle2d(tmp_path), lambda c: ATTACKS[name](c, payload, hub))
    with pytest.raises(UnsafeConfigError) as info:
        load_model(bundle)
    msg = str(info.value)
    assert "\n" not in msg and ("network_def" in msg or "preprocessing" in msg or "inferer" in msg)
    _cli_refuses(tmp_path, bundle, capsys)
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix in (".written", ".expr", ".sub")]
    assert not marker.exists() and not leftovers


def test_refusal_names_the_key_path(tmp_path):
    bundle = _edit(_bundle2d(tmp_path), lambda c: c["network_def"].update(
        dropout={"_target_": "torch.load", "f": "x"}))
    with pytest.raises(UnsafeConfigError, match=r"network_def\.dropout\._target_: refusing 'torch\.load'"):
        load_model(bundle)


def test_allowed_layers_and_qualified_names_still_build(tmp_path):
    """The allow-list is not a wall: module-qualified class names, nested norm/act layers."""
    def edit(c):
        c["network_def"]["_target_"] = "monai.networks.nets.unet.UNet"
        c["network_def"]["act"] = "PRELU"
    m = load_model(_edit(_bundle2d(tmp_path), edit))
    assert m.spatial_dims == 2


def test_sidecar_of_torchscript_is_validated_too(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    payload = _payload_file(tmp_path / "payload.pkl", marker)
    net = make_unet(2).eval()
    torch.jit.trace(net, torch.rand(1, 1, 16, 16)).save(str(tmp_path / "m.ts"))
    (tmp_path / "m.json").write_text(json.dumps({
        "network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
                                "outputs": {"pred": {"num_channels": 4}}},
        "preprocessing": [{"_target_": "ScaleIntensityd", "keys": "image",
                           "minv": {"_target_": "torch.load", "f": str(payload), "weights_only": False}}]}))
    with pytest.raises(UnsafeConfigError, match=r"preprocessing\[0\]\.minv\._target_"):
        load_model(tmp_path / "m.ts")
    _cli_refuses(tmp_path, tmp_path / "m.ts", capsys)
    assert not marker.exists()


# ----------------------------------------------------------------------------- files --
def test_pickled_weights_are_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    bundle = _bundle2d(tmp_path)
    _payload_file(bundle / "models" / "model.pt", marker)
    with pytest.raises(ModelLoadError, match="never unpickled"):
        load_model(bundle)
    _cli_refuses(tmp_path, bundle, capsys)
    assert not marker.exists()


def test_weights_symlink_out_of_the_bundle_is_refused(tmp_path):
    bundle = _bundle2d(tmp_path)
    outside = tmp_path / "elsewhere.pt"
    (bundle / "models" / "model.pt").rename(outside)
    (bundle / "models" / "model.pt").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="points outside"):
        load_model(bundle)


def test_metadata_link_to_dev_zero_and_oversized_json(tmp_path):
    bundle = _bundle2d(tmp_path)
    meta = bundle / "configs" / "metadata.json"
    meta.unlink()
    meta.symlink_to("/dev/zero")
    with pytest.raises(ModelLoadError, match="character device"):
        load_model(bundle)
    meta.unlink()
    meta.write_text('{"pad": "' + "x" * (9 * 1024 * 1024) + '"}')
    with pytest.raises(ModelLoadError, match="larger than 8 MiB"):
        load_model(bundle)


class _ReadsFiles(torch.nn.Module):
    def forward(self, x):
        y = torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8)
        return x.repeat(1, 4, 1, 1) + y.sum().float()


class _WritesFiles(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        torch.save(x, self.path)
        return x.repeat(1, 4, 1, 1)


@pytest.mark.parametrize("which", ["from_file", "save"])
def test_torchscript_that_touches_files_is_refused(tmp_path, capsys, which):
    leak = tmp_path / "leak.pt"
    mod = _ReadsFiles() if which == "from_file" else _WritesFiles(str(leak))
    torch.jit.script(mod).save(str(tmp_path / "m.ts"))
    (tmp_path / "m.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
        "outputs": {"pred": {"num_channels": 4}}}}))
    with pytest.raises(UnsafeConfigError, match=f"aten::{which}"):
        load_model(tmp_path / "m.ts")
    _cli_refuses(tmp_path, tmp_path / "m.ts", capsys)
    assert not leak.exists()


def _export2d(tmp_path: Path, dynamic: bool = True) -> Path:
    from torch.export import Dim

    net = make_unet(2).eval()
    if dynamic:
        prog = torch.export.export(net, (torch.zeros(2, 1, 32, 32),), dynamic_shapes={
            "x": {0: Dim("b", max=64), 2: 4 * Dim("h", min=2, max=256), 3: 4 * Dim("w", min=2, max=256)}})
    else:
        prog = torch.export.export(net, (torch.zeros(1, 1, 32, 32),))
    p = tmp_path / "m.pt2"
    torch.export.save(prog, str(p))
    (tmp_path / "m.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [32, 32]}},
        "outputs": {"pred": {"num_channels": 4}}}}))
    return p


def _rewrite_zip(src: Path, replace: dict[str, bytes]) -> None:
    tmp = src.with_suffix(".tmpzip")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename.split("/", 1)[1], zin.read(info))
            zout.writestr(info, data)
    tmp.replace(src)


def test_pt2_with_pickled_weight_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    p = _export2d(tmp_path)
    with zipfile.ZipFile(p) as z:
        name = next(n for n in z.namelist() if n.endswith("weights_config.json"))
        cfg = json.loads(z.read(name))
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    weight_file = "data/weights/" + cfg["config"][first]["path_name"]
    _rewrite_zip(p, {name.split("/", 1)[1]: json.dumps(cfg).encode(),
                     weight_file: pickle.dumps(Payload(marker))})
    with pytest.raises(UnsafeConfigError, match="pickled object"):
        load_model(p)
    _cli_refuses(tmp_path, p, capsys)
    assert not marker.exists()


def test_pt2_sample_inputs_payload_never_unpickled(tmp_path, capsys):
    """torch.export.load retries a failed restricted load of its sample inputs with the full
    unpickler; our loader refuses such an archive before torch.export.load sees it."""
    marker = tmp_path / "PWNED"
    p = _export2d(tmp_path)
    with zipfile.ZipFile(p) as z:
        name = next(n for n in z.namelist() if "sample_inputs" in n)
    _rewrite_zip(p, {name.split("/", 1)[1]: pickle.dumps(Payload(marker))})
    with pytest.raises(ModelLoadError):
        load_model(p)
    _cli_refuses(tmp_path, p, capsys)
    assert not marker.exists()
    assert torch.load.__name__ == "load"  # the guard put torch.load back


# ------------------------------------------------------------- accepted models work --
@pytest.mark.parametrize("dynamic", [True, False])
def test_pt2_static_and_dynamic_exports_explain(tmp_path, dynamic):
    from seg_explain import explain

    m = load_model(_export2d(tmp_path, dynamic))
    x = np.random.default_rng(0).random((40, 36)).astype(np.float32)
    roi = np.zeros_like(x, bool)
    roi[10:20, 10:20] = True
    e = explain(m, x, "smoothgrad", target=1, roi=roi, n_samples=3, batch_size=3)
    assert e.attribution.shape == x.shape and np.isfinite(e.attribution).all()
    assert np.abs(e.attribution).sum() > 0
    if dynamic:
        assert m.divisor == 4 and m.batch_range == (1, 64)
    else:
        assert m.patch_size == (32, 32) and m.batch_range == (1, 1)


def test_bad_sidecar_numbers_one_line(tmp_path):
    net = make_unet(2).eval()
    torch.jit.trace(net, torch.rand(1, 1, 16, 16)).save(str(tmp_path / "m.ts"))
    for bad, match in (({"_target_": "Spacingd", "keys": "image", "pixdim": [0, 1]}, "positive voxel sizes"),
                       ({"_target_": "Orientationd", "keys": "image", "axcodes": "XYZ"}, "3 letters")):
        (tmp_path / "m.json").write_text(json.dumps({
            "network_data_format": {"inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
                                    "outputs": {"pred": {"num_channels": 4}}},
            "preprocessing": [bad]}))
        with pytest.raises(ModelLoadError, match=match):
            load_model(tmp_path / "m.ts")


def test_huge_patch_loads_without_a_huge_pass(tmp_path):
    """A 4096² patch in the metadata must not cost a 4096² forward pass at load time."""
    b = _edit(_bundle2d(tmp_path), lambda c: c["inferer"].update(roi_size=[4096, 4096]))
    # VmHWM is this process's own peak (ru_maxrss would include the forking parent's size)
    code = ("import re; from seg_explain import load_model; "
            f"m = load_model({str(b)!r}); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "print(m.patch_size, hwm // 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    patch, peak_mb = out.stdout.split(")")
    assert patch.strip() == "(4096, 4096"
    assert int(peak_mb) < 1500   # a 4096² pass of this UNet alone needs several GB


def test_tiny_image_says_too_small():
    from seg_explain import InputMismatchError
    from seg_explain.paths import sample_path

    m = load_model(sample_path("models", "brain2d"))
    msg = r"too small for this model: \(1, 1\) voxels.*at least 16 along each axis"
    with pytest.raises(InputMismatchError, match=msg):
        m.predict(np.ones((1, 1), np.float32))


# ---------------------------------------------------------------------------- images --
def test_fifo_and_devices_are_refused_without_hanging(tmp_path):
    from seg_explain import ImageLoadError, load_image

    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="named pipe"):
        load_image(fifo)
    link = tmp_path / "zero.npy"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageLoadError, match="character device"):
        load_image(link)
    # the CLI says it in one line (and would otherwise block forever on the FIFO)
    code = ("import sys; from seg_explain.cli import main; "
            f"sys.exit(main(['explain', {str(fifo)!r}, '--model', 'x', '--method', 'gradient', "
            f"'--out', {str(tmp_path / 'o.npy')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "named pipe" in r.stderr


def test_pt2_with_compiled_native_code_is_refused(tmp_path, capsys):
    """An AOTInductor package inside a .pt2 is a shared library: refused before torch sees it."""
    p = _export2d(tmp_path)
    with zipfile.ZipFile(p) as z:
        root = z.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(p, "a") as z:
        z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF not really")
    with pytest.raises(UnsafeConfigError, match="AOTInductor"):
        load_model(p)
    _cli_refuses(tmp_path, p, capsys)
