"""The 3D Slicer module's Logic (slicer/SegExplain/SegExplain/SegExplainLib/logic.py), headless on
PyPI's slicer-core: MRML scenes, volume / label-map / segmentation / colour / table nodes and
Slicer's own NRRD/NIfTI storage nodes. Results must equal the core's on the same files.

Slicer's Qt widgets and application cannot run here; the Widget (SegExplain.py) is only
checked to compile and to keep Slicer-only imports out of the Logic.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

try:
    import slicer
    HAS_SLICER = hasattr(slicer, "vtkMRMLScene")
except ImportError:   # pragma: no cover - the test extra installs slicer-core
    HAS_SLICER = False
pytestmark = pytest.mark.skipif(not HAS_SLICER, reason="slicer-core is not installed (pip install slicer-core)")

from conftest import oblique_affine  # noqa: E402

from seg_explain import agg2exp, explain, load_image  # noqa: E402
from seg_explain.errors import InputMismatchError, ModelLoadError, SegExplainError  # noqa: E402
from seg_explain.explainers.registry import get_spec, legend  # noqa: E402
from seg_explain.paths import sample_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODULE_DIR = ROOT / "slicer" / "SegExplain" / "SegExplain"
NNU = Path(__file__).parent / "data" / "nnunet"
T3 = NNU / "Dataset901_TinyBrain" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
needs_dna = pytest.mark.skipif(importlib.util.find_spec("dynamic_network_architectures") is None,
                               reason="the [nnunet] extra (dynamic-network-architectures) is not installed")

if HAS_SLICER:
    sys.path.insert(0, str(MODULE_DIR))
    from SegExplainLib.logic import (  # noqa: E402
        SegExplainLogic,
        array_from_volume,
        ijk_to_ras,
        set_volume_array,
    )


# ------------------------------------------------------------------------- helpers --
@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def read_volume(scene, path, cls="vtkMRMLScalarVolumeNode", name=None):
    """A volume read by Slicer's own storage node (as File > Add Data does)."""
    sn = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    sn.SetFileName(str(path))
    node = scene.AddNewNodeByClass(cls, name or Path(path).name.split(".")[0])
    assert sn.ReadData(node), f"Slicer could not read {path}"
    return node


def write_volume(node, path):
    sn = node.CreateDefaultStorageNode()
    sn.SetFileName(str(path))
    assert sn.WriteData(node), f"Slicer could not write {path}"


def segmentation_from_labelmap(scene, labelmap_node, name="RoI segmentation"):
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(labelmap_node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, seg)
    return seg


def segment_ids(seg):
    s = seg.GetSegmentation()
    return [s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())]


def ijk_of(node) -> np.ndarray:
    """A volume node's voxels in (i, j, k) order."""
    a = array_from_volume(node)
    return a.transpose(2, 1, 0, 3) if a.ndim == 4 else a.transpose(2, 1, 0)


def assert_same_world(a, b) -> None:
    """Every voxel of ``b`` sits on a voxel of ``a`` with the same value (the two may store the
    same grid in different voxel orders)."""
    va, vb = ijk_of(a), ijk_of(b)
    assert sorted(va.shape) == sorted(vb.shape)
    ijk = np.indices(vb.shape).reshape(3, -1).astype(float)
    mb, ma = ijk_to_ras(b), ijk_to_ras(a)
    ras = mb[:3, :3] @ ijk + mb[:3, 3:4]
    in_a = np.linalg.solve(ma[:3, :3], ras - ma[:3, 3:4])
    idx = np.round(in_a).astype(int)
    assert np.abs(in_a - idx).max() < 1e-4
    assert all((idx[d] >= 0).all() and (idx[d] < va.shape[d]).all() for d in range(3))
    np.testing.assert_array_equal(va[tuple(idx)], vb.reshape(-1))


def restore(src, dst, codes, crop=None):
    """Write ``src``'s voxels (optionally cropped) stored in the axis order ``codes``."""
    im = nib.load(str(src))
    d = np.asarray(im.dataobj)
    aff = im.affine.copy()
    if crop is not None:
        d = d[crop]
        aff[:3, 3] = im.affine[:3, :3] @ [s.start for s in crop] + im.affine[:3, 3]
    x = ornt.ornt_transform(ornt.io_orientation(aff), ornt.axcodes2ornt(codes))
    nib.save(nib.Nifti1Image(ornt.apply_orientation(d, x), aff @ ornt.inv_ornt_aff(x, d.shape)), str(dst))
    return dst


@pytest.fixture(scope="module")
def logic():
    return SegExplainLogic(device="cpu")


@pytest.fixture(scope="module")
def brain_crop(tmp_path_factory):
    """A small piece of the 3D sample (T1 + the right temporal RoI), stored P-S-L (not the
    file's RAS): one window of the shipped 3D bundle, a non-trivial voxel order."""
    d = tmp_path_factory.mktemp("crop")
    box = (slice(46, 86), slice(30, 70), slice(14, 42))
    t1 = restore(sample_path("brain3d", "colin27_t1_2mm.nii.gz"), d / "colin_crop.nii.gz", ("P", "S", "L"), box)
    roi = restore(sample_path("brain3d", "colin27_roi_temporal_R.nii.gz"), d / "colin_crop_roi.nii.gz",
                  ("P", "S", "L"), box)
    return t1, roi


@pytest.fixture(scope="module")
def mni_lps(tmp_path_factory):
    """The nnU-Net fixture's held-out image stored L-P-S (nnU-Net sees another voxel order)."""
    d = tmp_path_factory.mktemp("mni")
    return restore(NNU / "heldout" / "mni152_6x4x4.nii.gz", d / "mni152_lps.nii.gz", ("L", "P", "S"))


# ----------------------------------------------------------------------- geometry --
@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_geometry_round_trips_through_slicer_storage(scene, logic, tmp_path, ext):
    """An oblique, anisotropic, flipped-storage volume, a label map and a 2-segment
    segmentation written and read by Slicer's storage nodes: IJK→RAS and every voxel's world
    position and value survive; the core's image of the node equals load_image of the file."""
    rng = np.random.default_rng(0)
    vals = rng.integers(-500, 1500, size=(11, 17, 13)).astype(np.int16)   # (k, j, i)
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    set_volume_array(vol, vals, oblique_affine())
    np.testing.assert_array_equal(ijk_to_ras(vol), oblique_affine())
    labels = np.zeros_like(vals, dtype=np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    labels[7:10, 10:15, 1:5] = 2
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    set_volume_array(lab, labels, oblique_affine())

    write_volume(vol, tmp_path / f"vol{ext}")
    write_volume(lab, tmp_path / f"lab{ext}")
    vol2 = read_volume(scene, tmp_path / f"vol{ext}")
    lab2 = read_volume(scene, tmp_path / f"lab{ext}", "vtkMRMLLabelMapVolumeNode")
    for a, b in ((vol, vol2), (lab, lab2)):
        assert_same_world(a, b)
        if ext == ".nii.gz":     # NIfTI: Slicer keeps the stored order and the matrix
            np.testing.assert_allclose(ijk_to_ras(b), ijk_to_ras(a), atol=1e-6)
    # the core sees the same image as from the file
    core = load_image(tmp_path / f"vol{ext}")
    mine = logic.image(vol2)
    np.testing.assert_array_equal(mine.data, core.data)
    np.testing.assert_allclose(mine.affine, core.affine, atol=1e-5)
    np.testing.assert_allclose(mine.spacing, core.spacing, atol=1e-6)
    # results go back on the node's own grid, voxel for voxel
    np.testing.assert_array_equal(mine.to_ijk(mine.data), ijk_of(vol2))

    # two segments through a .seg.nrrd file: the RoI of each equals the label map's
    seg = segmentation_from_labelmap(scene, lab)
    assert len(segment_ids(seg)) == 2
    sn = seg.CreateDefaultStorageNode()
    sn.SetFileName(str(tmp_path / "seg.seg.nrrd"))
    assert sn.WriteData(seg)
    seg2 = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read back")
    sn2 = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    sn2.SetFileName(str(tmp_path / "seg.seg.nrrd"))
    assert sn2.ReadData(seg2)
    for value, sid in zip((1, 2), segment_ids(seg2)):
        from_seg = logic.roi_mask(vol2, seg2, sid)
        from_lab = logic.roi_mask(vol2, lab2, value)
        np.testing.assert_array_equal(from_seg, from_lab)
        assert from_seg.sum() == (labels == value).sum()


# ------------------------------------------------------------------- explanations --
@pytest.mark.slow
def test_monai_bundle_explanation_equals_the_cores(scene, logic, brain_crop):
    """The shipped 3D bundle, gradient, the RoI as a segment: the attribution node holds the
    core's explanation of the same file on the input's IJK→RAS; the RoI from a segment, from a
    label map node and from the file are the same voxels."""
    t1, roi_file = brain_crop
    bundle = sample_path("models", "brain3d")
    vol = read_volume(scene, t1)
    lab = read_volume(scene, roi_file, "vtkMRMLLabelMapVolumeNode")
    seg = segmentation_from_labelmap(scene, lab)
    [sid] = segment_ids(seg)
    roi_core = load_image(roi_file).data > 0
    np.testing.assert_array_equal(logic.roi_mask(vol, seg, sid), roi_core)
    np.testing.assert_array_equal(logic.roi_mask(vol, lab), roi_core)

    node = logic.explain(vol, bundle, "gradient", "temporal_R", roi_segmentation=seg, segment_id=sid)
    img = load_image(t1)
    exp = explain(logic.load(bundle), img, "gradient", target="temporal_R", roi=roi_core)
    np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(vol))
    np.testing.assert_array_equal(ijk_of(node), img.to_ijk(exp.attribution))
    assert np.abs(exp.attribution).max() > 0
    assert node.GetAttribute("target") == "temporal_R" and node.GetAttribute("method") == "gradient"


@needs_dna
def test_nnunet_explanation_equals_the_cores_and_is_displayed(scene, logic, mni_lps):
    """nnU-Net reads the stored voxel order: the node path must carry it (an L-P-S stored file
    is another input to nnU-Net than its R-A-S original). Display: diverging colours centred
    on 0, window symmetric, attributes from the registry; a CAM (one-sided) gets a one-sided
    colour node."""
    vol = read_volume(scene, mni_lps)
    img = load_image(mni_lps)
    m = logic.load(T3)
    node = logic.explain(vol, str(T3), "gradient", "cerebrum_left")
    exp = explain(m, img, "gradient", target="cerebrum_left")
    a = ijk_of(node)
    np.testing.assert_array_equal(a, img.to_ijk(exp.attribution))
    np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(vol))
    # the same anatomy in the original storage order explains differently (nnU-Net's way)
    other = explain(m, load_image(NNU / "heldout" / "mni152_6x4x4.nii.gz"), "gradient", target="cerebrum_left")
    assert not np.array_equal(other.attribution, exp.attribution)

    spec = get_spec("gradient")
    disp = node.GetDisplayNode()
    peak = float(np.abs(a).max())
    assert disp.GetLevel() == 0.0 and disp.GetWindow() == pytest.approx(2 * peak)
    colours = disp.GetColorNode()
    assert colours is not None and colours.GetNumberOfColors() == 256
    rgb = np.array([colours.GetLookupTable().GetTableValue(i)[:3] for i in (0, 127, 128, 255)])
    assert rgb[1].min() > 0.9 and rgb[2].min() > 0.9              # white at 0
    assert rgb[3][0] > rgb[3][2] and rgb[0][2] > rgb[0][0]       # red = +, blue = −
    assert node.GetAttribute("unit") == spec.unit
    assert node.GetAttribute("legend") == legend(spec, "cerebrum_left", exp.params)
    assert json.loads(node.GetAttribute("params"))["seed"] == 0

    cam = logic.explain(vol, T3, "seg_grad_cam", "cerebrum_left")
    cam_exp = explain(m, img, "seg_grad_cam", target="cerebrum_left")
    np.testing.assert_allclose(ijk_of(cam), img.to_ijk(cam_exp.attribution), rtol=1e-6, atol=1e-7)
    cc = cam.GetDisplayNode().GetColorNode()
    assert cc.GetID() != colours.GetID() and "one-sided" in cc.GetName()
    assert min(cc.GetLookupTable().GetTableValue(10)[:3]) > 0.99                  # the empty (negative) half is white
    assert cam.GetAttribute("legend") == legend(get_spec("seg_grad_cam"), "cerebrum_left", cam_exp.params)


@needs_dna
def test_predict_gives_named_coloured_segments_equal_to_the_model(scene, logic, mni_lps):
    vol = read_volume(scene, mni_lps)
    m = logic.load(T3)
    seg = logic.predict(vol, T3)
    ref = load_image(mni_lps).to_ijk(m.predict(load_image(mni_lps)))
    segm = seg.GetSegmentation()
    names = {segm.GetNthSegment(i).GetName() for i in range(segm.GetNumberOfSegments())}
    assert names == {m.class_names[v] for v in np.unique(ref) if v}
    got = np.zeros_like(ref)
    for i in range(segm.GetNumberOfSegments()):
        s = segm.GetNthSegment(i)
        mask = logic.roi_mask(vol, seg, segm.GetNthSegmentID(i))
        got[load_image(mni_lps).to_ijk(mask).astype(bool)] = m.class_names.index(s.GetName())
        assert s.GetColor() != (0.5, 0.5, 0.5)
    np.testing.assert_array_equal(got, ref)
    assert len({segm.GetNthSegment(i).GetColor() for i in range(segm.GetNumberOfSegments())}) == len(names)


# ------------------------------------------------------------------------ Agg2Exp --
def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _column(table, name):
    arr = table.GetColumnByName(name)
    assert arr is not None, f"no column {name}"
    return [arr.GetValue(i) for i in range(arr.GetNumberOfValues())]


@needs_dna
def test_agg2exp_tables_equal_the_cores_csvs(scene, logic, tmp_path):
    files = [NNU / "heldout" / "mni152_6x4x4.nii.gz", NNU / "heldout" / "mni152_thick.nii.gz"]
    nodes = [read_volume(scene, f) for f in files]
    assert [n.GetName() for n in nodes] == ["mni152_6x4x4", "mni152_thick"]
    local, glob = logic.agg2exp(nodes, T3, "smoothgrad", params={"n_samples": 2})
    res = agg2exp(logic.load(T3), [str(f) for f in files], "smoothgrad", n_samples=2)
    res.to_csv(tmp_path / "local_importance.csv")
    res.global_to_csv(tmp_path / "global_importance.csv")
    for node, csv_name in ((local, "local_importance.csv"), (glob, "global_importance.csv")):
        rows = _read_csv(tmp_path / csv_name)
        table = node.GetTable()
        assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(rows[0])
        assert table.GetNumberOfRows() == len(rows)
        for col in rows[0]:
            got = _column(table, col)
            want = [r[col] for r in rows]
            if col in ("image", "explained_class", "region"):
                assert got == want
            else:
                w = np.array([float(v) if v != "" else np.nan for v in want])
                np.testing.assert_allclose(np.array(got, float), w, rtol=1e-12, equal_nan=True)
        assert node.GetAttribute("method") == "smoothgrad"
    assert np.isfinite(np.array(_column(glob.GetTable(), "mass"), float)).any()


# ---------------------------------------------------------------------- bad input --
def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert isinstance(exc, SegExplainError) and msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_inputs_give_one_clear_message(scene, logic, tmp_path):
    rng = np.random.default_rng(1)
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "vol")
    set_volume_array(vol, rng.normal(size=(8, 9, 10)).astype(np.float32), oblique_affine())
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[2:4, 2:5, 3:6] = 1
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lab")
    set_volume_array(lab, labels, oblique_affine())
    seg = segmentation_from_labelmap(scene, lab)
    empty_id = seg.GetSegmentation().AddEmptySegment("", "nothing here")

    with pytest.raises(InputMismatchError) as e:                      # empty segment
        logic.roi_mask(vol, seg, empty_id)
    assert "empty" in _one_line(e.value) and "nothing here" in str(e.value)
    with pytest.raises(InputMismatchError) as e:                      # two segments, none chosen
        logic.roi_mask(vol, seg)
    assert "choose one" in _one_line(e.value)
    with pytest.raises(InputMismatchError) as e:                      # label 3 absent
        logic.roi_mask(vol, lab, 3)
    assert "empty" in _one_line(e.value)

    shifted = oblique_affine()
    shifted[:3, 3] += 5.0
    off = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "elsewhere")
    set_volume_array(off, labels, shifted)
    small = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "smaller")
    set_volume_array(small, labels[:, :, :8], oblique_affine())
    for wrong in (off, small):                                         # wrong geometry
        with pytest.raises(InputMismatchError) as e:
            logic.explain(vol, "unused", "gradient", 1, roi_segmentation=wrong)
        assert "not on the grid" in _one_line(e.value)

    bad = tmp_path / "broken_bundle"
    (bad / "configs").mkdir(parents=True)
    (bad / "configs" / "metadata.json").write_text("{ not json")
    for model in (bad, tmp_path / "missing", ""):                       # a model that fails to load
        with pytest.raises(ModelLoadError) as e:
            logic.explain(vol, model, "gradient", 1)
        _one_line(e.value)

    with pytest.raises(InputMismatchError) as e:                      # a volume without voxels
        logic.explain(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hollow"), bad, "gradient", 1)
    assert "no image data" in _one_line(e.value)


# ------------------------------------------------------------------------ the module --
def test_logic_imports_without_qt_and_the_widget_compiles():
    code = (f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r}); import SegExplainLib.logic; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'PythonQt', 'slicer.app')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    import py_compile

    py_compile.compile(str(MODULE_DIR / "SegExplain.py"), doraise=True)
    cm = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    assert "EXTENSION_DEPENDS" in cm and "PyTorch" in cm
    assert "slicerMacroBuildScriptedModule" in (MODULE_DIR / "CMakeLists.txt").read_text()
    assert (MODULE_DIR / "Resources" / "Icons" / "SegExplain.png").is_file()


def test_colour_tables_follow_each_methods_sign_convention(scene):
    """Red is the sign the registry's legend calls red (PdCR: red = negative ATE), white is 0,
    and one colour node per kind is reused."""
    from SegExplainLib.logic import colour_node

    from seg_explain.explainers.registry import specs

    seen = set()
    for spec in specs():
        node = colour_node(scene, False, spec.red_is_negative)
        lut = node.GetLookupTable()
        lo, mid, hi = (np.array(lut.GetTableValue(i)[:3]) for i in (0, 128, 255))
        red_end, blue_end = (lo, hi) if spec.red_is_negative else (hi, lo)
        assert red_end[0] > 0.3 > red_end[2] and blue_end[2] > 0.3 > blue_end[0], spec.name
        assert mid.min() > 0.9
        seen.add(node.GetID())
        assert colour_node(scene, False, spec.red_is_negative).GetID() == node.GetID()
    assert len(seen) == len({s.red_is_negative for s in specs()}) == 2
