"""load_model / SegModel: bundle parsing, safety, geometry, sliding windows, compiled formats."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import UNET_DEF, make_unet, write_bundle

from seg_explain import InputMismatchError, ModelLoadError, UnsafeConfigError, load_image, load_model
from seg_explain.models import resolve_device


def test_bundle_metadata_and_predict(bundle3d):
    m = load_model(bundle3d)
    assert m.spatial_dims == 3 and m.in_channels == 1
    assert m.class_names == ["background", "a", "b", "c"]
    assert m.patch_size == (32, 32, 32) and m.spacing == (2.0, 2.0, 2.0)
    x = np.random.default_rng(0).random((20, 24, 28)).astype(np.float32)
    p = m.predict(x)
    assert p.shape == x.shape and p.max() < 4
    lg = m.logits(x)
    assert lg.shape == (4, 20, 24, 28) and lg.dtype == np.float32


def test_preprocessing_from_bundle_is_applied(bundle3d):
    m = load_model(bundle3d)
    x = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 500 + 100
    t = m.prepare(x).x.numpy()[0]
    nz = x != 0
    ref = (x[nz] - x[nz].mean()) / x[nz].std()
    assert np.allclose(t[nz], ref, atol=1e-4)


def test_sliding_window_matches_monai_inferer(bundle3d):
    """A volume bigger than the patch is run window by window exactly like MONAI's inferer."""
    from monai.inferers import sliding_window_inference

    m = load_model(bundle3d)
    x = np.random.default_rng(1).random((40, 48, 36)).astype(np.float32)
    ours = m.logits(x)
    t = m.prepare(x).x[None]
    with torch.inference_mode():
        ref = sliding_window_inference(t, (32, 32, 32), 1, m.network, overlap=0.25, mode="gaussian")[0]
    assert np.allclose(ours, ref.numpy(), atol=1e-4)


def test_spacing_resampled_to_model_and_back(bundle3d, tmp_path):
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])  # 1 mm LPS
    data = np.random.default_rng(0).random((40, 36, 32)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    im = load_image(tmp_path / "v.nii.gz")
    m = load_model(bundle3d)
    prep = m.prepare(im)
    assert prep.shape == tuple(s // 2 for s in im.data.shape)
    assert m.predict(im).shape == im.data.shape


def test_model_orientation_axcodes(tmp_path):
    """A bundle trained on RAS (x, y, z) arrays sees our LPS (z, y, x) arrays reoriented."""
    net = make_unet(3)
    b = write_bundle(tmp_path / "ras", {**UNET_DEF, "spatial_dims": 3}, net, ["bg", "a", "b", "c"],
                     (16, 16, 16), axcodes="RAS")
    m = load_model(b)
    x = np.random.default_rng(0).random((8, 10, 12)).astype(np.float32)  # (S, P, L)
    t = m.prepare(x).x.numpy()[0]
    assert np.array_equal(t, x.transpose(2, 1, 0)[::-1, ::-1, :])  # (R, A, S)
    assert m.predict(x).shape == x.shape


def _bad_bundle(tmp_path, mutate_cfg=None, mutate_meta=None, weights=None):
    net = make_unet(3)
    b = write_bundle(tmp_path / "b", {**UNET_DEF, "spatial_dims": 3}, net, ["bg", "a", "b", "c"], (16,) * 3)
    cfg = json.loads((b / "configs/inference.json").read_text())
    meta = json.loads((b / "configs/metadata.json").read_text())
    if mutate_cfg:
        mutate_cfg(cfg)
    if mutate_meta:
        mutate_meta(meta)
    (b / "configs/inference.json").write_text(json.dumps(cfg))
    (b / "configs/metadata.json").write_text(json.dumps(meta))
    if weights is not None:
        weights(b / "models/model.pt", net)
    return b


@pytest.mark.parametrize("mutate, match", [
    (lambda c: c["network_def"].update(_target_="os.system"), r"network_def\._target_: refusing 'os\.system'"),
    (lambda c: c["network_def"].update(_target_="builtins.eval"), "refusing"),
    (lambda c: c["network_def"].update(channels="$__import__('os').system('echo pwned')"), "not allowed"),
    (lambda c: c["preprocessing"]["transforms"].append({"_target_": "subprocess.Popen", "args": "ls"}), "refusing"),
    (lambda c: c["network_def"].update(_requires_="os.system"), "not allowed"),
])
def test_unsafe_configs_are_refused(tmp_path, mutate, match):
    with pytest.raises(UnsafeConfigError, match=match):
        load_model(_bad_bundle(tmp_path, mutate_cfg=mutate))


def test_pickled_whole_model_is_refused(tmp_path):
    b = _bad_bundle(tmp_path, weights=lambda p, net: torch.save(net, p))
    with pytest.raises(ModelLoadError, match="never unpickled"):
        load_model(b)


def test_metadata_disagreeing_with_network(tmp_path):
    def three_classes(meta):
        meta["network_data_format"]["outputs"]["pred"].update(
            num_channels=3, channel_def={"0": "bg", "1": "a", "2": "b"})
    with pytest.raises(ModelLoadError, match="outputs 4 channels but the metadata names 3"):
        load_model(_bad_bundle(tmp_path, mutate_meta=three_classes))


def test_weights_not_fitting_network(tmp_path):
    b = _bad_bundle(tmp_path, weights=lambda p, net: torch.save(make_unet(3, channels=(8, 16, 32)).state_dict(), p))
    with pytest.raises(ModelLoadError, match="weights do not fit network_def"):
        load_model(b)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(ModelLoadError, match="No such model"):
        load_model(tmp_path / "nope")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="Unsupported model"):
        load_model(tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="metadata not found"):
        load_model(tmp_path / "empty")


def test_2d_model_given_3d_image(tmp_path):
    net = make_unet(2)
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, net, ["bg", "a", "b", "c"], (32, 32))
    m = load_model(b)
    assert m.spatial_dims == 2
    with pytest.raises(InputMismatchError, match="2D model"):
        m.predict(np.zeros((8, 32, 32, 2), np.float32))
    aff = np.eye(4)
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=(32, 32, 5)).astype(np.float32), aff), tmp_path / "v.nii.gz")
    vol = load_image(tmp_path / "v.nii.gz")
    with pytest.raises(InputMismatchError, match="2D model but the image is 3D"):
        m.prepare(vol)
    # a volume from load_image is predicted slice by slice (axial, the first array axis),
    # each slice exactly as explain(..., slice_index=k) sees it
    pred = m.predict(vol)
    assert pred.shape == vol.spatial_shape
    for k in range(vol.spatial_shape[0]):
        np.testing.assert_array_equal(pred[k], m.predict(vol.data[k]))
    np.testing.assert_allclose(m.logits(vol)[:, 2], m.logits(vol.data[2]), rtol=0, atol=0)


def _sidecar(path, n_classes=4, patch=(16, 16, 16)):
    path.with_suffix(".json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": list(patch)}},
        "outputs": {"pred": {"num_channels": n_classes,
                             "channel_def": {str(i): f"c{i}" for i in range(n_classes)}}}}}))


def test_torchscript_with_sidecar(tmp_path):
    net = make_unet(3)
    x = torch.rand(1, 1, 16, 16, 16)
    ts = torch.jit.trace(net, x)
    ts.save(str(tmp_path / "m.ts"))
    _sidecar(tmp_path / "m.ts")
    m = load_model(tmp_path / "m.ts")
    assert not m.hookable and m.class_names == ["c0", "c1", "c2", "c3"]
    with torch.no_grad():
        ref = net(x)[0].numpy()
    assert np.allclose(m.logits(x[0, 0].numpy()), ref, atol=1e-5)
    (tmp_path / "n.ts").write_bytes((tmp_path / "m.ts").read_bytes())
    with pytest.raises(ModelLoadError, match="JSON sidecar"):
        load_model(tmp_path / "n.ts")


def test_torch_export_pt2_with_sidecar(tmp_path):
    net = make_unet(3)
    x = torch.rand(1, 1, 16, 16, 16)
    prog = torch.export.export(net, (x,))
    torch.export.save(prog, str(tmp_path / "m.pt2"))
    _sidecar(tmp_path / "m.pt2")
    m = load_model(tmp_path / "m.pt2")
    with torch.no_grad():
        ref = net(x)[0].numpy()
    assert np.allclose(m.logits(x[0, 0].numpy()), ref, atol=1e-5)


def test_device_auto_is_cpu_without_accelerator():
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (expect, "mps")


def test_one_table_of_model_formats_read_by_loader_cli_and_picker(tmp_path, capsys):
    """The formats table decides what load_model loads; the CLI help and the napari
    picker's file filter are built from it (nnU-Net included)."""
    from seg_explain.cli import main
    from seg_explain.models.formats import FORMATS, file_suffixes, formats_help, model_format

    here = Path(__file__).parent
    nn = here / "data" / "nnunet" / "Dataset901_TinyBrain" / "nnUNetTrainer__nnUNetPlans__2d"
    assert model_format(nn).name == "nnU-Net v2 folder"
    assert model_format(nn / "fold_0").name == "nnU-Net v2 folder"
    assert model_format(here.parent / "sample_data" / "models" / "brain2d").name == "MONAI bundle"
    (tmp_path / "m.pt2").write_bytes(b"x")
    (tmp_path / "m.ts").write_bytes(b"x")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert model_format(tmp_path / "m.pt2").name == "torch.export program"
    assert model_format(tmp_path / "m.ts").name == "TorchScript file"
    assert model_format(tmp_path / "m.onnx") is None
    with pytest.raises(ModelLoadError, match="Unsupported model 'm.onnx'.*nnU-Net v2 folder"):
        load_model(tmp_path / "m.onnx")
    assert set(file_suffixes()) == {s for f in FORMATS for s in f.suffixes} >= {".pt2", ".ts"}
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(formats_help().split()) in out and "nnU-Net" in out
