"""Opt-in lower precision for the network passes of every explainer.

``precision="fp32"`` (the default) runs the network exactly as before: no autocast, bit
for bit the same maps. ``"bf16"`` runs it under :func:`torch.autocast` with bfloat16
(on a CPU: oneDNN's bf16 kernels, AVX512-BF16 or AMX where the CPU has them; on CUDA
too), ``"fp16"`` with float16 (CUDA and MPS only; a CPU has no fast float16 kernels).
Autocast lowers only the matrix-heavy layers (convolutions, linear, attention); norms,
softmax and the explainers' own arithmetic stay float32, and the logits come back as
float32, so Dice, RoI sums and gradients with respect to the input are float32 tensors.

Lower precision changes the maps a little (rounding in every convolution) and can flip
the label of a voxel at a class border; ``benchmarks/bench_precision.py`` measures, per
method, the speed-up, the Pearson r of the map against fp32 and the agreement of the RoI
labels. It is never a default.

Used through :meth:`seg_explain.models.SegModel.with_precision` (a view of the model
whose ``forward`` autocasts) and the ``precision=`` argument of ``explain``, ``agg2exp``
and ``evaluate`` (CLI: ``--precision``).
"""
from __future__ import annotations

import contextlib

from .errors import MethodError

PRECISIONS = ("fp32", "bf16", "fp16")
HELP = ("network precision: fp32 (default, exact), bf16 (autocast bfloat16; CPU or GPU) "
        "or fp16 (autocast float16; GPU only)")


def check_precision(precision, device=None) -> str:
    """``precision`` as one of :data:`PRECISIONS` (clear error otherwise, also for fp16 on a CPU)."""
    p = "fp32" if precision is None else str(precision).strip().lower()
    p = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}.get(p, p)
    if p not in PRECISIONS:
        raise MethodError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if p == "fp16" and device is not None and str(device).split(":")[0] == "cpu":
        raise MethodError("precision fp16 needs a GPU (CUDA or MPS); on a CPU use bf16")
    return p


def autocast(device, precision: str):
    """The context a network pass runs in: nothing for fp32, else :func:`torch.autocast`."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype)
