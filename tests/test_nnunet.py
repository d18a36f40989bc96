"""nnU-Net v2 model folders: loading, exact agreement with nnU-Net's own inference, explainers,
GUI/CLI, and attacks.

The fixture ``tests/data/nnunet/`` was made by nnU-Net's own code
(``scripts/build_nnunet_fixture.py``: planner, preprocessor, ``nnUNetTrainer`` on the CPU) and
holds what ``nnUNetPredictor`` (mirroring off) gave on held-out images, so the agreement tests
run without nnunetv2. Where nnunetv2 is importable, the live tests also run nnU-Net itself.

nnU-Net 2.8 accumulates sliding-window sums in float16 ("stock"); the fixture also holds the
same predictor with those two buffers widened to float32 ("fp32"). The model agrees with the
fp32 predictor to float32 rounding, and with the stock one bit for bit when asked to
accumulate in float16 as well.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Payload

from seg_explain import explain, load_image, load_model, methods
from seg_explain.errors import InputMismatchError, ModelLoadError, UnsafeConfigError

HERE = Path(__file__).parent
FIX = HERE / "data" / "nnunet"
DS = FIX / "Dataset901_TinyBrain"
T3 = DS / "nnUNetTrainer__nnUNetPlans__3d_fullres"
T2 = DS / "nnUNetTrainer__nnUNetPlans__2d"
KMEANS = HERE.parent / "sample_data" / "heldout" / "KmeansTest_T1UCharRaw.nii.gz"
CASES = {  # reference key -> (trainer folder, image)
    "mni152_6x4x4": (T3, FIX / "heldout" / "mni152_6x4x4.nii.gz"),   # at the configuration's spacing
    "kmeans_2x3x2": (T3, KMEANS),                                      # other orientation, resampled
    "mni152_thick": (T3, FIX / "heldout" / "mni152_thick.nii.gz"),    # 8 mm slices: "separate z"
    "mni152_sag_4x4": (T2, FIX / "heldout" / "mni152_sag_4x4.tif"),   # 2D at its spacing
    "mni152_sag_2x2": (T2, FIX / "heldout" / "mni152_sag_2x2.tif"),   # 2D, resampled
}
CLASSES = ["background", "cerebrum_left", "cerebrum_right", "cerebellum_brainstem"]
REL_TOL = 1e-4

needs_dna = pytest.mark.skipif(
    __import__("importlib").util.find_spec("dynamic_network_architectures") is None,
    reason="the [nnunet] extra (dynamic-network-architectures) is not installed")
try:
    import nnunetv2  # noqa: F401
    HAS_NNUNET = True
except ImportError:  # the live comparisons need nnU-Net itself (not a dependency)
    HAS_NNUNET = False
live = pytest.mark.skipif(not HAS_NNUNET, reason="nnunetv2 is not installed (the stored reference is checked instead)")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIX / "reference.npz") as z:
        return {k: z[k] for k in z.files}


_MODELS: dict = {}


def model(folder: Path, **kw):
    """Load once per test session (loading is ~0.1 s, but tests change attributes: reset)."""
    key = (str(folder), tuple(sorted(kw.items())))
    if key not in _MODELS:
        if kw:
            from seg_explain.models.nnunet import load_nnunet

            _MODELS[key] = load_nnunet(folder, device="cpu", **kw)
        else:
            _MODELS[key] = load_model(folder, device="cpu")
    m = _MODELS[key]
    m.mirror = kw.get("mirror", False)
    m.accumulate_dtype = torch.float32
    return m


def fp32_labels(ref, case) -> np.ndarray:
    """The label map of nnUNetPredictor with float32 buffers (stored as differences from the
    stock one)."""
    out = ref[f"{case}/pred_image"].copy()
    out.reshape(-1)[ref[f"{case}/fp32_diff_idx"]] = ref[f"{case}/fp32_diff_val"]
    return out


def rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - theirs).max() / np.abs(theirs).max())


# ------------------------------------------------------------------ loading --
@needs_dna
def test_folder_layouts_classes_and_folds(tmp_path):
    from seg_explain.models.nnunet import NnUNetModel, is_nnunet_folder

    m3 = model(T3)
    assert isinstance(m3, NnUNetModel) and m3.spatial_dims == 3 and m3.in_channels == 1
    assert m3.class_names == CLASSES            # dataset.json labels, by class index
    assert m3.patch_size == (32, 32, 32) and m3.folds == ["0"] and m3.mirror is False
    assert m3.configuration == "3d_fullres" and m3.trainer == "nnUNetTrainer"
    assert m3.meta["nnunet"]["transpose_forward"] == [2, 0, 1]
    assert m3.meta["nnunet"]["mirror_axes"] == [0, 1, 2]
    m2 = model(T2)
    assert m2.spatial_dims == 2 and m2.folds == ["0", "1"] and m2.patch_size == (32, 32)
    # a fold folder: that fold only
    m20 = load_model(T2 / "fold_1", device="cpu")
    assert m20.folds == ["1"] and len(m20.network.folds) == 1
    # the Dataset folder: ambiguous with two trainer folders, fine with one
    assert is_nnunet_folder(DS) and is_nnunet_folder(T3) and is_nnunet_folder(T2 / "fold_0")
    with pytest.raises(ModelLoadError, match="2 nnU-Net trainer folders; pick one"):
        load_model(DS, device="cpu")
    one = tmp_path / "Dataset901_TinyBrain"
    shutil.copytree(T3, one / T3.name)
    assert load_model(one, device="cpu").configuration == "3d_fullres"
    # checkpoint_best.pth is used where there is no checkpoint_final.pth
    best = tmp_path / "best" / T2.name
    shutil.copytree(T2, best)
    (best / "fold_1" / "checkpoint_final.pth").rename(best / "fold_1" / "checkpoint_best.pth")
    mb = load_model(best, device="cpu")
    assert mb.checkpoints == ["fold_0/checkpoint_final.pth", "fold_1/checkpoint_best.pth"]


# ------------------------------------------- agreement with nnU-Net's inference --
@needs_dna
@pytest.mark.parametrize("case", list(CASES))
def test_preprocessing_is_nnunets(case, ref):
    """transpose, crop, normalisation and resampling give nnU-Net's network input."""
    folder, path = CASES[case]
    x = model(folder).prepare(load_image(path)).x.numpy()
    want = tuple(int(v) for v in ref[f"{case}/x_shape"])
    assert x.shape == (want if len(want) == x.ndim else (want[0],) + want[2:])
    np.testing.assert_allclose(x.reshape(-1)[ref[f"{case}/x_idx"]], ref[f"{case}/x_val"], rtol=1e-6, atol=1e-6)
    assert x.astype(np.float64).sum() == pytest.approx(float(ref[f"{case}/x_sum"]), rel=1e-6, abs=1e-3)


@needs_dna
@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_labels_equal_nnunet_predictor(case, ref):
    """Model-grid logits within 1e-4 (relative to the largest logit) of nnUNetPredictor's,
    the same argmax, and on the image grid the very label map nnU-Net writes."""
    folder, path = CASES[case]
    m = model(folder)
    img = load_image(path)
    lg = m.logits_tensor(m.prepare(img).x).numpy()
    assert lg.shape == tuple(int(v) for v in ref[f"{case}/logits_shape"])[:1] + lg.shape[1:]
    sample = lg.reshape(-1)[ref[f"{case}/idx"]]
    assert rel_err(sample, ref[f"{case}/wide_val"]) <= REL_TOL
    sums = lg.reshape(lg.shape[0], -1).astype(np.float64).sum(1)
    np.testing.assert_allclose(sums, ref[f"{case}/wide_sum"], rtol=REL_TOL, atol=REL_TOL * lg.size ** 0.5)
    np.testing.assert_array_equal(lg.argmax(0), ref[f"{case}/pred_model"])
    np.testing.assert_array_equal(m.predict(img), fp32_labels(ref, case))


@needs_dna
@pytest.mark.parametrize("case", ["mni152_6x4x4", "kmeans_2x3x2", "mni152_sag_2x2"])
def test_float16_accumulation_reproduces_stock_nnunet(case, ref):
    """With accumulate_dtype=float16 the model reproduces nnU-Net 2.8's float16 buffers: the
    stock logits (including their float16 rounding) and the stock label map nnU-Net writes."""
    folder, path = CASES[case]
    m = model(folder)
    img = load_image(path)
    m.accumulate_dtype = torch.float16
    try:
        lg = m.logits_tensor(m.prepare(img).x).numpy()
        pred = m.predict(img)
    finally:
        m.accumulate_dtype = torch.float32
    stock = ref[f"{case}/stock_val"]
    sample = lg.reshape(-1)[ref[f"{case}/idx"]]
    # equal up to one float16 step (a network output may differ in its last float32 bit)
    np.testing.assert_allclose(sample, stock, rtol=2 ** -10, atol=2 ** -14)
    np.testing.assert_array_equal(pred, ref[f"{case}/pred_image"])


@pytest.mark.slow
@needs_dna
def test_mirroring_matches_nnunet_and_is_off_by_default(ref):
    m = model(T3)
    img = load_image(CASES["mni152_6x4x4"][1])
    x = m.prepare(img).x
    plain = m.logits_tensor(x).numpy()
    m.mirror = True
    try:
        mirrored = m.logits_tensor(x).numpy()
    finally:
        m.mirror = False
    key = "mirror_mni152_6x4x4"
    assert rel_err(mirrored.reshape(-1)[ref[f"{key}/idx"]], ref[f"{key}/wide_val"]) <= REL_TOL
    assert np.abs(mirrored - plain).max() > 1e-3          # mirroring does change the logits
    assert not model(T3).mirror


@needs_dna
def test_arrays_are_nnunets_array_and_tiling_hooks_agree():
    """An ndarray is taken as nnU-Net's own (SimpleITK-order) array at the configuration's
    spacing; tiling()/importance_map() describe exactly what logits_tensor blends."""
    import SimpleITK as sitk

    m = model(T3)
    path = CASES["mni152_6x4x4"][1]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    x_file = m.prepare(load_image(path)).x
    np.testing.assert_array_equal(m.prepare(arr).x.numpy(), x_file.numpy())
    tiling, w = m.tiling(x_file.shape[1:]), m.importance_map()
    assert len(tiling) == 4 and tiling.patch == (32, 32, 32)
    import torch.nn.functional as F

    flat = [v for lo_hi in reversed(tiling.pads) for v in lo_hi]
    xp = F.pad(x_file, flat)
    acc = torch.zeros((4,) + tiling.padded_shape)
    norm = torch.zeros(tiling.padded_shape)
    with torch.inference_mode():
        for win in tiling.windows:
            acc[(slice(None),) + win] += m.forward(xp[(slice(None),) + win][None])[0] * w
            norm[win] += w
    crop = (slice(None),) + tuple(slice(lo, lo + n) for (lo, _), n in zip(tiling.pads, tiling.shape))
    np.testing.assert_allclose((acc / norm)[crop].numpy(), m.logits_tensor(x_file).numpy(), atol=1e-5)


@needs_dna
def test_volume_slice_is_the_plane_nnunet_slices():
    """A 2D configuration's slice of a volume: nnU-Net's own (SimpleITK-order, transposed)
    array at that index, with the in-plane spacing."""
    import SimpleITK as sitk

    m = model(T2)
    path = CASES["kmeans_2x3x2"][1]
    itk = sitk.ReadImage(str(path))
    tf = m.transpose_forward
    t = sitk.GetArrayFromImage(itk).transpose(tf)
    sp = [itk.GetSpacing()[::-1][a] for a in tf]
    img = load_image(path)
    assert m.n_slices(img) == t.shape[0]
    s = m.volume_slice(img, 40)
    np.testing.assert_array_equal(s.data, t[40])
    assert s.spacing == (sp[1], sp[2]) and s.spatial_dims == 2
    labels = m.predict(s)
    # and back onto the volume's (project) grid: exactly that plane of the image
    plane = m.embed_slice(np.ones(labels.shape, bool), img, 40, fill=False)
    assert plane.shape == img.data.shape and plane.sum() == labels.size
    np.testing.assert_array_equal(m.embed_slice(s.data, img, 40)[plane], img.data[plane])


@needs_dna
@pytest.mark.parametrize("case", ["kmeans_2x3x2", "mni152_thick", "mni152_sag_2x2"])
def test_resampling_is_scipys_and_its_adjoint_exact(case):
    """The data resampling is the tensor product of per-axis scipy operators (checked against
    scipy itself), and adjoint_to_image is the exact adjoint of its linear part."""
    from scipy import ndimage as ndi

    folder, path = CASES[case]
    prep = model(folder).prepare(load_image(path))
    g, rs = prep.grid, prep.grid.data_rs
    assert not rs.identity
    rng = np.random.default_rng(0)
    d = rng.standard_normal((1,) + rs.in_shape)
    # scipy without the final clip: n-D zoom, or per-slice zoom + nearest along the thick axis
    if rs.axis is None:
        want = ndi.zoom(d[0], np.divide(rs.out_shape, rs.in_shape), order=rs.order, mode="nearest",
                        grid_mode=True)
    else:
        a = rs.axis
        plane = [s for i, s in enumerate(rs.out_shape) if i != a]
        slices = [ndi.zoom(np.take(d[0], k, axis=a), np.divide(plane, [s for i, s in enumerate(rs.in_shape) if i != a]),
                           order=rs.order, mode="nearest", grid_mode=True) for k in range(rs.in_shape[a])]
        here = np.stack(slices, axis=a)
        want = np.take(here, rs._z_index(), axis=a) if rs.in_shape[a] != rs.out_shape[a] else here
    np.testing.assert_allclose(rs.linear(d)[0], want, atol=1e-10)
    # <A X, Y> = <X, A* Y> through reorientation, transpose, crop and resampling
    X = rng.standard_normal(prep.image_shape)
    Y = rng.standard_normal(prep.shape)
    AX = g._model_out(g._each(rs, g._crop(g._to_t(X)), "linear"))
    lhs = float((AX * Y).sum())
    rhs = float((X * g.adjoint_to_image(Y).astype(np.float64)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-5)


@needs_dna
def test_old_format_plans_load_the_same_network(tmp_path):
    """plans.json written by nnU-Net < 2.4 (UNet_class_name & co., e.g. TotalSegmentator's)."""
    folder = tmp_path / T3.name
    shutil.copytree(T3, folder)
    plans = json.loads((folder / "plans.json").read_text())
    c = plans["configurations"]["3d_fullres"]
    ak = c.pop("architecture")["arch_kwargs"]
    c.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": ak["features_per_stage"][0],
              "unet_max_num_features": ak["features_per_stage"][-1],
              "n_conv_per_stage_encoder": ak["n_conv_per_stage"],
              "n_conv_per_stage_decoder": ak["n_conv_per_stage_decoder"],
              "num_pool_per_axis": [2, 2, 2], "pool_op_kernel_sizes": ak["strides"],
              "conv_kernel_sizes": ak["kernel_sizes"]})
    (folder / "plans.json").write_text(json.dumps(plans))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        np.testing.assert_array_equal(load_model(folder, device="cpu").forward(x).numpy(),
                                      model(T3).forward(x).numpy())


@needs_dna
def test_orientation_follows_the_file_or_is_fixed(tmp_path):
    """nnU-Net feeds the file's voxel array as stored; the same anatomy stored in another
    orientation is another input (as in nnU-Net). orientation="RAS" reorients first (as
    TotalSegmentator does), so then both files give the same prediction."""
    import nibabel as nib

    src = CASES["mni152_6x4x4"][1]
    im = nib.load(str(src))
    lps = nib.orientations.ornt_transform(nib.io_orientation(im.affine), nib.orientations.axcodes2ornt("LPS"))
    data = nib.orientations.apply_orientation(np.asarray(im.dataobj), lps)
    aff = im.affine @ nib.orientations.inv_ornt_aff(lps, im.shape)
    other = tmp_path / "mni_lps.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(other))
    a, b = load_image(src), load_image(other)
    np.testing.assert_array_equal(a.data, b.data)        # same anatomy on the project grid
    xa, xb = model(T3).prepare(a).x, model(T3).prepare(b).x
    assert xa.shape != xb.shape or not torch.equal(xa, xb)
    ras = model(T3, orientation="RAS")
    np.testing.assert_array_equal(ras.prepare(a).x.numpy(), ras.prepare(b).x.numpy())
    np.testing.assert_array_equal(ras.predict(a), ras.predict(b))


# ------------------------------------------------------------- explainers --
SMALL = {"gradient": {}, "smoothgrad": {"n_samples": 2}, "integrated_gradients": {"steps": 2},
         "seg_grad_cam": {}, "seg_hires_grad_cam": {},
         "kernel_shap": {"n_samples": 24}, "pdcr": {"bank": "zero", "n_screen": 1, "n_draws": 2, "tau": 0.0}}
PDCR_BLOCK = {3: 8, 2: 4}


@needs_dna
@pytest.mark.parametrize("folder,path", [(T3, CASES["mni152_6x4x4"][1]), (T2, CASES["mni152_sag_4x4"][1])],
                         ids=["3d_fullres", "2d"])
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in ("kernel_shap", "pdcr") else m
                                    for m in methods()])
def test_every_explainer_runs(method, folder, path):
    m = model(folder)
    img = load_image(path)
    params = dict(SMALL.get(method, {}))
    if method == "pdcr":
        params["block_size"] = PDCR_BLOCK[m.spatial_dims]
    exp = explain(m, img, method, target="cerebrum_left", seed=0, **params)
    a = exp.attribution
    assert a.shape == img.data.shape and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.abs(a).max() > 0, f"{method}: all-zero attribution"
    assert exp.target_name == "cerebrum_left" and exp.roi.any()


@needs_dna
def test_gradient_is_zero_outside_nnunets_crop():
    """Gradients go back through the exact adjoint of nnU-Net's preprocessing geometry: zero
    where nnU-Net crops the image away (the network never sees those voxels)."""
    m = model(T3)
    img = load_image(CASES["mni152_6x4x4"][1])
    exp = explain(m, img, "gradient", target="cerebrum_left")
    g = m.prepare(img).grid
    assert g.cropped
    box = np.zeros(g.t_shape, bool)
    box[tuple(slice(a, b) for a, b in g.bbox)] = True
    outside = ~g._from_t(box)
    assert outside.any() and np.all(exp.attribution[outside] == 0)
    assert np.abs(exp.attribution[~outside]).max() > 0


@pytest.mark.slow
@needs_dna
def test_cam_with_mirroring_is_refused_clearly():
    from seg_explain.errors import MethodError

    m = model(T3, mirror=True)
    assert m.mirror
    with pytest.raises(MethodError, match="ran 8 times"):
        explain(m, load_image(CASES["mni152_6x4x4"][1]), "seg_grad_cam", target=1)


# --------------------------------------------------------------- CLI, GUI --
@needs_dna
def test_cli_explains_an_nnunet_folder(tmp_path):
    from seg_explain.cli import main

    out = tmp_path / "attr.nii.gz"
    rc = main(["explain", str(CASES["mni152_6x4x4"][1]), "--model", str(T3), "--method", "gradient",
               "--target", "cerebrum_right", "--out", str(out)])
    assert rc in (0, None) and out.is_file()
    assert load_image(out).data.shape == load_image(CASES["mni152_6x4x4"][1]).data.shape


@needs_dna
def test_gui_lists_and_loads_the_folder(make_napari_viewer, qtbot, monkeypatch):
    from seg_explain._napari._testing import ensure_display

    if not ensure_display():
        pytest.skip("napari needs OpenGL: no DISPLAY and no Xvfb installed")
    from qtpy.QtWidgets import QFileDialog

    from seg_explain._napari import model_picker as W

    viewer = make_napari_viewer()
    _dw, widget = viewer.window.add_plugin_dock_widget("napari-seg-explain", "Explain segmentation")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(T3)))
    i = widget.model_combo.findData(W.BROWSE_DIR)
    widget.model_combo.setCurrentIndex(i)
    widget.model_combo.activated.emit(i)
    qtbot.waitUntil(lambda: widget.model_info is not None and widget.model_info["path"] == str(T3), timeout=60000)
    assert widget.model_combo.findData(str(T3)) >= 0
    assert widget.model_combo.itemText(widget.model_combo.findData(str(T3))) == T3.name
    assert [widget.class_combo.itemText(k) for k in range(widget.class_combo.count())] == CLASSES
    assert widget.model_info["spatial_dims"] == 3


# ---------------------------------------------------------------- attacks --
def _copy(tmp_path, src=T3) -> Path:
    dst = tmp_path / "Dataset901_TinyBrain" / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_plans(folder: Path, fn) -> None:
    plans = json.loads((folder / "plans.json").read_text())
    fn(plans["configurations"]["3d_fullres"]["architecture"])
    (folder / "plans.json").write_text(json.dumps(plans))


@pytest.mark.parametrize("where,value,path", [
    ("network_class_name", "os.system", "architecture.network_class_name"),
    ("network_class_name", "builtins.eval", "architecture.network_class_name"),
    ("network_class_name", "torch.hub.load", "architecture.network_class_name"),
    ("network_class_name", "nnunetv2.evil.PlainConvUNet", "architecture.network_class_name"),
    ("nonlin", "os.system", "arch_kwargs.nonlin"),
    ("conv_op", "subprocess.Popen", "arch_kwargs.conv_op"),
    ("norm_op", "torch.load", "arch_kwargs.norm_op"),
    ("norm_op", "torch.nn.functional.instance_norm", "arch_kwargs.norm_op"),
    ("_kw_requires_import", "norm_op_kwargs", "architecture._kw_requires_import"),
])
def test_plans_naming_functions_are_refused(tmp_path, where, value, path):
    marker = tmp_path / "PWNED"
    folder = _copy(tmp_path)

    def edit(arch):
        if where == "network_class_name":
            arch[where] = value
        elif where == "_kw_requires_import":
            arch[where] = arch[where] + [value]
            arch["arch_kwargs"][value] = f"os.system('touch {marker}')"
        else:
            arch["arch_kwargs"][where] = value
    _edit_plans(folder, edit)
    with pytest.raises(UnsafeConfigError) as err:
        load_model(folder, device="cpu")
    assert path in str(err.value) and "configurations.3d_fullres" in str(err.value)
    assert "\n" not in str(err.value) and not marker.exists()


@pytest.mark.parametrize("key,value,match", [
    ("features_per_stage", [4096, 4096, 4096], "billion parameters"),
    ("features_per_stage", [4, 8, 10 ** 9], r"not a whole number in \[0, 4096\]"),
    ("kernel_sizes", [[3, 3, 3], [3, 3, 3], [3, 3, "x"]], "not a whole number"),
])
def test_absurd_networks_are_refused_before_allocation(tmp_path, monkeypatch, key, value, match):
    """Refused from the plans alone: not one torch module (hence not one weight) is built."""
    folder = _copy(tmp_path)
    _edit_plans(folder, lambda a: a["arch_kwargs"].__setitem__(key, value))
    built = []
    init = torch.nn.Module.__init__

    def counting_init(self, *a, **k):
        built.append(type(self).__name__)
        init(self, *a, **k)

    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)
    with pytest.raises(ModelLoadError, match=match):
        load_model(folder, device="cpu")
    assert built == []


def test_a_class_name_not_in_kw_requires_import_is_refused(tmp_path):
    folder = _copy(tmp_path)
    _edit_plans(folder, lambda a: a["_kw_requires_import"].remove("nonlin"))
    with pytest.raises(UnsafeConfigError, match="arch_kwargs.nonlin.*not in _kw_requires_import"):
        load_model(folder, device="cpu")


@needs_dna
def test_pickle_payload_checkpoints_are_refused_marker_never_created(tmp_path):
    marker = tmp_path / "PWNED"
    folder = _copy(tmp_path)
    ck = folder / "fold_0" / "checkpoint_final.pth"
    # 1. a bare pickle payload as the checkpoint
    ck.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelLoadError):
        load_model(folder, device="cpu")
    assert not marker.exists()
    # 2. a genuine-looking checkpoint with the payload nested in its logs
    sd = model(T3).network.folds[0].state_dict()
    torch.save({"network_weights": sd, "logging": {"x": [Payload(marker)]}, "trainer_name": "nnUNetTrainer"}, ck)
    with pytest.raises(UnsafeConfigError, match=r"references (io|builtins|_io)\.open.*nothing was unpickled"):
        load_model(folder, device="cpu")
    assert not marker.exists()


@needs_dna
def test_checkpoint_types_allow_list_is_exact(tmp_path):
    """numpy float scalars (what the trainer logs) load, also under numpy 1.x's module name;
    any other type is refused with its name."""
    folder = _copy(tmp_path)
    ck = folder / "fold_0" / "checkpoint_final.pth"
    real = torch.load(T3 / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert isinstance(real["_best_ema"], np.floating)        # the trainer really pickles these
    # numpy<2 wrote numpy.core.multiarray.scalar: rewrite the pickle's global to that name
    with zipfile.ZipFile(T3 / "fold_0" / "checkpoint_final.pth") as z:
        items = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in items if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray\nscalar" in items[pkl]
    items[pkl] = items[pkl].replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    with zipfile.ZipFile(ck, "w", zipfile.ZIP_STORED) as z:
        for n, b in items.items():
            z.writestr(n, b)
    assert load_model(folder, device="cpu").folds == ["0"]
    # an integer numpy scalar is not something the trainer writes: refused, by name
    torch.save({"network_weights": real["network_weights"], "current_epoch": np.int64(3)}, ck)
    with pytest.raises(UnsafeConfigError, match="Int64DType|int64"):
        load_model(folder, device="cpu")


def test_files_must_stay_inside_the_folder(tmp_path):
    folder = _copy(tmp_path)
    outside = tmp_path / "elsewhere.pth"
    shutil.move(folder / "fold_0" / "checkpoint_final.pth", outside)
    os.symlink(outside, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelLoadError, match="points outside"):
        load_model(folder, device="cpu")
    folder2 = _copy(tmp_path / "b")
    (folder2 / "plans.json").unlink()
    os.symlink("/dev/zero", folder2 / "plans.json")
    with pytest.raises(ModelLoadError, match="regular file"):
        load_model(folder2, device="cpu")


def test_region_based_and_cascade_models_are_refused_clearly(tmp_path):
    folder = _copy(tmp_path)
    ds = json.loads((folder / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3]}
    ds["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ModelLoadError, match="region-based nnU-Net model .* not supported"):
        load_model(folder, device="cpu")
    folder2 = _copy(tmp_path / "c")
    plans = json.loads((folder2 / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["previous_stage"] = "3d_lowres"
    (folder2 / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelLoadError, match="cascade stage"):
        load_model(folder2, device="cpu")


# ------------------------------------------------------------ nnU-Net live --
@live
@needs_dna
@pytest.mark.parametrize("case", ["kmeans_2x3x2", "mni152_sag_2x2"])
def test_live_nnunet_predictor_full_logits(case):
    """nnU-Net itself, here and now: nnUNetPredictor (mirroring off, float32 buffers) on the
    full image; every logit within 1e-4 relative, every label equal."""
    import copy

    import nnunetv2.inference.predict_from_raw_data as P
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder, path = CASES[case]
    m = model(folder)
    pred = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                           allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=None)
    if m.spatial_dims == 3:
        data, props = SimpleITKIO().read_images([str(path)])
    else:
        img = load_image(path)
        tb = pred.plans_manager.transpose_backward
        data = img.data.astype(np.float32)[None, None].transpose([0] + [i + 1 for i in tb])
        sp = [999.0, *img.spacing]
        props = {"spacing": [sp[i] for i in tb]}
    pm, cm = pred.plans_manager, pred.configuration_manager
    x, _, _ = cm.preprocessor_class(verbose=False).run_case_npy(data, None, copy.deepcopy(props), pm, cm,
                                                                 pred.dataset_json)

    class Wide:   # nnU-Net's float16 result buffers as float32 (see the module docstring)
        half = torch.float32

        def __getattr__(self, k):
            return getattr(torch, k)

    real = P.torch
    P.torch = Wide()
    try:
        theirs = pred.predict_logits_from_preprocessed_data(torch.from_numpy(x)).float().numpy()
    finally:
        P.torch = real
    ours_x = m.prepare(load_image(path)).x.numpy()
    theirs_x = x if m.spatial_dims == 3 else x[:, 0]
    np.testing.assert_allclose(ours_x, theirs_x, rtol=1e-6, atol=1e-6)
    ours = m.logits_tensor(torch.from_numpy(ours_x)).numpy()
    theirs = theirs if m.spatial_dims == 3 else theirs[:, 0]
    assert rel_err(ours, theirs) <= REL_TOL
    np.testing.assert_array_equal(ours.argmax(0), theirs.argmax(0))


@live
def test_live_resampling_functions_agree():
    """Our Resampling against nnU-Net's resample_data_or_seg_to_shape on random data: plain,
    separate z (order_z 0 and 1) and order 1, in both directions."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from seg_explain.models.nnunet import Resampling

    rng = np.random.default_rng(1)
    for shape, new, cur, tgt, order, oz in [((9, 13, 11), (12, 7, 15), (2, 1, 1.5), (1.5, 2, 1.1), 3, 0),
                                            ((5, 20, 18), (12, 14, 13), (8, 1, 1), (3.3, 1.4, 1.4), 3, 0),
                                            ((5, 20, 18), (12, 14, 13), (8, 1, 1), (3.3, 1.4, 1.4), 3, 1),
                                            ((16, 6, 16), (11, 9, 10), (1, 5, 1), (1.4, 3.3, 1.6), 1, 0)]:
        d = rng.standard_normal((2,) + shape).astype(np.float32)
        theirs = resample_data_or_seg_to_shape(d, new, cur, tgt, is_seg=False, order=order, order_z=oz,
                                               force_separate_z=None)
        ours = Resampling.plan(shape, new, cur, tgt, order, oz, None).apply(d).astype(np.float32)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


# ---------------------------------------------- a 2d configuration on a volume --
VOL2D = {  # reference key -> image (nnUNetPredictor with the 2d folder, folds 0+1, on a volume)
    "vol2d_mni152_6x4x4": FIX / "heldout" / "mni152_6x4x4.nii.gz",
    "vol2d_mni152_6x4x4_gaps": FIX / "heldout" / "mni152_6x4x4_gaps.nii.gz",   # empty slice + zero border
    "vol2d_kmeans_2x3x2": KMEANS,                                              # resampled in plane
}


@needs_dna
@pytest.mark.parametrize("case", list(VOL2D))
def test_2d_configuration_predicts_volumes_as_nnunet_predictor(case, ref):
    """The volume is prepared once as nnU-Net prepares it (3D nonzero box, normalisation over
    the cropped volume, in-plane resampling), each slice goes through the 2D windows, and
    the label map on the image grid is the one nnUNetPredictor writes (float32 buffers)."""
    m = model(T2)
    img = load_image(VOL2D[case])
    x3, _ = m._prepare_volume(img)
    want = tuple(int(v) for v in ref[f"{case}/x_shape"])
    assert x3.shape == want
    np.testing.assert_allclose(x3.reshape(-1)[ref[f"{case}/x_idx"]], ref[f"{case}/x_val"], rtol=1e-5, atol=1e-5)
    lg = np.stack([m.logits_tensor(torch.from_numpy(np.ascontiguousarray(x3[:, z]))).numpy()
                   for z in range(x3.shape[1])], axis=1)
    assert rel_err(lg.reshape(-1)[ref[f"{case}/idx"]], ref[f"{case}/wide_val"]) <= REL_TOL
    np.testing.assert_array_equal(lg.argmax(0), ref[f"{case}/pred_model"])
    pred = m.predict(img)
    np.testing.assert_array_equal(pred, fp32_labels(ref, case))


@needs_dna
def test_2d_configuration_explains_the_slice_it_predicts():
    """explain(..., slice_index=k) on a volume: the explanation's prediction is predict()'s
    on that slice (0 voxels differ), the RoI is its class-c voxels, also on the empty slice
    inside the box; a slice outside the nonzero box is refused in one line."""
    m = model(T2)
    img = load_image(VOL2D["vol2d_mni152_6x4x4_gaps"])
    pred = m.predict(img)
    _, grid3 = m._prepare_volume(img)
    (z0, z1), _, _ = grid3.bbox
    for k in (z0 + 9, 12 + 3):      # an ordinary slice; the all-zero slice inside the box
        e = explain(m, img, "gradient", target=1, slice_index=k)
        np.testing.assert_array_equal(m.slice_of(e.prediction, img, k), m.slice_of(pred, img, k))
        np.testing.assert_array_equal(m.slice_of(e.roi, img, k), m.slice_of(pred, img, k) == 1)
    with pytest.raises(InputMismatchError, match="outside the image's nonzero box"):
        explain(m, img, "gradient", target=1, slice_index=z0 - 1)
