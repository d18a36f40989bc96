#!/usr/bin/env python
"""Build the small real sample data set shipped in ``sample_data/``.

Sources (all offline, installed on the build machine only; nothing here is a runtime
dependency of napari-seg-explain):

* Debian ``mricron-data`` (BSD-3-Clause): Colin27 T1 ``ch2.nii.gz`` (head with skull),
  its brain extraction ``ch2bet.nii.gz`` and the AAL atlas ``aal.nii.gz`` + ``aal.nii.txt``
  (same 1 mm grid as ch2).
* Debian ``insighttoolkit5-examples`` (Apache-2.0): ``KmeansTest_T1UCharRaw.nii.gz`` and
  ``KmeansTest_T1RawSkullStrip.nii.gz`` (another subject; held out, shipped unchanged).
* PyPI ``nilearn`` (BSD-3-Clause package; the MNI ICBM152 2009a template under its own
  permissive McGill licence): ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` and
  the grey-matter probability map.

Run (after ``apt-get install -y mricron-data insighttoolkit5-examples`` and
``pip install nilearn``)::

    python scripts/build_sample_data.py            # writes sample_data/

Everything is deterministic (seeded).  The array convention of the project is used for
the 2D files: axial slices, rows = posterior, columns = patient left (LPS (Y, X)).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
MRICRON = Path("/usr/share/mricron/templates")
ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")

CLASS_NAMES = [
    "background",
    "frontal_L", "frontal_R",
    "parietal_L", "parietal_R",
    "temporal_L", "temporal_R",
    "occipital_L", "occipital_R",
    "limbic_insula_L", "limbic_insula_R",
    "deep_grey_L", "deep_grey_R",
    "cerebellum_L", "cerebellum_R",
    "other_brain",  # white matter, CSF, brainstem: rest of the brain mask
]
OTHER = CLASS_NAMES.index("other_brain")

# AAL region-name prefix -> lobe (hemisphere from the _L / _R suffix; vermis by side of midline)
LOBE_OF_PREFIX = [
    ("Precentral", "frontal"), ("Frontal", "frontal"), ("Rolandic_Oper", "frontal"),
    ("Supp_Motor_Area", "frontal"), ("Olfactory", "frontal"), ("Rectus", "frontal"),
    ("Paracentral_Lobule", "frontal"),
    ("Postcentral", "parietal"), ("Parietal", "parietal"), ("SupraMarginal", "parietal"),
    ("Angular", "parietal"), ("Precuneus", "parietal"),
    ("Heschl", "temporal"), ("Temporal", "temporal"), ("Fusiform", "temporal"),
    ("Calcarine", "occipital"), ("Cuneus", "occipital"), ("Lingual", "occipital"),
    ("Occipital", "occipital"),
    ("Insula", "limbic_insula"), ("Cingulum", "limbic_insula"), ("Hippocampus", "limbic_insula"),
    ("ParaHippocampal", "limbic_insula"), ("Amygdala", "limbic_insula"),
    ("Caudate", "deep_grey"), ("Putamen", "deep_grey"), ("Pallidum", "deep_grey"),
    ("Thalamus", "deep_grey"),
    ("Cerebelum", "cerebellum"), ("Vermis", "cerebellum"),
]


# ----------------------------------------------------------------------------- helpers
def nilearn_data_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def read_aal_table(path: Path) -> list[tuple[int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[1]))
    return rows


def aal_lookup(rows) -> tuple[np.ndarray, list[dict]]:
    """AAL index -> class index (vermis gets -1: split by the midline later)."""
    lut = np.zeros(256, np.int16)
    table = []
    for idx, name in rows:
        lobe = next((lb for pre, lb in LOBE_OF_PREFIX if name.startswith(pre)), None)
        if lobe is None:
            raise SystemExit(f"AAL region {idx} {name} has no lobe mapping")
        if name.startswith("Vermis"):
            cls = -1
            target = "cerebellum_L / cerebellum_R (split at the midline x = 0)"
        else:
            side = name.rsplit("_", 1)[1]
            assert side in ("L", "R"), name
            target = f"{lobe}_{side}"
            cls = CLASS_NAMES.index(target)
        lut[idx] = cls
        table.append({"aal_index": idx, "aal_name": name, "class": target})
    return lut, table


def apply_aal(aal: np.ndarray, affine: np.ndarray, lut: np.ndarray) -> np.ndarray:
    lab = lut[aal.astype(np.int64)]
    verm = lab == -1
    if verm.any():
        ii = np.argwhere(verm)
        x_world = (affine[:3, :3] @ ii.T + affine[:3, 3:4])[0]  # RAS x (mm)
        lab[verm] = np.where(x_world < 0, CLASS_NAMES.index("cerebellum_L"),
                             CLASS_NAMES.index("cerebellum_R"))
    return lab.astype(np.uint8)


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def ball(r: int) -> np.ndarray:
    g = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (g ** 2).sum(0) <= r * r


def block_down2(data: np.ndarray, affine: np.ndarray, labels: bool = False,
                n_classes: int = len(CLASS_NAMES)):
    """Exact 2x2x2 block average (images) or block majority (labels) of a 1 mm volume.

    The 2 mm voxel centre lies at the centre of its 8 source voxels, so the new affine is
    ``affine @ [[2,0,0,.5],[0,2,0,.5],[0,0,2,.5]]``.
    """
    sh = [s - s % 2 for s in data.shape[:3]]
    d = data[: sh[0], : sh[1], : sh[2]]
    new_shape = (sh[0] // 2, 2, sh[1] // 2, 2, sh[2] // 2, 2)
    if labels:
        counts = np.zeros((n_classes,) + tuple(s // 2 for s in sh), np.int16)
        for c in range(n_classes):
            counts[c] = (d == c).reshape(new_shape).sum(axis=(1, 3, 5))
        out = counts.argmax(0).astype(np.uint8)
    else:
        out = d.astype(np.float32).reshape(new_shape).mean(axis=(1, 3, 5))
    scale = np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1]], float)
    return out, affine @ scale


def to_lps_zyx(data_ras: np.ndarray) -> np.ndarray:
    """RAS (i, j, k) array -> project convention (Z, Y, X) = (S, P, L)."""
    return np.ascontiguousarray(data_ras[::-1, ::-1, :].transpose(2, 1, 0))


def save_nii(path: Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=2)  # aligned to MNI/Talairach-like space
    img.header.set_sform(affine, code=4)  # MNI152 space
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def save_tif2d(path: Path, data: np.ndarray, spacing_mm: float = 2.0) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    # resolution = pixels per unit; seg_explain.io reads spacing = 1 / resolution (mm)
    tifffile.imwrite(str(path), np.ascontiguousarray(data),
                     resolution=(1.0 / spacing_mm, 1.0 / spacing_mm),
                     metadata=None, description="spacing_mm=%g axes=YX(P,L)" % spacing_mm)


def tissue_medians(img: np.ndarray, lab: np.ndarray) -> tuple[float, float]:
    """(grey, white) medians: grey = AAL cortex classes, white = other_brain eroded."""
    gm = (lab >= 1) & (lab <= 10)
    wm = ndi.binary_erosion(lab == OTHER, iterations=1)
    return float(np.median(img[gm])), float(np.percentile(img[wm], 75))


def cut_blocks(images: list[np.ndarray], block: int, per_image: int, rng, brain=None):
    """``per_image`` random blocks per image, from positions whose centre lies in the head."""
    out = []
    for n, im in enumerate(images):
        ok = (im > np.percentile(im, 60)) if brain is None else brain[n]
        cands = np.argwhere(ok)
        picked = 0
        while picked < per_image:
            c = cands[rng.integers(len(cands))]
            lo = [int(ci) - block // 2 for ci in c]
            if any(l < 0 or l + block > s for l, s in zip(lo, im.shape)):
                continue
            sl = tuple(slice(l, l + block) for l in lo)
            out.append(im[sl])
            picked += 1
    return np.stack(out)


# ------------------------------------------------------------------------------- main
def build(out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    facts: dict = {"classes": CLASS_NAMES}

    # ---- Colin27 + AAL -----------------------------------------------------------------
    ch2 = nib.load(str(MRICRON / "ch2.nii.gz"))
    aff1 = ch2.affine
    t1 = np.asarray(ch2.dataobj).astype(np.float32)
    bet = np.asarray(nib.load(str(MRICRON / "ch2bet.nii.gz")).dataobj) > 0
    aal_img = nib.load(str(MRICRON / "aal.nii.gz"))
    assert np.allclose(aal_img.affine, aff1) and aal_img.shape == ch2.shape
    aal = np.asarray(aal_img.dataobj)
    lut, table = aal_lookup(read_aal_table(MRICRON / "aal.nii.txt"))
    facts["aal_table"] = table

    lab1 = apply_aal(aal, aff1, lut)
    # brain mask: BET mask united with the atlas, closed (r = 3 mm), holes filled, one piece
    brain = bet | (aal > 0)
    brain = ndi.binary_closing(np.pad(brain, 4), ball(3))[4:-4, 4:-4, 4:-4]
    brain = ndi.binary_fill_holes(brain)
    for ax in range(3):  # slice-wise fill closes sulcal gaps BET left open at the midline
        brain = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(brain, ax, 0)], 0)
        brain = np.moveaxis(brain, 0, ax)
    brain = ndi.binary_opening(brain, ball(2))
    brain = largest_component(brain)
    lab1[brain & (lab1 == 0)] = OTHER
    lab1[~brain] = 0
    c2, aff2 = block_down2(t1, aff1)
    l2, _ = block_down2(lab1, aff1, labels=True)
    c2 = np.clip(np.rint(c2), 0, 255).astype(np.uint8)
    d3 = out / "brain3d"
    save_nii(d3 / "colin27_t1_2mm.nii.gz", c2, aff2, np.uint8)
    save_nii(d3 / "colin27_labels_2mm.nii.gz", l2, aff2, np.uint8)
    facts["colin27_shape"] = list(c2.shape)
    colin_gm, colin_wm = tissue_medians(c2.astype(np.float32), l2)

    # ---- MNI152 2009a + AAL (nearest neighbour through the affines) ----------------------
    nd = nilearn_data_dir()
    mni = nib.load(str(nd / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gmp = np.asarray(nib.load(str(nd / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
    maff = mni.affine
    mt1 = np.asarray(mni.dataobj).astype(np.float32)
    # AAL voxel coordinates of every MNI voxel (both 1 mm axis-aligned: nearest = rounding)
    m2a = np.linalg.inv(aff1) @ maff
    aal_on_mni = ndi.affine_transform(aal, m2a[:3, :3], m2a[:3, 3], output_shape=mt1.shape,
                                      order=0, mode="constant", cval=0)
    mlab = apply_aal(aal_on_mni, maff, lut)
    mbrain = ndi.binary_fill_holes(mt1 > 0)
    mbrain = ndi.binary_opening(mbrain, ball(1))
    mbrain = largest_component(mbrain)
    # grey matter of this template that AAL (drawn on Colin27) misses gets the nearest
    # AAL label within 6 mm; atlas voxels outside this brain are dropped
    gm = (gmp > 0.5 * gmp.max()) & mbrain
    has = mlab > 0
    dist, idx = ndi.distance_transform_edt(~has, return_indices=True)
    fill = gm & ~has & (dist <= 6)
    mlab[fill] = mlab[tuple(i[fill] for i in idx)]
    mlab[mbrain & (mlab == 0)] = OTHER
    mlab[~mbrain] = 0
    m2, maff2 = block_down2(mt1, maff)
    ml2, _ = block_down2(mlab, maff, labels=True)
    m2 = np.clip(np.rint(m2), 0, 255).astype(np.uint8)
    save_nii(d3 / "mni152_2009a_t1_2mm.nii.gz", m2, maff2, np.uint8)
    save_nii(d3 / "mni152_2009a_labels_2mm.nii.gz", ml2, maff2, np.uint8)
    facts["mni_shape"] = list(m2.shape)
    mni_gm, mni_wm = tissue_medians(m2.astype(np.float32), ml2)

    # MNI intensities mapped onto the Colin27 scale (grey & white medians matched) for the
    # PdCR banks, which must be in the explained image's raw intensity scale
    a = (colin_wm - colin_gm) / (mni_wm - mni_gm)
    b = colin_gm - a * mni_gm
    facts["mni_to_colin_linear"] = [float(a), float(b)]
    m2c = np.clip(a * m2.astype(np.float32) + b, 0, 255)
    m2c[m2 == 0] = 0
    m2c = np.rint(m2c).astype(np.uint8)

    # ---- held-out ITK subject: shipped byte-identical ------------------------------------
    dh = out / "heldout"
    dh.mkdir(parents=True, exist_ok=True)
    for name in ("KmeansTest_T1UCharRaw.nii.gz", "KmeansTest_T1RawSkullStrip.nii.gz"):
        shutil.copyfile(ITK / name, dh / name)

    # ---- 2D: axial slices in the project convention (Y, X) = (P, L) ---------------------
    c_zyx, l_zyx = to_lps_zyx(c2), to_lps_zyx(l2)
    n_cls = [(len(np.unique(l_zyx[z])), z) for z in range(l_zyx.shape[0])]
    # the slice through the basal ganglia with most classes present (ties: more brain)
    best = max((n, (l_zyx[z] > 0).sum(), z) for n, z in n_cls)
    z0 = int(best[2])
    facts["colin27_axial_slice_z"] = z0
    facts["colin27_axial_slice_mm"] = float((aff2 @ [0, 0, z0, 1])[2])  # Z = S = RAS k
    d2 = out / "brain2d"
    save_tif2d(d2 / "colin27_axial_t1.tif", c_zyx[z0])
    save_tif2d(d2 / "colin27_axial_labels.tif", l_zyx[z0])
    roi2 = (l_zyx[z0] == CLASS_NAMES.index("frontal_L")).astype(np.uint8)
    roi2 = largest_component(roi2 > 0).astype(np.uint8)
    save_tif2d(d2 / "colin27_axial_roi_frontal_L.tif", roi2)

    # 3D RoI: temporal_R on 5 axial slices around the slice with most of it, one component
    t_r = l2 == CLASS_NAMES.index("temporal_R")
    zc = int(np.argmax(t_r.sum(axis=(0, 1))))
    roi3 = np.zeros_like(t_r)
    roi3[:, :, zc - 2: zc + 3] = t_r[:, :, zc - 2: zc + 3]
    roi3 = largest_component(roi3)
    save_nii(d3 / "colin27_roi_temporal_R.nii.gz", roi3, aff2, np.uint8)
    facts["roi3d_voxels"] = int(roi3.sum())
    facts["roi2d_pixels"] = int(roi2.sum())

    # ---- PdCR reference banks: MNI152 (a different subject), Colin27 intensity scale ----
    m_zyx = to_lps_zyx(m2c)
    mb_zyx = to_lps_zyx(ml2 > 0)
    zs = [z for z in range(m_zyx.shape[0]) if mb_zyx[z].sum() > 0.3 * mb_zyx.sum(axis=(1, 2)).max()]
    zs = zs[:: max(1, len(zs) // 20)][:20]
    slices = [m_zyx[z] for z in zs]
    head2 = [ndi.binary_dilation(mb_zyx[z], iterations=2) for z in zs]
    blocks2 = cut_blocks(slices, 8, 100, rng, head2)
    np.savez_compressed(out / "pdcr_bank_2d.npz", blocks=blocks2.astype(np.uint8),
                        images=np.stack(slices).astype(np.uint8), block_size=np.int64(8),
                        spacing=np.array([2.0, 2.0]), slice_index=np.array(zs),
                        source=np.array("MNI152 2009a sym T1 (nilearn), 2 mm axial slices, "
                                        "intensities linearly mapped to the Colin27 scale"))
    blocks3 = cut_blocks([m_zyx], 8, 300, rng, [ndi.binary_dilation(mb_zyx, iterations=2)])
    np.savez_compressed(out / "pdcr_bank_3d.npz", blocks=blocks3.astype(np.uint8),
                        images=m_zyx[None].astype(np.uint8), block_size=np.int64(8),
                        spacing=np.array([2.0, 2.0, 2.0]),
                        source=np.array("MNI152 2009a sym T1 (nilearn), 2 mm, LPS (Z,Y,X), "
                                        "intensities linearly mapped to the Colin27 scale"))
    facts["bank2d"] = {"blocks": list(blocks2.shape), "images": [len(slices)] + list(slices[0].shape)}
    facts["bank3d"] = {"blocks": list(blocks3.shape), "images": [1] + list(m_zyx.shape)}

    # per-class voxel counts for the record
    facts["colin27_class_voxels"] = {n: int((l2 == i).sum()) for i, n in enumerate(CLASS_NAMES)}
    facts["mni_class_voxels"] = {n: int((ml2 == i).sum()) for i, n in enumerate(CLASS_NAMES)}
    (out / "classes.json").write_text(json.dumps(
        {str(i): n for i, n in enumerate(CLASS_NAMES)}, indent=1) + "\n")
    (out / "build_facts.json").write_text(json.dumps(facts, indent=1) + "\n")
    return facts


MNI_NOTICE = """MNI ICBM152 non-linear symmetric 2009a template (as shipped in the nilearn package)

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University.
Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted, provided
that the above copyright notice appear in all copies. The authors and
McGill University make no representations about the suitability of this
software for any purpose. It is provided "as is" without express or implied
warranty. The authors are not responsible for any data loss, equipment
damage, property loss, or injury to subjects or patients resulting from the
use or misuse of this software package.

References: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins,
NeuroImage 47 (2009) S102; V.S. Fonov et al., NeuroImage 54 (2011) 313-327.
"""


def write_licenses(out: Path) -> None:
    lic = out / "LICENSES"
    lic.mkdir(parents=True, exist_ok=True)
    cp = Path("/usr/share/doc/mricron-data/copyright").read_text()
    bsd = cp[cp.rindex("License: BSD-3-clause"):]
    (lic / "MRIcron-data-BSD-3-Clause.txt").write_text(
        "Colin27 (ch2, ch2bet) and AAL (aal.nii.gz, aal.nii.txt) as distributed in the Debian\n"
        "package mricron-data (MRIcron templates, Copyright 2006-2010 Chris Rorden), whose\n"
        "debian/copyright puts these files under:\n\n" + bsd)
    (lic / "ITK-examples-Apache-2.0.txt").write_text(
        "KmeansTest_T1UCharRaw.nii.gz and KmeansTest_T1RawSkullStrip.nii.gz from the Debian\n"
        "package insighttoolkit5-examples (Examples/Data of the Insight Toolkit),\n"
        "Copyright 1999-2019 Insight Software Consortium, Copyright 2020 NumFOCUS,\n"
        "licensed under the Apache License, Version 2.0:\n\n"
        + Path("/usr/share/common-licenses/Apache-2.0").read_text())
    (lic / "MNI-ICBM152-2009a.txt").write_text(MNI_NOTICE)
    import nilearn

    nl = sorted(Path(nilearn.__file__).parents[1].glob("nilearn-*.dist-info/licenses/LICENSE"))
    if nl:
        (lic / "nilearn-BSD-3-Clause.txt").write_text(
            "The MNI152 files were taken from the data folder of the nilearn package:\n\n"
            + nl[0].read_text())


def write_provenance(out: Path, facts: dict) -> None:
    rows = "\n".join(f"| {r['aal_index']} | {r['aal_name']} | {r['class']} |" for r in facts["aal_table"])
    classes = "\n".join(f"| {i} | {n} | {facts['colin27_class_voxels'][n]} | {facts['mni_class_voxels'][n]} |"
                         for i, n in enumerate(CLASS_NAMES))
    text = f"""# Sample data: provenance, format and licences

Everything here is real MRI, made small (2 mm, uint8, gzip) by
`scripts/build_sample_data.py` (deterministic; seed 0), except the trained bundles in
`models/` (made by `scripts/train_sample_models.py`). Licences: `LICENSES/`.

## Array convention
`seg_explain.load_image(path)` returns 3D data reoriented to LPS with axes
(Z, Y, X) = (superior, posterior, patient left) and `spacing` in the same order.
Every label / RoI NIfTI here is on the same grid and affine as the image it labels.
2D files are axial slices with rows = posterior and columns = patient left, i.e.
(Y, X) = (P, L), stored as TIFF with a resolution tag of 0.5 px/mm (2 mm pixels).

## Files
| file | what | source | licence |
|---|---|---|---|
| `brain3d/colin27_t1_2mm.nii.gz` | Colin27 T1 head (with skull), 2 mm, uint8, {facts['colin27_shape']} (RAS on disk) | `ch2.nii.gz`, Debian `mricron-data` | BSD-3-Clause |
| `brain3d/colin27_labels_2mm.nii.gz` | 16-class label map (table below) | AAL `aal.nii.gz` + brain mask, `mricron-data` | BSD-3-Clause |
| `brain3d/colin27_roi_temporal_R.nii.gz` | example RoI: temporal_R on 5 axial slices, one connected piece ({facts['roi3d_voxels']} voxels) | derived | BSD-3-Clause |
| `brain3d/mni152_2009a_t1_2mm.nii.gz` | MNI ICBM152 2009a symmetric T1 (skull-stripped), 2 mm, uint8, {facts['mni_shape']} | PyPI `nilearn` data folder | MNI/McGill permissive notice |
| `brain3d/mni152_2009a_labels_2mm.nii.gz` | same 16 classes on the MNI152 grid | AAL resampled by affines (nearest) + GM map | as above |
| `brain2d/colin27_axial_t1.tif` | Colin27 axial slice z={facts['colin27_axial_slice_z']} of the 2 mm volume (MNI z = {facts['colin27_axial_slice_mm']} mm), uint8, (Y, X) = (P, L) | derived from `ch2.nii.gz` | BSD-3-Clause |
| `brain2d/colin27_axial_labels.tif` | its 16-class labels (all 16 present) | derived | BSD-3-Clause |
| `brain2d/colin27_axial_roi_frontal_L.tif` | example RoI: the frontal_L region of that slice ({facts['roi2d_pixels']} px) | derived | BSD-3-Clause |
| `heldout/KmeansTest_T1UCharRaw.nii.gz` | held-out T1 head of another subject, byte-identical copy (128x128x62, 2x2x3 mm, header affine kept) | Debian `insighttoolkit5-examples`, `Examples/Data` | Apache-2.0 |
| `heldout/KmeansTest_T1RawSkullStrip.nii.gz` | its skull-strip mask, byte-identical (values 0, 4, 5, 6; **brain = value > 0**; 6 = brain tissue, 5 = outer CSF rim, 4 = a few voxels) | same | Apache-2.0 |
| `pdcr_bank_2d.npz` | default PdCR reference bank for the 2D sample | MNI152 slices | MNI notice |
| `pdcr_bank_3d.npz` | default PdCR reference bank for the 3D sample | MNI152 volume | MNI notice |
| `classes.json` | class index -> name | | |
| `build_facts.json` | numbers recorded by the build (shapes, voxel counts, AAL table) | | |
| `models/brain3d/`, `models/brain2d/` | trained MONAI bundles (see their README.md) | `scripts/train_sample_models.py` | BSD-3-Clause |

The held-out subject is never used for training; the models are trained on Colin27 and
MNI152 only.

## Classes and how they were made
Class 0 is background. Classes 1-14 merge the 116 AAL regions (Tzourio-Mazoyer et al.,
NeuroImage 15:273, 2002; drawn on Colin27 = `ch2`) into lobes per hemisphere. Class 15,
`other_brain`, is the rest of the brain mask: white matter, ventricles and sulcal CSF,
brainstem (AAL covers grey matter only). Voxel counts at 2 mm:

| index | class | Colin27 voxels | MNI152 voxels |
|---|---|---|---|
{classes}

Brain masks. Colin27: `ch2bet.nii.gz` (BET, from `mricron-data`) united with the AAL
voxels, closed with a 3 mm ball, holes filled in 3D and slice-wise along each axis (BET
leaves gaps at the midline), opened with a 2 mm ball, largest component. MNI152:
template > 0 (the template is skull-stripped), holes filled, opened (1 mm), largest
component. AAL is defined on Colin27 in MNI coordinates; on the MNI152 2009a grid it is
resampled by the affines (nearest neighbour; both grids are 1 mm and differ by an integer
shift) and, because the templates' cortices do not coincide, MNI152 grey matter
(GM probability > 50 %) missed by AAL gets the nearest AAL label within 6 mm, AAL voxels
outside the MNI152 brain are dropped. Vermis regions are split at the midline (x < 0 ->
left). Downsampling 1 mm -> 2 mm is an exact 2x2x2 block mean (images) and block
majority vote (labels); the 2 mm affine is `A1 @ [[2,0,0,.5],[0,2,0,.5],[0,0,2,.5]]`.

AAL index -> class:

| AAL index | AAL region | class |
|---|---|---|
{rows}

## PdCR reference banks (`pdcr_bank_2d.npz`, `pdcr_bank_3d.npz`)
Blocks for PdCR must come from *other* images than the one explained: the samples
explained are Colin27, so the banks are cut from the MNI152 2009a template (a different,
population-average subject). NumPy `.npz` (no pickles; `np.load(path)` with the default
`allow_pickle=False`), keys:

- `blocks`: uint8, 2D `(N, 8, 8)` (N = 2000: 100 random blocks from each of 20 axial
  slices), 3D `(N, 8, 8, 8)` (N = 300 from the volume); block centres inside the brain
  dilated by 2 voxels; axes in the project convention ((Y, X) / (Z, Y, X)).
- `images`: the reference images the blocks were cut from, so other block sizes can be
  cut: 2D `(20, Y, X)` axial slices, 3D `(1, Z, Y, X)`; uint8.
- `block_size` (8), `spacing` (mm, 2.0 per axis), `source` (text); 2D also `slice_index`.

Intensities are **raw, on the Colin27 sample's scale, before any model preprocessing**:
the MNI152 values were mapped linearly so that grey- and white-matter levels match
Colin27's (`v_colin = {facts['mni_to_colin_linear'][0]:.4f} * v_mni + {facts['mni_to_colin_linear'][1]:.3f}`,
zero kept at zero, clipped to 0..255).

## Licences and credits
- Colin27 T1 (Holmes et al., JCAT 22:324, 1998) and the AAL atlas, as packaged in MRIcron
  templates (Chris Rorden) in Debian `mricron-data`: BSD-3-Clause per the package's
  `debian/copyright` (`LICENSES/MRIcron-data-BSD-3-Clause.txt`).
- ITK example data (`KmeansTest_*`), Debian `insighttoolkit5-examples`: Apache-2.0
  (`LICENSES/ITK-examples-Apache-2.0.txt`).
- MNI ICBM152 2009a symmetric template (Fonov et al. 2009/2011), via the nilearn package
  (BSD-3-Clause code): the McGill permissive notice in `LICENSES/MNI-ICBM152-2009a.txt`
  (and `LICENSES/nilearn-BSD-3-Clause.txt`).
nilearn is used only by the build script; it is not a dependency of napari-seg-explain.
"""
    (out / "PROVENANCE.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "sample_data"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for p in (MRICRON / "ch2.nii.gz", ITK / "KmeansTest_T1UCharRaw.nii.gz"):
        if not p.exists():
            raise SystemExit(f"missing {p}: apt-get install -y mricron-data insighttoolkit5-examples")
    facts = build(Path(args.out), args.seed)
    write_licenses(Path(args.out))
    write_provenance(Path(args.out), facts)
    print(json.dumps({k: v for k, v in facts.items() if k != "aal_table"}, indent=1))


if __name__ == "__main__":
    main()
