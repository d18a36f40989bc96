"""``seg-explain explain`` / ``seg-explain methods`` on tiny files."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import UNET_DEF, make_unet, write_bundle

from seg_explain import explain, load_image, load_model
from seg_explain.cli import main

ALL = ["gradient", "smoothgrad", "integrated_gradients", "seg_grad_cam", "seg_hires_grad_cam"]


@pytest.fixture
def nifti(tmp_path, rng):
    import nibabel as nib

    data = rng.uniform(0, 100, size=(18, 22, 16)).astype(np.float32)  # (i, j, k)
    aff = np.array([[-2.5, 0, 0, 30.0], [0, 2.0, 0.3, -12.0], [0, 0, 2.2, 5.0], [0, 0, 0, 1]])
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return path


def present(model, img):
    pred = model.predict(img)
    vals, counts = np.unique(pred, return_counts=True)
    return int(vals[np.argmax(counts)]), pred


def test_explain_nifti_keeps_affine(bundle3d, nifti, tmp_path, capsys):
    import nibabel as nib

    img = load_image(nifti)
    model = load_model(bundle3d, device="cpu")
    c, pred = present(model, img)
    out = tmp_path / "out" / "attr.nii.gz"
    rc = main(["explain", str(nifti), "--model", str(bundle3d), "--method", "gradient",
               "--target", model.class_names[c], "--out", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    src, res = nib.load(str(nifti)), nib.load(str(out))
    assert np.allclose(res.affine, src.affine) and res.shape == src.shape
    ref = explain(model, img, "gradient", target=c)
    got = load_image(out).data
    assert np.allclose(got, ref.attribution, rtol=1e-5, atol=1e-6 * np.abs(ref.attribution).max())
    assert "gradient" in capsys.readouterr().err

    # a painted RoI and a parameter
    roi = np.zeros(src.shape, np.uint8)
    roi[4:12, 5:15, 3:10] = 1
    nib.save(nib.Nifti1Image(roi, src.affine), str(tmp_path / "roi.nii.gz"))
    rc = main(["explain", str(nifti), "--model", str(bundle3d), "--method", "smoothgrad", "--target", str(c),
               "--roi", str(tmp_path / "roi.nii.gz"), "--param", "n_samples=2", "--param", "noise_level=0.05",
               "--out", str(tmp_path / "sg.nii"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert np.allclose(nib.load(str(tmp_path / "sg.nii")).affine, src.affine)


@pytest.fixture
def bundle2d(tmp_path):
    net = make_unet(2)
    return write_bundle(tmp_path / "bundle2d", {**UNET_DEF, "spatial_dims": 2}, net,
                        ["background", "a", "b", "c"], (32, 32))


@pytest.mark.parametrize("ext", [".tif", ".npy"])
def test_explain_2d_writes_tif_or_npy(bundle2d, tmp_path, rng, ext, capsys):
    x = rng.normal(size=(32, 40)).astype(np.float32)
    np.save(tmp_path / "img.npy", x)
    model = load_model(bundle2d, device="cpu")
    c, _ = present(model, x)
    out = tmp_path / f"attr{ext}"
    rc = main(["explain", str(tmp_path / "img.npy"), "--model", str(bundle2d), "--method", "seg_hires_grad_cam",
               "--target", str(c), "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    got = np.load(out) if ext == ".npy" else __import__("tifffile").imread(out)
    ref = explain(model, x, "seg_hires_grad_cam", target=c).attribution
    assert got.shape == x.shape and np.allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_methods_lists_all(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ALL + ["pdcr", "kernel_shap"]:
        assert name in out
    assert "--param n_samples=20" in out and "--param steps=20" in out and "--param layer=auto" in out
    assert "--param tau=0.02 [0..100] Dice points" in out
    assert main(["methods", "--json"]) == 0
    import json

    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert set(ALL) <= set(names)


@pytest.mark.parametrize("extra,match", [
    (["--target", "9"], "Unknown target class"),
    (["--target", "kidney"], "Unknown target class"),
    (["--method", "nope"], "Unknown method"),
    (["--param", "n_samples=3"], "no parameter"),
    (["--param", "oops"], "k=v"),
])
def test_bad_input_exits_2_with_one_line(bundle3d, nifti, tmp_path, capsys, extra, match):
    args = ["explain", str(nifti), "--model", str(bundle3d), "--method", "gradient",
            "--out", str(tmp_path / "o.nii.gz"), "--quiet"]
    # later options win in argparse
    rc = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("seg-explain: error:") and match in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_bad_roi_and_output(bundle3d, bundle2d, nifti, tmp_path, rng, capsys):
    np.save(tmp_path / "roi.npy", np.ones((4, 4), np.uint8))
    rc = main(["explain", str(nifti), "--model", str(bundle3d), "--method", "gradient", "--target", "0",
               "--roi", str(tmp_path / "roi.npy"), "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "shape" in err
    np.save(tmp_path / "img.npy", rng.normal(size=(32, 32)).astype(np.float32))
    rc = main(["explain", str(tmp_path / "img.npy"), "--model", str(bundle2d), "--method", "gradient",
               "--target", "0", "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and ".tif or .npy" in err


def test_per_region_table_and_report_on_stderr(tmp_path, capsys):
    """--table writes the method's per-region table (PdCR's blocks, ATE in Dice points); the
    multi-line report goes to stderr, not into the one-line summary."""
    import csv

    net = make_unet(2)
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, net, ["bg", "a", "b", "c"], (32, 32))
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    roi = np.zeros((32, 32), np.uint8)
    roi[12:20, 12:20] = 1
    np.save(tmp_path / "roi.npy", roi)
    rc = main(["explain", str(img), "--model", str(b), "--method", "pdcr", "--target", "0",
               "--roi", str(tmp_path / "roi.npy"), "--param", "bank=zero", "--param", "block_size=8",
               "--table", str(tmp_path / "blocks.csv"), "--out", str(tmp_path / "pdcr.npy"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "blocks.csv")))
    assert len(rows) == 16 and "ate_points" in rows[0]
    assert sum(r["status"] == "roi" for r in rows) == 4
    summary = next(line for line in err.splitlines() if line.startswith("[explain] pdcr"))
    assert "Histogram" not in summary and "Histogram" in err     # the report has its own lines
    rc = main(["explain", str(img), "--model", str(b), "--method", "gradient", "--target", "0",
               "--table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "g.npy")])
    assert rc == 2 and "makes no per-region table" in capsys.readouterr().err


def test_label_map_parameters_read_from_a_file_either_way(tmp_path, capsys):
    """Any label-map parameter is read from ``--param k=FILE`` (on the image grid); PdCR's
    ``--reference FILE`` is its spelled-out form: the same map as the Python API's array."""
    net = make_unet(2)
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, net, ["bg", "a", "b", "c"], (32, 32))
    x = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    np.save(tmp_path / "img.npy", x)
    roi = np.zeros((32, 32), np.uint8)
    roi[12:20, 12:20] = 1
    np.save(tmp_path / "roi.npy", roi)
    gt = np.zeros((32, 32), np.int64)
    gt[10:22, 8:20] = 1                          # a reference that differs from the prediction
    np.save(tmp_path / "gt.npy", gt)
    common = ["explain", str(tmp_path / "img.npy"), "--model", str(b), "--method", "pdcr", "--target", "1",
              "--roi", str(tmp_path / "roi.npy"), "--param", "bank=zero", "--param", "block_size=8", "--quiet"]
    assert main([*common, "--param", f"reference={tmp_path / 'gt.npy'}", "--out", str(tmp_path / "p.npy")]) == 0
    assert main([*common, "--reference", str(tmp_path / "gt.npy"), "--out", str(tmp_path / "r.npy")]) == 0
    model = load_model(b, device="cpu")
    ref = explain(model, x, "pdcr", target=1, roi=roi.astype(bool), bank="zero", block_size=8, reference=gt)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), np.load(tmp_path / "r.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ref.attribution, rtol=1e-6, atol=1e-6)
    assert ref.extras["negative_measurable"] is True
    capsys.readouterr()
