"""Seg-Grad-CAM / Seg-HiRes-Grad-CAM against maps built from plain forward/backward hooks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import close, make_unet, present_class, wrap

from seg_explain import explain, load_model
from seg_explain.errors import MethodError
from seg_explain.explainers.cams import find_layer
from seg_explain.explainers.multiclass import explain_classes

RTOL = 1e-4
SHAPES = {2: (32, 40), 3: (16, 24, 20)}
BOTTLENECK = "model.1.submodule.1.submodule"   # MONAI UNet, channels (4, 8, 16), strides (2, 2)


def hooked_cam(net, layer_name, x, c, roi, hires, relu=True, tensor_hook=False):
    """Reference CAM: forward hook keeps A, full backward hook keeps G = ∂f̂/∂A.

    ``tensor_hook``: G from a hook on the output tensor instead (a module's full backward
    hook cannot be used when the next op modifies the output in place)."""
    layer = dict(net.named_modules())[layer_name]
    keep = {}

    def fwd(m, i, o):
        keep["A"] = o.detach().clone()
        if tensor_hook:
            o.register_hook(lambda g: keep.__setitem__("G", g.detach()))

    h1 = layer.register_forward_hook(fwd)
    h2 = None if tensor_hook else layer.register_full_backward_hook(
        lambda m, gi, go: keep.__setitem__("G", go[0].detach()))
    xt = torch.as_tensor(x)[None, None].clone().requires_grad_(True)
    try:
        out = net(xt)
        (out[:, c] * torch.as_tensor(roi, dtype=out.dtype)).sum().backward()
    finally:
        h1.remove()
        if h2 is not None:
            h2.remove()
    A, G = keep["A"], keep["G"]
    if hires:
        m = (G * A).sum(1, keepdim=True)
    else:
        m = (G.mean(dim=tuple(range(2, G.ndim)), keepdim=True) * A).sum(1, keepdim=True)
    if relu:
        m = torch.relu(m)
    mode = "bilinear" if x.ndim == 2 else "trilinear"
    return F.interpolate(m, size=x.shape, mode=mode, align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("method,hires", [("seg_grad_cam", False), ("seg_hires_grad_cam", True)])
def test_cam_equals_hook_reference(sd_model, rng, method, hires):
    sd, model = sd_model
    x = rng.normal(size=SHAPES[sd]).astype(np.float32)
    c, roi = present_class(model, x)
    e = explain(model, x, method, target=c)
    assert e.extras["layer"] == BOTTLENECK
    assert e.extras["report"].startswith("Computed on the network's bottleneck (chosen automatically)")
    assert f"Layer: {BOTTLENECK}; {e.extras['layer_shape'][0]} feature maps of" in e.extras["report"]
    assert e.attribution.shape == x.shape
    ref = hooked_cam(model.network, BOTTLENECK, x, c, roi, hires)
    assert ref.max() > 0
    close(e.attribution, ref)
    assert (e.attribution >= 0).all()
    assert e.n_forward == 2 and e.n_backward == 1


def test_cam_without_relu_and_named_layer(unet2d, rng):
    x = rng.normal(size=SHAPES[2]).astype(np.float32)
    c, roi = present_class(unet2d, x)
    raw = explain(unet2d, x, "seg_hires_grad_cam", target=c, relu=False)
    ref = hooked_cam(unet2d.network, BOTTLENECK, x, c, roi, True, relu=False)
    close(raw.attribution, ref)
    assert raw.attribution.min() < 0  # negative evidence kept, never min-max normalised
    layer = "model.0.conv"  # the first (stride-2) down convolution
    e = explain(unet2d, x, "seg_grad_cam", target=c, layer=layer)
    assert e.extras["layer"] == layer and e.extras["layer_shape"][1:] == [16, 20]
    assert e.extras["report"].startswith("Computed on the chosen layer") and "of 16 × 20 voxels" in e.extras["report"]
    close(e.attribution, hooked_cam(unet2d.network, layer, x, c, roi, False))
    with pytest.raises(MethodError, match="not a module of this network.*model.0"):
        explain(unet2d, x, "seg_grad_cam", target=c, layer="encoder.9")


def test_cam_multiclass_equals_per_class(unet2d, rng):
    x = rng.normal(size=SHAPES[2]).astype(np.float32)
    exps = explain_classes(unet2d, x, "seg_hires_grad_cam")
    total = 0
    for e in exps:
        ref = explain(unet2d, x, "seg_hires_grad_cam", target=e.target)
        close(e.attribution, ref.attribution)
        total += ref.n_forward
    assert exps[0].extras["shared_passes"]["n_forward"] == 2 < total


def test_bottleneck_of_other_architectures():
    from monai.networks.nets import BasicUNet, SegResNet, SwinUNETR

    m = wrap(SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=4).eval(), 2, divisor=8)
    name, _ = find_layer(m)
    assert name == "down_layers.3"
    x = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)
    c, roi = present_class(m, x)
    e = explain(m, x, "seg_hires_grad_cam", target=c)
    close(e.attribution, hooked_cam(m.network, name, x, c, roi, True))
    assert find_layer(wrap(BasicUNet(2, 1, 4, features=(4, 4, 8, 8, 16, 4)).eval(), 2))[0] == "down_4"
    assert find_layer(wrap(SwinUNETR(in_channels=1, out_channels=4, spatial_dims=2, feature_size=12).eval(),
                           2, divisor=32))[0] == "encoder10"


class EncDec(torch.nn.Module):
    """An unknown architecture: the bottleneck is found by the coarsest-grid probe."""

    def __init__(self):
        super().__init__()
        self.enc1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.down = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.deep = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(inplace=True))
        self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        a = torch.relu(self.enc1(x))
        b = self.deep(torch.relu(self.down(a)))
        return self.head(torch.cat([a, self.up(b)], 1))


def test_generic_bottleneck_probe_and_inplace_relu(rng):
    m = wrap(EncDec().eval(), 2, n_classes=3, divisor=2)
    assert find_layer(m)[0] == "deep"
    x = rng.normal(size=(16, 24)).astype(np.float32)
    c, roi = present_class(m, x)
    # hooking a conv followed by an in-place ReLU must not break autograd
    e = explain(m, x, "seg_hires_grad_cam", target=c, layer="deep.0")
    close(e.attribution, hooked_cam(m.network, "deep.0", x, c, roi, True, tensor_hook=True))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_cam_on_torchscript_model_is_refused(tmp_path, rng):
    net = make_unet(3)
    ts = torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16))
    ts.save(str(tmp_path / "m.ts"))
    (tmp_path / "m.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"num_channels": 4, "channel_def": {str(i): f"c{i}" for i in range(4)}}}}}))
    model = load_model(tmp_path / "m.ts", device="cpu")
    assert model.hookable is False
    x = rng.normal(size=(16, 16, 16)).astype(np.float32)
    c, roi = present_class(model, x)
    for method in ("seg_grad_cam", "seg_hires_grad_cam"):
        with pytest.raises(MethodError, match="gradient method"):
            explain(model, x, method, target=c)
    # gradient methods still work on a compiled model
    e = explain(model, x, "gradient", target=c)
    xt = torch.as_tensor(x)[None, None].requires_grad_(True)
    (net(xt)[:, c] * torch.as_tensor(roi, dtype=torch.float32)).sum().backward()
    close(e.attribution, xt.grad[0, 0].numpy())


def test_cam_upsampling_crops_the_divisor_padding(unet2d, rng):
    """An image that is not a multiple of the size divisor: the network sees it zero-padded
    (SegModel.forward), the CAM is upsampled to the padded grid and cropped back."""
    x = rng.normal(size=(30, 37)).astype(np.float32)      # divisor 4 -> padded to 32 x 40
    c, roi = present_class(unet2d, x)
    e = explain(unet2d, x, "seg_hires_grad_cam", target=c)
    pads = [(1, 1), (1, 2)]                                 # extra // 2 low, the rest high
    xp = np.pad(x, pads)
    roi_p = np.pad(roi, pads)
    ref = hooked_cam(unet2d.network, BOTTLENECK, xp, c, roi_p, True)
    close(e.attribution, ref[1:31, 1:38])


def test_relu_parameter_is_checked(unet2d, rng):
    x = rng.normal(size=SHAPES[2]).astype(np.float32)
    c, roi = present_class(unet2d, x)
    for bad in ("maybe", 2, None):
        with pytest.raises(MethodError, match="seg_grad_cam: relu"):
            explain(unet2d, x, "seg_grad_cam", target=c, relu=bad)
    raw = explain(unet2d, x, "seg_hires_grad_cam", target=c, relu="false")   # text from the CLI
    close(raw.attribution, hooked_cam(unet2d.network, BOTTLENECK, x, c, roi, True, relu=False))
