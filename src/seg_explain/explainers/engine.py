"""Machinery the explainers share: thread-owned forward hooks, sliding-window blend weights.

**Hooks** (:func:`thread_hooks`). A ``SegModel``'s network is one object shared by every
explanation (the GUI runs an explanation in a worker thread while another may be running,
Agg2Exp runs classes and images in threads). A plain ``module.register_forward_hook`` fires
for *every* thread's forward pass through that module, so a CAM's capture hook would also
swallow (and detach) the activations of a gradient explanation running at the same time,
and two concurrent CAMs would each capture the other's pass. Every hook the project
registers therefore goes through :func:`thread_hooks`: the hooks act only for the forward
passes of the thread that installed them (``threading.get_ident()`` is compared with the
owner's), keep what they capture in storage local to the call, and are removed when the
``with`` block ends. Other threads' passes go through the same modules untouched.

**Blend weights** (:class:`WindowWeights`). ``sliding_window_inference`` blends the window
outputs as ``out = Σ_k w_k · out_k / Σ_k w_k`` with ``w`` MONAI's
``compute_importance_map`` (``"constant"``: ones; ``"gaussian"``: a Gaussian with
σ = ``sigma_scale`` · patch, clamped away from 0), summed over all windows of the padded
image (:mod:`seg_explain.windows`). So the blended RoI sum is
``f̂ = Σ_k ⟨R · w_k / Σw, out_k⟩`` and its input gradient is the sum over windows of each
window's vector-Jacobian product with the cotangent ``R · w_k / Σw`` (cropped to the
window) — exactly autograd through ``sliding_window_inference``, at the cost of one
backward per window holding RoI voxels (what the unweighted version cost).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..windows import Tiling, Window, model_tiling

BLEND_MODES = ("constant", "gaussian")
DEFAULT_SIGMA_SCALE = 0.125   # sliding_window_inference's default


# -------------------------------------------------------------------------- hooks --
class HookSet:
    """Hooks installed by one thread for the duration of one ``with thread_hooks()`` block.

    ``forward(module, fn)``: ``fn(module, inputs, output)`` runs after ``module``'s forward
    (its return value, if not None, replaces the output, as with ``register_forward_hook``);
    ``pre(module, fn)``: ``fn(module, inputs)`` runs before it. Both act only for forward
    passes run by the owner thread. ``capture(module)`` keeps the owner's outputs of
    ``module`` in a fresh list (call-local storage) and returns that list.
    """

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self._handles: list[Any] = []

    def _mine(self, fn: Callable) -> Callable:
        owner = self.owner

        def hook(*args):
            if threading.get_ident() != owner:
                return None
            return fn(*args)
        return hook

    def forward(self, module: torch.nn.Module, fn: Callable) -> None:
        self._handles.append(module.register_forward_hook(self._mine(fn)))

    def pre(self, module: torch.nn.Module, fn: Callable) -> None:
        self._handles.append(module.register_forward_pre_hook(self._mine(fn)))

    def capture(self, module: torch.nn.Module, transform: Callable | None = None) -> list:
        """Append ``transform(output)`` (default: the output) of every owner pass; when
        ``transform`` returns a pair ``(kept, replacement)`` the replacement becomes the
        module's output."""
        store: list = []

        def fn(_m, _inp, out):
            if transform is None:
                store.append(out)
                return None
            kept, repl = transform(out)
            store.append(kept)
            return repl
        self.forward(module, fn)
        return store

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def thread_hooks() -> Iterator[HookSet]:
    """``with thread_hooks() as hooks: hooks.forward(module, fn); ...`` — see :class:`HookSet`.

    All hooks are removed when the block ends (also on an exception)."""
    hs = HookSet()
    try:
        yield hs
    finally:
        hs.remove()


# -------------------------------------------------------------------- blend weights --
def windows_with_roi(tiling: Tiling, targets) -> list[tuple[int, list[int]]]:
    """``(window index, indices of the targets with RoI voxels in it)`` for every window
    that holds any; ``targets`` are ``(class, roi)`` pairs (roi: bool, image grid of the
    tiling). Windows without RoI voxels contribute nothing to f̂ and are never run."""
    plan = []
    for wi, w in enumerate(tiling.windows):
        src, _ = tiling.inner(w)
        ks = [k for k, (_, r) in enumerate(targets) if bool(r[src].any())]
        if ks:
            plan.append((wi, ks))
    return plan


def blend_mode(model) -> str:
    mode = str(getattr(model, "blend", "constant") or "constant").lower()
    if mode not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {mode!r}")
    return mode


def sigma_scale_of(model) -> float:
    return float(getattr(model, "sigma_scale", DEFAULT_SIGMA_SCALE) or DEFAULT_SIGMA_SCALE)


class WindowWeights:
    """MONAI's blending weights for a :class:`~seg_explain.windows.Tiling`.

    :meth:`of` gives ``w / Σw`` on one window (``None`` when there is a single window: the
    weight is 1 everywhere). ``importance`` is the window's importance map, ``norm`` the
    per-voxel sum of the importance maps of all windows (padded grid), both float32 as in
    ``sliding_window_inference`` for float32 inputs.
    """

    def __init__(self, tiling: Tiling, blend: str = "constant", sigma_scale: float = DEFAULT_SIGMA_SCALE):
        from monai.data.utils import compute_importance_map

        mode = str(blend).lower()
        if mode not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        self.tiling = tiling
        self.single = len(tiling.windows) == 1
        self.importance = None
        self.norm = None
        if not self.single:
            self.importance = compute_importance_map(tuple(tiling.patch), mode=mode, sigma_scale=sigma_scale,
                                                     device="cpu", dtype=torch.float32)
            self.norm = torch.zeros(tiling.padded_shape, dtype=torch.float32)
            for w in tiling.windows:
                self.norm[w] += self.importance

    @classmethod
    def for_model(cls, model, shape) -> WindowWeights:
        """The weights ``model`` blends with on a prepared image of spatial ``shape``."""
        return cls(model_tiling(model, shape), blend_mode(model), sigma_scale_of(model))

    def of(self, win: Window) -> torch.Tensor | None:
        """``w / Σw`` on window ``win`` (window shape, float32), or None for weight 1."""
        if self.single:
            return None
        return self.importance / self.norm[win]


class WindowAccumulator:
    """Blend per-window maps into an image-grid volume with the model's window weights.

    ``result = Σ_k (w_k / Σw) · map_k`` over the windows that get an :meth:`add` (a window
    without one contributes zero), cropped to the image: the way ``sliding_window_inference``
    blends the model's own output. CAMs blend their per-window maps this way.

    >>> acc = WindowAccumulator(WindowWeights.for_model(model, shape), lead=(1,))
    >>> for w in acc.tiling.windows: acc.add(w, window_map)   # (1, *patch)
    >>> full = acc.result()                                    # (1, *shape)
    """

    def __init__(self, weights: WindowWeights, lead=(), dtype=torch.float32):
        self.weights = weights
        self.tiling = weights.tiling
        self.lead = tuple(int(n) for n in lead)
        self.sum = torch.zeros(self.lead + self.tiling.shape, dtype=dtype)

    def add(self, win: Window, value: torch.Tensor) -> None:
        """Add the map of window ``win`` (shape ``(*lead, *window_shape(win))``)."""
        v = torch.as_tensor(value).detach().to("cpu", self.sum.dtype)
        w = self.weights.of(win)
        self.tiling.add_to(self.sum, win, v if w is None else v * w)

    def result(self) -> torch.Tensor:
        return self.sum
