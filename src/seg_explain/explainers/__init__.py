"""The explainers: one module per method (gradients, cams, kernel_shap, pdcr), each registering
a :class:`~.registry.MethodSpec` in :mod:`.registry` when imported; the machinery they share is
in :mod:`.engine` (hooks, windows, baselines, targets, bookkeeping) and :mod:`.roi_dice` (the
RoI-Dice engine of perturbation methods); :mod:`.base` runs one explanation, :mod:`.multiclass`
several classes of one image, :mod:`.job` and :mod:`.cost` serve front ends."""
from .base import Context, Explanation, drive, explain, explain_iter, get_spec, methods, register

__all__ = ["Context", "Explanation", "drive", "explain", "explain_iter", "get_spec", "methods", "register"]
