"""An explanation as a request of plain data, and the job that answers it (no viewer imports).

A viewer copies what the user chose out of its layers / nodes (on its main thread) and
calls :func:`make_request`; :func:`explain_job` (a generator: progress events, then an
:class:`ExplainDisplay`) runs in a worker. Object-valued parameters are chosen by *kind*
(registry :class:`~seg_explain.explainers.registry.Param`): a ``bank`` chooser lists
:func:`bank_items` and reads back with :func:`bank_choice`; a ``label_map`` chooser lists
label maps after :data:`REF_PRED`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .jobs import ModelCache

# a ``bank`` chooser's entries
SAMPLE_BANK = "sample bank (MNI152)"
ZERO_BANK = "zero occlusion"
BANK_FOLDER = "folder…"
ALL_LAYERS = "all other image layers"
FOLDER_PREFIX = "folder: "
LAYER_PREFIX = "layer: "
# a ``label_map`` chooser's first entry
REF_PRED = "(none: the model's own prediction)"


@dataclass
class ExplainRequest:
    """Everything an explanation job needs, as plain data (no layers)."""

    model_path: str
    device: str
    image: Any                      # LoadedImage with a private copy of the voxels
    method: str
    target: str | int
    roi: np.ndarray | None = None   # bool mask on the image grid, or None (= predicted class)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_size: int | None = None
    slice_index: int | None = None  # 2D model on a 3D image: the axial slice explained
    image_layer_name: str = ""
    roi_name: str = "predicted"


@dataclass
class ExplainDisplay:
    """An Explanation plus what drawing it needs, prepared in the worker."""

    exp: Any                        # seg_explain.Explanation (carries the prediction)
    limit: float                    # contrast limits (-limit, limit)
    max_abs: float
    outline: np.ndarray             # uint8 outline of the RoI (every method)
    model_name: str = ""
    device: str = ""


def explain_job(req: ExplainRequest, cache: ModelCache, token) -> Iterator:
    """Explain with the core job driver (events relayed as they come); returns an ExplainDisplay."""
    from ..explainers.job import explain_job as core_explain_job
    from .results import display_limits, roi_outline

    yield ("status", "Loading model")
    model = cache.get(req.model_path, req.device)
    exp = yield from core_explain_job(model, req.image, req.method, req.target, req.roi, token=token,
                                      seed=req.seed, batch_size=req.batch_size, slice_index=req.slice_index,
                                      **req.params)
    token.check()
    yield ("status", "Drawing")
    lim, mx = display_limits(exp.attribution, exp.spec.caps.map_kind)
    outline = roi_outline(exp.roi, exp.roi.ndim)
    return ExplainDisplay(exp, lim, mx, outline, model.name or req.model_path, str(model.device))


def roi_from_labels(labels: np.ndarray, label: int, name: str, image_shape, slice_index: int | None = None
                    ) -> tuple[np.ndarray, str]:
    """``(mask, RoI name)`` of label ``label`` in the label map ``labels`` named ``name``
    (``name:label`` for a label other than 1); an RoI of another shape than the image, or one
    not painted (on the explained slice), is an :class:`~seg_explain.errors.InputMismatchError`."""
    from ..errors import InputMismatchError

    mask = np.asarray(labels) == int(label)
    if mask.shape != tuple(image_shape):
        raise InputMismatchError(f"RoI layer '{name}' has shape {mask.shape}, the image {tuple(image_shape)}")
    painted = mask[slice_index] if slice_index is not None else mask
    if not painted.any():
        where = f" on slice {slice_index}" if slice_index is not None else ""
        raise InputMismatchError(f"Label {int(label)} is not painted in RoI layer '{name}'{where}; "
                                 "paint it or pick another label")
    return mask, (name if int(label) == 1 else f"{name}:{int(label)}")


def parse_batch(text: str) -> int | None:
    """The batch size typed in a box ('' = from free memory), parsed as the CLI does."""
    from ..explainers.registry import COMMON

    return COMMON[1].parse(text.strip() or None)


def make_request(model_path: str, device: str, image, method: str, target, roi: np.ndarray | None = None,
                 roi_name: str = "predicted", params: dict | None = None, seed: int = 0, batch: str = "",
                 slice_index: int | None = None, image_name: str = "") -> ExplainRequest:
    """An :class:`ExplainRequest` from plain inputs (``batch``: the text of a batch-size box)."""
    return ExplainRequest(str(model_path), device, image, method, target, roi, dict(params or {}), int(seed),
                          parse_batch(batch), slice_index, image_name, roi_name)


def bank_items(sample_bank: bool, folder: str | None, other_images: list[str]) -> list[str]:
    """A ``bank`` chooser's entries: the sample bank (when there is one for the model's
    dimensionality), zeros, the chosen folder, "folder…", every other image layer (and all
    of them at once when there are several)."""
    items = [SAMPLE_BANK] if sample_bank else []
    items.append(ZERO_BANK)
    if folder:
        items.append(FOLDER_PREFIX + folder)
    items.append(BANK_FOLDER)
    if len(other_images) > 1:
        items.append(ALL_LAYERS)
    return items + [LAYER_PREFIX + n for n in other_images]


def bank_choice(choice: str, other_images: list[str]):
    """What a ``bank`` chooser's entry asks for: None (the sample bank), ``"zero"``, a folder
    path (str), or a list of image layer names to copy. "folder…" with no folder chosen yet
    is an :class:`~seg_explain.errors.InputMismatchError`."""
    from ..errors import InputMismatchError

    if choice == SAMPLE_BANK or not choice:
        return None
    if choice == ZERO_BANK:
        return "zero"
    if choice.startswith(FOLDER_PREFIX):
        return choice[len(FOLDER_PREFIX):]
    if choice == BANK_FOLDER:
        raise InputMismatchError("Choose the folder of reference images for the replacement blocks")
    return list(other_images) if choice == ALL_LAYERS else [choice[len(LAYER_PREFIX):]]


OWN_BANK = "own images"


def estimate_value(kind: str, choice: str):
    """The value an object-valued parameter of ``kind`` takes *for the cost estimate* (no
    images copied): ``"zero"`` for a zero bank (one pass per block), None for the sample bank
    (the estimate knows its repeated blocks), :data:`OWN_BANK` for layers or a folder (every
    draw counted); None for other kinds (= their default)."""
    if kind != "bank":
        return None
    if choice == ZERO_BANK:
        return "zero"
    return None if choice == SAMPLE_BANK or not choice else OWN_BANK


def volume_slices(n_slices: int, max_slices: int = 16) -> range:
    """The slices of a volume a 2D model's bank takes (at most about ``max_slices``)."""
    return range(0, n_slices, max(1, n_slices // max_slices))


def roi_for_estimate(labels, label: int, image_shape, model_shape) -> np.ndarray | None:
    """The RoI (label ``label`` of ``labels``) on the model grid ``model_shape``, for a cost
    estimate; None when it cannot be mapped (another shape; the estimate then assumes one window)."""
    if labels is None or tuple(np.shape(labels)) != tuple(image_shape) or len(model_shape) != np.ndim(labels):
        return None
    from ..model_grid import ModelGrid

    try:
        r = np.asarray(labels) == int(label)
        return ModelGrid(r.shape, model_shape).to_model(r.astype(np.uint8), order=0).astype(bool)
    except Exception:  # noqa: BLE001 - the estimate then assumes one window
        return None
