"""A run never destroys the user's files, fails early on unwritable outputs, and never gives
a silent answer for bad voxels or values (one line on stderr, exit 2)."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import UNET_DEF, digest, make_unet, run_cli, write_bundle

from seg_explain import InputMismatchError, explain, load_model
from seg_explain.files import atomic_write


@pytest.fixture
def case(tmp_path):
    """A 2D bundle and a 2D image on disk (.npy)."""
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, make_unet(2),
                     ["bg", "a", "b", "c"], (32, 32))
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((32, 28)).astype(np.float32))
    return b, img


def _explain_args(b, img, out, *extra):
    return ["explain", str(img), "--model", str(b), "--method", "gradient", "--target", "0",
            "--out", str(out), "--quiet", *extra]


# ------------------------------------------------------------------------ outputs --
def test_out_equal_to_an_input_is_refused_and_input_kept(case, tmp_path, capsys):
    b, img = case
    roi = tmp_path / "roi.npy"
    np.save(roi, np.ones((32, 28), np.uint8))
    ref = tmp_path / "ref.npy"
    np.save(ref, np.ones((32, 28), np.uint8))
    for victim, extra in ((img, ()), (roi, ("--roi", str(roi))), (ref, ("--reference", str(ref)))):
        before = digest(victim)
        rc, err = run_cli(_explain_args(b, img, victim, *extra), capsys)
        assert rc == 2 and "is an input of this run" in err and len(err.splitlines()) == 1
        assert digest(victim) == before
    # the same through a symlink to the input
    link = tmp_path / "link.npy"
    link.symlink_to(img)
    rc, err = run_cli(_explain_args(b, img, link), capsys)
    assert rc == 2 and "is an input" in err


def test_agg2exp_out_folder_may_not_hold_an_input(bundle3d, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    img = out / "heatmap.png"   # an input that one of the outputs would overwrite
    arr = (np.random.default_rng(0).random((20, 20)) * 255).astype(np.uint8)
    import imageio.v3 as iio

    iio.imwrite(img, arr)
    before = digest(img)
    rc, err = run_cli(["agg2exp", str(img), "--model", str(bundle3d), "--method", "gradient",
                    "--out", str(out), "--quiet"], capsys)
    assert rc == 2 and "is an input of this run" in err
    assert digest(img) == before


@pytest.mark.parametrize("kind", ["dir", "file-parent", "proc"])
def test_unwritable_outputs_fail_before_computing(case, tmp_path, capsys, monkeypatch, kind):
    b, img = case
    import seg_explain.models as models

    def never(*_a, **_k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(models, "load_model", never)
    if kind == "dir":
        out, match = tmp_path, "is a folder"
    elif kind == "file-parent":
        (tmp_path / "afile").write_text("x")
        out, match = tmp_path / "afile" / "attr.npy", "is a file, not a folder"
    else:
        out, match = Path("/proc/self/attr.npy"), "Cannot write into"
    rc, err = run_cli(_explain_args(b, img, out), capsys)
    assert rc == 2 and match in err and len(err.splitlines()) == 1


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "attr.nii.gz"
    target.write_bytes(b"previous valid output")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half of a new fi")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"previous valid output"
    assert [p.name for p in tmp_path.iterdir()] == ["attr.nii.gz"]   # no temporary left behind


def test_full_disk_during_write_is_one_line_and_keeps_old_file(case, tmp_path, capsys, monkeypatch):
    b, img = case
    out = tmp_path / "attr.npy"
    np.save(out, np.zeros(3))
    before = digest(out)

    def disk_full(path, arr, *a, **k):
        Path(path).write_bytes(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    rc, err = run_cli(_explain_args(b, img, out), capsys)
    assert rc == 2 and "No space left on device" in err and "nothing was changed" in err
    assert digest(out) == before and len(list(tmp_path.glob(".attr.npy*"))) == 0


def test_sigterm_during_a_run_leaves_no_partial_output(case, tmp_path):
    """A real SIGTERM while the CLI computes: exit 143, the previous output intact."""
    b, img = case
    out = tmp_path / "attr.npy"
    np.save(out, np.arange(5))
    before = digest(out)
    cmd = [sys.executable, "-m", "seg_explain.cli", *_explain_args(b, img, out)[:-1]]
    cmd[cmd.index("gradient")] = "smoothgrad"
    cmd += ["--param", "n_samples=100000", "--param", "noise_level=0.1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()          # printed from inside the sample loop: SIGTERM's handler is set
    assert first.strip() == "[explain]   0%", first
    proc.send_signal(signal.SIGTERM)        # 100000 samples: the run is certainly still computing
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "seg-explain: terminated; nothing half-written was left behind", err
    assert digest(out) == before and not list(tmp_path.glob(".attr.npy*"))


# ---------------------------------------------------------------------- bad voxels --
def test_non_finite_image_and_roi_are_refused(case, tmp_path, capsys):
    b, img = case
    x = np.load(img)
    x[3, 4] = np.inf
    x[10:12, 10:12] = np.nan
    bad = tmp_path / "bad.npy"
    np.save(bad, x)
    rc, err = run_cli(_explain_args(b, bad, tmp_path / "o.npy"), capsys)
    assert rc == 2 and "has 5 non-finite voxel(s) (NaN, Inf)" in err
    m = load_model(b)
    with pytest.raises(InputMismatchError, match="non-finite"):
        m.predict(x)
    roi = np.zeros((32, 28), np.float32)
    roi[2:6, 2:6] = 1
    roi[20, 20] = np.nan      # NaN != 0 used to make this voxel (and others) RoI
    with pytest.raises(InputMismatchError, match="RoI mask has 1 non-finite"):
        explain(m, np.load(img), "gradient", target=0, roi=roi)


def test_agg2exp_reports_a_nan_image_and_averages_only_good_ones(bundle3d, tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        a = rng.random((16, 16, 16)).astype(np.float32) * 100
        if i == 1:
            a[0, 0, 0] = np.nan
        p = tmp_path / f"c{i}.nii.gz"
        nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), str(p))
        paths.append(str(p))
    rc, err = run_cli(["agg2exp", *paths, "--model", str(bundle3d), "--method", "gradient",
                    "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert rc == 3                       # tables written, some image failed (documented exit code)
    assert "failed: c1: InputMismatchError: The image has 1 non-finite voxel(s) (NaN)" in err
    import csv

    with open(tmp_path / "out" / "local_importance.csv") as fh:
        names = {r["image"] for r in csv.DictReader(fh)}
    assert names == {"c0", "c2"}


# ------------------------------------------------------------------ bad values --
def test_roi_on_another_grid_is_refused(bundle3d, tmp_path, capsys):
    data = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "img.nii.gz"))
    roi = np.zeros((16, 16, 16), np.uint8)
    roi[4:8, 4:8, 4:8] = 1
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = [10.0, 0, 0]
    nib.save(nib.Nifti1Image(roi, shifted), str(tmp_path / "roi.nii.gz"))
    rc, err = run_cli(["explain", str(tmp_path / "img.nii.gz"), "--model", str(bundle3d), "--method",
                    "gradient", "--roi", str(tmp_path / "roi.nii.gz"), "--out", str(tmp_path / "o.nii.gz")],
                   capsys)
    assert rc == 2 and "RoI roi.nii.gz is not on the image's grid" in err


def test_unknown_classes_and_bad_settings(bundle3d, tmp_path, capsys):
    data = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "img.nii.gz"))
    img = str(tmp_path / "img.nii.gz")
    rc, err = run_cli(["agg2exp", img, "--model", str(bundle3d), "--method", "gradient", "--classes",
                    "nonsense", "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "Unknown target class 'nonsense'" in err
    assert not (tmp_path / "a" / "local_importance.csv").exists()
    rc, err = run_cli(["evaluate", img, "--model", str(bundle3d), "--method", "gradient",
                    "--n-faithfulness", "0", "--out", str(tmp_path / "e")], capsys)
    assert rc == 2 and "n_faithfulness must be a whole number >= 2, got 0" in err
    rc, err = run_cli(["explain", img, "--model", str(bundle3d), "--method", "gradient",
                    "--seed", str(10 ** 20), "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert rc == 2 and "--seed must be a whole number in [0, 2147483647]" in err
