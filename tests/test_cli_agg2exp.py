"""``seg-explain agg2exp`` and ``seg-explain evaluate`` command lines."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from seg_explain.cli import main


def write_nifti(path, arr, spacing=2.0):
    nib.save(nib.Nifti1Image(np.asarray(arr), np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return str(path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = [write_nifti(tmp_path / f"case{i}.nii.gz", rng.random((16, 16, 16)).astype(np.float32) * 100)
             for i in range(5)]
    for i in (0, 1, 2, 3, 4):
        m = np.zeros((16, 16, 16), np.uint8)
        m[i:i + 6, 4:10, 4:10] = 1
        write_nifti(tmp_path / f"case{i}_lesion.nii.gz", m)
        write_nifti(tmp_path / f"case{i}_gt.nii.gz", rng.integers(0, 4, (16, 16, 16)).astype(np.uint8))
    return paths


def test_agg2exp_writes_everything_and_skips_a_bad_file(bundle3d, images, tmp_path, capsys):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "out"
    code = main(["agg2exp", *images[:2], str(bad), *images[2:], "--model", str(bundle3d),
                 "--method", "gradient", "--out", str(out),
                 "--extra-roi", f"lesion={tmp_path}/{{stem}}_lesion.nii.gz",
                 "--ground-truth", f"{tmp_path}/{{stem}}_gt.nii.gz"])
    err = capsys.readouterr().err
    assert code == 3                                            # tables written, one image failed
    assert "failed: corrupt" in err and "warning: 1 of 6 image(s) failed" in err
    assert "[agg2exp]" in err                                   # progress on stderr
    fails = list(csv.DictReader(open(out / "failures.csv")))
    assert [r["image"] for r in fails] == ["corrupt"] and fails[0]["error"]
    for f in ("local_importance.csv", "global_importance.csv", "outliers.csv", "heatmap.png", "graph.png"):
        assert (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "local_importance.csv")))
    assert list(rows[0]) == ["image", "explained_class", "region", "mass", "mass_pos", "mass_neg"]
    assert {r["image"] for r in rows} == {f"case{i}" for i in range(5)}
    assert {r["region"] for r in rows} == {"background", "a", "b", "c", "lesion"}
    # rows sum to 1 over the class regions for every class the model predicts in the image,
    # and are empty (NaN) for the classes it does not
    from seg_explain import load_image, load_model

    model = load_model(bundle3d)
    for im in ("case0", "case3"):
        present = {model.class_names[int(k)] for k in np.unique(model.predict(load_image(tmp_path / f"{im}.nii.gz")))}
        assert present
        for cls in ("background", "a", "b", "c"):
            v = [float(r["mass"]) for r in rows if r["image"] == im and r["explained_class"] == cls
                 and r["region"] != "lesion" and r["mass"] != ""]
            assert (sum(v) == pytest.approx(1.0, abs=1e-6)) if cls in present else v == [], (im, cls, v)
    g = list(csv.DictReader(open(out / "global_importance.csv")))
    assert len(g) == 4 * 5 and "mass_sd" in g[0]
    o = list(csv.DictReader(open(out / "outliers.csv")))
    assert {r["image"] for r in o} == {f"case{i}" for i in range(5)}
    assert all(0 <= float(r["dice"]) <= 1 for r in o)
    assert "Spearman" in err


def test_agg2exp_no_outliers_below_five_images_and_all_bad(bundle3d, images, tmp_path, capsys):
    out = tmp_path / "few"
    assert main(["agg2exp", *images[:2], "--model", str(bundle3d), "--method", "gradient",
                 "--out", str(out), "--quiet"]) == 0
    assert not (out / "outliers.csv").exists() and (out / "heatmap.png").exists()
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(b"nope")
    capsys.readouterr()
    code = main(["agg2exp", str(bad), str(tmp_path / "missing.nii.gz"), "--model", str(bundle3d),
                 "--method", "gradient", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 2 images could be explained" in err
    code = main(["agg2exp", images[0], "--model", str(bundle3d), "--method", "gradient",
                 "--out", str(tmp_path / "p"), "--param", "bogus=1"])
    assert code == 2 and "bogus" in capsys.readouterr().err


def test_evaluate_writes_table(bundle3d, images, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["evaluate", images[0], "--model", str(bundle3d), "--method", "gradient",
                 "--method", "kernel_shap:features=semantic:n_samples=16", "--out", str(out),
                 "--n-faithfulness", "10", "--n-sensitivity", "1", "--classes", "0,1"])
    cap = capsys.readouterr()
    assert code == 0
    assert "faithfulness" in cap.out and "kernel_shap:features=semantic:n_samples=16" in cap.out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["method"] for r in rows} == {"gradient", "kernel_shap:features=semantic:n_samples=16"}
    assert set(rows[0]) >= {"image", "class", "faithfulness", "sensitivity", "complexity", "seconds"}
    summ = list(csv.DictReader(open(out / "metrics_summary.csv")))
    assert len(summ) == 2 and "faithfulness_mean" in summ[0]
