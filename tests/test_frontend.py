"""The viewer-agnostic front-end layer (seg_explain.frontend): requests, result names, legends,
colour limits, display maps, 3D evidence, messages and Agg2Exp display data, from plain data
and one real explanation of the shipped 2D sample model. No napari, no Qt."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_explain.errors import InputMismatchError
from seg_explain.explainers.registry import get_spec, specs
from seg_explain.frontend import agg2exp, evidence, messages, requests, results


def finish(gen):
    """Run a front-end job generator to its return value (what a viewer's worker does)."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_frontend_imports_no_viewer():
    mods = ["agg2exp", "evidence", "jobs", "messages", "reading", "requests", "results"]
    code = (f"import sys; [__import__('seg_explain.frontend.' + m) for m in {mods!r}]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'PyQt5', 'PyQt6', 'vispy', "
            "'magicgui'}), sorted(m for m in sys.modules if m.startswith(('seg_explain._napari', "
            "'seg_explain.cli', 'seg_explain.commands'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


# ------------------------------------------------------------------------- requests --
def test_roi_and_request_from_plain_inputs():
    labels = np.zeros((4, 6, 5), np.uint8)
    labels[2, 1:3, 1:4] = 2
    mask, name = requests.roi_from_labels(labels, 2, "RoI", (4, 6, 5), slice_index=2)
    assert name == "RoI:2" and mask.sum() == 6 and mask[2, 1, 1]
    assert requests.roi_from_labels(labels == 2, 1, "RoI", (4, 6, 5))[1] == "RoI"
    with pytest.raises(InputMismatchError, match="Label 2 is not painted in RoI layer 'RoI' on slice 1"):
        requests.roi_from_labels(labels, 2, "RoI", (4, 6, 5), slice_index=1)
    with pytest.raises(InputMismatchError, match=r"has shape \(4, 6, 5\), the image \(4, 6, 6\)"):
        requests.roi_from_labels(labels, 2, "RoI", (4, 6, 6))
    req = requests.make_request("m", "cpu", None, "gradient", "a", mask, "RoI:2", {"x": 1}, seed=3, batch=" 4 ",
                                slice_index=2, image_name="t1")
    assert (req.batch_size, req.seed, req.roi_name, req.slice_index, req.params) == (4, 3, "RoI:2", 2, {"x": 1})
    assert requests.make_request("m", "cpu", None, "gradient", "a").batch_size is None   # "" = from free memory


def test_bank_chooser_entries_and_values():
    items = requests.bank_items(True, "/data/refs", ["t2", "flair"])
    assert items == ["sample bank (MNI152)", "zero occlusion", "folder: /data/refs", "folder…",
                     "all other image layers", "layer: t2", "layer: flair"]
    assert requests.bank_items(False, None, ["t2"]) == ["zero occlusion", "folder…", "layer: t2"]
    others = ["t2", "flair"]
    assert requests.bank_choice("sample bank (MNI152)", others) is None
    assert requests.bank_choice("zero occlusion", others) == "zero"
    assert requests.bank_choice("folder: /data/refs", others) == "/data/refs"
    assert requests.bank_choice("all other image layers", others) == ["t2", "flair"]
    assert requests.bank_choice("layer: flair", others) == ["flair"]
    with pytest.raises(InputMismatchError, match="Choose the folder"):
        requests.bank_choice("folder…", others)
    assert requests.estimate_value("bank", "zero occlusion") == "zero"
    assert requests.estimate_value("bank", "layer: t2") == requests.OWN_BANK
    assert requests.estimate_value("bank", requests.SAMPLE_BANK) is None
    assert requests.estimate_value("label_map", "zero occlusion") is None
    assert list(requests.volume_slices(40)) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34,
                                                36, 38]
    assert list(requests.volume_slices(5)) == [0, 1, 2, 3, 4]


# --------------------------------------------------------------- a real explanation --
@pytest.fixture(scope="module")
def explained():
    from seg_explain import load_image
    from seg_explain.frontend.jobs import ModelCache
    from seg_explain.jobs import CancelToken
    from seg_explain.paths import sample_path

    d = sample_path("brain2d")
    img = load_image(d / "colin27_axial_t1.tif")
    mask, name = requests.roi_from_labels(load_image(d / "colin27_axial_roi_frontal_L.tif").data, 1,
                                          "RoI · frontal_L", img.spatial_shape)
    req = requests.make_request(sample_path("models", "brain2d"), "cpu", img, "gradient", "frontal_L", mask, name,
                                image_name="colin27_axial_t1")
    return req, finish(requests.explain_job(req, ModelCache(), CancelToken()))


def test_explanation_limits_outline_and_record(explained):
    from scipy import ndimage

    req, disp = explained
    exp = disp.exp
    a = np.abs(np.asarray(exp.attribution, np.float64))
    nz = a[a > 0]
    assert disp.limit == pytest.approx(np.percentile(nz, 99.5), rel=1e-5)     # robust: a voxel map
    assert disp.max_abs == pytest.approx(nz.max(), rel=1e-6) and disp.limit < disp.max_abs
    inner = ndimage.binary_erosion(req.roi, ndimage.generate_binary_structure(2, 1), border_value=0)
    assert np.array_equal(disp.outline.astype(bool), req.roi & ~inner) and disp.outline.dtype == np.uint8
    info = results.result_info(exp, req, disp)
    assert info["legend"] == ("Red to yellow: brightening these voxels would make the model more sure this is "
                              "frontal_L; blue to cyan: it would make the model less sure. "
                              "Values: ∂ logit sum / ∂ intensity.")
    assert info["legend_short"] == "red to yellow: supports frontal_L · blue to cyan: opposes"
    assert (info["kind"], info["method"], info["target"], info["roi"], info["image"]) == \
        ("attribution", "gradient", "frontal_L", "RoI · frontal_L", "colin27_axial_t1")
    assert (info["n_forward"], info["n_backward"], info["params"]) == (2, 1, {"seed": 0, "batch_size": None})
    assert info["shown_unit"] == info["unit"] == "∂ logit sum / ∂ intensity"


def test_explanation_names_and_texts(explained):
    req, disp = explained
    exp = disp.exp
    title = exp.spec.title
    assert results.result_name(title, "frontal_L", req.roi_name) == "Vanilla gradient · RoI · frontal_L"
    assert results.result_name(title, "frontal_L", "predicted") == "Vanilla gradient · frontal_L"
    assert results.result_name(title, "frontal_L", "RoI 2", 7) == "Vanilla gradient · frontal_L in RoI 2 · z=7"
    assert results.outline_name("predicted", "frontal_L") == "outline · predicted frontal_L"
    assert results.outline_name("RoI:2", "frontal_L", 3) == "outline · RoI:2 · z=3"
    assert results.prediction_name("/models/brain2d", None) == "prediction · brain2d"
    lim = float(disp.limit)
    text = results.done_text(exp, (-lim, lim), disp.max_abs)
    assert text.startswith("Done: Vanilla gradient of 'frontal_L' in ")
    assert text.endswith(f"s (2 forward / 1 backward passes). Colour limits ±{lim:.3g} "
                         f"(max |value| {disp.max_abs:.3g}) ∂ logit sum / ∂ intensity.")
    info = results.result_info(exp, req, disp)
    assert results.canvas_text("L", info, (-2.0, 2.0)).split("\n") == [
        "L", "red to yellow: supports frontal_L · blue to cyan: opposes",
        "full colour at ±2 · scale: -2  |  0  |  +2", "values: ∂ logit sum / ∂ intensity"]
    assert results.canvas_text("L", info, (0.0, 2.0), surfaces=True).split("\n")[2] == \
        "3D: surfaces enclose the strongest 5 % of each sign"
    assert results.summary_lines(exp) == ([], None)


def test_display_maps_and_colour_limits():
    raw = np.zeros((20, 20), np.float32)
    raw[5, 5], raw[6, 6], raw[7, 7], raw[8, 8] = 4.0, -3.0, 2.0, -1.0
    pdcr, grad = get_spec("pdcr"), get_spec("gradient")
    assert np.array_equal(results.shown_map(raw, pdcr), -raw)                 # + = supports (Dice lost)
    top = results.shown_map(raw, grad, top_percent=50)
    assert sorted(top[top != 0].tolist()) == [-3.0, 4.0]                      # the strongest half by |value|
    assert results.display_limits(raw, "block") == (4.0, 4.0)                # block maps: the maximum
    assert results.attribution_limits(2.5, True, False) == (0.0, 2.5)
    assert results.attribution_limits(2.5, True, True) == (-2.5, 0.0)
    assert results.attribution_limits(2.5, False, True) == (-2.5, 2.5)
    assert results.shown_limits(top, raw, grad, {}) == (-4.0, 4.0)
    assert results.shown_limits(np.zeros_like(raw), raw, grad, {}) == (-4.0, 4.0)   # nothing shown: the raw
    assert results.symmetric_limits(np.zeros(5)) == (1.0, 1.0)
    body = np.zeros((20, 20), np.float32)
    body[4:16, 4:16] = 100.0
    m = results.body_mask(body)
    assert m.sum() == 144 and m[10, 10] and not m[0, 0]
    assert messages.range_text((-0.5, 0.5)) == "±0.5" and messages.range_text((0, 0.25)) == "0 to 0.25"


def test_evidence_surfaces_per_sign():
    shown = np.zeros((30, 30, 30), np.float32)
    shown[2:8, 2:8, 2:8] = 1.0
    shown[20:26, 20:26, 20:26] = -1.0
    two = evidence.evidence_surfaces(shown, get_spec("kernel_shap"), {}, "M", (1, 1, 1), (0, 0, 0))
    assert [(s.colour, s.name) for s in two] == [("red", "M · strongest 5 % supports the RoI"),
                                                  ("blue", "M · strongest 5 % opposes the RoI")]
    # each surface volume is cut to the box around its surface (2 voxels of margin) and given
    # a one-voxel zero border: map voxel i sits at i - 2 + 1 there; the surface is where it was
    assert two[0].threshold == 1.0 and two[0].data.shape == (12, 12, 12) and two[0].translate == (-1, -1, -1)
    assert two[1].data.shape == (12, 12, 12) and two[1].translate == (17, 17, 17) and two[0].scale == (1, 1, 1)
    for s_, cube in zip(two, ((2, 8), (20, 26))):
        world = np.argwhere(s_.data >= s_.threshold) + np.array(s_.translate)
        want = np.argwhere(np.ones((6, 6, 6))) + cube[0]
        np.testing.assert_array_equal(world, want)
    one = evidence.evidence_surfaces(shown, get_spec("seg_grad_cam"), {}, "C", (1, 1, 1), (0, 0, 0))
    assert [s.colour for s in one] == ["red"]                                  # one-sided: no opposing surface
    big = np.zeros((100, 100, 100), np.float32)
    big[10:30, 10:30, 10:30] = 1.0          # a 24³ box around it: under the bound, full resolution
    s = evidence.evidence_surfaces(big, get_spec("kernel_shap"), {}, "B", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))[0]
    assert s.data.shape == (26, 26, 26) and s.scale == (1.0, 1.0, 1.0) and s.translate == (7.0, 7.0, 7.0)
    big[:, :, :] = 0
    big[5:95, 5:95, 5:95] = 1.0             # a box over the bound: max-pooled
    s = evidence.evidence_surfaces(big, get_spec("kernel_shap"), {}, "B", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))[0]
    assert s.data.shape == (49, 49, 49) and s.scale == (2.0, 2.0, 2.0) and s.translate == (1.5, 1.5, 1.5)


# ------------------------------------------------------------------------- messages --
def test_why_not_and_method_availability():
    info3 = {"spatial_dims": 3, "name": "/m/brain3d", "hookable": False}
    info2 = {"spatial_dims": 2, "name": "m2", "hookable": True}
    cam, grad = get_spec("seg_grad_cam"), get_spec("gradient")
    assert messages.explain_why_not(None, None, info2, grad, "a") == "Add or choose an image layer"
    assert messages.explain_why_not("t1", 2, None, grad, "a", model_loading=True) == "Loading the model …"
    assert messages.explain_why_not("t1", 2, None, grad, "a") == "Choose a model that loads"
    assert messages.explain_why_not("t1", 2, info3, grad, "a") == \
        "'brain3d' is a 3D model but 't1' is a 2D image: choose a 2D model"
    assert messages.explain_why_not("t1", 3, info3, cam, "a") == \
        "Seg-Grad-CAM needs the network's layers; this compiled model has none: pick a gradient method"
    assert messages.explain_why_not("t1", 2, info2, grad, "") == "Choose the class to explain"
    assert messages.explain_why_not("t1", 2, info2, grad, "a") == ""
    assert messages.method_unavailable(cam, info3) == \
        "needs a network whose layers can be hooked (not TorchScript / exported)"
    assert messages.method_unavailable(grad, None) == ""
    # our errors whole, a newline escaped so it cannot forge a line (errors.first_line, as the CLI prints)
    assert messages.one_line(InputMismatchError("first\nsecond")) == "first\\nsecond"
    assert messages.one_line(ValueError("bad x")) == "ValueError: bad x"
    assert messages.cost_unknown(ValueError("n")) == "Cost: — (ValueError: n)"


# -------------------------------------------------------------------------- Agg2Exp --
class Result:
    """The part of an Agg2ExpResult a cell needs (row/column names, one matrix)."""

    row_names = ["background", "liver", "lesion"]
    col_names = ["background", "liver", "lesion"]

    def matrix(self, scope=None, kind="mass"):
        return np.array([[np.nan] * 3, [0.1, 0.6, 0.3], [0.2, 0.25, 0.55]])


def test_agg2exp_cell_layer_and_texts():
    labels = np.zeros((10, 10), np.int32)
    labels[2:6, 2:6] = 2
    attr = np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10)
    maps = {"image": "ct", "labels": labels, "attributions": {1: attr}}
    spec = get_spec("gradient")
    cell = agg2exp.cell_layer(Result(), spec, {"method": "gradient", "model": "m", "params": {"n": 1}}, maps, 1, 2)
    assert cell.name == "Vanilla gradient · liver in lesion" and cell.voxels == 16 and cell.mass == 0.3
    assert np.array_equal(cell.data != 0, (labels == 2) & (attr != 0))
    peak = float(np.abs(attr[2:6, 2:6]).max())
    assert cell.limits == pytest.approx((-peak, peak)) and cell.range == pytest.approx((-peak, peak))
    assert (cell.info["region"], cell.info["target_index"], cell.info["agg2exp_mass"], cell.info["source"]) == \
        ("lesion", 1, 0.3, "agg2exp")
    assert cell.info["legend"].startswith("Red to yellow: brightening these voxels would make the model more sure "
                                          "this is liver")
    assert agg2exp.cell_status(Result(), cell, 1, 2, "global mean") == \
        "liver ← lesion: 30.0 % of liver's |attribution| (global mean); layer shows ct, 16 voxels"
    text = agg2exp.cell_text(Result(), Result().matrix(), "mass", 2, 1)
    assert text.startswith("lesion ← liver: 25.0 % (") and text.endswith("). Click to show it as a layer.")
    assert agg2exp.global_csv_path(Path("/o/local_importance.csv")) == Path("/o/global_importance.csv")
    assert agg2exp.global_csv_path(Path("/o/run.csv")) == Path("/o/run_global.csv")
    assert agg2exp.run_key("m", "cpu", "gradient", {"b": 2, "a": 1}) == \
        ("m", "cpu", "gradient", (("a", "1"), ("b", "2")))
    order = agg2exp.method_order(specs())
    multi = [s.caps.multiclass for s in order]
    assert multi == sorted(multi, reverse=True)                               # shared passes first
    assert agg2exp.default_method([s.name for s in order]) in {s.name for s in order}


def test_context_volume_is_the_body_shifted_to_zero_and_nothing_outside():
    """The 3D context: the anatomy inside the body (here the prediction's foreground), its
    1st percentile at 0, 0 outside, contrast up to the body's 99th percentile."""
    from seg_explain.frontend.anatomy import context_volume

    rng = np.random.default_rng(3)
    img = rng.normal(-200.0, 50.0, (12, 14, 10)).astype(np.float32)       # CT-like: negative inside
    pred = np.zeros(img.shape, np.int64)
    pred[3:9, 4:10, 2:8] = 2
    cv = context_volume(img, pred, "ct")
    inside = img[pred > 0]
    lo, hi = np.percentile(inside, 1), np.percentile(inside, 99)
    assert cv.name == "ct · 3D context" and cv.data.dtype == np.float32
    assert not cv.data[pred == 0].any()
    np.testing.assert_allclose(cv.data[pred > 0], np.clip(inside - lo, 0, None), rtol=1e-6)
    assert cv.contrast_limits == pytest.approx((0.0, hi - lo))


def test_evidence_surfaces_are_closed_at_the_volume_edge():
    """A CAM that fills a corner: its surface volume gets a zero border (and the geometry moves
    by one voxel), so the iso-surface closes instead of being cut open at the edge."""
    from types import SimpleNamespace

    from seg_explain.frontend.evidence import evidence_surfaces

    cam = np.zeros((10, 12, 8), np.float32)
    cam[:4, :5, :3] = 1.0 + np.arange(60, dtype=np.float32).reshape(4, 5, 3) / 600    # touches three faces
    spec = SimpleNamespace(caps=SimpleNamespace(map_kind="heatmap"), is_one_sided=lambda p: True)
    (s,) = evidence_surfaces(cam, spec, {}, "cam", (2.0, 1.5, 1.0), (-4.0, 3.0, 0.5))
    assert s.colour == "red" and s.threshold > 1.0
    assert not s.data[0].any() and not s.data[:, 0].any() and not s.data[:, :, 0].any()
    assert not s.data[-1].any() and not s.data[:, -1].any() and not s.data[:, :, -1].any()
    # the surface's voxels are where they were, in world coordinates
    sc, tr = np.array(s.scale), np.array(s.translate)
    world = np.argwhere(s.data >= s.threshold) * sc + tr
    want = np.argwhere(cam >= s.threshold) * sc + np.array((-4.0, 3.0, 0.5))
    np.testing.assert_allclose(world, want)
    assert s.scale == pytest.approx((2.0, 1.5, 1.0))


def test_expected_mistakes_go_to_the_debug_log_bugs_to_the_terminal(caplog):
    """A job stopped by an expected mistake shows one line and logs its traceback at DEBUG
    only (Python's last-resort handler prints WARNING and above to the terminal); an
    unexpected error is logged as a warning with its traceback, to be reported."""
    import logging

    from seg_explain.errors import InputMismatchError
    from seg_explain.frontend.jobs import Failure, guarded, log

    def job(exc):
        yield 1
        raise exc

    caplog.set_level(logging.DEBUG, logger=log.name)
    f = finish(guarded(job, InputMismatchError("the RoI layer has shape (3, 4), not the image's (5, 6)")))
    assert isinstance(f, Failure) and f.message == "the RoI layer has shape (3, 4), not the image's (5, 6)"
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [(logging.DEBUG, True)]
    caplog.clear()
    f = finish(guarded(job, RuntimeError("boom")))
    assert f.message == "RuntimeError: boom"
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [(logging.WARNING, True)]
