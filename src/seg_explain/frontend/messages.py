"""What a front end says, as text from plain data (no viewer imports).

- :func:`one_line` the user-facing one-line cause of an exception;
- :func:`explain_why_not` why Explain is unavailable (image, model, class, hooks);
- :func:`method_unavailable` why a method cannot run on the loaded model (greyed-out entries);
- :func:`cost_lines` an estimate as the cost line and its warning;
- :func:`range_text` colour limits in a few characters.
"""
from __future__ import annotations

from pathlib import Path

OUT_OF_MEMORY = "Out of memory: try a smaller batch_size, fewer samples, the CPU device or a crop of the image"


def one_line(exc: BaseException) -> str:
    """The user-facing one-line cause of an exception: :func:`seg_explain.errors.first_line`
    (a library's error with its type), or what to do when memory ran out."""
    from ..errors import SegExplainError, first_line

    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return OUT_OF_MEMORY
    return first_line(exc, with_type=not isinstance(exc, SegExplainError))


def explain_why_not(image_name: str | None, image_dims: int | None, info: dict | None, spec,
                    class_name: str, model_loading: bool = False) -> str:
    """Why Explain is unavailable ('' when it is available): ``image_name`` / ``image_dims``
    of the chosen image (None: none chosen), ``info`` the loaded model's description (None:
    not loaded), ``spec`` the chosen method's registry entry, ``class_name`` the chosen class."""
    if image_name is None:
        return "Add or choose an image layer"
    if info is None:
        return "Loading the model …" if model_loading else "Choose a model that loads"
    if info["spatial_dims"] == 3 and image_dims == 2:
        return f"'{Path(info['name']).name}' is a 3D model but '{image_name}' is a 2D image: choose a 2D model"
    if spec is not None and spec.caps.hooks and not info.get("hookable", True):
        return f"{spec.title} needs the network's layers; this compiled model has none: pick a gradient method"
    if not class_name:
        return "Choose the class to explain"
    return ""


def method_unavailable(spec, info: dict | None) -> str:
    """Why ``spec``'s method cannot run on the loaded model ``info`` ('' when it can)."""
    if info is None:
        return ""
    if info["spatial_dims"] not in spec.caps.dims:
        return f"not for {info['spatial_dims']}D models"
    if spec.caps.hooks and not info.get("hookable", True):
        return "needs a network whose layers can be hooked (not TorchScript / exported)"
    return ""


def cost_lines(est) -> tuple[str, str]:
    """``(cost line, warning line)`` of a :class:`~seg_explain.explainers.cost` estimate
    (the warning is '' when the run is not long)."""
    return f"Cost: {est.text}", (f"⚠ {est.warning}" if est.warning else "")


def cost_unknown(exc: BaseException) -> str:
    """The cost line while a parameter is half-typed: no estimate, the cause."""
    return f"Cost: — ({one_line(exc)})"


def range_text(limits) -> str:
    """Colour limits in a few characters: ``±0.5`` (symmetric) or ``0 to 0.5``."""
    lo, hi = (float(v) for v in limits)
    return f"±{hi:.3g}" if lo == -hi else f"{lo:.3g} to {hi:.3g}"
