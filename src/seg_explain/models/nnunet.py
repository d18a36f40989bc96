"""nnU-Net v2 trained-model folders (TotalSegmentator and the like) -> :class:`NnUNetModel`.

A folder as nnU-Net leaves it on disk::

    DatasetXXX_Name/Trainer__Plans__Configuration/
        dataset.json            labels (name -> class index), channel names
        plans.json              configurations: patch, spacing, normalisation, architecture
        fold_0/checkpoint_final.pth   (or checkpoint_best.pth), fold_1/ ...

``load_model(folder)`` accepts the trainer folder, one of its ``fold_N`` folders (that fold
only) or the ``DatasetXXX_Name`` folder when it holds a single trainer folder. Only the
``[nnunet]`` extra (``dynamic-network-architectures``) is needed; nnU-Net itself is not
imported and nothing is downloaded.

This module is the loader (:func:`load_nnunet`) and the public import path of the names in
``__all__``. What is reproduced, and how exactly, is described where it is implemented
(``tests/test_nnunet.py`` compares with ``nnUNetPredictor`` on held-out images):

- ``nnunet_layout``: how a model folder is laid out (no torch);
- ``nnunet_plans``: the trainer folder, ``plans.json``'s configuration, ``dataset.json``'s
  labels (region-based models refused) and channels;
- ``nnunet_network``: the architecture, validated and built safely; folds and test-time
  mirroring (off by default);
- ``nnunet_checkpoints``: the folds' checkpoints, unpickled by torch's restricted unpickler;
- ``nnunet_normalization``: crop to the nonzero region, per-channel normalisation;
- ``nnunet_resampling``: nnU-Net's resampling and its exact adjoint;
- ``nnunet_grid``: the image grid <-> the model grid;
- ``nnunet_windows``: sliding-window steps and nnU-Net's Gaussian;
- ``nnunet_model``: :class:`NnUNetModel`: geometry, preprocessing, windows and blending, and
  what the explainers' windows and weights are.

Safety (docs/SECURITY.md): files must be regular files inside the trainer folder; JSON is
size-capped; the architecture is validated whole before anything is built, and one window's
memory and the folds' weights are checked against the memory budget before any network is
allocated (``nnunet_network``); checkpoints are scanned, then unpickled by torch's restricted
unpickler only (``nnunet_checkpoints``).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..budget import check_bytes
from ..errors import ModelLoadError
from ..files import read_json
from .network_size import check_network_size
from .nnunet_checkpoints import CHECKPOINT_GLOBALS, CHECKPOINTS, fold_checkpoints, load_checkpoint
from .nnunet_grid import NnUNetGrid
from .nnunet_layout import is_nnunet_folder
from .nnunet_model import MAX_MODEL_VOXELS, OUTSIDE_LOGIT, TWO_D_THICKNESS, NnUNetModel
from .nnunet_network import (
    IMPORTABLE_KEYS,
    MAX_PARAMETERS,
    NETWORKS,
    Architecture,
    NnUNetEnsemble,
    build_network,
    old_format_architecture,
    validate_architecture,
    window_bytes,
)
from .nnunet_normalization import NORMALIZATIONS, crop_to_nonzero
from .nnunet_plans import channel_count, parse_labels, plans_configuration, quote_key, resolve_folder
from .nnunet_resampling import ANISO_THRESHOLD, Resampling, compute_new_shape
from .nnunet_windows import nnunet_gaussian, sliding_window_steps
from .segmodel import resolve_device

# the names importable from seg_explain.models.nnunet before it was split by job (public)
__all__ = [
    "load_nnunet", "is_nnunet_folder", "NnUNetModel", "NnUNetEnsemble", "NnUNetGrid", "Architecture",
    "validate_architecture", "window_bytes", "parse_labels", "load_checkpoint", "compute_new_shape",
    "Resampling", "crop_to_nonzero", "nnunet_gaussian", "sliding_window_steps", "ANISO_THRESHOLD",
    "TWO_D_THICKNESS", "OUTSIDE_LOGIT", "MAX_MODEL_VOXELS", "MAX_PARAMETERS", "CHECKPOINTS", "NETWORKS",
    "IMPORTABLE_KEYS", "CHECKPOINT_GLOBALS", "NORMALIZATIONS",
]


def _check_orientation(orientation) -> str:
    from nibabel.orientations import axcodes2ornt

    o = str(orientation).upper()
    try:
        ok = len(o) == 3 and not np.isnan(axcodes2ornt(tuple(o))).any()
    except Exception:  # noqa: BLE001 - nibabel refuses repeated / unknown axes
        ok = False
    if not ok:
        raise ModelLoadError(f"orientation must be three axis codes such as 'RAS' or 'LPS', got {orientation!r}")
    return o


def load_nnunet(path: str | os.PathLike, device: str = "auto", *, folds: Sequence | None = None,
                checkpoint: str | None = None, mirror: bool = False, orientation: str | None = None,
                tile_step_size: float = 0.5) -> NnUNetModel:
    """Load an nnU-Net v2 model folder as a :class:`NnUNetModel`.

    ``path``: the ``Trainer__Plans__Configuration`` folder, a ``fold_N`` folder inside it
    (that fold only), or a ``DatasetXXX_Name`` folder holding one trainer folder.
    ``folds``: e.g. ``[0, 1]`` or ``["all"]`` (default: every ``fold_N`` with a checkpoint,
    as nnU-Net auto-detects). ``checkpoint``: ``"checkpoint_final.pth"`` (default, falling back
    to ``checkpoint_best.pth`` per fold) or ``"checkpoint_best.pth"``. ``mirror``: nnU-Net's
    test-time mirroring (off by default). ``orientation``: ``None`` = each image file as stored
    (nnU-Net's behaviour) or three axis codes, e.g. ``"RAS"`` to reorient every image to the
    closest RAS orientation first (what TotalSegmentator does before calling nnU-Net).
    """
    p = Path(path).expanduser()
    root_dir, named = resolve_folder(p)
    root = root_dir.resolve()
    if folds is None and named is not None:
        folds = named
    where = root_dir.name
    if orientation is not None:
        orientation = _check_orientation(orientation)
    ds = read_json(root_dir / "dataset.json", "nnU-Net dataset.json", inside=root, error=ModelLoadError)
    plans = read_json(root_dir / "plans.json", "nnU-Net plans.json", inside=root, error=ModelLoadError)
    class_names = parse_labels(ds, where)
    in_ch = channel_count(ds, where)
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise ModelLoadError(f"{where}: label manager {plans.get('label_manager')!r} is not supported")

    fold_list = fold_checkpoints(root_dir, folds, checkpoint)
    parts = root_dir.name.split("__")
    confs = plans.get("configurations") if isinstance(plans.get("configurations"), dict) else {}
    conf_name = parts[-1] if len(parts) >= 3 and parts[-1] in confs else None
    if conf_name is None and len(confs) == 1:
        conf_name = next(iter(confs))

    # validate plans (the configuration's architecture, whole) before unpickling anything
    ckpts: list[dict] = []
    if conf_name is None:
        ckpts.append(load_checkpoint(fold_list[0][1], root))
        conf_name = (ckpts[0].get("init_args") or {}).get("configuration")
        if not isinstance(conf_name, str):
            raise ModelLoadError(f"{where}: cannot tell the configuration (folder name or checkpoint init_args)")
    cwhere = f"plans.json.configurations.{conf_name}"
    conf = plans_configuration(plans, conf_name, where)
    if conf.get("previous_stage"):
        raise ModelLoadError(f"{where}: configuration {conf_name!r} is a cascade stage (it needs the "
                             f"{conf['previous_stage']!r} prediction as input); not supported")
    if "architecture" not in conf:
        conf["architecture"] = old_format_architecture(conf, cwhere)
    arch = validate_architecture(conf["architecture"], f"{cwhere}.architecture")
    patch = conf.get("patch_size")
    if not (isinstance(patch, list) and len(patch) in (2, 3)
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in patch)):
        raise ModelLoadError(f"{quote_key(cwhere + '.patch_size')} must be 2 or 3 whole numbers in [1, 4096], "
                             f"got {patch!r}")
    sd = len(patch)
    # sizes before allocation: one window (nnU-Net always runs the full patch) and the weights
    # of every fold (checkpoint + network), against the memory budget
    check_bytes(window_bytes(arch.kwargs, patch), f"{where}: one {'x'.join(map(str, patch))} window "
                "(plans.json patch_size) of this network")
    check_network_size(lambda: build_network(arch, in_ch, len(class_names), where),
                       f"{where}: {len(fold_list)} fold(s) of the network plans.json describes", 2 * len(fold_list))
    conv = arch.kwargs.get("conv_op")
    if conv is not None and conv is not getattr(torch.nn, f"Conv{sd}d"):
        raise ModelLoadError(f"{where}: a {sd}D patch with {conv.__name__}")
    sp = conf.get("spacing")
    if not (isinstance(sp, list) and len(sp) == sd and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in sp)):
        raise ModelLoadError(f"{quote_key(cwhere + '.spacing')} must be {sd} positive voxel sizes, got {sp!r}")
    tf = plans.get("transpose_forward", [0, 1, 2])
    if not (isinstance(tf, list) and sorted(tf) == [0, 1, 2]):
        raise ModelLoadError(f"'plans.json.transpose_forward' must be a permutation of 0, 1, 2, got {tf!r}")
    for key in ("normalization_schemes", "use_mask_for_norm"):
        v = conf.get(key)
        if not isinstance(v, list) or len(v) != in_ch:
            raise ModelLoadError(f"{quote_key(cwhere + '.' + key)} must have one entry per channel ({in_ch})")
    for i, s in enumerate(conf["normalization_schemes"]):
        if s not in NORMALIZATIONS:
            raise ModelLoadError(f"{quote_key(cwhere + f'.normalization_schemes[{i}]')}: {s!r} is not one of "
                                 f"{', '.join(NORMALIZATIONS)}")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        fn = conf.get(key, "resample_data_or_seg_to_shape")
        if fn != "resample_data_or_seg_to_shape":
            raise ModelLoadError(f"{quote_key(cwhere + '.' + key)}: {fn!r} is not supported (only nnU-Net's "
                                 "default resample_data_or_seg_to_shape)")
        kw = conf.get(key + "_kwargs") or {}
        allowed = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}
        if not isinstance(kw, dict) or set(kw) - allowed or kw.get("is_seg"):
            raise ModelLoadError(f"{quote_key(cwhere + '.' + key + '_kwargs')}: unsupported {kw!r}")
        for k in ("order", "order_z"):
            if k in kw and (isinstance(kw[k], bool) or kw[k] not in (0, 1, 2, 3, 4, 5)):
                raise ModelLoadError(f"{quote_key(cwhere + '.' + key + '_kwargs.' + k)} must be 0..5")

    # checkpoints (restricted unpickling), then the networks
    while len(ckpts) < len(fold_list):
        ckpts.append(load_checkpoint(fold_list[len(ckpts)][1], root))
    first = ckpts[0]
    c_conf = (first.get("init_args") or {}).get("configuration") if isinstance(first.get("init_args"), dict) else None
    if isinstance(c_conf, str) and c_conf != conf_name:
        raise ModelLoadError(f"{where}: the checkpoint was trained for configuration {c_conf!r}, the folder "
                             f"says {conf_name!r}")
    mirror_axes = first.get("inference_allowed_mirroring_axes")
    if mirror_axes is not None and not (isinstance(mirror_axes, (list, tuple)) and all(
            isinstance(a, int) and 0 <= a < sd for a in mirror_axes)):
        raise ModelLoadError(f"{where}: inference_allowed_mirroring_axes {mirror_axes!r} is not a list of axes")
    nets = []
    for (fold, cp), ck in zip(fold_list, ckpts):
        net = build_network(arch, in_ch, len(class_names), where)
        try:
            net.load_state_dict(ck["network_weights"], strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][:2]
            raise ModelLoadError(
                f"{where}: fold_{fold}/{cp.name} does not fit the network plans.json describes "
                f"({' '.join(lines)[:300]}); a trainer that changes the architecture is not supported") from exc
        nets.append(net.eval())
    ens = NnUNetEnsemble(nets, mirror_axes)
    trainer = parts[0] if len(parts) >= 3 else str(first.get("trainer_name", ""))
    meta = {"sigmoid": False, "min_size": 1, "nnunet": {
        "dataset": str(plans.get("dataset_name", "")), "configuration": conf_name, "trainer": trainer,
        "plans": parts[1] if len(parts) >= 3 else str(plans.get("plans_name", "")),
        "folds": [f for f, _ in fold_list], "checkpoints": [str(cp.relative_to(root_dir)) for _, cp in fold_list],
        "mirror_axes": list(ens.mirror_axes), "transpose_forward": list(tf),
        "normalization": list(conf["normalization_schemes"])}}
    folds_txt = ", ".join(meta["nnunet"]["folds"])
    name = f"{plans.get('dataset_name', root_dir.parent.name)} {conf_name} (nnU-Net, folds {folds_txt})"
    model = NnUNetModel(ens, plans=plans, conf=conf, configuration=conf_name, in_channels=in_ch,
                        class_names=class_names, orientation=orientation, tile_step_size=tile_step_size,
                        name=name, source=str(root_dir), device=resolve_device(device), hookable=True, meta=meta)
    model.trainer = trainer
    model.checkpoints = meta["nnunet"]["checkpoints"]
    model.mirror = mirror
    return model
