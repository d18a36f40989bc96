"""No silent choice and no blind allocation when reading an image.

- a header that promises more voxels than the memory budget is refused from the header,
  with the figure, the limit and the setting that raises it (NIfTI, MHA, NRRD, .npy);
- complex images are refused, or read as their magnitude when asked (and said so);
- a DICOM folder holding several series is refused with the list of them (UID, description,
  number of files) and ``series=UID`` / ``--series UID`` reads exactly that one.
"""
from __future__ import annotations

import gzip
import resource

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from seg_explain import ImageLoadError, load_image
from seg_explain.cli import main
from seg_explain.paths import sample_path

BUDGET = "SEG_EXPLAIN_MEMORY_LIMIT"
B2, B3 = str(sample_path("models", "brain2d")), str(sample_path("models", "brain3d"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_tiny_nifti_claiming_a_huge_volume_is_refused_from_its_header(tmp_path, monkeypatch):
    """A .nii.gz of about a hundred bytes whose header says 1024³ int16 (2 GiB)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 1024))
    hdr.set_data_dtype(np.int16)
    p = tmp_path / "bomb.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
    assert p.stat().st_size < 200
    monkeypatch.setenv(BUDGET, "1G")
    before = _rss_mb()
    with pytest.raises(ImageLoadError, match=r"bomb.nii.gz \(1024×1024×1024 voxels of int16 by its header\) would "
                                             r"need 4.3 GB of memory, more than the budget of 1.1 GB "
                                             r"\(SEG_EXPLAIN_MEMORY_LIMIT=1G\); set SEG_EXPLAIN_MEMORY_LIMIT"):
        load_image(p)
    assert _rss_mb() - before < 500


@pytest.mark.parametrize("ext", [".mha", ".nhdr"])
def test_itk_header_promising_gigabytes_is_refused_without_itk_text(tmp_path, monkeypatch, capsys, ext):
    """An MHA / detached NRRD header that promises 2 GiB (no voxel data at all): one line of
    ours, not SimpleITK's C++ exception."""
    if ext == ".mha":
        text = ("ObjectType = Image\nNDims = 3\nDimSize = 1024 1024 1024\nElementType = MET_SHORT\n"
                "ElementDataFile = LOCAL\n")
    else:
        text = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: raw\nendian: little\n"
                "data file: v.raw\n")
        (tmp_path / "v.raw").write_bytes(b"\0" * 16)
    p = tmp_path / f"v{ext}"
    p.write_text(text)
    monkeypatch.setenv(BUDGET, "512M")
    with pytest.raises(ImageLoadError, match=r"1024×1024×1024 voxels of int16 by its header\) would need 4.3 GB"):
        load_image(p)
    rc = main(["explain", str(p), "--model", B2, "--method", "gradient", "--out",
               str(tmp_path / "o.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "itk::" not in err and "ERROR" not in err, err


def test_npy_header_claiming_a_huge_array_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "big.npy"
    with open(p, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (4096, 4096, 256)})
    monkeypatch.setenv(BUDGET, "256M")
    with pytest.raises(ImageLoadError, match=r"4096×4096×256 voxels of float32.*17.2 GB.*SEG_EXPLAIN_MEMORY_LIMIT"):
        load_image(p)


def test_budget_setting_is_checked(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((4, 4), np.float32))
    monkeypatch.setenv(BUDGET, "lots")
    with pytest.raises(ImageLoadError, match="^SEG_EXPLAIN_MEMORY_LIMIT='lots' is not a size"):
        load_image(tmp_path / "a.npy")


# ------------------------------------------------------------------------ complex --
def _complex_volume():
    rng = np.random.default_rng(3)
    return (rng.random((6, 7, 5)) + 1j * rng.random((6, 7, 5))).astype(np.complex64)


def test_complex_nifti_is_refused_or_read_as_its_magnitude(tmp_path):
    c = _complex_volume()
    aff = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(c, aff), tmp_path / "c.nii.gz")
    nib.save(nib.Nifti1Image(np.abs(c).astype(np.float32), aff), tmp_path / "mag.nii.gz")
    with pytest.raises(ImageLoadError, match="c.nii.gz holds complex values.*magnitude"):
        load_image(tmp_path / "c.nii.gz")
    m = load_image(tmp_path / "c.nii.gz", magnitude=True)
    ref = load_image(tmp_path / "mag.nii.gz")      # the magnitude image, written independently
    assert m.meta["complex"] == "magnitude" and not np.iscomplexobj(m.data)
    np.testing.assert_allclose(m.data, ref.data, rtol=1e-6)
    np.testing.assert_allclose(m.affine, ref.affine)


@pytest.mark.parametrize("ext", [".npy", ".tif"])
def test_complex_npy_and_tiff_are_refused(tmp_path, ext):
    import tifffile

    c = _complex_volume()
    p = tmp_path / f"c{ext}"
    if ext == ".npy":
        np.save(p, c)
    else:
        tifffile.imwrite(p, c)
    with pytest.raises(ImageLoadError, match="holds complex values"):
        load_image(p)


def test_cli_refuses_a_complex_image_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "c.npy", _complex_volume()[0])
    rc = main(["explain", str(tmp_path / "c.npy"), "--model", B2, "--method", "gradient",
               "--out", str(tmp_path / "o.npy"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "holds complex values" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.npy").exists()


# -------------------------------------------------------------------------- DICOM --
def _write_series(folder, uid: str, desc: str, arr: np.ndarray, z0: float = 0.0) -> None:
    vol = sitk.GetImageFromArray(arr)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for k in range(arr.shape[0]):
        s = vol[:, :, k]
        for tag, val in [("0008|0060", "MR"), ("0020|000e", uid), ("0020|000d", "1.2.3.4"),
                         ("0008|103e", desc), ("0020|0032", f"0\\0\\{z0 + k * 2.5}"), ("0020|0013", str(k)),
                         ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "0.8\\0.8"), ("0018|0050", "2.5")]:
            s.SetMetaData(tag, val)
        w.SetFileName(str(folder / f"{uid[-4:]}_{k:03d}.dcm"))
        w.Execute(s)


@pytest.fixture
def two_series(tmp_path):
    rng = np.random.default_rng(5)
    t1 = (rng.random((14, 48, 48)) * 1000).astype(np.int16)   # 35 x 38 x 38 mm: enough for brain3d
    t2 = (rng.random((3, 16, 16)) * 1000).astype(np.int16)
    _write_series(tmp_path, "1.2.826.0.1.3680043.2.1125.11", "T1 axial", t1)
    _write_series(tmp_path, "1.2.826.0.1.3680043.2.1125.22", "T2 \x1b[31mred", t2, z0=100.0)
    return tmp_path, t1, t2


def test_dicom_folder_with_two_series_lists_them_and_asks(two_series):
    folder, _, _ = two_series
    with pytest.raises(ImageLoadError) as e:
        load_image(folder)
    msg = str(e.value)
    assert "holds 2 series" in msg and "--series" in msg
    assert "1.2.826.0.1.3680043.2.1125.11 (T1 axial, 14 files)" in msg
    assert "1.2.826.0.1.3680043.2.1125.22 (T2 \\x1b[31mred, 3 files)" in msg   # escape sequence escaped
    assert "\x1b" not in msg and "\n" not in msg


def test_series_option_reads_exactly_that_series(two_series):
    folder, t1, t2 = two_series
    a = load_image(folder, series="1.2.826.0.1.3680043.2.1125.22")
    b = load_image(folder, series="1.2.826.0.1.3680043.2.1125.11")
    assert np.array_equal(a.data, t2) and np.array_equal(b.data, t1)
    with pytest.raises(ImageLoadError, match="has no series '9.9'.*T1 axial"):
        load_image(folder, series="9.9")


def test_cli_series_option(two_series, capsys):
    folder, _, _ = two_series
    out = folder / "out.nii.gz"
    rc = main(["explain", str(folder), "--model", B3, "--method", "gradient", "--out", str(out),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds 2 series" in err
    rc = main(["explain", str(folder), "--series", "1.2.826.0.1.3680043.2.1125.11", "--model", B3,
               "--method", "gradient", "--target", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert load_image(out).data.shape == (14, 48, 48)
