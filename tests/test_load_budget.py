"""Sizes before allocation, and one line of ours, when loading a model.

Each case is a small file that asks for a lot: a config describing a large network, an
nnU-Net plans.json with a huge window or network, a .pt2 whose sample inputs are a deflate
bomb. The budget is set low (SEG_EXPLAIN_MEMORY_LIMIT) so that the cases stay small; each
must be refused with the figure, the limit and the setting, before the memory is taken.
Also here: wrong-typed nnU-Net layer arguments, a .pt2 member named ``../x``, a sidecar
linked out of the model folder.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import UNET_DEF, make_unet, write_bundle

from seg_explain import ModelLoadError, UnsafeConfigError, load_model
from seg_explain.cli import main

BUDGET = "SEG_EXPLAIN_MEMORY_LIMIT"
HERE = Path(__file__).parent
T3 = HERE / "data" / "nnunet" / "Dataset901_TinyBrain" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
needs_dna = pytest.mark.skipif(__import__("importlib").util.find_spec("dynamic_network_architectures") is None,
                               reason="dynamic_network_architectures is not installed")


def _peak_mb() -> float:
    """This process's peak resident memory so far (VmHWM), MB."""
    text = open("/proc/self/status").read()
    return int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("VmHWM"))) / 1024


def _cli_one_line(tmp_path, model, capsys, ndim=2) -> str:
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((16,) * ndim).astype(np.float32))
    rc = main(["explain", str(img), "--model", str(model), "--method", "gradient", "--target", "1",
               "--out", str(tmp_path / "out.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("seg-explain: error:"), err
    assert "Traceback" not in err and "weights_only" not in err and "PyTorch 2.6" not in err
    return err


# ------------------------------------------------------------------- MONAI bundle --
def test_network_def_too_large_is_refused_before_it_is_built(tmp_path, monkeypatch, capsys):
    """A few hundred bytes of inference.json describing a 137 MB 3D UNet, under a 128 MB budget:
    counted on the meta device (exactly), refused before one weight is allocated."""
    b = write_bundle(tmp_path / "b", {**UNET_DEF, "spatial_dims": 2}, make_unet(2), ["bg", "a", "b", "c"], (16, 16))
    cfg = json.loads((b / "configs/inference.json").read_text())
    cfg["network_def"] = {**UNET_DEF, "spatial_dims": 3, "channels": [256, 512, 1024]}
    (b / "configs/inference.json").write_text(json.dumps(cfg))
    monkeypatch.setenv(BUDGET, "128M")
    before = _peak_mb()
    with pytest.raises(ModelLoadError, match=r"network_def \(136.9 MB of weights, loaded twice while building\) "
                                             r"would need 273.7 MB of memory, more than the budget of 134.2 MB "
                                             r"\(SEG_EXPLAIN_MEMORY_LIMIT=128M\); set SEG_EXPLAIN_MEMORY_LIMIT"):
        load_model(b)
    assert _peak_mb() - before < 100
    _cli_one_line(tmp_path, b, capsys)
    monkeypatch.setenv(BUDGET, "2G")   # raised as the message says: the same config builds
    with pytest.raises(ModelLoadError, match="weights do not fit network_def"):
        load_model(b)


def test_meta_count_agrees_with_the_built_network():
    """The meta-device count is the real one, also for SwinUNETR (which calls .item() while
    being built) and the tensor.item of real tensors is left as it was."""
    from seg_explain.models.network_size import meta_bytes
    from seg_explain.models.safe_config import instantiate

    for d in ({"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2, "feature_size": 12},
              {"_target_": "SegResNet", "init_filters": 8}, {**UNET_DEF, "spatial_dims": 3}):
        net = instantiate(d, "x")
        real = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
        assert meta_bytes(lambda d=d: instantiate(d, "x")) == real
    assert torch.tensor(2.5).item() == 2.5 and torch.Tensor.item.__name__ == "item"


# ------------------------------------------------------------------------ nnU-Net --
def _nnunet(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "Dataset901_TinyBrain" / T3.name
    shutil.copytree(T3, dst)
    plans = json.loads((dst / "plans.json").read_text())
    edit(plans["configurations"]["3d_fullres"])
    (dst / "plans.json").write_text(json.dumps(plans))
    return dst


@needs_dna
def test_nnunet_huge_patch_is_refused_from_plans(tmp_path, capsys):
    """A 1024³ patch (nnU-Net always runs whole patches): about 40 GB for one window of this tiny
    network, refused at load instead of a huge allocation at the first forward pass."""
    folder = _nnunet(tmp_path, lambda c: c.update(patch_size=[1024, 1024, 1024]))
    with pytest.raises(ModelLoadError, match=r"one 1024x1024x1024 window \(plans.json patch_size\) of this network "
                                             r"would need \d+\.\d GB of memory, more than the budget"):
        load_model(folder, device="cpu")
    _cli_one_line(tmp_path, folder, capsys, ndim=3)


@needs_dna
def test_nnunet_network_over_budget_is_refused_before_it_is_built(tmp_path, monkeypatch):
    def wide(c):
        c["architecture"]["arch_kwargs"]["features_per_stage"] = [256, 512, 1024]
    folder = _nnunet(tmp_path, wide)
    monkeypatch.setenv(BUDGET, "200M")   # one window (132 MB) fits; the weights do not
    before = _peak_mb()
    with pytest.raises(ModelLoadError, match=r"fold\(s\) of the network plans.json describes \(\d+\.\d MB of weights"
                                             r".*more than the budget of 209.7 MB"):
        load_model(folder, device="cpu")
    assert _peak_mb() - before < 100


@needs_dna
@pytest.mark.parametrize("key,value,match", [
    ("nonlin_kwargs", {"negative_slope": "x"}, r"nonlin_kwargs.negative_slope' must be a number, got 'x'"),
    ("nonlin_kwargs", {"inplace": "yes"}, r"nonlin_kwargs.inplace' must be true or false"),
    ("norm_op_kwargs", {"eps": -1e-5, "affine": True}, r"norm_op_kwargs.eps' must be > 0, got -1e-05"),
    ("norm_op_kwargs", {"eps": 1e-5, "device": "cuda:7"}, r"takes no argument 'device'"),
    ("norm_op_kwargs", {"epsilon": 1e-5}, r"InstanceNorm3d takes no argument 'epsilon'"),
    ("nonlin_kwargs", [1, 2], r"nonlin_kwargs' must be an object of keyword arguments"),
])
def test_nnunet_layer_arguments_are_checked_against_the_layer(tmp_path, capsys, key, value, match):
    folder = _nnunet(tmp_path, lambda c: c["architecture"]["arch_kwargs"].update({key: value}))
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model(folder, device="cpu")
    assert "configurations.3d_fullres.architecture.arch_kwargs" in str(e.value) and "\n" not in str(e.value)
    _cli_one_line(tmp_path, folder, capsys, ndim=3)


# --------------------------------------------------------------------------- .pt2 --
def _export2d(tmp_path: Path) -> Path:
    prog = torch.export.export(make_unet(2).eval(), (torch.zeros(1, 1, 32, 32),))
    p = tmp_path / "m.pt2"
    torch.export.save(prog, str(p))
    (tmp_path / "m.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [32, 32]}},
        "outputs": {"pred": {"num_channels": 4}}}}))
    return p


def _rewrite(p: Path, fn) -> None:
    tmp = p.with_suffix(".tmp")
    with zipfile.ZipFile(p) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            fn(zout, info, zin.read(info))
    tmp.replace(p)


def test_pt2_sample_inputs_deflate_bomb_is_refused_before_decompressing(tmp_path, monkeypatch, capsys):
    p = _export2d(tmp_path)

    def bomb(zout, info, data):
        if "sample_inputs" in info.filename:
            zout.writestr(info.filename, b"\0" * (300 * 1024 * 1024), zipfile.ZIP_DEFLATED)
        else:
            zout.writestr(info, data)
    _rewrite(p, bomb)
    assert p.stat().st_size < 2_000_000
    monkeypatch.setenv(BUDGET, "128M")
    before = _peak_mb()
    with pytest.raises(ModelLoadError, match=r"m.pt2 \(decompressed\) would need 31\d.\d MB of memory, more than "
                                             r"the budget of 134.2 MB"):
        load_model(p)
    assert _peak_mb() - before < 100
    _cli_one_line(tmp_path, p, capsys)


def test_pt2_member_named_outside_the_archive_is_refused_in_one_line(tmp_path, capsys):
    p = _export2d(tmp_path)
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("m/../../escape.txt", b"x")
    with pytest.raises(UnsafeConfigError, match=r"member 'm/../../escape.txt' points outside the archive"):
        load_model(p)
    err = _cli_one_line(tmp_path, p, capsys)
    assert "points outside the archive" in err
    assert not (tmp_path.parent / "escape.txt").exists()


def test_torch_restricted_loader_advice_is_never_pasted(tmp_path, capsys):
    """A weights file holding a pickled object: our words, the object named, none of torch's
    'Weights only load failed ... Re-running torch.load with weights_only set to False' text."""
    b = write_bundle(tmp_path / "b", {**UNET_DEF, "spatial_dims": 2}, make_unet(2), ["bg", "a", "b", "c"], (16, 16))
    torch.save({"w": torch.zeros(1), "o": zipfile.ZipInfo("x")}, b / "models" / "model.pt")
    with pytest.raises(ModelLoadError) as e:
        load_model(b)
    msg = str(e.value)
    assert "zipfile.ZipInfo" in msg and "never unpickled" in msg
    assert "Weights only load failed" not in msg and "weights_only" not in msg and "\n" not in msg
    _cli_one_line(tmp_path, b, capsys)


# ------------------------------------------------------------------------ sidecar --
def test_sidecar_linked_out_of_the_model_folder_is_refused(tmp_path):
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    torch.jit.trace(make_unet(2).eval(), torch.rand(1, 1, 16, 16)).save(str(models / "m.ts"))
    (elsewhere / "secret.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
        "outputs": {"pred": {"num_channels": 4}}}}))
    os.symlink(elsewhere / "secret.json", models / "m.json")
    with pytest.raises(ModelLoadError, match=r"points outside .*models.*files of a model folder must stay inside it"):
        load_model(models / "m.ts")
