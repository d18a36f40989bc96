"""Evaluation protocols (protocols.py, metrics.evaluate(protocol=...)): the Agg2Exp authors'
Quantus rules change exactly what they should, checked against re-derivations written from
the authors' scripts and Quantus' algorithms (FaithfulnessCorrelation, AvgSensitivity with
uniform_noise, normalise_by_max), not from our code; and ``classes`` normalised once."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from seg_explain import InputMismatchError, explain
from seg_explain.dataset import evaluate, image_seed
from seg_explain.metrics import plan_evaluation
from seg_explain.models import SegModel
from seg_explain.protocols import AUTHORS_SUBSET

N = 256          # 256² = 65536 voxels: room for the authors' 224² = 50176-voxel subsets


def threshold_model() -> SegModel:
    """Class 1 where x > 0.5 (logit x − 0.5), class 0 elsewhere (logit 0); voxel-wise, so a
    voxel set to 0 leaves the class-1 region: the recomputed RoI differs from the fixed one."""
    net = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 1.0
        net.bias[1] = -0.5
    return SegModel(net.eval(), spatial_dims=2, in_channels=1, class_names=["bg", "fg"], device="cpu")


def planted_image() -> np.ndarray:
    x = np.random.default_rng(3).random((N, N)).astype(np.float32)
    x[0, 0] = 0.0                                   # the image minimum (the removal baseline) is 0
    return x


def quantus_faithfulness(model, x, a, c, subsets, recompute: bool) -> float:
    """FaithfulnessCorrelation as the authors ran it: ``a`` normalised by max |a|, removed
    voxels set to the image minimum ("black"), f = Σ class-c logits over the class-c region of
    the *input's own* prediction (``recompute``) or of the clean one."""
    a = (a / np.abs(a).max()).ravel()
    clean = model.logits(x)
    roi = clean.argmax(0) == c

    def f(img):
        lg = model.logits(img)
        own = lg.argmax(0) == c if recompute else roi
        return float((lg[c] * own).sum())

    f0 = f(x)
    sums, deltas = [], []
    for s in subsets:
        xs = x.copy().ravel()
        xs[s] = x.min()
        sums.append(a[s].sum())
        deltas.append(f0 - f(xs.reshape(x.shape)))
    return float(scipy.stats.pearsonr(sums, deltas)[0])


def draws(name: str, c: int, n: int, m: int, p: int, seed: int = 0):
    """The metric's documented draws: a generator seeded by (seed, image_seed, class); the
    faithfulness subsets first, then the sensitivity noise."""
    rng = np.random.default_rng([seed, image_seed(seed, name), c])
    return rng, [rng.choice(p, size=m, replace=False) for _ in range(n)]


def test_recomputed_roi_faithfulness_follows_the_perturbed_prediction():
    model, x = threshold_model(), planted_image()
    R = x > 0.5
    # IG on this linear model is exact: (x − baseline) on the RoI. From 0 it is the exact
    # contribution of each voxel to f̂ with the RoI fixed (a removed voxel's logit x − 0.5 -> −0.5);
    # from 0.5 it is the contribution with the RoI recomputed (a removed voxel leaves the region).
    ig0 = ("IG from 0", "integrated_gradients", {"baseline": "zero", "steps": 2})
    ig_half = ("IG from 0.5", "integrated_gradients", {"baseline": np.full((N, N), 0.5, np.float32), "steps": 2})
    kw = dict(classes=["fg"], names=["planted"], n_faithfulness=40, n_sensitivity=0)
    ours = {r["method"]: r["faithfulness"] for r in evaluate(model, [x], [ig0, ig_half], **kw).rows}
    res = evaluate(model, [x], [ig0, ig_half], protocol="agg2exp", **kw)
    theirs = {r["method"]: r["faithfulness"] for r in res.rows}
    assert ours["IG from 0"] == pytest.approx(1.0, abs=1e-9)
    assert theirs["IG from 0.5"] == pytest.approx(1.0, abs=1e-9)
    assert ours["IG from 0.5"] < 0.99 and theirs["IG from 0"] < 0.99
    # the authors' subset size, and the value itself against the Quantus-style re-derivation
    assert res.settings["subset"] == AUTHORS_SUBSET == 50176
    _, subsets = draws("planted", 1, 40, AUTHORS_SUBSET, N * N)
    a0 = explain(model, x, "integrated_gradients", target=1, baseline="zero", steps=2).attribution
    np.testing.assert_allclose(a0, np.where(R, x, 0), atol=1e-6)
    want = quantus_faithfulness(model, x, a0, 1, subsets, recompute=True)
    assert theirs["IG from 0"] == pytest.approx(want, abs=1e-6)
    assert want != pytest.approx(quantus_faithfulness(model, x, a0, 1, subsets, recompute=False), abs=1e-3)


def test_sensitivity_uses_absolute_noise_and_the_noisy_prediction():
    """Vanilla gradient of the threshold model is the RoI itself: with the RoI recomputed,
    the map of a noisy copy is that copy's region; with it fixed, it never changes."""
    model = threshold_model()
    x = planted_image() * 3.0          # range 3: absolute noise 0.1 ≠ 0.1 × range
    kw = dict(classes=[1], names=["noisy"], n_faithfulness=2, subset=0.01, n_sensitivity=3)
    ours = evaluate(model, [x], ["gradient"], **kw).rows[0]["sensitivity"]
    theirs = evaluate(model, [x], ["gradient"], protocol="agg2exp", **kw).rows[0]["sensitivity"]
    assert ours == 0.0
    R = (x > 0.5).astype(np.float64)

    def avg_sensitivity(scale):
        """AvgSensitivity: ‖a − a'‖ / ‖a‖ (both max-normalised), a' the map of x + U(−.1, .1)·scale."""
        vals = []
        g, _ = draws("noisy", 1, 2, int(round(0.01 * N * N)), N * N)
        for _ in range(3):
            eps = g.uniform(-0.1, 0.1, size=(1, N, N)).astype(np.float32) * scale
            Rk = ((x + eps[0]) > 0.5).astype(np.float64)
            vals.append(np.linalg.norm(R - Rk) / np.linalg.norm(R))
        return float(np.mean(vals))

    assert theirs == pytest.approx(avg_sensitivity(1.0), rel=1e-9)
    assert theirs != pytest.approx(avg_sensitivity(float(x.max() - x.min())), rel=1e-2)


def test_kernel_shap_keeps_the_clean_segments_in_sensitivity():
    """The authors' KernelSHAP wrapper kept the clean prediction (segments and RoI) for noisy
    copies. On the threshold model, semantic KernelSHAP (2 segments, exact) then paints
    φ = Σ_R x' on the clean region R only: every noisy map equals the clean one after
    normalising (sensitivity 0), while the gradient, whose RoI follows the noisy prediction, moves."""
    model = threshold_model()
    x = planted_image()[:64, :64].copy()
    methods = [("ks", "kernel_shap", {"features": "semantic", "n_samples": 2, "baseline": "zero"}), "gradient"]
    res = evaluate(model, [x], methods, classes=[1], n_faithfulness=2, subset=0.05, n_sensitivity=2,
                   protocol="agg2exp")
    sens = {r["method"]: r["sensitivity"] for r in res.rows}
    assert sens["ks"] == pytest.approx(0.0, abs=1e-12)
    assert sens["gradient"] > 0.05


def test_fresh_explainer_noise_on_the_sample_model(sample_bundle2d):
    """With no input noise at all, SmoothGrad with its own seed reproduces its map (sensitivity
    0); the authors' protocol draws new SmoothGrad noise for every copy (> 0). A deterministic
    method stays at 0 under both: the seed is the only difference."""
    from seg_explain import load_image, load_model
    from seg_explain.paths import sample_path

    model = load_model(sample_bundle2d, device="cpu")
    img = load_image(sample_path("brain2d", "colin27_axial_t1.tif"))
    methods = [("sg", "smoothgrad", {"n_samples": 3}), "gradient"]
    kw = dict(classes=[1], n_faithfulness=2, subset=0.05, n_sensitivity=2, noise=0.0)
    ours = {r["method"]: r["sensitivity"] for r in evaluate(model, [img], methods, **kw).rows}
    theirs = {r["method"]: r["sensitivity"] for r in evaluate(model, [img], methods, protocol="agg2exp", **kw).rows}
    assert ours == {"sg": 0.0, "gradient": 0.0}
    assert theirs["gradient"] == 0.0
    assert theirs["sg"] > 0.05


def test_authors_subset_larger_than_the_image_is_a_clear_error(unet2d):
    img = np.zeros((64, 64), np.float32)
    img[20:40, 20:40] = 1
    with pytest.raises(InputMismatchError, match="larger than the image") as ei:
        evaluate(unet2d, [img], ["gradient"], classes=[0], n_faithfulness=2, n_sensitivity=0, protocol="agg2exp")
    assert "\n" not in str(ei.value)
    from seg_explain.errors import MethodError

    with pytest.raises(MethodError, match="protocol must be one of default, agg2exp"):
        plan_evaluation(unet2d, ["gradient"], protocol="quantus")


def test_protocol_is_part_of_the_resume_fingerprint(unet2d):
    ours = plan_evaluation(unet2d, ["gradient"], subset=0.05, baseline="min").describe()
    theirs = plan_evaluation(unet2d, ["gradient"], subset=0.05, baseline="min", protocol="agg2exp").describe()
    assert theirs == {**ours, "protocol": "agg2exp"}
    assert "protocol" not in ours          # run folders written before protocols still resume


def test_cli_protocol_option(bundle3d, tmp_path, capsys):
    import csv

    import nibabel as nib

    from seg_explain.cli import main

    p = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 100,
                             np.diag([2.0, 2.0, 2.0, 1.0])), str(p))
    common = ["evaluate", str(p), "--model", str(bundle3d), "--method", "gradient", "--n-faithfulness", "3",
              "--n-sensitivity", "1", "--classes", "0"]
    assert main([*common, "--out", str(tmp_path / "a"), "--protocol", "agg2exp", "--subset", "100"]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    a = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))[0]
    b = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))[0]
    assert a["faithfulness"] != b["faithfulness"]
    # the authors' default 50176 voxels do not fit a 16³ image: one line, exit 2
    code = main([*common, "--out", str(tmp_path / "c"), "--protocol", "agg2exp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and any("larger than the image" in ln for ln in err)
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "d"), "--protocol", "quantus"])


# --------------------------------------------------------------------------- classes --
@pytest.mark.parametrize("given, want", [
    (np.int64(1), [1]), (np.int32(2), [2]), (1, [1]), (np.array(3), [3]), ("class_2", [2]), ("2", [2]),
    ([np.int64(1), "class_2", 1], [1, 2]), ((0, np.uint8(3)), [0, 3]), (np.array([2, 1]), [2, 1]), (None, None)])
def test_classes_every_accepted_form(unet2d, given, want):
    from seg_explain.dataset import Agg2ExpRun

    assert plan_evaluation(unet2d, ["gradient"], classes=given).classes == want
    assert Agg2ExpRun(unet2d, [np.zeros((8, 8), np.float32)], "gradient", classes=given).classes == want


@pytest.mark.parametrize("given, match", [
    (1.5, "1.5 .float. is not a class"), (True, "True .bool. is not a class"), ("nope", "Unknown target class"),
    ([], "classes is empty"), ([1, None], "None .NoneType. is not a class"), (9, "Unknown target class 9")])
def test_classes_bad_forms_are_one_line_errors(unet2d, given, match):
    from seg_explain.dataset import Agg2ExpRun

    for make in (lambda: plan_evaluation(unet2d, ["gradient"], classes=given),
                 lambda: Agg2ExpRun(unet2d, [np.zeros((8, 8), np.float32)], "gradient", classes=given)):
        with pytest.raises(InputMismatchError, match=match) as ei:
            make()
        assert "\n" not in str(ei.value)


def test_evaluate_accepts_a_numpy_class(unet2d, rng):
    img = rng.standard_normal((32, 32)).astype(np.float32)
    want = evaluate(unet2d, [img], ["gradient"], classes=[0], n_faithfulness=5, n_sensitivity=0).rows
    got = evaluate(unet2d, [img], ["gradient"], classes=np.int64(0), n_faithfulness=5, n_sensitivity=0).rows
    assert len(got) == len(want) == 1
    assert (got[0]["class"], got[0]["faithfulness"], got[0]["complexity"]) == \
        (want[0]["class"], want[0]["faithfulness"], want[0]["complexity"])
