"""npe2 reader: NIfTI, MHA/MHD, NRRD and DICOM (file or series folder) -> napari layers.

Arrays come from :func:`seg_explain.io.load_image` (3D reoriented to LPS ``(Z, Y, X)``), so
``scale`` = spacing and ``translate`` = the world position of voxel 0 (RAS mm along the
array axes). The layer's metadata keeps ``path``, ``affine`` and a geometry-only
``LoadedImage`` (``metadata["loaded_image"]``) so the writer can save results with the
file's own affine. Integer images whose name says they are labels (``label``, ``seg``,
``mask``, ``roi``, ``aseg``, ``parc``) open as Labels layers.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXTENSIONS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
LABEL_HINT = re.compile(r"(label|seg|mask|roi|aseg|parc|atlas)", re.IGNORECASE)


def _is_dicom_file(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _is_dicom_folder(p: Path, probe: int = 20) -> bool:
    n = 0
    for f in sorted(p.iterdir()):
        if f.is_file():
            if f.suffix.lower() == ".dcm" or _is_dicom_file(f):
                return True
            n += 1
            if n >= probe:
                break
    return False


def _accepts(path: str) -> bool:
    p = Path(path)
    if p.is_dir():
        return _is_dicom_folder(p)
    name = p.name.lower()
    return any(name.endswith(e) for e in EXTENSIONS)


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader function if every path is something this plugin reads, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_accepts(str(p)) for p in paths):
        return None
    return read_layers


def layer_data_for(path: str | os.PathLike) -> tuple[Any, dict[str, Any], str]:
    """One file -> napari ``(data, kwargs, layer_type)``."""
    import numpy as np

    from ..io import load_image
    from .layers import GEOMETRY_KEY, META_KEY, layer_kwargs_for

    li = load_image(path)
    p = Path(str(path))
    name = p.name
    for ext in (".nii.gz",) + EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    is_labels = (np.issubdtype(li.data.dtype, np.integer) and li.channels == 1
                 and bool(LABEL_HINT.search(name)))
    kw = layer_kwargs_for(li, name)
    kw["metadata"][META_KEY].update({"path": str(p), "affine": np.asarray(li.affine).tolist(),
                                     "spacing": list(li.spacing), "format": li.meta.get("format")})
    if is_labels:
        kw["metadata"][META_KEY]["kind"] = "labels"
        return li.data, kw, "labels"
    assert GEOMETRY_KEY in kw["metadata"]
    if li.channels > 1 and li.spatial_dims == 3:
        kw["metadata"][META_KEY]["channel_axis"] = 0
    return li.data, kw, "image"


def read_layers(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """The reader napari calls (one layer per path). Errors reach the user as one line."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer_data_for(p) for p in paths]
