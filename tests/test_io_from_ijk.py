"""LoadedImage.from_ijk / to_ijk / from_array: images built from memory (3D Slicer, notebooks)
are exactly what load_image gives for the same file, and nnU-Net models, which read the stored
voxel order, predict the same from both."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import oblique_affine

from seg_explain import LoadedImage, load_image
from seg_explain.errors import InputMismatchError

HERE = Path(__file__).parent
ROOT = HERE.parent
SAMPLES = sorted((ROOT / "sample_data").glob("**/*.nii.gz")) + sorted((HERE / "data" / "nnunet" / "heldout")
                                                                      .glob("*.nii.gz"))
T3 = HERE / "data" / "nnunet" / "Dataset901_TinyBrain" / "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture
def oblique_nifti(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    data = rng.integers(-100, 1000, size=(19, 23, 11)).astype(np.int16)
    p = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine()), str(p))
    return p


def _files(oblique):
    return SAMPLES + [oblique]


def assert_same_image(a: LoadedImage, b: LoadedImage) -> None:
    assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
    np.testing.assert_array_equal(a.data, b.data)
    assert a.data.flags.c_contiguous and b.data.flags.c_contiguous
    assert a.spacing == b.spacing
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.spatial_dims == b.spatial_dims == 3
    assert a.meta["format"] == b.meta["format"] == "nifti"
    np.testing.assert_array_equal(a.meta["xfm"], b.meta["xfm"])
    assert tuple(a.meta["src_shape"]) == tuple(b.meta["src_shape"])
    np.testing.assert_array_equal(a.meta["src_affine"], b.meta["src_affine"])
    assert tuple(a.meta["header"].get_data_shape()) == tuple(b.meta["header"].get_data_shape())


def test_sample_files_are_on_the_list():
    assert len(SAMPLES) >= 8, SAMPLES   # the shipped volumes (several stored orientations)
    codes = {nib.aff2axcodes(nib.load(str(p)).affine) for p in SAMPLES}
    assert len(codes) >= 2, codes


def test_from_ijk_equals_load_image_field_by_field(oblique_nifti):
    for p in _files(oblique_nifti):
        nii = nib.load(str(p))
        loaded = load_image(p)
        built = LoadedImage.from_ijk(np.asanyarray(nii.dataobj), nii.affine)
        assert_same_image(built, loaded)
        assert built.path is None and loaded.path == str(p)


def test_oblique_geometry_is_the_files(oblique_nifti):
    """Independent check: every voxel of the LPS array sits where the file's affine puts it."""
    nii = nib.load(str(oblique_nifti))
    img = LoadedImage.from_ijk(np.asanyarray(nii.dataobj), nii.affine)
    raw = np.asarray(nii.dataobj)
    rng = np.random.default_rng(0)
    for _ in range(50):
        zyx = tuple(int(rng.integers(0, n)) for n in img.data.shape)
        ras = img.affine @ np.array([*zyx, 1.0])
        ijk = np.linalg.solve(nii.affine, ras)[:3]
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-9)
        assert img.data[zyx] == raw[tuple(int(round(v)) for v in ijk)]
    np.testing.assert_allclose(sorted(img.spacing), sorted((1.5, 0.8, 3.0)), rtol=1e-6)   # sform is float32


def test_to_ijk_inverts_from_ijk(oblique_nifti):
    for p in _files(oblique_nifti):
        raw = np.asanyarray(nib.load(str(p)).dataobj)
        img = load_image(p)
        np.testing.assert_array_equal(img.to_ijk(img.data), raw)
        two = np.stack([img.data, img.data + 1])            # channel-first maps too
        back = img.to_ijk(two)
        np.testing.assert_array_equal(back[..., 1], raw + 1)


def test_trailing_channel_axis(oblique_nifti):
    raw = np.asanyarray(nib.load(str(oblique_nifti)).dataobj)
    four = np.stack([raw, raw * 2], axis=-1)
    img = LoadedImage.from_ijk(four, oblique_affine())
    one = LoadedImage.from_ijk(raw, oblique_affine())
    assert img.channels == 2 and img.spatial_shape == one.spatial_shape
    np.testing.assert_array_equal(img.data[1], one.data * 2)


def test_from_array_matches_an_axis_aligned_file(tmp_path):
    """from_array's geometry is an ITK file's with the same spacing (LPS, origin 0)."""
    import SimpleITK as sitk

    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing((0.5, 2.0, 3.5))       # x, y, z
    sitk.WriteImage(im, str(tmp_path / "a.mha"))
    ref = load_image(tmp_path / "a.mha")
    built = LoadedImage.from_array(arr, (3.5, 2.0, 0.5))
    np.testing.assert_array_equal(built.data, ref.data)
    assert built.spacing == ref.spacing
    np.testing.assert_allclose(built.affine, ref.affine, atol=1e-12)
    flat = LoadedImage.from_array(np.zeros((3, 7, 8)), spatial_dims=2)   # channel-first 2D
    assert flat.channels == 3 and flat.spatial_shape == (7, 8)


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.zeros((2, 3, 4, 5, 6))])
def test_bad_arrays_are_refused_clearly(bad):
    with pytest.raises(InputMismatchError, match="from_ijk"):
        LoadedImage.from_ijk(bad, np.eye(4))


@pytest.mark.parametrize("aff", [np.eye(3), np.diag([1.0, 0.0, 1.0, 1.0]), np.full((4, 4), np.nan)])
def test_bad_matrices_are_refused_clearly(aff):
    with pytest.raises(InputMismatchError, match="IJK"):
        LoadedImage.from_ijk(np.zeros((3, 4, 5)), aff)


def test_from_array_refuses_bad_spacing():
    with pytest.raises(InputMismatchError, match="spacing"):
        LoadedImage.from_array(np.zeros((3, 4, 5)), (1.0, -2.0, 1.0))


@pytest.mark.skipif(__import__("importlib").util.find_spec("dynamic_network_architectures") is None,
                    reason="the [nnunet] extra (dynamic-network-architectures) is not installed")
def test_nnunet_predicts_the_same_from_memory_and_from_file(oblique_nifti):
    """nnU-Net sees voxels in stored order: the image from memory must carry it. The same
    LPS array without it (from_array) is another input for the file stored as LSA."""
    from seg_explain import load_model

    m = load_model(T3, device="cpu")
    m.mirror = False
    kmeans = ROOT / "sample_data" / "heldout" / "KmeansTest_T1UCharRaw.nii.gz"
    for p in (kmeans, oblique_nifti):
        nii = nib.load(str(p))
        built = LoadedImage.from_ijk(np.asanyarray(nii.dataobj), nii.affine)
        np.testing.assert_array_equal(m.predict(built), m.predict(load_image(p)))
        np.testing.assert_array_equal(m.logits(built), m.logits(load_image(p)))
    nii = nib.load(str(kmeans))
    built = LoadedImage.from_ijk(np.asanyarray(nii.dataobj), nii.affine)
    no_order = LoadedImage.from_array(built.data, built.spacing)
    assert not np.array_equal(m.logits(no_order), m.logits(built))


def test_masks_of_any_dtype_build_and_save(tmp_path, oblique_nifti):
    """A boolean RoI (no NIfTI dtype) builds too, and saves back on the stored grid."""
    from seg_explain import save_image

    raw = np.asanyarray(nib.load(str(oblique_nifti)).dataobj)
    mask = raw > 500
    img = LoadedImage.from_ijk(mask, oblique_affine())
    assert img.data.dtype == bool and img.data.sum() == mask.sum()
    save_image(tmp_path / "m.nii.gz", img.data, like=img)
    back = nib.load(str(tmp_path / "m.nii.gz"))
    np.testing.assert_array_equal(np.asarray(back.dataobj) != 0, mask)
    np.testing.assert_allclose(back.affine, oblique_affine(), atol=1e-5)
