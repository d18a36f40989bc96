"""Gradient family against independent references: torch autograd, Captum, a planted cause."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import close, make_unet, present_class, wrap

from seg_explain import explain
from seg_explain.errors import InputMismatchError, MethodError
from seg_explain.explainers.base import drive, explain_iter
from seg_explain.explainers.multiclass import explain_classes, explain_classes_iter

RTOL = 1e-4

SHAPES = {2: (32, 40), 3: (16, 24, 20)}


def image(sd, rng, channels=None):
    shape = SHAPES[sd] if channels is None else (channels,) + SHAPES[sd]
    return rng.normal(size=shape).astype(np.float32)


def f_hat_fn(net, c, roi):
    """f̂ per batch row, written directly on the network (no SegModel code)."""
    r = torch.as_tensor(roi, dtype=torch.float32)

    def f(xb):
        return (net(xb)[:, c] * r).flatten(1).sum(1)
    return f


def autograd_of(f, x):
    xt = torch.as_tensor(x)[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xt).sum(), xt)
    return g[0].numpy()


def test_vanilla_gradient_equals_autograd(sd_model, rng):
    sd, model = sd_model
    x = image(sd, rng)
    c, roi = present_class(model, x)
    e = explain(model, x, "gradient", target=c)
    ref = autograd_of(f_hat_fn(model.network, c, roi), x[None])
    assert e.attribution.shape == x.shape and e.attribution.dtype == np.float32
    close(e.attribution, ref[0])
    assert (e.roi == roi).all()
    assert e.n_forward == 2 and e.n_backward == 1  # clean prediction + one gradient pass


def test_gradient_user_roi_and_intersection(unet2d, rng):
    x = image(2, rng)
    c, pred_roi = present_class(unet2d, x)
    mask = np.zeros(x.shape, bool)
    mask[4:20, 6:30] = True
    e = explain(unet2d, x, "gradient", target=c, roi=mask)
    close(e.attribution, autograd_of(f_hat_fn(unet2d.network, c, mask), x[None])[0])
    e2 = explain(unet2d, x, "gradient", target=c, roi=mask, roi_mode="intersection")
    close(e2.attribution, autograd_of(f_hat_fn(unet2d.network, c, mask & pred_roi), x[None])[0])


def test_multichannel_keeps_per_channel(rng):
    model = wrap(make_unet(2, in_channels=2), 2, in_channels=2)
    x = image(2, rng, channels=2)
    c, roi = present_class(model, x)
    e = explain(model, x, "gradient", target=c)
    ref = autograd_of(f_hat_fn(model.network, c, roi), x)
    assert e.per_channel.shape == (2,) + x.shape[1:]
    close(e.per_channel, ref)
    close(e.attribution, ref.sum(0))


@pytest.mark.parametrize("baseline", ["zero", "min", "mean", "blur"])
def test_integrated_gradients_equals_captum(sd_model, rng, baseline):
    from captum.attr import IntegratedGradients
    from scipy.ndimage import gaussian_filter

    sd, model = sd_model
    if sd == 3 and baseline in ("mean", "blur"):
        pytest.skip("2D covers the remaining baselines")
    x = image(sd, rng)
    c, roi = present_class(model, x)
    e = explain(model, x, "integrated_gradients", target=c, baseline=baseline, steps=20, batch_size=7)
    base = {"zero": np.zeros_like(x), "min": np.full_like(x, x.min()), "mean": np.full_like(x, x.mean()),
            "blur": gaussian_filter(x, 5.0, mode="nearest")}[baseline]
    ig = IntegratedGradients(f_hat_fn(model.network, c, roi))
    attr, delta = ig.attribute(torch.as_tensor(x)[None, None], baselines=torch.as_tensor(base)[None, None],
                               n_steps=20, method="riemann_right", return_convergence_delta=True)
    close(e.attribution, attr[0, 0].numpy())
    # the completeness gap we report is Captum's convergence delta
    f = f_hat_fn(model.network, c, roi)
    with torch.no_grad():
        fx, fb = float(f(torch.as_tensor(x)[None, None])), float(f(torch.as_tensor(base)[None, None]))
    assert e.extras["f_x"] == pytest.approx(fx, rel=1e-4, abs=1e-3)
    assert e.extras["f_baseline"] == pytest.approx(fb, rel=1e-4, abs=1e-3)
    assert e.extras["completeness_gap"] == pytest.approx(float(delta), rel=1e-3, abs=1e-4 * max(1.0, abs(fx - fb)))
    assert e.extras["ig_sum"] == pytest.approx(float(e.attribution.sum()), rel=1e-4, abs=1e-3)
    assert e.n_forward == 1 + 20 + 1 and e.n_backward == 20


def test_integrated_gradients_array_and_number_baseline(unet2d, rng):
    x = image(2, rng)
    c, roi = present_class(unet2d, x)
    b = rng.normal(size=x.shape).astype(np.float32)
    e1 = explain(unet2d, x, "integrated_gradients", target=c, baseline=b, steps=5)
    e2 = explain(unet2d, x, "integrated_gradients", target=c, baseline=b[None], steps=5)
    close(e1.attribution, e2.attribution)
    # the reported gap is the map's sum minus f̂(x) − f̂(b), with f̂ computed here from the network
    f = f_hat_fn(unet2d.network, c, roi)
    with torch.no_grad():
        fx, fb = float(f(torch.as_tensor(x)[None, None])), float(f(torch.as_tensor(b)[None, None]))
    want = float(e1.attribution.astype(np.float64).sum()) - (fx - fb)
    assert e1.extras["completeness_gap"] == pytest.approx(want, rel=1e-3, abs=1e-3 * max(1.0, abs(fx - fb)))
    e3 = explain(unet2d, x, "integrated_gradients", target=c, baseline=0.0, steps=5)
    e4 = explain(unet2d, x, "integrated_gradients", target=c, baseline="zero", steps=5)
    close(e3.attribution, e4.attribution)
    with pytest.raises(InputMismatchError, match="baseline"):
        explain(unet2d, x, "integrated_gradients", target=c, baseline=np.zeros((3, 3)))
    with pytest.raises(MethodError, match="baseline"):
        explain(unet2d, x, "integrated_gradients", target=c, baseline="median")


def test_smoothgrad_zero_noise_equals_gradient(sd_model, rng):
    sd, model = sd_model
    x = image(sd, rng)
    c, _ = present_class(model, x)
    vg = explain(model, x, "gradient", target=c)
    sg = explain(model, x, "smoothgrad", target=c, noise_level=0.0, n_samples=3)
    close(sg.attribution, vg.attribution)


def test_smoothgrad_equals_manual_mean_of_noisy_gradients(unet2d, rng):
    """The documented noise (seeded per sample, σ = level·range) and a plain signed mean."""
    x = image(2, rng)
    c, roi = present_class(unet2d, x)
    n, level, seed = 5, 0.1, 3
    e = explain(unet2d, x, "smoothgrad", target=c, n_samples=n, noise_level=level, seed=seed, batch_size=2)
    f = f_hat_fn(unet2d.network, c, roi)
    sigma = level * (x.max() - x.min())
    grads = []
    for i in range(n):
        noise = torch.randn((1,) + x.shape, generator=torch.Generator().manual_seed(seed * 1000003 + i))
        grads.append(autograd_of(f, (torch.as_tensor(x)[None] + sigma * noise).numpy()))
    close(e.attribution, np.mean(grads, 0)[0])
    assert e.extras["sigma"] == pytest.approx(sigma, rel=1e-6)
    assert e.n_forward == 1 + n and e.n_backward == n
    # same seed, same map; another seed, another map
    close(explain(unet2d, x, "smoothgrad", target=c, n_samples=n, seed=seed).attribution, e.attribution)
    assert not np.allclose(explain(unet2d, x, "smoothgrad", target=c, n_samples=n, seed=4).attribution,
                           e.attribution)


def test_smoothgrad_equals_captum_noise_tunnel_without_noise(unet2d, rng):
    from captum.attr import NoiseTunnel, Saliency

    x = image(2, rng)
    c, roi = present_class(unet2d, x)
    nt = NoiseTunnel(Saliency(f_hat_fn(unet2d.network, c, roi)))
    ref = nt.attribute(torch.as_tensor(x)[None, None], nt_type="smoothgrad", nt_samples=3, stdevs=0.0, abs=False)
    e = explain(unet2d, x, "smoothgrad", target=c, n_samples=3, noise_level=0.0)
    close(e.attribution, ref[0, 0].numpy())


# ------------------------------------------------------------------ planted cause --
class PlantedCause(torch.nn.Module):
    """Class-1 logits over the right half depend only on a block in the far left corner.

    features: pointwise conv + tanh; the class-1 logit everywhere is a fixed spatial bias
    (positive on the right half) plus a weighted mean of the features inside the cause block.
    """

    def __init__(self, sd: int, shape, cause):
        super().__init__()
        conv = torch.nn.Conv2d if sd == 2 else torch.nn.Conv3d
        torch.manual_seed(0)
        self.feat = conv(1, 4, 1)
        self.mix = conv(4, 1, 1)
        bias = -torch.ones(shape)
        bias[..., shape[-1] // 2:] = 1.0
        self.register_buffer("bias", bias)
        m = torch.zeros(shape)
        m[cause] = 1.0
        self.register_buffer("cause", m / m.sum())

    def forward(self, x):
        h = self.mix(torch.tanh(self.feat(x)))[:, 0]                      # (B, *S)
        drive = (h * self.cause).flatten(1).sum(1)                        # (B,)
        one = self.bias[None] + 0.5 * torch.tanh(drive).reshape((-1,) + (1,) * (x.ndim - 2))
        return torch.stack([torch.zeros_like(one), one], 1)


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("method", ["gradient", "smoothgrad", "integrated_gradients"])
def test_planted_cause_gets_the_gradient_mass(sd, method, rng):
    shape = (32, 32) if sd == 2 else (16, 16, 16)
    cause = (slice(0, 6),) * sd
    net = PlantedCause(sd, shape, cause).eval()
    model = wrap(net, sd, n_classes=2, divisor=1)
    x = rng.uniform(0, 1, size=shape).astype(np.float32)
    params = {"n_samples": 4} if method == "smoothgrad" else {}
    e = explain(model, x, method, target=1, **params)
    assert e.roi[..., shape[-1] // 2:].all() and not e.roi[..., : shape[-1] // 2].any()
    a = np.abs(e.attribution)
    assert a.sum() > 0
    assert a[cause].sum() / a.sum() > 0.99


# -------------------------------------------------------------------- multi-class --
@pytest.mark.parametrize("method,params", [("gradient", {}), ("smoothgrad", {"n_samples": 3}),
                                           ("integrated_gradients", {"steps": 4})])
def test_multiclass_equals_per_class_with_fewer_forwards(unet2d, rng, method, params):
    x = image(2, rng)
    exps = explain_classes(unet2d, x, method, seed=1, batch_size=2, **params)
    pred = unet2d.predict(x)
    assert [e.target for e in exps] == sorted(np.unique(pred).tolist())
    per_class_fwd = 0
    for e in exps:
        ref = explain(unet2d, x, method, target=e.target, seed=1, batch_size=2, **params)
        close(e.attribution, ref.attribution)
        assert (e.roi == ref.roi).all() and (e.roi == (pred == e.target)).all()
        per_class_fwd += ref.n_forward
        assert e.n_backward == ref.n_backward
        if method == "integrated_gradients":
            assert e.extras["completeness_gap"] == pytest.approx(ref.extras["completeness_gap"], rel=1e-3, abs=1e-3)
    shared = exps[0].extras["shared_passes"]
    assert shared["n_classes"] == len(exps) > 1
    assert shared["n_forward"] < per_class_fwd
    assert shared["n_backward"] == sum(e.n_backward for e in exps)


def test_multiclass_fallback_for_methods_without_a_shared_form(unet2d, rng):
    """A method with no multi-class form runs per class on the shared prepared image."""
    from seg_explain.explainers.registry import REGISTRY, MethodSpec, Param, register

    def roi_logits(ctx, scale=1.0):
        yield (0, 1)
        logits = ctx.forward(ctx.x[None])[0]
        return scale * logits[ctx.target] * ctx.roi

    register(MethodSpec("_test_roi_logits", roi_logits, title="test", question="test", source="test",
                        params=(Param("scale", "float", 1.0, "a factor"),), unit="logits"))
    try:
        x = image(2, rng)
        exps = explain_classes(unet2d, x, "_test_roi_logits", scale=2.0)
        assert len(exps) > 1
        for e in exps:
            close(e.attribution, explain(unet2d, x, "_test_roi_logits", target=e.target, scale=2.0).attribution)
            assert e.n_forward == 2  # its own pass + the shared clean prediction
        sp = exps[0].extras["shared_passes"]
        assert sp["shared_forward"] is False and sp["n_forward"] == 1 + len(exps)
    finally:
        REGISTRY.pop("_test_roi_logits", None)


def test_multiclass_subset_and_absent_classes(unet2d, rng):
    x = image(2, rng)
    present = sorted(np.unique(unet2d.predict(x)).tolist())
    exps = explain_classes(unet2d, x, "gradient", classes=[unet2d.class_names[present[-1]], present[0]])
    assert [e.target for e in exps] == [present[-1], present[0]]
    with pytest.raises(InputMismatchError, match="Unknown target class"):
        explain_classes(unet2d, x, "gradient", classes=[9])


def test_multiclass_generator_progress_and_cancel(unet2d, rng):
    x = image(2, rng)
    gen = explain_classes_iter(unet2d, x, "smoothgrad", n_samples=4, batch_size=1)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            exps = stop.value
            break
    assert len(steps) >= 4 and all(d <= t for d, t in steps) and len(exps) >= 1
    gen = explain_iter(unet2d, x, "smoothgrad", target=exps[0].target, n_samples=4, batch_size=1)
    next(gen), next(gen)
    gen.close()  # cancel between batches


def test_progress_callback(unet2d, rng):
    x = image(2, rng)
    c, _ = present_class(unet2d, x)
    seen = []
    drive(explain_iter(unet2d, x, "integrated_gradients", target=c, steps=6, batch_size=2),
          lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)


# ---------------------------------------------------------------------- bad input --
def test_bad_input_errors(unet2d, rng):
    x = image(2, rng)
    c, _ = present_class(unet2d, x)
    with pytest.raises(InputMismatchError, match="Unknown target class"):
        explain(unet2d, x, "gradient", target=7)
    with pytest.raises(InputMismatchError, match="Unknown target class"):
        explain(unet2d, x, "gradient", target="liver")
    with pytest.raises(InputMismatchError, match="RoI shape"):
        explain(unet2d, x, "gradient", target=c, roi=np.ones((8, 8), bool))
    with pytest.raises(InputMismatchError, match="Empty RoI"):
        explain(unet2d, x, "gradient", target=c, roi=np.zeros(x.shape, bool))
    absent = [k for k in range(4) if not (unet2d.predict(x) == k).any()]
    if absent:
        with pytest.raises(InputMismatchError, match="Empty RoI"):
            explain(unet2d, x, "gradient", target=absent[0])
    with pytest.raises(MethodError, match="n_samples"):
        explain(unet2d, x, "smoothgrad", target=c, n_samples=0)
    with pytest.raises(MethodError, match="noise_level"):
        explain(unet2d, x, "smoothgrad", target=c, noise_level=-1)
    with pytest.raises(MethodError, match="steps"):
        explain(unet2d, x, "integrated_gradients", target=c, steps=2.5)
    with pytest.raises(MethodError, match="no parameter"):
        explain(unet2d, x, "gradient", target=c, n_samples=3)
    with pytest.raises(MethodError, match="Unknown method"):
        explain(unet2d, x, "gradcam++", target=c)
    with pytest.raises(InputMismatchError, match="2D model"):
        explain(unet2d, rng.normal(size=(2, 3, 8, 8)).astype(np.float32), "gradient", target=c)


def test_parameters_are_checked_and_named(unet2d, rng):
    x = image(2, rng)
    c, _ = present_class(unet2d, x)
    for bad in (float("inf"), float("nan"), "x", True):
        with pytest.raises(MethodError, match="smoothgrad: noise_level"):
            explain(unet2d, x, "smoothgrad", target=c, noise_level=bad)
    for bad in (0, 2.5, "many", True, float("inf")):
        with pytest.raises(MethodError, match="smoothgrad: n_samples"):
            explain(unet2d, x, "smoothgrad", target=c, n_samples=bad)
        with pytest.raises(MethodError, match="integrated_gradients: steps"):
            explain(unet2d, x, "integrated_gradients", target=c, steps=bad)
    # text fields from the GUI/CLI: "3" and "0.05" are fine
    a = explain(unet2d, x, "smoothgrad", target=c, n_samples="3", noise_level="0.05").attribution
    b = explain(unet2d, x, "smoothgrad", target=c, n_samples=3, noise_level=0.05).attribution
    close(a, b)
    bad_base = rng.normal(size=x.shape).astype(np.float32)
    bad_base[3, 4] = np.nan
    with pytest.raises(InputMismatchError, match="baseline.*1 non-finite"):
        explain(unet2d, x, "integrated_gradients", target=c, baseline=bad_base)
    with pytest.raises(MethodError, match="baseline"):
        explain(unet2d, x, "integrated_gradients", target=c, baseline=float("inf"))
    with pytest.raises(MethodError, match="blur"):
        explain(unet2d, x, "integrated_gradients", target=c, baseline="blur:-1")


class ScaleInvariant(torch.nn.Module):
    """conv -> instance norm -> tanh -> 1x1 conv: f(a·x) = f(x) for every a > 0 (up to eps),
    so IG along a ray from the zero baseline sums to x·∇f(x) = 0 (Euler) however many
    steps it takes, while f(x) − f(0) is not 0: the planted cause of a completeness gap."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.norm = torch.nn.InstanceNorm2d(6, eps=1e-12)
        self.head = torch.nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.norm(self.conv(x))))


class Smooth(torch.nn.Module):
    """No normalisation: IG converges to completeness with enough steps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.head = torch.nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.a(x)))


def test_integrated_gradients_warns_about_a_completeness_gap(rng):
    x = rng.uniform(0.2, 1.0, size=(24, 24)).astype(np.float32)
    roi = np.zeros(x.shape, bool)
    roi[6:18, 6:18] = True
    inv = wrap(ScaleInvariant().eval(), 2, n_classes=2, divisor=1)
    e = explain(inv, x, "integrated_gradients", target=1, roi=roi, baseline="zero", steps=20)
    ex = e.extras
    assert abs(ex["f_x"] - ex["f_baseline"]) > 1.0
    assert abs(ex["ig_sum"]) < 1e-3 * abs(ex["f_x"] - ex["f_baseline"])     # Euler: x·∇f(x) = 0
    assert ex["completeness_gap_rel"] > 0.99
    assert len(ex["warnings"]) == 1 and "baseline='zero'" in ex["warnings"][0]
    assert "try baseline='mean'" in ex["warnings"][0]
    # the same method on a network without normalisation: complete, no warning
    smooth = wrap(Smooth().eval(), 2, n_classes=2, divisor=1)
    ok = explain(smooth, x, "integrated_gradients", target=1, roi=roi, baseline="zero", steps=50)
    assert ok.extras["completeness_gap_rel"] < 0.05 and ok.extras["warnings"] == []
