"""Inputs of a data-set run: image paths, folders, globs and CSV manifests become
:class:`ImageRecord` objects (name, image, ground truth, extra RoIs)."""
from __future__ import annotations

import csv
import glob as _glob
import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputMismatchError, first_line, printable
from ..io import image_stem
from ..seeds import image_seed

MANIFEST_MAX_BYTES = 16 * 1024 * 1024
TEMPLATE_FIELDS = ("stem", "name")
MANIFEST_COLUMNS = {"image": ("image", "path", "file", "filename"),
                    "name": ("name", "id"),
                    "ground_truth": ("ground_truth", "groundtruth", "gt", "label", "labels", "reference",
                                     "segmentation", "seg")}


# -------------------------------------------------------------------------- naming --
def file_key(name: str) -> str:
    """A file-name-safe, collision-free key for an image name (``case_01-3f9a0c12d4``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "image"
    return f"{safe}-{hashlib.blake2b(name.encode(), digest_size=5).hexdigest()}"


def stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``case1.nii.gz`` -> ``case1``)."""
    return image_stem(path)


def _abs(spec):
    """Paths as absolute strings (workers may run elsewhere); other objects unchanged."""
    if isinstance(spec, (str, os.PathLike)):
        return os.path.abspath(os.path.expanduser(os.fspath(spec)))
    return spec


# ------------------------------------------------------------------------- records --
@dataclass
class ImageRecord:
    """One image of a data set: its name (unique; the tables' ``image`` column), the image
    (an absolute path normally; an array or LoadedImage from Python), its ground-truth label
    map (or None) and its extra RoI masks ``{name: spec or None}``."""

    name: str
    image: Any
    ground_truth: Any = None
    rois: dict[str, Any] = field(default_factory=dict)
    where: str = ""             # where it was listed (a manifest line), for messages

    @property
    def key(self) -> str:
        return file_key(self.name)

    def seed(self, base: int) -> int:
        return image_seed(base, self.name)

    def paths(self) -> list[str]:
        """Every file this image reads."""
        specs = [self.image, self.ground_truth, *self.rois.values()]
        return [s for s in specs if isinstance(s, str)]


def _has_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _is_image_file(p: Path) -> bool:
    from ..io import SUPPORTED_EXT

    n = p.name.lower()
    return not n.startswith(".") and any(n.endswith(e) for e in SUPPORTED_EXT if e != ".dcm")


def _images_in(folder: Path, exclude: Path | None) -> list[str]:
    """A folder's image files (sorted, not recursive); a folder of DICOM files is one image."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and _is_image_file(f)
                   and not path_inside(f, exclude))
    if files:
        return [str(f) for f in files]
    if any(f.is_file() and not f.name.startswith(".") for f in folder.iterdir()):
        return [str(folder)]          # a DICOM series (load_image reads the folder)
    raise InputMismatchError(f"the folder {folder} holds no image files")


def path_inside(p: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV manifest: ``{"image", "name", "ground_truth", "rois", "where"}``.

    Columns (case-insensitive): ``image`` (or ``path``/``file``), optional ``name``/``id``,
    ``ground_truth`` (or ``label``, ``reference``, ``gt``, ``segmentation``) and
    ``roi_<name>`` / ``roi:<name>`` (one extra RoI column each). Other columns are ignored.
    Empty cells are "none". Relative paths are relative to the manifest's folder. The file is
    untrusted: a regular file of at most 16 MiB, UTF-8."""
    from ..files import regular_file

    p = regular_file(path, "manifest", error=InputMismatchError)
    with open(p, "rb") as fh:
        raw = fh.read(MANIFEST_MAX_BYTES + 1)
    if len(raw) > MANIFEST_MAX_BYTES:
        raise InputMismatchError(f"manifest {p.name} is larger than 16 MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputMismatchError(f"manifest {p.name} is not UTF-8 text") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InputMismatchError(f"manifest {printable(p.name)} line {line} holds a NUL byte; a manifest is "
                                 "a text CSV file (image paths, one per line)")
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        body = list(reader)
    except csv.Error as exc:
        raise InputMismatchError(f"manifest {p.name} is not a valid CSV file: {exc}") from None
    if not header:
        raise InputMismatchError(f"manifest {p.name} is empty")
    cols = [h.strip() for h in header]
    low = [c.lower() for c in cols]

    def find(role):
        for alias in MANIFEST_COLUMNS[role]:
            if alias in low:
                return low.index(alias)
        return None

    ii, ni, gi = find("image"), find("name"), find("ground_truth")
    if ii is None:
        raise InputMismatchError(f"manifest {p.name} has no 'image' column (its columns: {', '.join(cols)})")
    rois = [(j, c[4:].strip()) for j, c in enumerate(cols) if c.lower().startswith(("roi_", "roi:"))
            and c[4:].strip()]
    base = p.parent

    def path_of(cell: str) -> str | None:
        cell = cell.strip()
        if not cell:
            return None
        q = Path(cell).expanduser()
        return os.path.abspath(q if q.is_absolute() else base / q)

    out = []
    for line, row in enumerate(body, start=2):
        if not any(c.strip() for c in row):
            continue
        row = row + [""] * (len(cols) - len(row))
        img = path_of(row[ii])
        if img is None:
            raise InputMismatchError(f"manifest {p.name} line {line}: no image")
        out.append({"image": img, "name": (row[ni].strip() or None) if ni is not None else None,
                    "ground_truth": path_of(row[gi]) if gi is not None else None,
                    "rois": {name: path_of(row[j]) for j, name in rois},
                    "where": f"{p.name} line {line}"})
    if not out:
        raise InputMismatchError(f"manifest {p.name} lists no image")
    return out


def expand_inputs(items: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Paths, folders, globs and CSV manifests -> (entries as :func:`read_manifest` gives
    them, manifest paths). Files inside ``exclude`` (the output folder) are left out of
    folders and globs."""
    ex = Path(exclude) if exclude is not None else None
    entries: list[dict[str, Any]] = []
    manifests: list[str] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s).expanduser()
        if p.suffix.lower() == ".csv" and p.is_file():
            entries += read_manifest(p)
            manifests.append(os.path.abspath(p))
        elif p.is_dir() and any(_is_image_file(f) for f in p.iterdir() if f.is_file()):
            entries += [{"image": os.path.abspath(f)} for f in _images_in(p, ex)]
        elif not p.exists() and _has_glob(s):
            hits = sorted(h for h in _glob.glob(os.path.expanduser(s), recursive=True)
                          if (_is_image_file(Path(h)) and Path(h).is_file() or Path(h).is_dir())
                          and not path_inside(Path(h), ex))
            if not hits:
                raise InputMismatchError(f"no image file matches {s}")
            entries += [{"image": os.path.abspath(h)} for h in hits]
        else:   # a file (or a DICOM folder); a missing one fails as an image, the others go on
            entries.append({"image": os.path.abspath(p)})
    return entries, manifests


def _unique_names(paths: Sequence[str]) -> list[str]:
    """File stems; where stems collide, the path from the images' common folder (no extension)."""
    names = [stem(p) for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        clash = [p for p, n in zip(paths, names) if n in dup]
        try:
            root = os.path.commonpath([os.path.dirname(p) for p in clash])
        except ValueError:
            root = ""
        for i, (p, n) in enumerate(zip(paths, names)):
            if n in dup:
                rel = os.path.relpath(p, root) if root else p
                names[i] = str(Path(rel).with_name(stem(rel))).replace(os.sep, "/")
    return names


def check_template(template: str, what: str) -> str:
    """A path template may hold only ``{stem}`` and ``{name}`` (no other field, no index,
    attribute, conversion or format spec; ``{{``/``}}`` for literal braces)."""
    import string

    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputMismatchError(f"{what} {printable(template)!s}: {first_line(exc)}; use {{stem}} or "
                                 "{name} (and {{ }} for literal braces)") from None
    for _lit, field_name, spec, conv in parts:
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS or spec or conv:
            shown = "{" + field_name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise InputMismatchError(
                f"{what} {printable(template)}: unknown field {printable(shown)}; a template may hold only "
                "{stem} (the image file name without extension) and {name} (the image's name)")
    return template


def fill_template(template: str, what: str, **values: str) -> str:
    """``template`` with ``{stem}``/``{name}`` filled in (checked by :func:`check_template`)."""
    if "{" not in template and "}" not in template:
        return template
    return check_template(template, what).format(**values)


def collect_images(items: Sequence[str | os.PathLike], ground_truth: str | None = None,
                   extra_rois: dict[str, str] | None = None,
                   exclude: str | os.PathLike | None = None) -> tuple[list[ImageRecord], list[str], list[str]]:
    """Command-line inputs -> ``(records, extra RoI names, manifest paths)``.

    ``items``: paths, folders, globs, CSV manifests (see :func:`read_manifest`).
    ``ground_truth``: a template such as ``"labels/{stem}_seg.nii.gz"`` for images whose
    manifest row gives none. ``extra_rois``: ``{name: path}`` (one mask for every image) or
    ``{name: template with {stem}}``; manifest ``roi_*`` columns add more. Names are file
    stems (a manifest's ``name`` wins; colliding stems get their folder path); two images with
    the same name are refused."""
    if ground_truth:
        check_template(ground_truth, "--ground-truth")
    for n, spec in (extra_rois or {}).items():
        check_template(spec, f"--extra-roi {n}")
    entries, manifests = expand_inputs(items, exclude)
    if not entries:
        raise InputMismatchError("no image given")
    auto = _unique_names([e["image"] for e in entries])
    roi_names = list(extra_rois or {})
    for e in entries:
        roi_names += [n for n in e.get("rois", {}) if n not in roi_names]
    recs: list[ImageRecord] = []
    seen: dict[str, str] = {}
    for e, auto_name in zip(entries, auto):
        name = e.get("name") or auto_name
        if name in seen:
            raise InputMismatchError(f"two images are named {name!r} ({seen[name]} and {e['image']}); "
                                     "give each a unique name (a manifest 'name' column)")
        seen[name] = e["image"]
        st = stem(e["image"])
        gt = e.get("ground_truth")
        if gt is None and ground_truth:
            gt = _abs(fill_template(ground_truth, "--ground-truth", stem=st, name=name))
        rois = {}
        for n in roi_names:
            spec = (e.get("rois") or {}).get(n)
            if spec is None and extra_rois and n in extra_rois:
                spec = _abs(fill_template(extra_rois[n], f"--extra-roi {n}", stem=st, name=name))
            rois[n] = spec
        recs.append(ImageRecord(name, e["image"], gt, rois, e.get("where", "")))
    return recs, roi_names, manifests


def records_from(images, names: Sequence[str] | None = None, ground_truth=None,
                 extra_rois=None) -> tuple[list[ImageRecord], list[str]]:
    """Python inputs (what :func:`seg_explain.agg2exp` takes, or a list of
    :class:`ImageRecord`) -> ``(records, extra RoI names)``. Paths become absolute; arrays
    are kept (and shipped to the workers with the task)."""
    from ..aggregate import ExtraRois
    from ..io import image_list, image_name

    imgs = image_list(images)
    if imgs and all(isinstance(r, ImageRecord) for r in imgs):
        names_ = []
        for r in imgs:
            names_ += [n for n in r.rois if n not in names_]
        return list(imgs), names_
    if not imgs:
        raise InputMismatchError("no image given")
    nm = list(names) if names is not None else [image_name(im, i) for i, im in enumerate(imgs)]
    if names is None and len(set(nm)) != len(nm) and all(isinstance(im, (str, os.PathLike)) for im in imgs):
        nm = _unique_names([os.fspath(im) for im in imgs])     # same stems in different folders
    if len(nm) != len(imgs):
        raise InputMismatchError(f"{len(nm)} names for {len(imgs)} images")
    if len(set(nm)) != len(nm):
        raise InputMismatchError("image names must be unique (pass names=[...])")
    gts = None if ground_truth is None else image_list(ground_truth)
    if gts is not None and len(gts) != len(imgs):
        raise InputMismatchError(f"{len(gts)} ground-truth maps for {len(imgs)} images")
    extra = ExtraRois(extra_rois, len(imgs))
    recs = [ImageRecord(n, _abs(im), _abs(gts[i]) if gts is not None else None,
                        {r: _abs(extra.spec(i, n, r)) for r in extra.names})
            for i, (im, n) in enumerate(zip(imgs, nm))]
    return recs, list(extra.names)


