"""load_image / save_image: orientation, spacing and affine against independent readers."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from seg_explain import ImageLoadError, load_image, save_image


def _vol(shape=(12, 10, 8)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, 1), (-1, -1, 1), (1, -1, -1)])
def test_nifti_reoriented_to_lps_keeps_world_coordinates(tmp_path, flips):
    data = _vol()
    aff = np.diag([1.5 * flips[0], 2.0 * flips[1], 3.0 * flips[2], 1.0])
    aff[:3, 3] = [-10.0, 20.0, 5.0]
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    im = load_image(tmp_path / "v.nii.gz")
    assert im.spatial_dims == 3 and im.spacing == (3.0, 2.0, 1.5)
    assert im.data.shape == (8, 10, 12)
    # axes of the returned array point S (z), P (y), L (x) in RAS world space
    cols = im.affine[:3, :3]
    assert cols[2, 0] > 0 and cols[1, 1] < 0 and cols[0, 2] < 0
    inv = np.linalg.inv(aff)
    rng = np.random.default_rng(0)
    for _ in range(20):
        zyx = [rng.integers(0, n) for n in im.data.shape]
        world = im.affine @ np.array([*zyx, 1.0])
        ijk = np.rint(inv @ world)[:3].astype(int)
        assert im.data[tuple(zyx)] == data[tuple(ijk)]


def test_nifti_roundtrip_restores_original_orientation(tmp_path):
    data = _vol()
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])
    aff[:3, 3] = [3, 4, 5]
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    im = load_image(tmp_path / "v.nii.gz")
    out = save_image(tmp_path / "o.nii.gz", im.data * 2 - 1, like=im)
    back = nib.load(out)
    assert np.allclose(back.affine, aff)
    assert np.allclose(back.get_fdata(), data * 2 - 1)


def test_sitk_and_nibabel_agree_on_same_volume(tmp_path):
    """The same world volume written as MHA (SimpleITK) and NIfTI reads to the same array."""
    arr = np.random.default_rng(1).random((6, 7, 9)).astype(np.float32)  # (k, j, i)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 2.0))
    img.SetOrigin((1.0, -2.0, 3.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # j runs anterior
    sitk.WriteImage(img, str(tmp_path / "v.mha"))
    sitk.WriteImage(img, str(tmp_path / "v.nii.gz"))
    a, b = load_image(tmp_path / "v.mha"), load_image(tmp_path / "v.nii.gz")
    assert a.data.shape == b.data.shape == (6, 7, 9)
    assert a.spacing == pytest.approx((2.0, 0.75, 0.5)) and b.spacing == pytest.approx(a.spacing)
    assert np.allclose(a.data, b.data)
    assert np.allclose(a.affine, b.affine, atol=1e-5)
    # y was flipped to run posterior
    assert np.allclose(a.data, arr[:, ::-1, :])


def test_dicom_series_folder(tmp_path):
    arr = (np.random.default_rng(2).random((4, 16, 16)) * 1000).astype(np.int16)
    vol = sitk.GetImageFromArray(arr)
    vol.SetSpacing((0.8, 0.8, 2.5))
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(arr.shape[0]):
        s = vol[:, :, k]
        for tag, val in [("0008|0060", "MR"), ("0020|000e", series), ("0020|000d", series + ".0"),
                         ("0020|0032", f"0\\0\\{k * 2.5}"), ("0020|0013", str(k)),
                         ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "0.8\\0.8"),
                         ("0018|0050", "2.5")]:
            s.SetMetaData(tag, val)
        w.SetFileName(str(tmp_path / f"s{k:03d}.dcm"))
        w.Execute(s)
    im = load_image(tmp_path)
    assert im.data.shape == (4, 16, 16)
    assert im.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert np.array_equal(im.data, arr)


def test_png_tiff_2d_and_rgb(tmp_path):
    import imageio.v3 as iio
    import tifffile

    g = (np.arange(20 * 30) % 255).astype(np.uint8).reshape(20, 30)
    iio.imwrite(tmp_path / "g.png", g)
    im = load_image(tmp_path / "g.png")
    assert im.spatial_dims == 2 and np.array_equal(im.data, g)
    rgb = np.stack([g, 255 - g, g // 2], -1)
    iio.imwrite(tmp_path / "c.png", rgb)
    c = load_image(tmp_path / "c.png")
    assert c.data.shape == (3, 20, 30) and c.channels == 3
    tifffile.imwrite(tmp_path / "g.tif", g, resolution=(1 / 0.5, 1 / 0.25))
    t = load_image(tmp_path / "g.tif")
    assert t.spatial_dims == 2 and t.spacing == pytest.approx((0.25, 0.5))


def test_tiff_3d_spacing_roundtrip(tmp_path):
    im = load_image(_write_nifti(tmp_path))
    out = save_image(tmp_path / "a.tif", im.data.astype(np.float32), like=im)
    t = load_image(out)
    assert t.spatial_dims == 3 and np.allclose(t.data, im.data)
    assert t.spacing == pytest.approx(im.spacing)


def _write_nifti(tmp_path):
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(_vol(), aff), tmp_path / "v.nii.gz")
    return tmp_path / "v.nii.gz"


def test_bad_inputs_raise_one_clear_error(tmp_path):
    with pytest.raises(ImageLoadError, match="No such file"):
        load_image(tmp_path / "missing.nii.gz")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ImageLoadError, match="Cannot read corrupt.nii.gz"):
        load_image(tmp_path / "corrupt.nii.gz")
    (tmp_path / "x.docx").write_text("hi")
    with pytest.raises(ImageLoadError, match="Unsupported image type"):
        load_image(tmp_path / "x.docx")
    with pytest.raises(ImageLoadError, match="No DICOM series"):
        (tmp_path / "empty").mkdir()
        load_image(tmp_path / "empty")


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_mha_nrrd_written_with_the_images_geometry(tmp_path, ext):
    arr = np.random.default_rng(3).random((6, 7, 9)).astype(np.float32)   # (k, j, i)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 1.2, 2.5))
    img.SetOrigin((-4.0, 10.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / f"in{ext}"))
    li = load_image(tmp_path / f"in{ext}")
    out = save_image(tmp_path / f"out{ext}", li.data * 3.0, like=li)
    back = sitk.ReadImage(str(out))
    assert back.GetSpacing() == pytest.approx((0.8, 1.2, 2.5))
    assert back.GetOrigin() == pytest.approx((-4.0, 10.0, 3.0))
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), arr * 3.0, rtol=1e-6)
    again = load_image(out)
    np.testing.assert_allclose(again.affine, li.affine)
    np.testing.assert_allclose(again.data, li.data * 3, rtol=1e-6)
