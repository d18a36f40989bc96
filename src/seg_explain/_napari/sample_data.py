"""npe2 sample data: a brain MRI, the sample model's prediction and an example RoI (offline).

The prediction is computed once with the shipped sample bundle and cached on disk
(``SEG_EXPLAIN_CACHE_DIR`` or the user cache dir), keyed by the model and image files.
When the 2D sample model is not installed, the 2D sample shows the atlas labels instead.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = {
    "brain3d": {"image": ("brain3d", "colin27_t1_2mm.nii.gz"), "atlas": ("brain3d", "colin27_labels_2mm.nii.gz"),
                "roi": ("brain3d", "colin27_roi_temporal_R.nii.gz"), "model": ("models", "brain3d"),
                "title": "Colin27 T1 (2 mm)"},
    "brain2d": {"image": ("brain2d", "colin27_axial_t1.tif"), "atlas": ("brain2d", "colin27_axial_labels.tif"),
                "roi": ("brain2d", "colin27_axial_roi_frontal_L.tif"), "model": ("models", "brain2d"),
                "title": "Colin27 axial T1"},
}


ROI_COLOR = "#4dff4d"  # a green that reads on grey anatomy and next to the red/blue maps


def cache_dir() -> Path:
    env = os.environ.get("SEG_EXPLAIN_CACHE_DIR")
    if env:
        d = Path(env)
    else:
        try:
            from platformdirs import user_cache_dir
        except ImportError:  # pragma: no cover - napari depends on it (via pooch/appdirs)
            d = Path.home() / ".cache" / "napari-seg-explain"
        else:
            d = Path(user_cache_dir("napari-seg-explain"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _stamp(p: Path) -> str:
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def class_names() -> list[str]:
    from ..paths import sample_path

    d = json.loads(sample_path("classes.json").read_text())
    return [d[str(i)] for i in range(len(d))]


def cached_prediction(model_dir: Path, image_path: Path, image) -> np.ndarray:
    """The sample model's label map of the sample image (computed once, then read back)."""
    key = f"pred_{model_dir.name}_{_stamp(model_dir)}_{_stamp(image_path)}.npz"
    f = cache_dir() / key
    if f.is_file():
        try:
            with np.load(f, allow_pickle=False) as z:
                lab = z["labels"]
            if lab.shape == image.spatial_shape:
                return lab
        except (OSError, ValueError, KeyError):
            pass
    from ..models import load_model

    model = load_model(model_dir, device="cpu")
    lab = np.asarray(model.predict(image)).astype(np.uint8)
    tmp = f.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, labels=lab)
    os.replace(tmp, f)
    return lab


def _roi_target(name: str, names: list[str]) -> str | None:
    for n in sorted(names, key=len, reverse=True):
        if n != "background" and name.endswith(n):
            return n
    return None


def _sample(key: str) -> list[tuple[Any, dict[str, Any], str]]:
    from ..io import load_image
    from ..paths import sample_path
    from .layers import META_KEY, class_features, layer_kwargs_for

    spec = SAMPLES[key]
    img_path = sample_path(*spec["image"])
    li = load_image(img_path)
    names = class_names()
    out: list[tuple[Any, dict[str, Any], str]] = []
    kw = layer_kwargs_for(li, spec["title"], colormap="gray")
    kw["metadata"][META_KEY]["sample"] = key
    out.append((li.data, kw, "image"))

    model_dir = sample_path(*spec["model"])
    if (model_dir / "configs" / "metadata.json").is_file():
        lab = cached_prediction(model_dir, img_path, li)
        pk = layer_kwargs_for(li, f"prediction · {model_dir.name}", opacity=0.35,
                              features=class_features(names),
                              seg_explain={"kind": "prediction", "model": str(model_dir),
                                           "image": spec["title"], "slice_index": None,
                                           "class_names": names})
        out.append((lab, pk, "labels"))
    else:
        atlas = load_image(sample_path(*spec["atlas"])).data.astype(np.uint8)
        ak = layer_kwargs_for(li, "atlas labels", opacity=0.35, features=class_features(names),
                              seg_explain={"kind": "labels"})
        out.append((atlas, ak, "labels"))

    roi_li = load_image(sample_path(*spec["roi"]))
    roi = (np.asarray(roi_li.data) > 0).astype(np.uint8)
    stem = Path(spec["roi"][1]).name.split(".")[0]
    target = _roi_target(stem, names)
    rk = layer_kwargs_for(li, f"RoI · {target}" if target else "RoI", opacity=0.7,
                          colormap={None: "transparent", 0: "transparent", 1: ROI_COLOR},
                          seg_explain={"kind": "roi", "target": target, "image": spec["title"]})
    out.append((roi, rk, "labels"))
    return out


def _show_roi_slice_later() -> None:
    """Once napari has added the sample's layers, show a slice through its RoI (File → Open
    Sample lands there as the launcher does, not on a slice without the RoI)."""
    try:
        import napari
        from qtpy.QtCore import QTimer

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer (scripts): nothing to move
        return
    if viewer is None:
        return
    from .launch import go_to_roi

    QTimer.singleShot(0, lambda: go_to_roi(viewer))


def sample_brain3d() -> list[tuple[Any, dict[str, Any], str]]:
    """Colin27 T1 at 2 mm (90x108x90), the brain3d model's prediction and a temporal_R RoI."""
    layers = _sample("brain3d")
    _show_roi_slice_later()
    return layers


def sample_brain2d() -> list[tuple[Any, dict[str, Any], str]]:
    """A Colin27 axial slice, the brain2d model's prediction (or the atlas) and a frontal_L RoI."""
    return _sample("brain2d")
