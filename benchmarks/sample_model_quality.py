#!/usr/bin/env python
"""Quality of the shipped sample models, measured through the public API only.

    python benchmarks/sample_model_quality.py [--models sample_data/models] [--json out.json]

Reports
* 3D held-out: brain Dice (union of the non-background classes) of ``brain3d`` on the
  ITK ``KmeansTest_T1UCharRaw`` head (another subject, other scanner contrast, 2x3x2 mm,
  with skull) against ``KmeansTest_T1RawSkullStrip`` > 0, on the image's own grid
  (``model.predict(load_image(...))`` resamples to 2 mm and back);
* per-class Dice of ``brain3d`` on the training subjects (Colin27, MNI152 2009a);
* ``brain2d``: per-class Dice on the shipped 2D sample slice and over all axial slices of
  Colin27, and held-out brain Dice slice by slice on the held-out head resampled to 2 mm;
* weights size, parameter count, training time recorded in the bundle, inference time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
try:
    import seg_explain  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(ROOT / "src"))
import seg_explain  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def per_class(pred: np.ndarray, ref: np.ndarray, names: list[str]) -> dict[str, float]:
    return {n: dice(pred == i, ref == i) for i, n in enumerate(names) if i > 0 and (ref == i).any()}


def resample_to(arr: np.ndarray, spacing, target=(2.0, 2.0, 2.0), order=1) -> np.ndarray:
    """Plain resize of a (Z, Y, X) array to ``target`` mm (the grid brain3d works on)."""
    import torch
    import torch.nn.functional as F

    shape = [max(1, int(round(n * s / t))) for n, s, t in zip(arr.shape, spacing, target)]
    x = torch.as_tensor(arr.astype(np.float32))[None, None]
    if order == 0:
        y = F.interpolate(x, size=shape, mode="nearest")
    else:
        y = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
    return y[0, 0].numpy()


def bundle_facts(path: Path, model) -> dict:
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    n_par = sum(p.numel() for p in model.network.parameters()) if hasattr(model, "network") else None
    return {"weights_kb": round((path / "models" / "model.pt").stat().st_size / 1024, 1),
            "parameters": n_par, "train_time_s": meta.get("train_time_s"),
            "train_iterations": meta.get("train_iterations"),
            "train_threads": meta.get("train_threads")}


def eval3d(path: Path) -> dict:
    m = seg_explain.load_model(path, device="cpu")
    names = list(m.class_names)
    res: dict = {"model": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    res.update(bundle_facts(path, m))
    img = seg_explain.load_image(SAMPLE / "heldout" / "KmeansTest_T1UCharRaw.nii.gz")
    ref = seg_explain.load_image(SAMPLE / "heldout" / "KmeansTest_T1RawSkullStrip.nii.gz").data > 0
    t = time.time()
    pred = m.predict(img)
    res["heldout_predict_s"] = round(time.time() - t, 2)
    assert pred.shape == ref.shape, (pred.shape, ref.shape)
    res["heldout_brain_dice"] = dice(pred > 0, ref)
    res["heldout_brain_dice_core"] = dice(pred > 0, seg_explain.load_image(
        SAMPLE / "heldout" / "KmeansTest_T1RawSkullStrip.nii.gz").data == 6)
    res["heldout_classes_present"] = int(len(np.unique(pred)))
    for subj, im, lb in (("colin27", "colin27_t1_2mm", "colin27_labels_2mm"),
                         ("mni152", "mni152_2009a_t1_2mm", "mni152_2009a_labels_2mm")):
        x = seg_explain.load_image(SAMPLE / "brain3d" / f"{im}.nii.gz")
        y = seg_explain.load_image(SAMPLE / "brain3d" / f"{lb}.nii.gz").data
        p = m.predict(x)
        pc = per_class(p, y, names)
        res[f"{subj}_per_class"] = pc
        res[f"{subj}_mean_dice"] = float(np.mean(list(pc.values())))
        res[f"{subj}_brain_dice"] = dice(p > 0, y > 0)
    return res


def eval2d(path: Path) -> dict:
    m = seg_explain.load_model(path, device="cpu")
    names = list(m.class_names)
    res: dict = {"model": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    res.update(bundle_facts(path, m))
    x = seg_explain.load_image(SAMPLE / "brain2d" / "colin27_axial_t1.tif")
    y = seg_explain.load_image(SAMPLE / "brain2d" / "colin27_axial_labels.tif").data
    t = time.time()
    p = m.predict(x)
    res["sample_slice_predict_s"] = round(time.time() - t, 3)
    pc = per_class(p, y, names)
    res["sample_slice_per_class"] = pc
    res["sample_slice_mean_dice"] = float(np.mean(list(pc.values())))
    # every axial slice of the training volumes (arrays on the model's 2 mm grid)
    for subj, im, lb in (("colin27", "colin27_t1_2mm", "colin27_labels_2mm"),
                         ("mni152", "mni152_2009a_t1_2mm", "mni152_2009a_labels_2mm")):
        vol = seg_explain.load_image(SAMPLE / "brain3d" / f"{im}.nii.gz").data
        lab = seg_explain.load_image(SAMPLE / "brain3d" / f"{lb}.nii.gz").data
        pv = np.stack([m.predict(s) for s in vol])
        pcv = per_class(pv, lab, names)
        res[f"{subj}_slices_per_class"] = pcv
        res[f"{subj}_slices_mean_dice"] = float(np.mean(list(pcv.values())))
    # held-out head resampled to 2 mm, slice by slice
    img = seg_explain.load_image(SAMPLE / "heldout" / "KmeansTest_T1UCharRaw.nii.gz")
    ref = seg_explain.load_image(SAMPLE / "heldout" / "KmeansTest_T1RawSkullStrip.nii.gz").data > 0
    v2 = resample_to(img.data, img.spacing)
    r2 = resample_to(ref.astype(np.float32), img.spacing, order=0) > 0.5
    pv = np.stack([m.predict(s) for s in v2])
    res["heldout_brain_dice_all_slices"] = dice(pv > 0, r2)
    z = int(np.argmax(r2.sum(axis=(1, 2))))
    res["heldout_brain_dice_mid_slice"] = dice(pv[z] > 0, r2[z])
    res["heldout_mid_slice_index"] = z
    return res


def fmt_table(r3: dict | None, r2: dict | None) -> str:
    lines = []
    if r3:
        lines += ["== brain3d (" + r3["model"] + ")",
                  f"weights {r3['weights_kb']} KB, {r3['parameters']} parameters, trained "
                  f"{r3['train_time_s']} s ({r3['train_iterations']} it, {r3['train_threads']} threads)",
                  f"held-out ITK T1: brain Dice {r3['heldout_brain_dice']:.3f} (vs mask>0), "
                  f"{r3['heldout_brain_dice_core']:.3f} (vs mask==6), predict {r3['heldout_predict_s']} s",
                  f"colin27 (train): brain Dice {r3['colin27_brain_dice']:.3f}, mean class Dice {r3['colin27_mean_dice']:.3f}",
                  f"mni152  (train): brain Dice {r3['mni152_brain_dice']:.3f}, mean class Dice {r3['mni152_mean_dice']:.3f}",
                  f"{'class':18s} {'colin27':>8s} {'mni152':>8s}"]
        for n in r3["colin27_per_class"]:
            lines.append(f"{n:18s} {r3['colin27_per_class'][n]:8.3f} {r3['mni152_per_class'].get(n, float('nan')):8.3f}")
    if r2:
        lines += ["", "== brain2d (" + r2["model"] + ")",
                  f"weights {r2['weights_kb']} KB, {r2['parameters']} parameters, trained "
                  f"{r2['train_time_s']} s ({r2['train_iterations']} it, {r2['train_threads']} threads)",
                  f"held-out ITK T1 at 2 mm, slice by slice: brain Dice {r2['heldout_brain_dice_all_slices']:.3f} "
                  f"(all slices), {r2['heldout_brain_dice_mid_slice']:.3f} (largest slice z={r2['heldout_mid_slice_index']})",
                  f"sample slice: mean class Dice {r2['sample_slice_mean_dice']:.3f}; colin27 all slices "
                  f"{r2['colin27_slices_mean_dice']:.3f}; mni152 all slices {r2['mni152_slices_mean_dice']:.3f}",
                  f"{'class':18s} {'slice':>8s} {'colin27':>8s} {'mni152':>8s}"]
        for n in r2["colin27_slices_per_class"]:
            lines.append(f"{n:18s} {r2['sample_slice_per_class'].get(n, float('nan')):8.3f} "
                         f"{r2['colin27_slices_per_class'][n]:8.3f} {r2['mni152_slices_per_class'].get(n, float('nan')):8.3f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Sample model quality (public API)")
    ap.add_argument("--models", default=str(SAMPLE / "models"))
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--which", choices=["3d", "2d", "both"], default="both")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    md = Path(args.models)
    r3 = eval3d(md / "brain3d") if args.which in ("3d", "both") and (md / "brain3d").is_dir() else None
    r2 = eval2d(md / "brain2d") if args.which in ("2d", "both") and (md / "brain2d").is_dir() else None
    print(fmt_table(r3, r2), flush=True)
    out = {"brain3d": r3, "brain2d": r2}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
