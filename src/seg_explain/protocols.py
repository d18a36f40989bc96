"""Evaluation protocols: the rules behind :func:`seg_explain.metrics.evaluate`'s numbers.

Two protocols compute the same four metrics (Agg2Exp §3.3, appendix B.2) and differ only in
the rules below; ``evaluate(..., protocol=...)`` / ``seg-explain evaluate --protocol``.

``"default"`` (documented default; METHODS.md "Evaluation metrics"):

- **RoI** fixed from the clean prediction: every ``f̂_c`` the metric evaluates (clean,
  subset-removed, noisy) sums the class-c logits over the same voxels — the scalar the
  explainer explained.
- **Sensitivity noise** ``U(−noise, noise) · (max x − min x)`` of the prepared image (the
  same relative size whatever the model's intensity preprocessing); the explainer of a
  noisy copy gets the clean explanation's seed, so only the input changes.
- **Faithfulness subset** 5 % of the model-grid voxels; removed voxels set to the
  per-channel image minimum.

``"agg2exp"`` (the Agg2Exp authors' Quantus setup, from their evaluation scripts
``evaluate_test_TS_f.py`` / ``evaluate_test_TS_s_c.py`` and Quantus'
``FaithfulnessCorrelation`` / ``AvgSensitivity``):

- **RoI recomputed** from each perturbed input's own prediction: ``f̂_c(x_S)`` sums the
  class-c logits over the voxels that ``x_S`` is predicted as c; the explainer of a noisy
  copy explains the noisy copy's class-c region. KernelSHAP keeps the clean prediction in
  sensitivity (its segments and RoI), as the authors' KernelSHAP wrapper did.
- **Fresh sensitivity noise**: the explainer of each noisy copy gets a new seed (SmoothGrad
  draws new samples), and the noise is an **absolute** ``U(−noise, noise)`` added to the
  model input (Quantus ``uniform_noise``, ``lower_bound=0.1``; the authors' input was CT
  scaled to [0, 1], so 0.1 there is 10 % of the intensity window — on another model it is
  0.1 in that model's input units).
- **Faithfulness subset** ``224² = 50176`` voxels of the volume (``subset_size=int(224**2)``;
  0.2–0.5 % of a chest CT at 1.5 mm), removed voxels set to the image minimum over all
  channels (Quantus' ``"black"``).

Shared by both: attributions normalised by ``max |a|``; Pearson correlation over
``n_faithfulness = 100`` subsets; sensitivity ``‖a − a'‖ / ‖a‖`` averaged over
``n_sensitivity = 3`` copies; complexity = fraction with ``|a| > 0.1``.

Why ours is the default (measured; README "Evaluation protocols"): with the RoI fixed, an
exact attribution scores faithfulness 1 (with it recomputed, voxels that leave the region
add a term no attribution of f̂ carries); with the seed kept, a method whose map does not
depend on the input scores sensitivity 0 (fresh SmoothGrad noise adds its own Monte-Carlo
spread: > 0 even for a zero perturbation); the relative noise and subset mean the same on
every model and image size (the authors' 50176 voxels are 0.4 % of a chest CT but 78 % of
a 40³ crop).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import MethodError

AUTHORS_SUBSET = 224 ** 2   # the authors' FaithfulnessCorrelation(subset_size=int(224**2))


@dataclass(frozen=True)
class Protocol:
    """The rules one protocol applies (see the module docstring)."""

    name: str
    roi: str                 # "clean" (fixed) | "perturbed" (recomputed from each perturbed prediction)
    explainer_seed: str      # "same" (the clean explanation's) | "fresh" (a new one per noisy copy)
    noise_scale: str         # "range" (× (max x − min x)) | "absolute"
    subset: int | float      # default faithfulness subset: a fraction (< 1) or a voxel count
    baseline: str            # default removed-voxel value: "min" (per channel) | "global_min"
    summary: str

    def describe(self) -> dict:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "default": Protocol("default", "clean", "same", "range", 0.05, "min",
                        "RoI fixed from the clean prediction, the explainer's own seed, noise 0.1 × image "
                        "range, subset 5 % of the voxels"),
    "agg2exp": Protocol("agg2exp", "perturbed", "fresh", "absolute", AUTHORS_SUBSET, "global_min",
                        "the Agg2Exp authors' Quantus settings: RoI recomputed from each perturbed "
                        "prediction, fresh explainer noise, absolute noise 0.1, subset 224² voxels"),
}


def get_protocol(name) -> Protocol:
    """A protocol by name (``"default"`` or ``"agg2exp"``; a Protocol passes through)."""
    if isinstance(name, Protocol):
        return name
    key = "default" if name is None else str(name).strip().lower()
    if key not in PROTOCOLS:
        raise MethodError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[key]


def own_roi_sum(logits: torch.Tensor, c: int, sigmoid: bool = False) -> torch.Tensor:
    """``f̂_c`` with the RoI taken from each row's own prediction: ``(B, L, *S)`` -> ``(B,)``.

    The voxels where row b is predicted as class c (argmax; one channel: ``logit > 0`` is
    class 1) weight that row's class-c logit map."""
    from .targets import class_logit

    m = class_logit(logits, c, sigmoid)
    if sigmoid:
        own = (logits[:, 0] > 0) == (c == 1)
    else:
        own = logits.argmax(1) == c
    return (m * own.to(m.dtype)).flatten(1).sum(1)
