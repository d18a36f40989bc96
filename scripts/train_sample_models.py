#!/usr/bin/env python
"""Train the two small sample models shipped as MONAI bundles in ``sample_data/models/``.

* ``brain3d``: MONAI ``UNet`` (3D) on 2 mm volumes of Colin27 (head with skull) and the
  MNI152 2009a template (skull-stripped), 16 classes (background, 7 lobe-level regions per
  hemisphere, rest of the brain), 64^3 patches.
* ``brain2d``: MONAI ``UNet`` (2D) on the axial 2 mm slices of the same volumes, 128^2.

Both read only ``sample_data/`` (run ``scripts/build_sample_data.py`` first), are seeded,
and run on CPU with ``torch.set_num_threads(2)``.  Augmentation: random affine (rotation,
anisotropic scale, translation; no left-right flip, the classes are hemispheric), gamma,
bias field, blur, noise, global intensity scale/shift, and (3D) random removal of the
skull on the head that has one.  The intensity normalisation is the bundle's own
``preprocessing`` transform, instantiated from the very dict written to
``configs/inference.json`` so that training and inference cannot drift apart.

    python scripts/train_sample_models.py                 # both, then evaluate
    python scripts/train_sample_models.py --which 3d --iters3d 800
    python scripts/train_sample_models.py --eval-only
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
sys.path.insert(0, str(ROOT / "src"))

from seg_explain.io import load_image  # noqa: E402  (project array convention)

CLASS_NAMES = json.loads((SAMPLE / "classes.json").read_text()) if (SAMPLE / "classes.json").exists() else None
N_CLASSES = 16

# The one intensity normalisation, shared by training and the bundle config.  Percentiles
# of the whole (resampled) image: p0 -> 0 and p95 -> 1.  Measured on the three subjects,
# this puts the brain median at 0.78 / 0.86 / 0.78 (Colin27 head, MNI152 brain-only,
# held-out ITK head), where z-scoring over non-zero voxels gave 0.42 / 0.16 / 0.06.
NORM = {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.0,
        "upper": 95.0, "b_min": 0.0, "b_max": 1.0, "clip": False}

NET3D = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1,
         "out_channels": N_CLASSES, "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
         "num_res_units": 1, "norm": "INSTANCE"}
NET2D = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1,
         "out_channels": N_CLASSES, "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
         "num_res_units": 1, "norm": "INSTANCE"}
PATCH3D = (64, 64, 64)
PATCH2D = (128, 128)


def norm_transform():
    from monai.transforms import ScaleIntensityRangePercentiles

    kw = {k: v for k, v in NORM.items() if k not in ("_target_", "keys")}
    return ScaleIntensityRangePercentiles(**kw)


def build_net(cfg: dict):
    from monai.networks.nets import UNet

    kw = {k: v for k, v in cfg.items() if k != "_target_"}
    return UNet(**kw)


# ----------------------------------------------------------------------------- data
def load_subjects():
    """[(name, image (Z,Y,X) float32 raw, labels (Z,Y,X) int64, brain mask)]."""
    out = []
    for name, img, lab in (("colin27", "colin27_t1_2mm", "colin27_labels_2mm"),
                           ("mni152", "mni152_2009a_t1_2mm", "mni152_2009a_labels_2mm")):
        im = load_image(SAMPLE / "brain3d" / f"{img}.nii.gz")
        lb = load_image(SAMPLE / "brain3d" / f"{lab}.nii.gz")
        assert im.data.shape == lb.data.shape and np.allclose(im.spacing, (2, 2, 2))
        out.append((name, im.data.astype(np.float32), lb.data.astype(np.int64)))
    return out


def normalise(arr: np.ndarray) -> np.ndarray:
    t = norm_transform()(torch.as_tensor(arr[None], dtype=torch.float32))
    return np.asarray(t)[0].astype(np.float32)


def rot_matrix(angles, dims: int, rng) -> np.ndarray:
    if dims == 2:
        a = angles[0]
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_patch(img: torch.Tensor, lab: torch.Tensor, patch, rng, center=None,
                 max_rot=0.2, scale=(0.85, 1.18), shift=8.0):
    """Random affine patch of ``img``/``lab`` (spatial tensors) resampled by grid_sample."""
    dims = len(patch)
    shape = np.array(img.shape, float)
    if center is None:
        center = shape / 2
    c = np.asarray(center, float) + rng.uniform(-shift, shift, dims)
    R = rot_matrix(rng.uniform(-max_rot, max_rot, 1 if dims == 2 else 3), dims, rng)
    S = np.diag(rng.uniform(*scale, dims))
    A = R @ S  # output voxel offset -> input voxel offset
    grids = np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch], indexing="ij")
    off = np.stack([g.ravel() for g in grids], 0)
    coords = A @ off + c[:, None]  # input index coordinates (dims, N)
    norm = 2 * coords / (shape[:, None] - 1) - 1
    grid = torch.as_tensor(norm[::-1].T.reshape(1, *patch, dims).copy(), dtype=torch.float32)
    x = F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    y = F.grid_sample(lab[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                      align_corners=True)
    return x[0], y[0].long()


def intensity_aug(x: torch.Tensor, rng, dims: int) -> torch.Tensor:
    """x: (1, *S) normalised image.  Gamma, bias field, blur, global scale/shift, noise."""
    x = x.clamp_min(0)
    if rng.random() < 0.8:
        g = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
        x = x.pow(g)
    if rng.random() < 0.6:  # smooth multiplicative bias field
        lo = torch.as_tensor(rng.normal(0, 0.25, (1, 1) + (4,) * dims), dtype=torch.float32)
        mode = "trilinear" if dims == 3 else "bilinear"
        field = F.interpolate(lo, size=x.shape[1:], mode=mode, align_corners=True)[0]
        x = x * field.exp()
    if rng.random() < 0.4:  # blur (partial volume / thick slices), per axis
        from monai.transforms import GaussianSmooth

        sig = [float(rng.uniform(0.0, 1.2)) for _ in range(dims)]
        x = GaussianSmooth(sigma=sig)(x)
        x = torch.as_tensor(x)
    x = x * rng.uniform(0.75, 1.3) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.6:
        x = x + torch.randn_like(x) * rng.uniform(0.0, 0.06)
    return x.float()


def strip_skull(img: np.ndarray, lab: np.ndarray, rng, it: int | None = None) -> np.ndarray:
    """Zero everything outside a (randomly) dilated brain mask: a skull-stripped variant."""
    from scipy import ndimage as ndi

    m = lab > 0
    if it is None:
        it = int(rng.integers(0, 3))
    if it:
        m = ndi.binary_dilation(m, iterations=it)
    return np.where(m, img, 0).astype(np.float32)


# ---------------------------------------------------------------------------- bundle
def write_bundle(out: Path, dims: int, net_cfg: dict, state: dict, extra_meta: dict) -> None:
    names = CLASS_NAMES or {str(i): f"class_{i}" for i in range(N_CLASSES)}
    patch = list(PATCH3D if dims == 3 else PATCH2D)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "models" / "model.pt")
    pre = [{"_target_": "LoadImaged", "keys": "image"},
           {"_target_": "EnsureChannelFirstd", "keys": "image"}]
    if dims == 3:
        pre += [{"_target_": "Orientationd", "keys": "image", "axcodes": "SPL"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"}]
    pre.append(dict(NORM))
    inference = {
        "network_def": net_cfg,
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": patch, "sw_batch_size": 2,
                    "overlap": 0.25, "mode": "gaussian"},
    }
    desc3 = ("Toy 3D brain-region segmentation of T1-weighted MRI at 2 mm: 14 lobe-level "
             "regions (AAL merged, per hemisphere) plus the rest of the brain. Trained in "
             "minutes on two templates (Colin27, MNI152 2009a) for demonstrating explanation "
             "methods; not a clinical or research-grade model.")
    desc2 = ("Toy 2D brain-region segmentation of axial T1-weighted MRI slices with ~2 mm "
             "pixels (no resampling: give it 2 mm slices), same 16 classes as brain3d. "
             "Trained in minutes on axial slices of two templates; demonstration only.")
    meta = {
        "version": "0.1.0",
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "name": "brain3d" if dims == 3 else "brain2d",
        "description": desc3 if dims == 3 else desc2,
        "authors": "napari-seg-explain developers",
        "copyright": "napari-seg-explain developers",
        "license": "BSD-3-Clause (weights); training data: see sample_data/PROVENANCE.md",
        "monai_version": __import__("monai").__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "spatial_dims": dims,
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                "spatial_shape": patch, "dtype": "float32", "value_range": [0, 255],
                "is_patch_data": True,
                "channel_def": {"0": "T1"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": N_CLASSES,
                "spatial_shape": patch, "dtype": "float32", "is_patch_data": True,
                "channel_def": names}}},
    }
    meta.update(extra_meta)
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    (out / "LICENSE").write_text(
        "The weights in models/model.pt are released under the BSD-3-Clause licence of "
        "napari-seg-explain.\nThey were trained on data whose licences are listed in "
        "sample_data/PROVENANCE.md (Colin27 and AAL from MRIcron, BSD-3-Clause; MNI ICBM152 "
        "2009a, McGill permissive licence).\n")
    kind = "3D volumes (any orientation/spacing; resampled to 2 mm SPL)" if dims == 3 else \
        "2D axial slices (Y, X) = (posterior, patient left) with ~2 mm pixels"
    (out / "README.md").write_text(
        f"# {meta['name']}\n\n{meta['description']}\n\n"
        f"- Input: one-channel T1 MRI, {kind}, raw intensities; the bundle normalises them "
        f"with `{NORM['_target_']}` (p{NORM['lower']:g} -> 0, p{NORM['upper']:g} -> 1 over the whole image).\n"
        f"- Output: {N_CLASSES} logits, classes in `configs/metadata.json` `channel_def`.\n"
        f"- Network: `{net_cfg['_target_']}` {json.dumps({k: v for k, v in net_cfg.items() if k != '_target_'})}.\n"
        f"- Trained by `scripts/train_sample_models.py` (seed {extra_meta.get('train_seed')}, "
        f"{extra_meta.get('train_iterations')} iterations, {extra_meta.get('train_time_s')} s on "
        f"{extra_meta.get('train_threads')} CPU threads); quality: `benchmarks/sample_model_quality.py`.\n")


# ---------------------------------------------------------------------------- train
def cosine_lr(opt, base, it, total, warm=30):
    lr = base * (it + 1) / warm if it < warm else base * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, total - warm)))
    for g in opt.param_groups:
        g["lr"] = lr


def train3d(iters: int, seed: int, out: Path, batch: int = 2, lr: float = 3e-3) -> dict:
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    subjects = load_subjects()
    # normalised volumes: each subject as it is, plus (for the head with skull) a
    # skull-stripped variant prepared on the fly
    net = build_net(NET3D)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=False, batch=True)
    norm_cache = {s[0]: torch.as_tensor(normalise(s[1])) for s in subjects}
    labs = {s[0]: torch.as_tensor(s[2]) for s in subjects}
    # skull-stripped variants of the head that has a skull (brain mask dilated 0/1/2 voxels)
    stripped = [torch.as_tensor(normalise(strip_skull(s[1], s[2], None, it)))
                for s in subjects if s[0] == "colin27" for it in (0, 1, 2)]
    fgs = {s[0]: np.argwhere(s[2] > 0) for s in subjects}
    t0 = time.time()
    net.train()
    hist = []
    for it in range(iters):
        cosine_lr(opt, lr, it, iters)
        xs, ys = [], []
        for _ in range(batch):
            name = subjects[int(rng.integers(len(subjects)))][0]
            img, lab = norm_cache[name], labs[name]
            if name == "colin27" and rng.random() < 0.25:
                img = stripped[int(rng.integers(len(stripped)))]
            # patch centre: mostly on a random brain voxel, so all regions are seen
            fg = fgs[name]
            c = fg[int(rng.integers(len(fg)))] if rng.random() < 0.85 else np.array(img.shape) / 2
            x, y = sample_patch(img, lab, PATCH3D, rng, center=c, shift=4.0)
            xs.append(intensity_aug(x, rng, 3))
            ys.append(y)
        xb, yb = torch.stack(xs), torch.stack(ys)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if it % 50 == 0 or it == iters - 1:
            print(f"[3d] it {it:5d}  loss {np.mean(hist[-50:]):.4f}  {time.time() - t0:7.1f}s", flush=True)
    elapsed = time.time() - t0
    net.eval()
    write_bundle(out, 3, NET3D, net.state_dict(), {
        "train_time_s": round(elapsed, 1), "train_iterations": iters, "train_batch": batch,
        "train_patch": list(PATCH3D), "train_seed": seed, "train_threads": torch.get_num_threads(),
        "train_final_loss": round(float(np.mean(hist[-50:])), 4),
        "training_data": ["sample_data/brain3d/colin27_t1_2mm.nii.gz",
                          "sample_data/brain3d/mni152_2009a_t1_2mm.nii.gz"]})
    return {"time_s": elapsed, "loss": float(np.mean(hist[-50:]))}


def slices2d(subjects):
    out = []
    for name, img, lab in subjects:
        for z in range(img.shape[0]):
            # skip slices with < 50 brain pixels, and those whose p95 is still background
            # (the percentile normalisation is degenerate there)
            if (lab[z] > 0).sum() > 50 and np.percentile(img[z], NORM["upper"]) > np.percentile(img[z], NORM["lower"]):
                out.append((name, z, img[z], lab[z]))
    return out


def train2d(iters: int, seed: int, out: Path, batch: int = 16, lr: float = 3e-3) -> dict:
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    subjects = load_subjects()
    sl = slices2d(subjects)
    # per-slice normalisation, as the 2D bundle will see a single slice
    norm = [torch.as_tensor(normalise(s[2])) for s in sl]
    stripped = {}
    labs = [torch.as_tensor(s[3]) for s in sl]
    net = build_net(NET2D)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    t0 = time.time()
    hist = []
    net.train()
    for it in range(iters):
        cosine_lr(opt, lr, it, iters)
        xs, ys = [], []
        for _ in range(batch):
            i = int(rng.integers(len(sl)))
            img = norm[i]
            if sl[i][0] == "colin27" and rng.random() < 0.25:
                if i not in stripped:
                    st = strip_skull(sl[i][2], sl[i][3], rng)
                    # keep the head when the stripped slice is < 5 % brain (p95 = 0: degenerate)
                    stripped[i] = torch.as_tensor(normalise(st)) if np.percentile(st, NORM["upper"]) > 0 else img
                img = stripped[i]
            x, y = sample_patch(img, labs[i], PATCH2D, rng, max_rot=0.25, shift=10.0)
            xs.append(intensity_aug(x, rng, 2))
            ys.append(y)
        xb, yb = torch.stack(xs), torch.stack(ys)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
        if it % 100 == 0 or it == iters - 1:
            print(f"[2d] it {it:5d}  loss {np.mean(hist[-100:]):.4f}  {time.time() - t0:7.1f}s", flush=True)
    elapsed = time.time() - t0
    net.eval()
    write_bundle(out, 2, NET2D, net.state_dict(), {
        "train_time_s": round(elapsed, 1), "train_iterations": iters, "train_batch": batch,
        "train_patch": list(PATCH2D), "train_seed": seed, "train_threads": torch.get_num_threads(),
        "train_final_loss": round(float(np.mean(hist[-100:])), 4),
        "training_data": ["axial slices of sample_data/brain3d/colin27_t1_2mm.nii.gz and "
                          "sample_data/brain3d/mni152_2009a_t1_2mm.nii.gz"]})
    return {"time_s": elapsed, "loss": float(np.mean(hist[-100:]))}


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the sample MONAI bundles")
    ap.add_argument("--which", choices=["3d", "2d", "both"], default="both")
    ap.add_argument("--iters3d", type=int, default=800)
    ap.add_argument("--iters2d", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(SAMPLE / "models"))
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not args.eval_only:
        if args.which in ("3d", "both"):
            print("3d:", train3d(args.iters3d, args.seed, out / "brain3d"))
        if args.which in ("2d", "both"):
            print("2d:", train2d(args.iters2d, args.seed, out / "brain2d"))
    if not args.no_eval:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import sample_model_quality

        sample_model_quality.main(["--models", str(out)])


if __name__ == "__main__":
    main()
