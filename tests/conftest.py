"""Shared fixtures: small real MONAI networks wrapped as SegModels, bundles on disk."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_unet(spatial_dims: int, in_channels: int = 1, out_channels: int = 4, seed: int = 0,
              channels=(4, 8, 16), strides=(2, 2)):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims, in_channels, out_channels, channels, strides, num_res_units=1).eval()


def wrap(net, spatial_dims: int, in_channels: int = 1, n_classes: int = 4, patch=None, **kw):
    from seg_explain.models import SegModel

    names = ["background"] + [f"class_{i}" for i in range(1, n_classes)]
    return SegModel(net, spatial_dims=spatial_dims, in_channels=in_channels, class_names=names,
                    patch_size=patch, divisor=kw.pop("divisor", 4), device="cpu", **kw)


def write_bundle(root: Path, net_def: dict, net, class_names, patch, spacing=None, axcodes=None,
                 normalize: bool = False) -> Path:
    """Write a MONAI bundle folder for ``net`` (state dict + configs)."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    meta = {"version": "0.0.1", "network_data_format": {
        "inputs": {"image": {"num_channels": net_def.get("in_channels", 1), "spatial_shape": list(patch)}},
        "outputs": {"pred": {"num_channels": len(class_names),
                             "channel_def": {str(i): n for i, n in enumerate(class_names)}}}}}
    tfs = [{"_target_": "LoadImaged", "keys": "image"}]
    if axcodes:
        tfs.append({"_target_": "Orientationd", "keys": "image", "axcodes": axcodes})
    if spacing:
        tfs.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(spacing)})
    if normalize:
        tfs.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True})
    cfg = {"network_def": net_def, "preprocessing": {"_target_": "Compose", "transforms": tfs},
           "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(patch), "overlap": 0.25}}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "configs" / "inference.json").write_text(json.dumps(cfg))
    return root


UNET_DEF = {"_target_": "monai.networks.nets.UNet", "in_channels": 1, "out_channels": 4,
            "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own dock settings (remembered models) and cache folder."""
    monkeypatch.setenv("SEG_EXPLAIN_SETTINGS", str(tmp_path / "settings.ini"))
    monkeypatch.setenv("SEG_EXPLAIN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def unet3d():
    """A random 3D MONAI UNet (4 classes) as a SegModel, no preprocessing."""
    return wrap(make_unet(3), 3)


@pytest.fixture
def unet2d():
    """A random 2D MONAI UNet (4 classes) as a SegModel, no preprocessing."""
    return wrap(make_unet(2), 2)


@pytest.fixture
def two_channel():
    """A random 2D MONAI UNet taking two input channels (4 classes) as a SegModel."""
    return wrap(make_unet(2, in_channels=2, seed=5), 2, in_channels=2)


@pytest.fixture
def bundle3d(tmp_path):
    """A MONAI bundle folder holding a random 3D UNet (patch 32³, 2 mm, SPL)."""
    net = make_unet(3)
    return write_bundle(tmp_path / "bundle3d", {**UNET_DEF, "spatial_dims": 3}, net,
                        ["background", "a", "b", "c"], (32, 32, 32), spacing=(2.0, 2.0, 2.0),
                        axcodes="SPL", normalize=True)


@pytest.fixture
def sample_bundle2d():
    """The trained 2D sample bundle the repository ships (16 brain classes); the GUI tests
    drive it as a user would. Missing, it is an error: no random stand-in."""
    from seg_explain.paths import sample_path

    real = sample_path("models", "brain2d")
    assert (real / "configs" / "metadata.json").is_file(), f"the shipped 2D sample bundle is missing: {real}"
    return real


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def case(tmp_path):
    """A small 2D MONAI bundle (random UNet) and one .npy image, for CLI checks."""
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, make_unet(2),
                     ["bg", "a", "b", "c"], (32, 32))
    img = tmp_path / "case0.npy"
    np.save(img, np.random.default_rng(0).random((32, 28)).astype(np.float32))
    return b, img


def oblique_affine(spacing=(1.5, 0.8, 3.0), flips=(-1, 1, -1), angles=(0.35, -0.2, 0.5),
                   origin=(12.5, -30.0, 7.25)) -> np.ndarray:
    """IJK→RAS with rotated (oblique) axes, anisotropic voxels and flipped storage."""
    def rot(axis, a):
        c, s = np.cos(a), np.sin(a)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    aff = np.eye(4)
    aff[:3, :3] = rot(0, angles[0]) @ rot(1, angles[1]) @ rot(2, angles[2]) @ np.diag(np.multiply(spacing, flips))
    aff[:3, 3] = origin
    return aff


def wait_until(condition, what: str, timeout: float = 300.0, poll: float = 0.02):
    """Poll ``condition()`` (another process's state: a file written, a child started) until it
    is true and return its value. The timeout only stops a hung test: nothing is asserted
    about how long anything took."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(poll)
    return value


# ------------------------------------------------ helpers shared by several test files --
@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def sd_model(request):
    """(spatial_dims, a random UNet SegModel of that dimension), for 2D and 3D."""
    sd = request.param
    return sd, wrap(make_unet(sd), sd)


def close(a, b, rtol=1e-4):
    """max |a - b| within ``rtol`` of max |b| (a tolerance relative to the map's scale)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


def present_class(model, x):
    """The most frequent predicted foreground class (background if none) and its mask."""
    pred = model.predict(x)
    vals, counts = np.unique(pred, return_counts=True)
    if (vals > 0).any():
        vals, counts = vals[vals > 0], counts[vals > 0]
    c = int(vals[np.argmax(counts)])
    return c, pred == c


def run_cli(args, capsys) -> tuple[int, str]:
    """``seg-explain ARGS`` in this process: (exit code, stderr stripped)."""
    from seg_explain.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err.strip()


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


class Payload:
    """Unpickling this creates a marker file (what an attacker's os.system would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
