"""Segmentation CAMs of the shared target f̂_c (METHODS.md "Seg-Grad-CAM").

A = activations of a layer (default: the network's bottleneck), G = ∂f̂_c/∂A.

- ``seg_grad_cam`` (Vinogradova et al. 2020): α_k = mean over space of G_k;
  map = ReLU(Σ_k α_k A_k).
- ``seg_hires_grad_cam`` (Rheude et al.): map = ReLU(Σ_k G_k ⊙ A_k), no spatial averaging.

``relu=False`` keeps negative evidence. The map is upsampled (bilinear in 2D, trilinear in
3D, ``align_corners=False``) from the layer's grid to the network input (the model grid,
padded to the size divisor and cropped back) and returned raw — never min-max normalised.

``layer``: a dotted module name (``dict(network.named_modules())``), or None for the
bottleneck: the deepest block of a MONAI ``UNet`` (the innermost ``SkipConnection``'s
``submodule``), ``SegResNet``'s last ``down_layers`` stage, ``SwinUNETR``'s ``encoder10``,
``DynUNet``'s ``bottleneck``, ``BasicUNet``'s ``down_4``; for other networks the last module
with parameters whose output has the coarsest grid (found with one small probe pass).
See :func:`find_layer` / :func:`candidate_layers`.

The layer's output is detached and made a leaf that requires grad, so a CAM costs one
forward and only the backward from the output to that layer. Several classes share the
forward pass (:mod:`.multiclass`). The capture hook is a :func:`.engine.thread_hooks`
hook: it only sees the forward passes of the thread that explains, so explanations of one
model may run in several threads at once.

Images larger than the model's patch are explained window by window on MONAI's sliding
windows (padding included): each window's CAM explains the RoI voxels inside that window,
and the per-window maps are blended with the weights the model blends its output with
(``w_k / Σw``, constant or Gaussian; :meth:`SegModel.window_weights`). The Seg-Grad-CAM
weights α are pooled over the whole image by default (``alpha_pool="image"``: the gradient
of the model's blended f̂) or per window (``"window"``); see :func:`cam_multi`. Ensembles
(nnU-Net folds): the layer is named once, without the fold prefix, hooked in every fold,
and the CAM is the folds' mean. A CAM is a heat map on the layer's grid, not an additive
attribution: it is upsampled, never differentiated through anything.
TorchScript / exported models have no hookable layers: :meth:`SegModel.check_hookable`
raises a :class:`MethodError`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodError
from ..windows import window_shape
from .base import Context
from .engine import (
    Counts,
    WindowAccumulator,
    book,
    check_same_image,
    roi_cotangent,
    single_from_multi,
    thread_hooks,
    windows_with_roi,
)
from .registry import Capabilities, Cost, CostInput, MethodSpec, Param, register

_KNOWN = {  # class name -> function(module) giving the bottleneck's name inside it
    "SegResNet": lambda m: f"down_layers.{len(m.down_layers) - 1}",
    "SwinUNETR": lambda m: "encoder10",
    "DynUNet": lambda m: "bottleneck",
    "BasicUNet": lambda m: "down_4",
    "BasicUnet": lambda m: "down_4",
}


def _unet_bottleneck(m: torch.nn.Module) -> str | None:
    skips = [n for n, s in m.named_modules() if type(s).__name__ == "SkipConnection"]
    if not skips:
        return None
    deepest = max(skips, key=lambda n: n.count("."))
    return f"{deepest}.submodule" if deepest else "submodule"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def candidate_layers(network: torch.nn.Module, limit: int | None = None) -> list[str]:
    """Names of the network's convolution-bearing modules (what ``layer=`` accepts)."""
    conv = torch.nn.modules.conv._ConvNd
    out = [n for n, m in network.named_modules()
           if n and type(m).__name__ != "SkipConnection" and any(isinstance(c, conv) for c in m.modules())]
    return out[:limit] if limit else out


def _probe_bottleneck(model) -> str:
    net = model.cam_networks()[0]
    n = max(16, 4 * model.divisor)
    if model.patch_size:
        shape = tuple(int(p) for p in model.patch_size)
    else:
        shape = (n,) * model.spatial_dims
    records = []
    order = [0]

    def make(name):
        def hook(mod, _i, out):
            order[0] += 1
            if isinstance(out, torch.Tensor) and out.ndim == model.spatial_dims + 2:
                has_params = any(True for _ in mod.parameters(recurse=True))
                records.append((int(np.prod(out.shape[2:])), order[0], name, has_params))
        return hook

    with thread_hooks() as hooks:   # records this thread's probe pass only
        for nm, m in net.named_modules():
            if nm and type(m).__name__ != "SkipConnection":
                hooks.forward(m, make(nm))
        with torch.inference_mode():
            model.forward(torch.zeros((1, model.in_channels) + shape))
    recs = [r for r in records if r[3]]
    if not recs:
        raise MethodError("cannot find a bottleneck layer in this network; pass layer=<module name>")
    smallest = min(r[0] for r in recs)
    return max((r for r in recs if r[0] == smallest), key=lambda r: r[1])[2]


def find_layers(model, layer: str | None = None) -> tuple[str, list[torch.nn.Module]]:
    """The hooked layer in each of the model's CAM networks (:meth:`SegModel.cam_networks`:
    one, or one per nnU-Net fold), named once relative to a network -> (name, modules)."""
    name, _ = find_layer(model, layer)
    return name, [dict(net.named_modules())[name] for net in model.cam_networks()]


def find_layer(model, layer: str | None = None) -> tuple[str, torch.nn.Module]:
    """The hooked layer: ``layer`` by dotted name, or the network's bottleneck (in the
    model's first CAM network; names are relative to it, e.g. without an ensemble's fold
    prefix)."""
    net = model.cam_networks()[0]
    mods = dict(net.named_modules())
    if layer is not None:
        if not isinstance(layer, str) or layer not in mods or not layer:
            cands = candidate_layers(net)
            show = ", ".join(cands[:12]) + (f", ... ({len(cands)} in all)" if len(cands) > 12 else "")
            raise MethodError(f"layer {layer!r} is not a module of this network; choose one of: {show}")
        return layer, mods[layer]
    for prefix, m in net.named_modules():
        cls = type(m).__name__
        if cls == "UNet" and type(m).__module__.startswith("monai"):
            name = _unet_bottleneck(m)
            if name is not None:
                full = _join(prefix, name)
                return full, mods[full]
        if cls in _KNOWN:
            full = _join(prefix, _KNOWN[cls](m))
            if full in mods:
                return full, mods[full]
    name = _probe_bottleneck(model)
    return name, mods[name]


def layer_report(name: str, auto: bool, shape) -> str:
    """One plain line on the hooked layer, then its exact module path and feature maps."""
    what = "the network's bottleneck (chosen automatically)" if auto else "the chosen layer"
    maps = ""
    if shape:
        maps = f"; {shape[0]} feature maps of {' × '.join(str(int(v)) for v in shape[1:])} voxels"
    return (f"Computed on {what}: coarse regions, upsampled to the image.\n"
            f"Layer: {name}{maps}")


def upsample(cam: torch.Tensor, model, spatial: Sequence[int]) -> torch.Tensor:
    """``(B, *s_layer)`` map -> ``(B, *spatial)`` on the input grid (padding cropped)."""
    pads = model.pads_for(spatial)        # as model.forward pads the window
    padded = tuple(int(n) + lo + hi for n, (lo, hi) in zip(spatial, pads))
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    up = F.interpolate(cam[:, None].float(), size=padded, mode=mode, align_corners=False)[:, 0]
    sl = (slice(None),) + tuple(slice(lo, lo + int(n)) for n, (lo, _) in zip(spatial, pads))
    return up[sl]


ALPHA_POOLS = ("image", "window")


class SegGradCAM:
    """Seg-Grad-CAM (Vinogradova et al.): map = ReLU(Σ_k α_k A_k), α_k the gradient of f̂
    pooled over the layer's positions. Variants override :meth:`cam_map` (how activations and
    gradients make the map), as pytorch-grad-cam's ``BaseCAM`` subclasses do."""

    name = "seg_grad_cam"
    pools_gradients = True          # α is pooled (per image or per window: ``alpha_pool``)

    @staticmethod
    def cam_map(A: torch.Tensor, G: torch.Tensor, relu: bool) -> torch.Tensor:
        """``(B, K, *s)`` activations and gradients -> ``(B, *s)`` CAM."""
        alpha = G.mean(dim=tuple(range(2, G.ndim)), keepdim=True)
        m = (alpha * A).sum(1)
        return torch.relu(m) if relu else m

    def multi(self, ctxs: Sequence[Context], layer=None, relu: bool = True, alpha_pool: str = "image"):
        """CAM of several classes from one forward pass per window.

        Windows (an image larger than the patch): every window holding RoI voxels runs once;
        its map is blended with the model's weights ``w/Σw``. Seg-Grad-CAM's α:
        ``alpha_pool="window"`` pools the gradient of each window's own RoI sum over that
        window; ``"image"`` computes one α for the whole image from the gradient of the
        model's *blended* f̂ (cotangent ``R·w/Σw`` per window, summed over windows, divided by
        one window's number of layer positions), so a single-window image gets the paper's α
        either way. Ensembles (nnU-Net folds): the layer is hooked in every fold, each fold's
        gradient is that of the ensemble's f̂, and the CAM is the sum of the folds' maps =
        the mean of the folds' own CAMs."""
        check_same_image(ctxs)
        ctx = ctxs[0]
        model = ctx.model
        method = self.name
        model.check_hookable(method)
        if not isinstance(model.network, torch.nn.Module):
            raise MethodError(f"{method} needs a torch.nn.Module network with named layers")
        relu = bool(relu)   # checked by the registry
        image_alpha = self.pools_gradients and alpha_pool == "image"
        name, modules = find_layers(model, layer)
        x = ctx.x
        S = tuple(x.shape[1:])
        weights = model.window_weights(S)
        tiling = weights.tiling
        targets = [(c.target, c.roi) for c in ctxs]
        plan = windows_with_roi(tiling, targets)
        accs = [WindowAccumulator(weights) for _ in targets]
        counts = Counts(backward=[0] * len(targets))
        dev = model.device
        layer_shape = None
        total = max(1, len(plan))
        kept = []          # image-wide α: (window, ks, [A_f], [[G_f per target]])
        alpha_sum = [[None] * len(modules) for _ in targets]

        def leaf(out):
            # the layer's output as a leaf that requires grad: the backward stops there
            if not isinstance(out, torch.Tensor) or out.ndim != model.spatial_dims + 2:
                raise MethodError(f"layer {name!r} does not output a {model.spatial_dims}D feature map "
                                  "(B, K, *spatial); choose a convolution layer")
            a = out.detach().requires_grad_(True)
            return a, a.clone()

        yield (0, total)
        for done, (wi, ks) in enumerate(plan, 1):
            w = tiling.windows[wi]
            wt = weights.of(w) if image_alpha else None
            with thread_hooks() as hooks:      # this thread's pass only; removed at once
                stores = [hooks.capture(m, leaf) for m in modules]
                with torch.enable_grad():
                    logits = model.forward(tiling.crop(x, w)[None].to(dev, torch.float32))
            counts.forward += 1
            if any(len(st) != 1 for st in stores):
                raise MethodError(f"layer {name!r} ran {max(len(st) for st in stores)} times in one forward "
                                  "pass; choose a layer that runs once")
            As = [st[0] for st in stores]
            layer_shape = tuple(As[0].shape[1:])
            if not logits.requires_grad:
                raise MethodError(f"the output does not depend on layer {name!r}; choose another layer")
            per_target = []
            for j, k in enumerate(ks):
                roi_w = tiling.crop(targets[k][1], w).to(dev, logits.dtype)
                if wt is not None:
                    roi_w = roi_w * wt.to(dev, logits.dtype)
                go = roi_cotangent(logits, targets[k][0], roi_w, model.sigmoid)
                Gs = torch.autograd.grad(logits, As, go, retain_graph=j < len(ks) - 1, allow_unused=True)
                if any(G is None for G in Gs):
                    raise MethodError(f"the output does not depend on layer {name!r}; choose another layer")
                counts.backward[k] += 1
                if image_alpha:
                    per_target.append([G.detach() for G in Gs])
                    for f, G in enumerate(Gs):
                        g = G.detach().sum(dim=tuple(range(2, G.ndim)), keepdim=True) / float(np.prod(G.shape[2:]))
                        alpha_sum[k][f] = g if alpha_sum[k][f] is None else alpha_sum[k][f] + g
                else:
                    m = sum(self.cam_map(A.detach(), G.detach(), relu) for A, G in zip(As, Gs))
                    accs[k].add(w, upsample(m, model, window_shape(w))[0].cpu())
            if image_alpha:
                kept.append((w, ks, [A.detach() for A in As]))
            del logits, As, stores
            yield (done, total)
        for w, ks, As in kept:              # one α per image: the maps of every window
            for k in ks:
                m = sum(torch.relu((a * A).sum(1)) if relu else (a * A).sum(1) for a, A in zip(alpha_sum[k], As))
                accs[k].add(w, upsample(m, model, window_shape(w))[0].cpu())
        book(ctxs, counts)
        extras = {"layer": name, "layer_shape": list(layer_shape) if layer_shape else None,
                  "n_windows": len(tiling.windows), "report": layer_report(name, layer is None, layer_shape)}
        if self.pools_gradients:
            extras["alpha_pool"] = alpha_pool
        if len(modules) > 1:
            extras["ensemble"] = (f"mean of {len(modules)} networks' CAMs (layer {name!r} in each; "
                                  "each gradient from the ensemble's output)")
        return [(a.result(), dict(extras)) for a in accs]


class SegHiResGradCAM(SegGradCAM):
    """Seg-HiRes-Grad-CAM (Rheude et al.): map = ReLU(Σ_k G_k ⊙ A_k), no spatial pooling."""

    name = "seg_hires_grad_cam"
    pools_gradients = False

    @staticmethod
    def cam_map(A: torch.Tensor, G: torch.Tensor, relu: bool) -> torch.Tensor:
        m = (G * A).sum(1)
        return torch.relu(m) if relu else m

    def multi(self, ctxs: Sequence[Context], layer=None, relu: bool = True):
        return (yield from super().multi(ctxs, layer, relu))


seg_grad_cam_multi = SegGradCAM().multi
seg_hires_grad_cam_multi = SegHiResGradCAM().multi


def seg_grad_cam(ctx: Context, layer=None, relu=True, alpha_pool="image"):
    return (yield from single_from_multi(seg_grad_cam_multi)(ctx, layer=layer, relu=relu, alpha_pool=alpha_pool))


def seg_hires_grad_cam(ctx: Context, layer=None, relu=True):
    return (yield from single_from_multi(seg_hires_grad_cam_multi)(ctx, layer=layer, relu=relu))


# ------------------------------------------------------------------ registration --
def _cam_cost(info: CostInput, params: dict) -> Cost:
    """One forward per RoI window and a partial backward (output -> layer)."""
    return Cost(forward=info.n_windows, backward=info.n_windows, note="partial backward to the layer")


_CAM_PARAMS = (
    Param("layer", "layer", None, "network layer whose activations are weighted (auto: the bottleneck)"),
    Param("relu", "bool", True, "keep only positive evidence (ReLU of the map); off shows evidence against too"),
)
_ALPHA_POOL = Param("alpha_pool", "choice", "image",
                    "windowed images: one α for the whole image from the blended output's gradient (image) "
                    "or one α per sliding window (window); the same for an image that fits one window",
                    choices=ALPHA_POOLS)
_CAM = dict(caps=Capabilities(dims=(2, 3), gradients=True, hooks=True, multiclass=True,
                                                  map_kind="heatmap"),
            unit="activation × gradient (a.u., on the layer's grid, upsampled)",
            positive="where the layer's features support {cls}", negative="where they speak against {cls}",
            one_sided=lambda p: bool(p.get("relu", True)), summary_fields=("layer", "layer_shape"),
            cost=_cam_cost, cost_class="cheap")

register(MethodSpec(
    "seg_grad_cam", seg_grad_cam, title="Seg-Grad-CAM", multi=seg_grad_cam_multi, source="Vinogradova et al. 2020",
    question="which regions of a layer's feature maps, weighted by their mean gradient, support the RoI",
    params=_CAM_PARAMS + (_ALPHA_POOL,), **_CAM))

register(MethodSpec(
    "seg_hires_grad_cam", seg_hires_grad_cam, title="Seg-HiRes-Grad-CAM", multi=seg_hires_grad_cam_multi,
    source="Rheude et al.",
    question="as Seg-Grad-CAM, but gradient × activation at every position (sharper maps)",
    params=_CAM_PARAMS, **_CAM))
