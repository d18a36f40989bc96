#!/usr/bin/env python
"""Rebuild ``tests/data/nnunet/``: a tiny nnU-Net v2 model folder made by nnU-Net's own code,
plus the outputs ``nnUNetPredictor`` gives on held-out images (the reference of
``tests/test_nnunet.py``).

Needs ``nnunetv2`` (2.8.1 was used; it is *not* a dependency of this project: install it in a
separate environment) and ``seg_explain`` importable (``PYTHONPATH=src``)::

    PYTHONPATH=src python scripts/build_nnunet_fixture.py            # everything
    PYTHONPATH=src python scripts/build_nnunet_fixture.py --reference-only

What it does, with nnU-Net's own code at every step:

1. **Raw data set** ``Dataset901_TinyBrain`` from ``sample_data/brain3d/colin27_*_2mm``: six
   training cases, each the colin27 T1 block-averaged to 6 x 4 x 4 mm (x, y, z; a different
   2-voxel phase per case) with its labels merged into four classes (background,
   left / right cerebrum, cerebellum + brainstem). The spacing is anisotropic on purpose:
   nnU-Net's planner then picks ``transpose_forward = [2, 0, 1]``, so the fixture exercises
   nnU-Net's axis transposition.
2. **Fingerprint, plans, preprocessing**: ``DatasetFingerprintExtractor``, ``ExperimentPlanner``
   and ``DefaultPreprocessor``. The planner's configurations are then shrunk *in plans.json*
   (the way users customise plans) to tiny networks so the fixture stays small: a 3-stage
   ``PlainConvUNet`` with 2/4/8 features, patch 32 x 32 x 32 (``3d_fullres``) and 32 x 32
   (``2d``). The ``2d`` configuration uses ``CTNormalization`` (clip to the stored
   0.5/99.5 percentiles, subtract the stored mean, divide by the stored std) and
   ``3d_fullres`` ``ZScoreNormalization`` with the nonzero mask, so both schemes nnU-Net
   stores intensity properties for are covered.
3. **Training** on the CPU with ``nnUNetTrainer`` itself (40 epochs of 40 iterations, a few
   minutes), which writes
   ``checkpoint_final.pth`` exactly as nnU-Net does (weights, optimizer state, logging,
   init args, ``inference_allowed_mirroring_axes``). ``3d_fullres`` fold 0; ``2d`` folds 0
   and 1 (several folds are explained as their mean).
4. **Reference outputs** on held-out images (never trained on), with ``nnUNetPredictor``
   (``use_mirroring=False``, Gaussian blending, tile step 0.5, CPU):

   - ``mni152_6x4x4`` (MNI152 2009a at the configuration's spacing: no resampling),
   - ``kmeans_2x3x2`` (``sample_data/heldout/KmeansTest_T1UCharRaw.nii.gz``: another
     orientation and 2 x 3 x 2 mm, so nnU-Net resamples with its order-3 spline),
   - ``mni152_thick`` (MNI152 with 8 mm slices: anisotropy > 3, nnU-Net's "separate z"
     resampling),
   - two 2D slices for the ``2d`` configuration (one at its spacing, one at 2 x 2 mm),
   - ``mni152_6x4x4`` again with ``use_mirroring=True``,
   - the ``2d`` configuration (folds 0 and 1) predicting 3D volumes, keys ``vol2d_<case>/...``
     (own random sample, seed 902): ``mni152_6x4x4``; ``mni152_6x4x4_gaps`` (written to
     ``heldout/`` by ``make_gaps``: that volume with the sagittal slice i = 12 all zero, i.e.
     a whole slice in nnU-Net's slicing plane, and a 3-voxel zero border on every side;
     nnU-Net crops the volume's 3D nonzero box once and writes background outside it); and
     ``kmeans_2x3x2`` (in-plane resampling). ``reference.json`` notes, per case,
     ``labels_differ_volume_vs_per_slice_2d``: labels that differ from predicting every
     slice as its own 2D image (``per_slice_labels``).

   For each: the preprocessed network input, the logits on the model grid (stock
   ``nnUNetPredictor``, and the same predictor with its two float16 result buffers widened to
   float32 — nnU-Net 2.8 accumulates sliding-window sums in float16 to save memory) and the
   label map nnU-Net writes (``predict_from_files_sequential`` to NIfTI, read back with
   ``seg_explain.load_image``). Logits are stored as statistics plus a fixed random sample of
   voxels (full arrays would be megabytes); the stock label map in full, the float32 one as
   its differences from it.

Everything lands in ``tests/data/nnunet/``; the work folder (raw, preprocessed, results) is
temporary unless ``--work`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASET = "Dataset901_TinyBrain"
SAMPLE = ROOT / "sample_data"
N_SAMPLE = 1000           # logit values stored per case (random voxels x classes)
# colin27 / MNI labels (sample_data/classes.json) -> 4 classes
MERGE = {0: 0, 1: 1, 3: 1, 5: 1, 7: 1, 9: 1, 11: 1, 2: 2, 4: 2, 6: 2, 8: 2, 10: 2, 12: 2,
         13: 3, 14: 3, 15: 3}
LABELS = {"background": 0, "cerebrum_left": 1, "cerebrum_right": 2, "cerebellum_brainstem": 3}
FACTORS = (3, 2, 2)       # file axes (i, j, k) = (x, y, z): 2 mm -> 6 x 4 x 4 mm


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------ raw data --
def block_mean(data: np.ndarray, f, offset) -> np.ndarray:
    sl = tuple(slice(o, o + f_ * ((n - o) // f_)) for n, f_, o in zip(data.shape, f, offset))
    d = data[sl].astype(np.float64)
    shp = []
    for n, f_ in zip(d.shape, f):
        shp += [n // f_, f_]
    return d.reshape(shp).mean(axis=(1, 3, 5))


def block_pick(labels: np.ndarray, f, offset) -> np.ndarray:
    sl = tuple(slice(o + f_ // 2, o + f_ * ((n - o) // f_), f_) for n, f_, o in zip(labels.shape, f, offset))
    return labels[sl]


def block_affine(aff: np.ndarray, f, offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.diag(f)
    m[:3, 3] = [o + (f_ - 1) / 2 for o, f_ in zip(offset, f)]
    return aff @ m


def merge_labels(lab: np.ndarray) -> np.ndarray:
    out = np.zeros(lab.shape, np.uint8)
    for k, v in MERGE.items():
        out[lab == k] = v
    return out


def make_raw(raw: Path, heldout: Path) -> None:
    import nibabel as nib

    ds = raw / DATASET
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    t1 = nib.load(str(SAMPLE / "brain3d" / "colin27_t1_2mm.nii.gz"))
    lab = nib.load(str(SAMPLE / "brain3d" / "colin27_labels_2mm.nii.gz"))
    img, seg = np.asarray(t1.dataobj), np.asarray(lab.dataobj)
    offsets = [(0, 0, 0), (1, 1, 1), (2, 0, 1), (0, 1, 0), (1, 0, 1), (2, 1, 0)]
    for n, off in enumerate(offsets):
        data = block_mean(img, FACTORS, off) * (0.9 + 0.04 * n)
        labels = merge_labels(block_pick(seg, FACTORS, off))
        assert data.shape == labels.shape, (data.shape, labels.shape)
        aff = block_affine(t1.affine, FACTORS, off)
        nib.save(nib.Nifti1Image(data.astype(np.float32), aff), str(ds / "imagesTr" / f"brain_{n:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(labels, aff), str(ds / "labelsTr" / f"brain_{n:03d}.nii.gz"))
    dataset_json = {"channel_names": {"0": "T1"}, "labels": LABELS, "numTraining": len(offsets),
                    "file_ending": ".nii.gz", "name": DATASET,
                    "description": "seg-explain test fixture: colin27 at 6x4x4 mm, 4 classes",
                    "licence": "see sample_data/LICENSES"}
    (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=2))

    # held-out images: MNI152 (never trained on)
    heldout.mkdir(parents=True, exist_ok=True)
    mni = nib.load(str(SAMPLE / "brain3d" / "mni152_2009a_t1_2mm.nii.gz"))
    m = np.asarray(mni.dataobj)
    d = np.round(block_mean(m, FACTORS, (1, 0, 0))).astype(np.uint8)
    nib.save(nib.Nifti1Image(d, block_affine(mni.affine, FACTORS, (1, 0, 0))),
             str(heldout / "mni152_6x4x4.nii.gz"))
    # thick slices: 2 x 2 x 8 mm (x, y, z), cropped around the centre to stay small
    thick = np.round(block_mean(m, (1, 1, 4), (0, 0, 1))).astype(np.uint8)[26:66, 30:86, :]
    aff = block_affine(mni.affine, (1, 1, 4), (0, 0, 1))
    aff = aff @ np.array([[1, 0, 0, 26], [0, 1, 0, 30], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(thick, aff), str(heldout / "mni152_thick.nii.gz"))


def make_2d(heldout: Path) -> None:
    """Two 2D sagittal slices (the 2d configuration's plane: transpose_forward = [2, 0, 1]
    puts the x axis first) as ImageJ TIFFs with their pixel size: one at 4 x 4 mm (the
    configuration's spacing), one at 2 x 2 mm."""
    from seg_explain import load_image, save_image
    from seg_explain.io import LoadedImage

    a = load_image(heldout / "mni152_6x4x4.nii.gz")
    mni = load_image(SAMPLE / "brain3d" / "mni152_2009a_t1_2mm.nii.gz")
    # project arrays are (S, P, L); the 2d model's plane is (S, P) at a fixed x (sagittal)
    s1 = np.ascontiguousarray(a.data[:, :, a.data.shape[2] // 2 - 2])
    s2 = np.ascontiguousarray(mni.data[:, :, mni.data.shape[2] // 2 + 5])
    for name, arr, sp in (("mni152_sag_4x4.tif", s1, (4.0, 4.0)), ("mni152_sag_2x2.tif", s2, (2.0, 2.0))):
        like = LoadedImage(arr, sp, np.diag([sp[0], sp[1], 1.0, 1.0]), None, 2, {"format": "array"})
        save_image(heldout / name, arr, like=like)


# ---------------------------------------------------------------------------- plans --
def shrink_plans(plans_file: Path) -> None:
    plans = json.loads(plans_file.read_text())
    confs = plans["configurations"]
    for c in list(confs):
        if c not in ("2d", "3d_fullres"):
            del confs[c]
    for c, nd in (("3d_fullres", 3), ("2d", 2)):
        cfg = confs[c]
        cfg["patch_size"] = [32] * nd
        cfg["batch_size"] = 2
        ak = cfg["architecture"]["arch_kwargs"]
        ak.update({
            "n_stages": 3, "features_per_stage": [2, 4, 8],
            "kernel_sizes": [[3] * nd] * 3, "strides": [[1] * nd, [2] * nd, [2] * nd],
            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2]})
    confs["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]
    confs["3d_fullres"]["use_mask_for_norm"] = [True]
    confs["2d"]["normalization_schemes"] = ["CTNormalization"]
    confs["2d"]["use_mask_for_norm"] = [False]
    plans_file.write_text(json.dumps(plans, indent=4))


def plan_and_preprocess() -> None:
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, preprocess
    from nnunetv2.paths import nnUNet_preprocessed

    extract_fingerprints([901], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
    ExperimentPlanner(901).plan_experiment()
    shrink_plans(Path(nnUNet_preprocessed) / DATASET / "nnUNetPlans.json")
    preprocess([901], configurations=("2d", "3d_fullres"), num_processes=(1, 1), verbose=False)


# -------------------------------------------------------------------------- training --
def train(configuration: str, fold: int, epochs: int, iters: int) -> Path:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ["nnUNet_n_proc_DA"] = "0"     # augmentation in this process (no workers)
    torch.manual_seed(fold)
    np.random.seed(fold)
    trainer = get_trainer_from_args(DATASET, configuration, fold, "nnUNetTrainer", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iters
    trainer.num_val_iterations_per_epoch = 4
    trainer.run_training()
    return Path(trainer.output_folder) / "checkpoint_final.pth"


# ------------------------------------------------------------------------ reference --
class _WideTorch:
    """``torch`` for nnU-Net's predictor module with ``torch.half`` read as float32: its
    result buffers (``predicted_logits``, ``n_predictions``) become float32; everything else
    (network, float16 Gaussian, steps, padding, fold averaging) is nnU-Net's own."""

    def __init__(self, t):
        self._t = t

    @property
    def half(self):
        return self._t.float32

    def __getattr__(self, k):
        return getattr(self._t, k)


@contextmanager
def _nullcontext():
    yield


@contextmanager
def fp32_buffers():
    import nnunetv2.inference.predict_from_raw_data as P

    real = P.torch
    P.torch = _WideTorch(real)
    try:
        yield
    finally:
        P.torch = real


def predictor_for(folder: Path):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                        perform_everything_on_device=False, device=torch.device("cpu"),
                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), use_folds=None, checkpoint_name="checkpoint_final.pth")
    return p


def nnunet_case(predictor, data: np.ndarray, props: dict):
    """(preprocessed input, stock logits, float32-buffer logits, stock seg, fp32 seg) on
    nnU-Net's own arrays (SimpleITK axis order)."""
    import copy

    import torch

    pm, cm = predictor.plans_manager, predictor.configuration_manager
    pre = cm.preprocessor_class(verbose=False)
    x, _, props_pp = pre.run_case_npy(data, None, copy.deepcopy(props), pm, cm, predictor.dataset_json)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    stock = predictor.predict_logits_from_preprocessed_data(xt).float().numpy()
    seg_stock = predictor.predict_single_npy_array(data, copy.deepcopy(props), None, None, False)
    with fp32_buffers():
        wide = predictor.predict_logits_from_preprocessed_data(xt).float().numpy()
        seg_wide = predictor.predict_single_npy_array(data, copy.deepcopy(props), None, None, False)
    return x, stock, wide, np.asarray(seg_stock), np.asarray(seg_wide), props_pp


def summarize(prefix: str, out: dict, x, stock, wide, rng) -> None:
    idx = np.sort(rng.choice(wide.size, size=min(N_SAMPLE, wide.size), replace=False)).astype(np.int32)
    xi = np.sort(rng.choice(x.size, size=min(N_SAMPLE, x.size), replace=False)).astype(np.int32)
    out[f"{prefix}/x_shape"] = np.array(x.shape)
    out[f"{prefix}/x_idx"] = xi
    out[f"{prefix}/x_val"] = x.reshape(-1)[xi].astype(np.float32)
    out[f"{prefix}/x_sum"] = np.float64(x.astype(np.float64).sum())
    out[f"{prefix}/x_abs"] = np.float64(np.abs(x.astype(np.float64)).sum())
    out[f"{prefix}/logits_shape"] = np.array(wide.shape)
    out[f"{prefix}/idx"] = idx
    for name, arr in (("wide", wide), ("stock", stock)):
        a = arr.astype(np.float64)
        out[f"{prefix}/{name}_val"] = arr.reshape(-1)[idx].astype(np.float32)
        out[f"{prefix}/{name}_sum"] = a.reshape(a.shape[0], -1).sum(1)
        out[f"{prefix}/{name}_sq"] = (a * a).reshape(a.shape[0], -1).sum(1)
        out[f"{prefix}/{name}_max"] = np.float64(np.abs(a).max())
    out[f"{prefix}/pred_model"] = wide.argmax(0).astype(np.uint8)


def reference(models: Path, heldout: Path, out_file: Path, work: Path) -> None:
    import SimpleITK as sitk
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from seg_explain import load_image

    torch.set_num_threads(1)
    rng = np.random.default_rng(901)
    out: dict = {}
    report = {}
    cases3d = {"mni152_6x4x4": heldout / "mni152_6x4x4.nii.gz",
               "kmeans_2x3x2": SAMPLE / "heldout" / "KmeansTest_T1UCharRaw.nii.gz",
               "mni152_thick": heldout / "mni152_thick.nii.gz"}
    folder3d = models / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    pred = predictor_for(folder3d)
    for name, f in cases3d.items():
        data, props = SimpleITKIO().read_images([str(f)])
        x, stock, wide, seg_s, seg_w, _ = nnunet_case(pred, data, props)
        summarize(name, out, x, stock, wide, rng)
        # the label maps nnU-Net writes (stock and with float32 buffers), read back on the
        # project's grid with seg_explain.load_image
        odir = written_maps(pred, name, f, out, work)
        # the in-memory path gives the same map (nnU-Net's reader and ours agree on geometry)
        itk = sitk.ReadImage(str(f))
        lab = sitk.GetImageFromArray(seg_s.astype(np.uint8))
        lab.CopyInformation(itk)
        sitk.WriteImage(lab, str(odir / "mem.nii.gz"))
        assert np.array_equal(load_image(odir / "mem.nii.gz").data, out[f"{name}/pred_image"]), name
        report[name] = _diff(stock, wide, seg_s, seg_w)

    folder2d = models / DATASET / "nnUNetTrainer__nnUNetPlans__2d"
    pred = predictor_for(folder2d)
    tb = pred.plans_manager.transpose_backward
    for name in ("mni152_sag_4x4", "mni152_sag_2x2"):
        img = load_image(heldout / f"{name}.tif")
        # a 2D image is one slice in the configuration's plane: nnU-Net array (1, Y, X) after
        # transpose_forward, with a 999 mm slice thickness as nnU-Net's 2D readers use
        t = img.data.astype(np.float32)[None, None]
        data = t.transpose([0] + [i + 1 for i in tb])
        sp_t = [999.0, *img.spacing]
        props = {"spacing": [sp_t[i] for i in tb]}
        x, stock, wide, seg_s, seg_w, _ = nnunet_case(pred, data, props)
        tf = pred.plans_manager.transpose_forward
        seg_t = seg_s.transpose(tf)[0]
        summarize(name, out, x[:, 0], stock[:, 0], wide[:, 0], rng)
        out[f"{name}/pred_image"] = seg_t.astype(np.uint8)
        out[f"{name}/pred_image_fp32"] = seg_w.transpose(tf)[0].astype(np.uint8)
        _as_diff(out, name)
        report[name] = _diff(stock, wide, seg_s, seg_w)
    # nnU-Net's test-time mirroring (use_mirroring=True), 3D held-out image at the
    # configuration's spacing
    pred = predictor_for(folder3d)
    pred.use_mirroring = True
    data, props = SimpleITKIO().read_images([str(cases3d["mni152_6x4x4"])])
    x, stock, wide, seg_s, seg_w, _ = nnunet_case(pred, data, props)
    summarize("mirror_mni152_6x4x4", out, x, stock, wide, rng)
    report["mirror_mni152_6x4x4"] = _diff(stock, wide, seg_s, seg_w)
    volumes_2d(models, heldout, out, report, work, np.random.default_rng(902))
    np.savez_compressed(out_file, **out)
    (out_file.with_suffix(".json")).write_text(json.dumps(report, indent=2))
    log(f"reference written: {out_file} ({out_file.stat().st_size // 1024} kB)")
    for k, v in report.items():
        log(f"  {k}: {v}")


def written_maps(pred, name: str, f: Path, out: dict, work: Path) -> Path:
    """The label maps nnU-Net writes (``predict_from_files_sequential``, stock and with float32
    buffers), read back on the project's grid with ``seg_explain.load_image``."""
    from seg_explain import load_image

    odir = work / "pred" / name
    odir.mkdir(parents=True, exist_ok=True)
    shutil.copy(f, odir / "case_0000.nii.gz")
    for key, ctx in (("pred_image", _nullcontext), ("pred_image_fp32", fp32_buffers)):
        with ctx():
            pred.predict_from_files_sequential([[str(odir / "case_0000.nii.gz")]], [str(odir / key)],
                                               save_probabilities=False, overwrite=True)
        out[f"{name}/{key}"] = load_image(odir / f"{key}.nii.gz").data.astype(np.uint8)
    _as_diff(out, name)
    return odir


def make_gaps(heldout: Path) -> Path:
    """``mni152_6x4x4`` with an all-zero sagittal slice (file axis i = x, the 2d
    configuration's slicing axis: transpose_forward = [2, 0, 1]) at i = 12 and a 3-voxel
    zero border on every side (affine shifted so the head stays in place)."""
    import nibabel as nib

    src = nib.load(str(heldout / "mni152_6x4x4.nii.gz"))
    d = np.asarray(src.dataobj).copy()
    d[12] = 0
    d = np.pad(d, 3)
    aff = src.affine @ np.array([[1, 0, 0, -3], [0, 1, 0, -3], [0, 0, 1, -3], [0, 0, 0, 1]], float)
    f = heldout / "mni152_6x4x4_gaps.nii.gz"
    nib.save(nib.Nifti1Image(d.astype(np.uint8), aff), str(f))
    return f


def per_slice_labels(pred, data: np.ndarray, props: dict) -> np.ndarray:
    """nnU-Net's labels when every slice in the 2d configuration's plane is predicted as its
    own 2D image (what a slice-by-slice caller gets), in nnU-Net's (SimpleITK) axis order.
    An all-zero slice is background (nnU-Net cannot crop an empty 2D image)."""
    import copy

    tf, tb = pred.plans_manager.transpose_forward, pred.plans_manager.transpose_backward
    t = data.transpose([0] + [i + 1 for i in tf])
    sp_t = [props["spacing"][i] for i in tf]
    sp2 = [999.0, *sp_t[1:]]
    seg = np.zeros(t.shape[1:], np.uint8)
    for s in range(t.shape[1]):
        sl = t[:, s:s + 1]
        if not np.any(sl):
            continue
        d2 = np.ascontiguousarray(sl.transpose([0] + [i + 1 for i in tb]))
        p2 = copy.deepcopy(props)
        p2["spacing"] = [sp2[i] for i in tb]
        seg[s] = np.asarray(pred.predict_single_npy_array(d2, p2, None, None, False)).transpose(tf)[0]
    return seg.transpose(tb)


def volumes_2d(models: Path, heldout: Path, out: dict, report: dict, work: Path, rng) -> None:
    """The 2d configuration (folds 0 and 1) predicting 3D volumes, keys ``vol2d_<case>/...``;
    the report notes how many labels differ from predicting each slice on its own."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pred = predictor_for(models / DATASET / "nnUNetTrainer__nnUNetPlans__2d")
    cases = {"mni152_6x4x4": heldout / "mni152_6x4x4.nii.gz",
             "mni152_6x4x4_gaps": make_gaps(heldout),
             "kmeans_2x3x2": SAMPLE / "heldout" / "KmeansTest_T1UCharRaw.nii.gz"}
    for case, f in cases.items():
        name = f"vol2d_{case}"
        data, props = SimpleITKIO().read_images([str(f)])
        x, stock, wide, seg_s, seg_w, _ = nnunet_case(pred, data, props)
        summarize(name, out, x, stock, wide, rng)
        written_maps(pred, name, f, out, work)
        report[name] = _diff(stock, wide, seg_s, seg_w)
        per = per_slice_labels(pred, data, props)
        report[name]["labels"] = int(seg_s.size)
        report[name]["labels_differ_volume_vs_per_slice_2d"] = int((per != seg_s).sum())
        log(f"  {name}: {report[name]}")


def _as_diff(out: dict, name: str) -> None:
    """Store the float32-buffer label map as its differences from the stock one (small)."""
    stock, wide = out[f"{name}/pred_image"], out.pop(f"{name}/pred_image_fp32")
    idx = np.flatnonzero(stock != wide).astype(np.int32)
    out[f"{name}/fp32_diff_idx"] = idx
    out[f"{name}/fp32_diff_val"] = wide.reshape(-1)[idx]


def _diff(stock, wide, seg_s, seg_w) -> dict:
    d = np.abs(stock.astype(np.float64) - wide)
    return {"stock_vs_fp32_max_abs": float(d.max()), "max_abs_logit": float(np.abs(wide).max()),
            "stock_vs_fp32_rel": float(d.max() / np.abs(wide).max()),
            "labels_differ_stock_vs_fp32": int((seg_s != seg_w).sum())}


# ------------------------------------------------------------------------------ main --
def copy_models(results: Path, models: Path) -> None:
    for conf in ("3d_fullres", "2d"):
        src = results / DATASET / f"nnUNetTrainer__nnUNetPlans__{conf}"
        dst = models / DATASET / src.name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in ("dataset.json", "plans.json"):
            shutil.copy(src / f, dst / f)
        for fold in sorted(src.glob("fold_*")):
            if (fold / "checkpoint_final.pth").is_file():
                (dst / fold.name).mkdir()
                shutil.copy(fold / "checkpoint_final.pth", dst / fold.name / "checkpoint_final.pth")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "nnunet"))
    ap.add_argument("--work", default=None, help="keep nnU-Net's raw/preprocessed/results here")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--reference-only", action="store_true",
                    help="recompute the reference outputs from the model folders already in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    models, heldout = out, out / "heldout"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nnunet_fixture_"))
    for k in ("raw", "preprocessed", "results"):
        (work / k).mkdir(parents=True, exist_ok=True)
    os.environ.update({"nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
                       "nnUNet_results": str(work / "results"), "nnUNet_n_proc_DA": "1",
                       "nnUNet_def_n_proc": "1", "nnUNet_compile": "false"})
    import torch

    torch.set_num_threads(1)
    if not args.reference_only:
        log("raw data set")
        make_raw(work / "raw", heldout)
        make_2d(heldout)
        log("fingerprint, plans, preprocessing")
        plan_and_preprocess()
        for conf, folds in (("3d_fullres", (0,)), ("2d", (0, 1))):
            for fold in folds:
                log(f"training {conf} fold {fold}")
                train(conf, fold, args.epochs, args.iters)
        copy_models(work / "results", models)
    log("reference outputs (nnUNetPredictor, mirroring off)")
    reference(models, heldout, out / "reference.npz", work)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"fixture: {total / 1024:.0f} kB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
