"""precision="bf16": every method runs the network in bfloat16 and agrees with fp32; fp32 is untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_unet, wrap

from seg_explain import agg2exp, explain, load_image, load_model
from seg_explain.cli import main
from seg_explain.dataset import evaluate
from seg_explain.errors import MethodError
from seg_explain.paths import sample_path

# small settings: every method's passes, not its quality, is what is checked here
SMALL = {"gradient": {}, "smoothgrad": {"n_samples": 4}, "integrated_gradients": {"steps": 4},
         "kernel_shap": {"n_samples": 64, "grid": 4}, "seg_grad_cam": {}, "seg_hires_grad_cam": {},
         "pdcr": {"block_size": 16, "n_screen": 2, "n_draws": 6}}
# Pearson r of the bf16 map against the fp32 map on the 2D sample, below what
# benchmarks/bench_precision.py measured for each method (lowest: PdCR's few draws, KernelSHAP)
R_MIN = {"gradient": 0.95, "smoothgrad": 0.95, "integrated_gradients": 0.95, "kernel_shap": 0.9,
         "seg_grad_cam": 0.95, "seg_hires_grad_cam": 0.95, "pdcr": 0.8}


@pytest.fixture(scope="module")
def sample2d():
    model = load_model(sample_path("models", "brain2d"), device="cpu")
    img = load_image(sample_path("brain2d", "colin27_axial_t1.tif"))
    roi = np.asarray(load_image(sample_path("brain2d", "colin27_axial_roi_frontal_L.tif")).data) > 0
    return model, img, roi


class ConvDtypes:
    """The dtypes of every convolution's output during a block (forward hooks)."""

    def __init__(self, network):
        self.mods = [m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        self.seen: set = set()

    def __enter__(self):
        self.handles = [m.register_forward_hook(lambda _m, _i, o: self.seen.add(o.dtype)) for m in self.mods]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


@pytest.mark.parametrize("method", sorted(SMALL))
def test_bf16_runs_in_bf16_and_agrees_with_fp32(sample2d, method):
    model, img, roi = sample2d
    kw = {"target": "frontal_L", "roi": roi, **SMALL[method]}
    with ConvDtypes(model.network) as low:
        e16 = explain(model, img, method, precision="bf16", **kw)
    with ConvDtypes(model.network) as full:
        e32 = explain(model, img, method, **kw)
    assert low.seen == {torch.bfloat16}          # every convolution, the clean pass included
    assert full.seen == {torch.float32}          # the model itself is left at fp32
    assert model.precision == "fp32"
    assert e16.attribution.dtype == np.float32 and np.isfinite(e16.attribution).all()
    assert e16.params["precision"] == "bf16" and "precision" not in e32.params
    assert not np.array_equal(e16.attribution, e32.attribution)   # it did change the arithmetic
    assert pearson(e16.attribution, e32.attribution) > R_MIN[method]


def test_fp32_is_bit_identical_to_the_plain_network(sample2d):
    model, img, roi = sample2d
    assert model.with_precision("fp32") is model and model.with_precision(None) is model
    x = model.prepare(img).x[None, :, :96, :88]          # a size the network takes without padding
    with torch.no_grad():
        assert torch.equal(model.forward(x), model.network(x))
    a = explain(model, img, "smoothgrad", target="frontal_L", roi=roi, n_samples=3)
    b = explain(model, img, "smoothgrad", target="frontal_L", roi=roi, n_samples=3, precision="fp32")
    assert np.array_equal(a.attribution, b.attribution)


def test_view_shares_the_network_and_returns_float32(sample2d):
    model, img, _ = sample2d
    view = model.with_precision("bf16")
    assert view is not model and view.network is model.network and view.precision == "bf16"
    assert view.with_precision(None) is view and view.with_precision("fp32").precision == "fp32"
    x = model.prepare(img).x[None]
    out = view.forward(x)
    assert out.dtype == torch.float32
    ref = model.forward(x)
    assert pearson(out.detach(), ref.detach()) > 0.99
    # a view passed to explain keeps its precision
    with ConvDtypes(model.network) as seen:
        explain(view, img, "gradient", target="frontal_L")
    assert seen.seen == {torch.bfloat16}


def test_windowed_images_are_lowered_too():
    """An image larger than the patch: sliding windows (gradients) and PdCR's RoI windows."""
    model = wrap(make_unet(2, out_channels=3), 2, n_classes=3, patch=(32, 32))
    img = np.random.default_rng(0).normal(size=(72, 56)).astype(np.float32)
    assert model.needs_windows(img.shape)
    roi = np.zeros(img.shape, bool)
    roi[30:40, 20:30] = True
    for method, kw in (("gradient", {}), ("pdcr", {"block_size": 8, "n_screen": 1, "n_draws": 2, "bank": "zero"})):
        with ConvDtypes(model.network) as low:
            e16 = explain(model, img, method, target=1, roi=roi, roi_mode="mask", precision="bf16", **kw)
        e32 = explain(model, img, method, target=1, roi=roi, roi_mode="mask", **kw)
        assert low.seen == {torch.bfloat16}, method
        if method == "gradient":
            assert pearson(e16.attribution, e32.attribution) > 0.9


def test_agg2exp_and_evaluate_take_precision(sample2d):
    model, img, _ = sample2d
    with ConvDtypes(model.network) as seen:
        res = agg2exp(model, [img], "gradient", classes=["frontal_L"], precision="bf16")
    assert seen.seen == {torch.bfloat16} and res.params["precision"] == "bf16"
    ref = agg2exp(model, [img], "gradient", classes=["frontal_L"])
    row = res.row_names.index("frontal_L")
    assert "precision" not in ref.params
    assert pearson(res.local[0, row], ref.local[0, row]) > 0.95
    with ConvDtypes(model.network) as seen:
        m = evaluate(model, [img], ["gradient"], classes=["frontal_L"], n_faithfulness=4, n_sensitivity=0,
                     precision="bf16")
    assert seen.seen == {torch.bfloat16} and m.settings["precision"] == "bf16"


def test_bad_precision_is_one_clear_error(sample2d, tmp_path, capsys):
    model, img, _ = sample2d
    with pytest.raises(MethodError, match="precision must be one of"):
        explain(model, img, "gradient", target="frontal_L", precision="fp8")
    with pytest.raises(MethodError, match="needs a GPU"):
        model.with_precision("fp16")
    rc = main(["explain", str(sample_path("brain2d", "colin27_axial_t1.tif")), "--model",
               str(sample_path("models", "brain2d")), "--method", "gradient", "--target", "frontal_L",
               "--precision", "fp16", "--out", str(tmp_path / "m.tif"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a GPU" in err and "Traceback" not in err
    assert not (tmp_path / "m.tif").exists()


def test_cli_precision(tmp_path):
    args = [str(sample_path("brain2d", "colin27_axial_t1.tif")), "--model", str(sample_path("models", "brain2d")),
            "--method", "gradient", "--target", "frontal_L", "--quiet"]
    assert main(["explain", *args, "--out", str(tmp_path / "a.tif")]) == 0
    assert main(["explain", *args, "--precision", "bf16", "--out", str(tmp_path / "b.tif")]) == 0
    a, b = (load_image(tmp_path / n).data for n in ("a.tif", "b.tif"))
    assert not np.array_equal(a, b) and pearson(a, b) > 0.95
