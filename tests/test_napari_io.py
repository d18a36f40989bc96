"""Reader, writers, sample data and the manifest of the napari plugin (no viewer needed,
except the last test, which opens a file through napari itself)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_explain._napari._testing import ensure_display
from seg_explain.paths import sample_path

HAS_DISPLAY = ensure_display()  # before any QApplication exists (only the last test needs it)

NIFTI = sample_path("brain3d", "colin27_t1_2mm.nii.gz")
LABELS = sample_path("brain3d", "colin27_labels_2mm.nii.gz")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_EXPLAIN_CACHE_DIR", str(tmp_path / "cache"))


def test_reader_nifti_scale_translate_metadata():
    import nibabel as nib

    from seg_explain import load_image
    from seg_explain._napari.reader import get_reader

    reader = get_reader(str(NIFTI))
    assert callable(reader)
    [(data, kw, kind)] = reader(str(NIFTI))
    li = load_image(NIFTI)
    assert kind == "image" and data.shape == li.data.shape == (90, 108, 90)
    assert kw["scale"] == pytest.approx(li.spacing) and kw["scale"] == pytest.approx((2.0, 2.0, 2.0))
    assert kw["translate"] == pytest.approx(li.origin)
    md = kw["metadata"]["seg_explain"]
    assert md["path"] == str(NIFTI)
    np.testing.assert_allclose(md["affine"], li.affine)
    # translate = world position of voxel 0 along the array axes: z is superior (RAS z),
    # y posterior (-RAS y), x patient left (-RAS x) for this axis-aligned image
    ras0 = li.affine @ np.array([0.0, 0.0, 0.0, 1.0])
    assert kw["translate"] == pytest.approx((ras0[2], -ras0[1], -ras0[0]))
    assert nib.load(str(NIFTI)).shape == (90, 108, 90)
    # label maps open as Labels layers
    [(lab, _kw, lkind)] = get_reader(str(LABELS))(str(LABELS))
    assert lkind == "labels" and lab.shape == data.shape


def test_reader_mha_nrrd_and_refusals(tmp_path):
    import SimpleITK as sitk

    from seg_explain._napari.reader import get_reader

    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 2.0))      # x, y, z
    img.SetOrigin((10.0, 20.0, -30.0))    # LPS
    for ext in (".mha", ".nrrd"):
        p = tmp_path / f"vol{ext}"
        sitk.WriteImage(img, str(p))
        [(data, kw, kind)] = get_reader(str(p))(str(p))
        assert kind == "image" and data.shape == (4, 5, 6)
        np.testing.assert_array_equal(data, arr)
        assert kw["scale"] == pytest.approx((2.0, 0.75, 0.5))
        # LPS origin (10, 20, -30) -> RAS (-10, -20, -30); along (S, P, L) axes: (-30, 20, 10)
        assert kw["translate"] == pytest.approx((-30.0, 20.0, 10.0))
    assert get_reader(str(tmp_path / "photo.png")) is None
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "a.txt").write_text("x")
    assert get_reader(str(tmp_path / "notdicom")) is None


def test_reader_dicom_folder(tmp_path):
    import SimpleITK as sitk

    from seg_explain._napari.reader import get_reader

    arr = (np.arange(3 * 8 * 9) % 200).astype(np.int16).reshape(3, 8, 9)
    vol = sitk.GetImageFromArray(arr)
    vol.SetSpacing((0.8, 0.9, 2.5))
    vol.SetOrigin((1.0, 2.0, 3.0))
    folder = tmp_path / "series"
    folder.mkdir()
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetImageIO("GDCMImageIO")
    for k in range(arr.shape[0]):
        sl = vol[:, :, k]
        for tag, val in (("0010|0010", "Test^Patient"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                         ("0020|0013", str(k + 1)), ("0008|0060", "MR"),
                         ("0020|0032", "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k))))),
                         ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "0.9\\0.8"), ("0018|0050", "2.5")):
            sl.SetMetaData(tag, val)
        w.SetFileName(str(folder / f"s{k:03d}"))  # no extension: found by the DICM magic
        w.Execute(sl)
    reader = get_reader(str(folder))
    assert callable(reader)
    [(data, kw, kind)] = reader(str(folder))
    assert data.shape == (3, 8, 9)
    assert kw["scale"] == pytest.approx((2.5, 0.9, 0.8), rel=1e-3)


def test_writer_nifti_round_trip_keeps_affine(tmp_path):
    import nibabel as nib

    from seg_explain._napari.reader import read_layers
    from seg_explain._napari.writer import write_image, write_labels

    [(data, kw, _)] = read_layers(str(NIFTI))
    meta = {**kw, "metadata": kw["metadata"]}
    out = write_image(str(tmp_path / "copy.nii.gz"), data, meta)
    src, dst = nib.load(str(NIFTI)), nib.load(out[0])
    np.testing.assert_allclose(dst.affine, src.affine)
    np.testing.assert_array_equal(np.asarray(dst.dataobj), np.asarray(src.dataobj))
    # an attribution layer on that grid keeps the affine, values and sign
    attr = np.linspace(-1, 1, data.size, dtype=np.float32).reshape(data.shape)
    out = write_image(str(tmp_path / "attr.nii.gz"), attr, {"metadata": kw["metadata"], "scale": kw["scale"],
                                                           "translate": kw["translate"]})
    back = nib.load(out[0])
    np.testing.assert_allclose(back.affine, src.affine)
    from seg_explain import load_image

    np.testing.assert_allclose(load_image(out[0]).data, attr)
    # labels: integers, same affine
    lab = (attr > 0).astype(np.int64)
    out = write_labels(str(tmp_path / "lab.nii.gz"), lab, {"metadata": kw["metadata"]})
    back = nib.load(out[0])
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    np.testing.assert_allclose(back.affine, src.affine)


def test_writer_without_source_uses_scale_translate_and_tiff(tmp_path):
    import tifffile

    from seg_explain import load_image
    from seg_explain._napari.writer import write_image

    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    meta = {"metadata": {}, "scale": (3.0, 1.5, 1.25), "translate": (-20.0, 4.0, 8.0)}
    out = write_image(str(tmp_path / "plain.nii.gz"), arr, meta)
    li = load_image(out[0])
    np.testing.assert_allclose(li.data, arr)
    assert li.spacing == pytest.approx(meta["scale"])
    assert li.origin == pytest.approx(meta["translate"])
    out = write_image(str(tmp_path / "plain.tif"), arr, meta)
    np.testing.assert_allclose(tifffile.imread(out[0]), arr)
    assert load_image(out[0]).spacing == pytest.approx(meta["scale"], rel=1e-4)


def test_sample_brain2d_layers():
    from seg_explain._napari.sample_data import sample_brain2d

    layers = sample_brain2d()
    kinds = [k for _d, _kw, k in layers]
    assert kinds == ["image", "labels", "labels"]
    (img, ikw, _), (lab, lkw, _), (roi, rkw, _) = layers
    assert img.ndim == 2 and lab.shape == img.shape == roi.shape
    for kw in (ikw, lkw, rkw):
        assert kw["scale"] == pytest.approx((2.0, 2.0))
        assert kw["translate"] == ikw["translate"]
    assert rkw["metadata"]["seg_explain"]["target"] == "frontal_L" and roi.any()
    assert "frontal_L" in lkw["features"]["class"]


@pytest.mark.slow
def test_sample_brain3d_prediction_is_cached(tmp_path):
    from seg_explain._napari.sample_data import cache_dir, sample_brain3d

    if not (sample_path("models", "brain3d") / "configs" / "metadata.json").is_file():
        pytest.skip("brain3d sample model not installed")
    layers = sample_brain3d()
    (img, ikw, _), (pred, pkw, pk), (roi, rkw, _) = layers
    assert pk == "labels" and pkw["metadata"]["seg_explain"]["kind"] == "prediction"
    assert pred.shape == img.shape == roi.shape == (90, 108, 90)
    assert ikw["scale"] == pytest.approx((2.0, 2.0, 2.0)) and rkw["translate"] == ikw["translate"]
    assert rkw["metadata"]["seg_explain"]["target"] == "temporal_R"
    # the model finds the RoI's class in the RoI
    assert np.mean(pred[roi > 0] == 6) > 0.5
    cached = list(cache_dir().glob("pred_brain3d_*.npz"))
    assert len(cached) == 1
    import seg_explain.models as models

    loads = []
    real_load = models.load_model
    try:
        models.load_model = lambda *a, **k: loads.append(1) or real_load(*a, **k)
        again = sample_brain3d()
    finally:
        models.load_model = real_load
    assert not loads, "the cached prediction is read back, the model is not run again"
    np.testing.assert_array_equal(again[1][0], pred)


def test_manifest_validates():
    import npe2

    pm = npe2.PluginManifest.from_distribution("napari-seg-explain")
    pm.validate_imports()
    names = {c.python_name for c in pm.contributions.commands}
    assert "seg_explain._napari.explain_dock:ExplainWidget" in names
    exe = shutil.which("npe2", path=str(Path(sys.executable).parent)) or shutil.which("npe2")
    if exe is None:
        pytest.skip("npe2 command not found")
    r = subprocess.run([exe, "validate", "napari-seg-explain"], capture_output=True, text=True, encoding="utf-8",
                       errors="replace", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in (r.stdout + r.stderr).lower()


def test_open_file_in_napari_uses_the_reader(make_napari_viewer):
    if not HAS_DISPLAY:
        pytest.skip("napari needs OpenGL: no DISPLAY and no Xvfb installed")
    viewer = make_napari_viewer()
    layers = viewer.open(str(NIFTI), plugin="napari-seg-explain")
    assert len(layers) == 1
    ly = layers[0]
    assert ly.data.shape == (90, 108, 90)
    np.testing.assert_allclose(ly.scale, (2.0, 2.0, 2.0))
    assert ly.metadata["loaded_image"].spacing == pytest.approx((2.0, 2.0, 2.0))


def test_cancel_hooks_stop_inside_a_forward_and_a_backward():
    """A cancel lands within one layer of the network, not at the end of the batch."""
    import threading
    import traceback

    import torch
    from conftest import make_unet, wrap

    from seg_explain._napari.workers import CancelToken, cancel_hooks
    from seg_explain.errors import Cancelled

    model = wrap(make_unet(3, channels=(8, 16, 32)), 3)
    x = torch.rand(4, 1, 48, 48, 48, requires_grad=True)
    for phase in ("forward", "backward"):
        token = CancelToken()
        completed = [0]          # whole passes finished
        at_cancel = []

        def cancel(started, token=token, completed=completed, at_cancel=at_cancel):
            started.wait()
            at_cancel.append(completed[0])
            token.cancel()

        with cancel_hooks(model, token):
            if phase == "backward":
                out = model.forward(x).sum()
            started = threading.Event()
            threading.Thread(target=cancel, args=(started,)).start()
            with pytest.raises(Cancelled) as err:
                for _ in range(1000):  # the loop never checks the token: only the hooks can stop it
                    started.set()
                    if phase == "forward":
                        model.forward(x)
                    else:
                        torch.autograd.grad(out, x, retain_graph=True)
                    completed[0] += 1
            # stopped inside the network (a hook raised), and no whole pass finished after the cancel
            assert "token.check()" in "".join(traceback.format_tb(err.tb))
            assert at_cancel and completed[0] <= at_cancel[0] + 1
        # hooks are gone afterwards
        model.forward(x[:1])
        assert not any(m._forward_pre_hooks for m in model.network.modules())


def test_worker_job_without_qt_reports_failure_as_one_line(tmp_path):
    """Jobs are plain generators: a bad model path becomes a Failure, never an exception."""
    from seg_explain.frontend.jobs import Failure, ModelCache, guarded, load_model_job

    gen = guarded(load_model_job, ModelCache(), str(tmp_path / "missing_bundle"), "cpu")
    msgs = []
    try:
        while True:
            msgs.append(next(gen))
    except StopIteration as stop:
        res = stop.value
    assert isinstance(res, Failure) and "missing_bundle" in res.message and "\n" not in res.message
