"""Data-set runs: Agg2Exp and the evaluation metrics over many images, in this process or on
a Dask cluster, resumable, and nothing finished is ever lost.

The pieces (one module, used by ``seg-explain agg2exp|evaluate``, by
``agg2exp(..., client=..., out=...)`` / ``evaluate(..., client=..., out=...)`` and by the
napari Agg2Exp dock):

- **Inputs** (:func:`collect_images`): image paths, folders (their image files, sorted), glob
  patterns (``"scans/*.nii.gz"``, ``**`` allowed) and CSV manifests (a column ``image``, and
  optionally ``name``, ``ground_truth`` — also spelled ``label``, ``reference``, ``gt`` — and
  ``roi_<name>`` columns for extra RoI masks per image; relative paths are relative to the
  manifest). Each image becomes an :class:`ImageRecord` (name, image, ground truth, RoIs).
- **Jobs** (:class:`Agg2ExpJob`, :class:`EvaluateJob`): small picklable descriptions of the
  computation (model *path*, method, parameters, seed ...). ``job.compute(model, record)``
  is the per-image generator that both the serial path and the workers run
  (:func:`seg_explain.aggregate.agg2exp_image_iter`,
  :func:`seg_explain.metrics.evaluate_image_iter`); it returns small rows (matrices of a
  few hundred numbers), never voxel maps.
- **Seeds**: image ``name`` is computed with ``image_seed(seed, name)``, so the result of an
  image does not depend on which worker computes it, in which order, or in which (resumed)
  run; the tables of a serial run, a local cluster and an external cluster are identical
  (bit for bit when the workers use the same number of torch threads: torch's CPU
  reductions depend on it at the 1e-8 level).
- **Executors**: :class:`InProcess` (the default: this process, one image after another)
  and :class:`DaskExecutor` (``DaskExecutor.local(n)``: a ``LocalCluster`` of ``n`` worker
  processes with one task each and ``cores // n`` torch threads; ``DaskExecutor.connect(address)``:
  an existing cluster from ``dask scheduler`` / ``dask worker``, dask-jobqueue, Kubernetes;
  or ``DaskExecutor(client)``). On a worker, :func:`run_image` loads the model once per
  worker process (:func:`worker_model`, a cache keyed by path, device and the model files'
  sizes and dates) and reads the image by path.
- **Results folder** (:class:`ResultStore`): every finished image is written at once,
  atomically, to ``OUT/images/<key>.npz`` (Agg2Exp) or ``.json`` (evaluation); a failing
  image to ``OUT/images/<key>.failed.json`` with its error; ``OUT/run.json`` holds the run's
  settings. A rerun with the same ``OUT`` loads the finished images (their settings and
  input files must be unchanged) and computes only the others; failed images are retried;
  ``overwrite=True`` recomputes everything. The final tables are assembled from the rows.
- **Runs** (:class:`DatasetRun`): ``run.events(token)`` yields :class:`ImageProgress`
  (images done / failed / total, ETA, the image just finished) and returns the result;
  ``run.result()`` is the partial result at any time. A GUI iterates it in a worker thread.

Nothing here imports Dask, torch or tqdm at module import; Dask is needed only for
:class:`DaskExecutor` (``pip install 'napari-seg-explain[dask]'``).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob as _glob
import hashlib
import io
import json
import math
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .checks import cpu_cores as cores
from .dataset_store import (
    FAILURES_FILE,
    FORMAT,
    RESULT_MAX_BYTES,
    RESULTS_DIR,
    RUN_FILE,
    ResultStore,
    content_digest,
    inputs_digest,
    jsonable,
    model_digest,
)
from .errors import Cancelled, InputMismatchError, SegExplainError, first_line, printable
from .jobs import CancelToken, ProgressEvent

EXIT_OK = 0                  # every image done
EXIT_BAD_INPUT = 2           # bad input, nothing computed (or no image could be computed)
EXIT_SOME_FAILED = 3         # tables written, but some images failed (listed in failures.csv)
STEPS_PER_IMAGE = 1000
MANIFEST_MAX_BYTES = 16 * 1024 * 1024
TEMPLATE_FIELDS = ("stem", "name")
MANIFEST_COLUMNS = {"image": ("image", "path", "file", "filename"),
                    "name": ("name", "id"),
                    "ground_truth": ("ground_truth", "groundtruth", "gt", "label", "labels", "reference",
                                     "segmentation", "seg")}


class ClusterError(SegExplainError):
    """Dask is missing, or the cluster cannot be reached."""


# -------------------------------------------------------------------------- naming --
def image_seed(seed: int, name: str) -> int:
    """The seed image ``name`` is explained with: a hash of (``seed``, ``name``) in
    ``[0, 2**31 - 1)``, so it depends on the image, never on the order of execution."""
    h = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % (2 ** 31 - 1)


def file_key(name: str) -> str:
    """A file-name-safe, collision-free key for an image name (``case_01-3f9a0c12d4``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "image"
    return f"{safe}-{hashlib.blake2b(name.encode(), digest_size=5).hexdigest()}"


def stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``case1.nii.gz`` -> ``case1``)."""
    from .aggregate import _stem

    return _stem(Path(path))


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
    from .io import SUPPORTED_EXT

    n = p.name.lower()
    return not n.startswith(".") and any(n.endswith(e) for e in SUPPORTED_EXT if e != ".dcm")


def _images_in(folder: Path, exclude: Path | None) -> list[str]:
    """A folder's image files (sorted, not recursive); a folder of DICOM files is one image."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and _is_image_file(f)
                   and not _inside(f, exclude))
    if files:
        return [str(f) for f in files]
    if any(f.is_file() and not f.name.startswith(".") for f in folder.iterdir()):
        return [str(folder)]          # a DICOM series (load_image reads the folder)
    raise InputMismatchError(f"the folder {folder} holds no image files")


def _inside(p: Path, folder: Path | None) -> bool:
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
    from .files import regular_file

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
                          and not _inside(Path(h), ex))
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
    from .aggregate import _as_list, _ExtraRois, _name_of

    imgs = _as_list(images)
    if imgs and all(isinstance(r, ImageRecord) for r in imgs):
        names_ = []
        for r in imgs:
            names_ += [n for n in r.rois if n not in names_]
        return list(imgs), names_
    if not imgs:
        raise InputMismatchError("no image given")
    nm = list(names) if names is not None else [_name_of(im, i) for i, im in enumerate(imgs)]
    if len(nm) != len(imgs):
        raise InputMismatchError(f"{len(nm)} names for {len(imgs)} images")
    if len(set(nm)) != len(nm):
        raise InputMismatchError("image names must be unique (pass names=[...])")
    gts = None if ground_truth is None else _as_list(ground_truth)
    if gts is not None and len(gts) != len(imgs):
        raise InputMismatchError(f"{len(gts)} ground-truth maps for {len(imgs)} images")
    extra = _ExtraRois(extra_rois, len(imgs))
    recs = [ImageRecord(n, _abs(im), _abs(gts[i]) if gts is not None else None,
                        {r: _abs(extra.spec(i, n, r)) for r in extra.names})
            for i, (im, n) in enumerate(zip(imgs, nm))]
    return recs, list(extra.names)


# ---------------------------------------------------------------------------- jobs --
@dataclass
class _Job:
    """Common part of the jobs: the model (a path: each worker loads it once), the device
    and torch threads on the worker (None: leave as is)."""

    model: str
    device: str = "auto"
    threads: int | None = None

    kind: ClassVar[str] = ""
    suffix: ClassVar[str] = ""

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def run_id(self) -> str:
        return hashlib.blake2b(json.dumps(self.fingerprint(), sort_keys=True).encode(),
                               digest_size=10).hexdigest()


@dataclass
class Agg2ExpJob(_Job):
    """Agg2Exp rows of one image (:func:`seg_explain.aggregate.agg2exp_image_iter`)."""

    method: str = "smoothgrad"
    params: dict[str, Any] = field(default_factory=dict)
    classes: list[int] | None = None
    seed: int = 0
    batch_size: int | None = None
    row_names: list[str] = field(default_factory=list)
    roi_names: list[str] = field(default_factory=list)
    with_dice: bool = False
    model_digest: str = ""
    precision: str | None = None     # network precision (seg_explain.precision; None: fp32)

    kind: ClassVar[str] = "agg2exp"
    suffix: ClassVar[str] = ".npz"

    @property
    def col_names(self) -> list[str]:
        return list(self.row_names) + list(self.roi_names)

    def compute(self, model, rec: ImageRecord, on_image: Callable | None = None, labels_fn=None):
        from .aggregate import agg2exp_image_iter

        return (yield from agg2exp_image_iter(
            model, rec.image, rec.name, self.method, params=self.params, classes=self.classes,
            seed=rec.seed(self.seed), batch_size=self.batch_size,
            extra=[rec.rois.get(n) for n in self.roi_names], extra_names=self.roi_names,
            ground_truth=rec.ground_truth, on_image=on_image, labels_fn=labels_fn, precision=self.precision))

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "format": FORMAT, "model": os.path.abspath(self.model) if self.model else "",
                "model_files": self.model_digest, "method": self.method, "params": jsonable(self.params),
                "classes": self.classes, "seed": self.seed, "batch_size": self.batch_size,
                "rows": list(self.row_names), "columns": self.col_names,
                **({"precision": self.precision} if self.precision not in (None, "fp32") else {})}

    # results: one .npz per image (matrices + a JSON "meta" string; no pickles)
    ARRAYS: ClassVar[tuple[str, ...]] = ("mass", "mass_pos", "mass_neg", "mass_per_voxel", "present", "volume")

    def write(self, path: Path, row: dict, meta: dict) -> None:
        arrays = {k: np.asarray(row[k]) for k in self.ARRAYS + ("mean_abs",)}
        if row.get("dice") is not None:
            arrays["dice"] = np.asarray(row["dice"], dtype=float)
        meta = {**meta, "elapsed": float(row["elapsed"]), "n_forward": int(row["n_forward"]),
                "n_backward": int(row["n_backward"])}
        with open(path, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)

    def read(self, path: Path) -> tuple[dict, dict]:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            row = {k: np.array(z[k]) for k in self.ARRAYS}
            row["dice"] = np.array(z["dice"]) if "dice" in z.files else None
            L, R = len(self.row_names), len(self.col_names)   # raw means: NaN in files written before them
            row["mean_abs"] = np.array(z["mean_abs"]) if "mean_abs" in z.files else np.full((L, R), np.nan)
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
        for k in ("mass", "mass_pos", "mass_neg", "mass_per_voxel", "mean_abs"):
            if row[k].shape != (L, R) or row[k].dtype.kind != "f":
                raise ValueError(f"{k} has shape {row[k].shape}, expected {(L, R)}")
        if row["present"].shape != (L,) or row["volume"].shape != (R,) or (
                row["dice"] is not None and row["dice"].shape != (L,)):
            raise ValueError("bad shapes")
        row["present"] = row["present"].astype(bool)
        row.update(name=meta["name"], elapsed=float(meta["elapsed"]), n_forward=int(meta["n_forward"]),
                   n_backward=int(meta["n_backward"]))
        return row, meta

    def digest(self, row: dict) -> str:
        """A digest of the row's numbers (recorded in the file; checked when resuming)."""
        parts = [np.ascontiguousarray(np.asarray(row[k], dtype=np.float64)).tobytes() for k in self.ARRAYS]
        parts.append(b"-" if row.get("dice") is None
                     else np.ascontiguousarray(np.asarray(row["dice"], dtype=np.float64)).tobytes())
        parts.append(f"{int(row['n_forward'])},{int(row['n_backward'])}".encode())
        return content_digest(b"\0".join(parts))

    def validate(self, row: dict, what: str) -> None:
        """The NaN policy of outputs: finite numbers wherever a region and a class exist."""
        from .checks import require_finite_row

        require_finite_row(row, what)

    def assemble(self, rows: list[dict], failures: list[tuple[str, str]]):
        from .aggregate import assemble_result

        return assemble_result(rows, self.row_names, self.col_names, method=self.method,
                               params={**self.params, "seed": self.seed, "batch_size": self.batch_size},
                               with_dice=self.with_dice, skipped=failures)


@dataclass
class EvaluateJob(_Job):
    """Evaluation-metric rows of one image (:func:`seg_explain.metrics.evaluate_image_iter`)."""

    plan: Any = None                 # seg_explain.metrics.EvalPlan
    model_digest: str = ""

    kind: ClassVar[str] = "evaluate"
    suffix: ClassVar[str] = ".json"

    def compute(self, model, rec: ImageRecord, on_image: Callable | None = None, labels_fn=None):
        from .metrics import evaluate_image_iter

        return (yield from evaluate_image_iter(model, rec.image, rec.name, self.plan, on_error="skip"))

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "format": FORMAT, "model": os.path.abspath(self.model) if self.model else "",
                "model_files": self.model_digest, "plan": jsonable(self.plan.describe())}

    @staticmethod
    def _plain(row: dict) -> dict:
        return {"rows": [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                         for r in row["rows"]], "failed": [list(f) for f in row["failed"]]}

    def write(self, path: Path, row: dict, meta: dict) -> None:
        path.write_text(json.dumps({"meta": meta, **self._plain(row)}))

    def read(self, path: Path) -> tuple[dict, dict]:
        from .files import read_json

        d = read_json(path, "result file", error=ValueError, max_bytes=RESULT_MAX_BYTES)
        meta, rows, failed = d["meta"], d["rows"], d["failed"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("rows")
        if not isinstance(meta, dict) or not isinstance(failed, list):
            raise ValueError("meta/failed")
        return {"name": meta["name"], "rows": rows, "failed": [tuple(f) for f in failed]}, meta

    def digest(self, row: dict) -> str:
        return content_digest(json.dumps(self._plain(row), sort_keys=True).encode())

    def validate(self, row: dict, what: str) -> None:
        """Metric values are numbers or NaN ("not measured", e.g. sensitivity with 0 copies);
        never ±Inf."""
        for r in row["rows"]:
            for k, v in r.items():
                if isinstance(v, float) and math.isinf(v):
                    from .errors import NonFiniteResultError

                    raise NonFiniteResultError(f"{what}: {k} is {v}")

    def assemble(self, rows: list[dict], failures: list[tuple[str, str]]):
        from .metrics import MetricsResult

        plan = self.plan
        return MetricsResult([r for row in rows for r in row["rows"]], plan.labels,
                             {**plan.settings(), "skipped": list(failures),
                              "failed": [f for row in rows for f in row["failed"]]})


# ------------------------------------------------------------------- on a worker --
_MODELS: OrderedDict = OrderedDict()
_MODELS_LOCK = threading.Lock()
MODEL_LOADS = {"count": 0}           # how many times this process loaded a model (tests)


def worker_model(path: str, device: str = "auto"):
    """The model at ``path``, loaded once per process (per path, device and file dates)."""
    key = (str(path), str(device), model_digest(path))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from .models import load_model

            model = load_model(path, device=device)
            MODEL_LOADS["count"] += 1
            _MODELS[key] = model
            while len(_MODELS) > 2:
                _MODELS.popitem(last=False)
        else:
            _MODELS.move_to_end(key)
    return model


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch intra-op threads inside the block (None: unchanged)."""
    if not n:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _peak_rss() -> int | None:
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(r if sys.platform == "darwin" else r * 1024)
    except (ImportError, OSError):   # pragma: no cover - Windows
        return None


def run_image(job: _Job, rec: ImageRecord) -> dict:
    """The task a Dask worker runs for one image: the small rows, or the error (never raises
    for a bad image, so one image cannot stop the others). Loads the model once per worker."""
    from .jobs import drive

    t0 = time.perf_counter()
    info = {"name": rec.name, "pid": os.getpid(), "host": _host()}
    try:
        with torch_threads(job.threads):
            model = worker_model(job.model, job.device)
            row = drive(job.compute(model, rec))
        return {**info, "status": "done", "row": row, "seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}
    except Exception as exc:  # noqa: BLE001 - recorded with the image, the run goes on
        return {**info, "status": "failed", "error": first_line(exc, with_type=True),
                "seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}


def _host() -> str:
    import socket

    return socket.gethostname()


# ----------------------------------------------------------------------- executors --
class InProcess:
    """Computes the images here, one after another (the default; what ``seg-explain``
    without ``--workers`` / ``--scheduler`` does). Yields sub-image progress; ``model`` (a
    loaded SegModel) is used as is, else the job's model path is loaded once."""

    description = "in this process"

    def __init__(self, model=None):
        self.model = model

    def run(self, job: _Job, records: Sequence[ImageRecord], token: CancelToken | None = None,
            on_image: Callable | None = None, labels_fn=None) -> Iterator[tuple[str, ImageRecord, Any]]:
        from .jobs import cancel_hooks

        with torch_threads(job.threads):
            model = self.model if self.model is not None else worker_model(job.model, job.device)
            with cancel_hooks(model, token):
                for rec in records:
                    if token is not None:
                        token.check()
                    t0 = time.perf_counter()
                    gen = job.compute(model, rec, on_image, labels_fn)
                    try:
                        while True:
                            if token is not None:
                                token.check()
                            try:
                                d, t = next(gen)
                            except StopIteration as stop:
                                row = stop.value
                                break
                            yield ("progress", rec, d / t if t else 0.0)
                    except Cancelled:
                        raise
                    except Exception as exc:  # noqa: BLE001 - recorded with the image, the others go on
                        yield ("result", rec, {"name": rec.name, "status": "failed",
                                               "error": first_line(exc, with_type=True),
                                               "seconds": time.perf_counter() - t0, "pid": os.getpid(),
                                               "host": _host()})
                        continue
                    finally:
                        gen.close()
                    yield ("result", rec, {"name": rec.name, "status": "done", "row": row, "pid": os.getpid(),
                                           "host": _host(), "seconds": time.perf_counter() - t0,
                                           "peak_rss": _peak_rss()})

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _allocator_env() -> dict[str, str]:
    """glibc malloc settings of :mod:`seg_explain.allocator` as environment variables, for
    worker processes (read by glibc when the process starts, so every thread, the task
    threads included, shares the main arena and reuses freed tensor buffers). Empty when
    opted out (``SEG_EXPLAIN_MALLOC_TUNING=0``) or not on Linux."""
    from .allocator import MMAP_THRESHOLD, OPT_OUT, TRIM_THRESHOLD

    if os.environ.get(OPT_OUT, "").strip().lower() in ("0", "off", "no", "false") or \
            not sys.platform.startswith("linux"):
        return {}
    return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
            "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def _dask():
    try:
        import distributed
    except ImportError:
        raise ClusterError("running on Dask needs dask.distributed: pip install 'napari-seg-explain[dask]'") from None
    return distributed


class DaskExecutor:
    """Computes images as Dask tasks (:func:`run_image`), one task per image; results are
    small and come back to this process, which writes them.

    - ``DaskExecutor(client)``: an existing ``distributed.Client``;
    - ``DaskExecutor.local(n)``: a ``LocalCluster`` of ``n`` worker processes on this machine
      (one task at a time each; torch threads = ``threads`` or ``cores // n``; scheduler and
      dashboard on 127.0.0.1 only); closed with the executor;
    - ``DaskExecutor.connect(address)``: an existing cluster (``tcp://host:8786`` or a
      scheduler file written by ``dask scheduler --scheduler-file``).

    A worker that dies (killed, out of memory) costs only its task in flight: Dask reruns it
    elsewhere; after ``distributed.scheduler.allowed-failures`` deaths (3) that image is
    recorded as failed and the others go on."""

    def __init__(self, client, cluster=None, threads: int | None = None, description: str = ""):
        self.client = client
        self.cluster = cluster
        self.threads = threads
        self.description = description or f"on the Dask cluster at {client.scheduler.address}"

    @classmethod
    def local(cls, n_workers: int, threads: int | None = None, memory_limit="auto") -> DaskExecutor:
        distributed = _dask()
        from .checks import as_int, max_workers

        n = as_int("workers", n_workers, 1, max_workers())     # this machine's cores and open files
        th = int(threads) if threads else max(1, cores() // n)
        import dask

        env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **_allocator_env()}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                               memory_limit=memory_limit, silence_logs=40)
        try:
            client = distributed.Client(cluster)
            # Ctrl-C reaches every process of the terminal's group: the workers leave it to this
            # process, which cancels the tasks and closes the cluster (also for restarted workers)
            from ._dask_plugins import IgnoreSigint, TuneAllocator

            client.register_plugin(IgnoreSigint())
            client.register_plugin(TuneAllocator())
        except BaseException:
            cluster.close()
            raise
        return cls(client, cluster, th, f"on a local Dask cluster: {n} worker process(es), "
                                        f"{th} torch thread(s) each")

    @classmethod
    def connect(cls, address: str, threads: int | None = None, timeout=None) -> DaskExecutor:
        """``timeout``: seconds to reach the scheduler (default: Dask's
        ``distributed.comm.timeouts.connect``, 30 s)."""
        distributed = _dask()
        kw = {"timeout": timeout} if timeout is not None else {}
        target = scheduler_address(address)
        try:
            client = distributed.Client(target, **kw)
        except Exception as exc:  # noqa: BLE001 - refused, timed out, a malformed address: one line
            raise ClusterError(f"cannot reach the Dask scheduler at {printable(target)}: "
                               f"{first_line(exc, with_type=True)}") from None
        n = len(client.scheduler_info().get("workers", {}))
        try:
            from ._dask_plugins import TuneAllocator

            client.register_plugin(TuneAllocator())
        except Exception as exc:  # noqa: BLE001 - workers that cannot import seg_explain fail per image
            client.close()
            raise ClusterError(f"the Dask workers at {printable(address)} cannot run seg_explain: "
                               f"{first_line(exc, with_type=True)}") from None
        return cls(client, None, threads,
                   f"on the Dask cluster at {client.scheduler.address} ({n} worker(s) now"
                   + ("; waiting for workers" if n == 0 else "") + ")")

    def run(self, job: _Job, records: Sequence[ImageRecord], token: CancelToken | None = None,
            on_image: Callable | None = None, labels_fn=None) -> Iterator[tuple[str, ImageRecord, Any]]:
        distributed = _dask()
        if self.threads and not job.threads:
            job = dataclasses.replace(job, threads=self.threads)
        tag = os.urandom(4).hex()
        futures = {}
        for rec in records:
            f = self.client.submit(run_image, job, rec, key=f"seg-explain-{job.kind}-{rec.key}-{tag}", pure=False)
            futures[f] = rec
        ac = distributed.as_completed(list(futures))
        try:
            while futures:
                if token is not None:
                    token.check()
                if not ac.has_ready():
                    time.sleep(0.05)
                    continue
                for f in ac.next_batch(block=False):
                    rec = futures.pop(f)
                    if f.status == "finished":
                        out = f.result()
                    else:
                        try:
                            exc = f.exception(timeout=5)
                        except Exception as e:  # noqa: BLE001 - cancelled / lost
                            exc = e
                        why = ("the worker computing it died" if type(exc).__name__ == "KilledWorker"
                               else "the task did not finish")
                        out = {"name": rec.name, "status": "failed",
                               "error": f"{why} ({first_line(exc, with_type=True)})"}
                    f.release()
                    yield ("result", rec, out)
        finally:
            if futures:
                with contextlib.suppress(Exception):
                    self.client.cancel(list(futures))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def scheduler_address(spec: str) -> str:
    """``--scheduler``: an address (``tcp://host:8786``) as is, or the address in a scheduler
    file (``dask scheduler --scheduler-file``), read here as untrusted JSON: a file that is not
    one, or has no ``address``, is one line, not Dask's assertion."""
    from .files import read_json

    if not os.path.exists(spec):
        if "://" not in spec and ":" not in spec:
            raise ClusterError(f"--scheduler {printable(spec)} is neither an address (tcp://host:8786) nor "
                               "an existing scheduler file")
        return spec
    try:
        info = read_json(spec, "scheduler file", error=ClusterError, max_bytes=1024 * 1024)
    except ClusterError as exc:
        raise ClusterError(f"{first_line(exc)}; give the file `dask scheduler --scheduler-file` wrote, "
                           "or the address (tcp://host:8786)") from None
    addr = info.get("address")
    if not isinstance(addr, str) or "://" not in addr:
        raise ClusterError(f"scheduler file {printable(spec)} has no scheduler address (an 'address' such as "
                           "tcp://host:8786); is the scheduler running?")
    return addr


def make_executor(workers: int | None = None, scheduler: str | None = None, client=None,
                  threads: int | None = None, model=None):
    """The executor for a run: ``client`` (a ``distributed.Client``, an address or a number
    of local workers), else ``scheduler`` (address / scheduler file), else ``workers``
    (local cluster), else :class:`InProcess`."""
    if client is not None:
        if isinstance(client, (InProcess, DaskExecutor)):
            return client
        if isinstance(client, bool):
            raise InputMismatchError("client must be a dask Client, an address or a number of workers")
        if isinstance(client, int):
            return DaskExecutor.local(client, threads)
        if isinstance(client, (str, os.PathLike)):
            return DaskExecutor.connect(os.fspath(client), threads)
        ex = DaskExecutor(client, None, threads)
        ex.close = lambda: None         # the caller's client stays open
        return ex
    if scheduler:
        return DaskExecutor.connect(scheduler, threads)
    if workers:
        return DaskExecutor.local(workers, threads)
    return InProcess(model)


# --------------------------------------------------------------------------- runs --
@dataclass(frozen=True)
class ImageProgress(ProgressEvent):
    """A :class:`~seg_explain.jobs.ProgressEvent` of a data-set run (``done``/``total`` in
    per-mille of an image, as Agg2Exp's generator yields them) with the image it is about:
    ``state`` is ``"running"`` (in-process, within an image), ``"done"``, ``"failed"`` (with
    ``error``) or ``"resumed"`` (the first event, when images were already done)."""

    image: str | None = None
    state: str = "running"
    error: str | None = None
    n_done: int = 0            # images finished (this run and the resumed ones)
    n_failed: int = 0
    n_total: int = 0
    n_resumed: int = 0


class DatasetRun:
    """A resumable data-set run: iterate :meth:`events` (or call :meth:`run`), read :meth:`result`.

    ``job``: :class:`Agg2ExpJob` / :class:`EvaluateJob`; ``records``: :class:`ImageRecord`;
    ``executor``: :class:`InProcess` (default) or :class:`DaskExecutor`; ``out``: the results
    folder (None: keep results in memory only); ``overwrite``: recompute images already done.
    """

    def __init__(self, job: _Job, records: Sequence[ImageRecord], *, executor=None,
                 out: str | os.PathLike | None = None, overwrite: bool = False, model=None):
        self.job = job
        self.records = list(records)
        if not self.records:
            raise InputMismatchError("no image given")
        names = [r.name for r in self.records]
        if len(set(names)) != len(names):
            raise InputMismatchError("image names must be unique")
        self.executor = executor if executor is not None else InProcess(model)
        self.store = ResultStore(out, job, overwrite) if out is not None else None
        self.rows: dict[str, dict] = {}
        self.failures: dict[str, str] = {}
        self.outcomes: list[dict] = []      # this run's outcomes (timings, worker pid, peak memory)
        self.resumed: list[str] = []
        if self.store is not None:
            self.store.open(self.records)
            for rec in self.records:
                row = self.store.load(rec)
                if row is not None:
                    self.rows[rec.name] = row
                    self.resumed.append(rec.name)
        self.todo = [r for r in self.records if r.name not in self.rows]
        self.previous_failures = list(self.store.previous_failures) if self.store is not None else []
        self.rejected = list(self.store.rejected) if self.store is not None else []

    @property
    def n_total(self) -> int:
        return len(self.records)

    def events(self, token: CancelToken | None = None, on_image: Callable | None = None,
               labels_fn=None) -> Iterator[ImageProgress]:
        """Run the images not done yet; yield :class:`ImageProgress`; return :meth:`result`.

        ``token`` stops the run between images (and inside network passes in-process; on
        Dask the tasks in flight are cancelled); what finished is kept (and written).
        ``on_image(name, explanations, labels)`` (in-process Agg2Exp only) sees each image's
        maps."""
        t0 = time.perf_counter()
        n = self.n_total
        total = n * STEPS_PER_IMAGE
        finished_here = 0

        def event(state, image=None, frac=0.0, error=None):
            n_fin = len(self.rows) + len(self.failures)
            done = min(total, n_fin * STEPS_PER_IMAGE + int(frac * (STEPS_PER_IMAGE - 1)))
            elapsed = time.perf_counter() - t0
            work = finished_here + frac
            eta = (n - n_fin - frac) * elapsed / work if work > 0 else None
            stage = {"running": f"image {min(n_fin + 1, n)}/{n}: {image}",
                     "done": f"done {image}", "failed": f"failed {image}",
                     "resumed": f"{len(self.resumed)} image(s) already done"}[state]
            return ImageProgress(stage, done, total, elapsed, eta, image, state, error, len(self.rows),
                                 len(self.failures), n, len(self.resumed))

        if self.resumed:
            yield event("resumed")
        stream = self.executor.run(self.job, self.todo, token, on_image, labels_fn)
        try:
            for kind, rec, payload in stream:
                if kind == "progress":
                    yield event("running", rec.name, payload)
                    continue
                if payload["status"] == "done":    # the NaN policy: a NaN row is a failure, never a result
                    try:
                        self.job.validate(payload["row"], f"the result of {rec.name!r}")
                    except SegExplainError as exc:
                        payload = {k: v for k, v in payload.items() if k != "row"}
                        payload.update(status="failed", error=first_line(exc, with_type=True))
                self.outcomes.append({k: v for k, v in payload.items() if k != "row"})
                if self.store is not None:
                    self.store.save(rec, payload)
                finished_here += 1
                if payload["status"] == "done":
                    self.rows[rec.name] = payload["row"]
                    self.failures.pop(rec.name, None)
                    yield event("done", rec.name)
                else:
                    self.failures[rec.name] = payload.get("error", "")
                    yield event("failed", rec.name, error=payload.get("error"))
        finally:
            stream.close()
        return self.result()

    def run(self, progress: Callable[[int, int], Any] | None = None, token: CancelToken | None = None):
        from .jobs import drive

        return drive(self.events(token), progress)

    def result(self):
        """The result of the images finished so far (resumed ones included), in data-set order."""
        rows = [self.rows[r.name] for r in self.records if r.name in self.rows]
        fails = [(r.name, self.failures[r.name]) for r in self.records if r.name in self.failures]
        return self.job.assemble(rows, fails)

    owns_executor = True

    def close(self) -> None:
        """Close the executor (a local cluster it started), unless it was passed in to be reused."""
        if self.owns_executor:
            self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write_failures(self, out: str | os.PathLike) -> Path | None:
        """``failures.csv`` (image, error) when images failed; a stale one is removed."""
        from .aggregate import _write_csv

        p = Path(out) / FAILURES_FILE
        if not self.failures:
            with contextlib.suppress(OSError):
                p.unlink()
            return None
        rows = [{"image": r.name, "error": self.failures[r.name]} for r in self.records if r.name in self.failures]
        return _write_csv(p, rows, ["image", "error"])


# ---------------------------------------------------------------------- Python API --
def _model_identity(model) -> tuple[str, str, str]:
    """``(path, device, digest)`` of a model given as a path or a SegModel."""
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        return path, "auto", model_digest(path)
    path = getattr(model, "source", "") or ""
    device = str(getattr(model, "device", "auto"))
    if path and os.path.exists(path):
        return os.path.abspath(path), device, model_digest(path)
    h = hashlib.blake2b(digest_size=10)       # a model built in Python: its weights identify it
    net = getattr(model, "network", None)
    if net is not None and hasattr(net, "state_dict"):
        for k, v in net.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return "", device, h.hexdigest()


def prepare_run(kind: str, model, images, *, client=None, out: str | os.PathLike | None = None,
                overwrite: bool = False, threads: int | None = None, **kw) -> DatasetRun:
    """A :class:`DatasetRun` of ``kind`` (``"agg2exp"`` or ``"evaluate"``) from Python inputs.

    ``model``: a path (loaded here on the CPU for its class names; each worker loads it once
    with ``device``, default ``"auto"``) or a SegModel loaded from a file (its path is sent to
    the workers; a model built in Python can only run in this process). ``images``: what
    :func:`seg_explain.agg2exp` takes, or :class:`ImageRecord` objects. ``client``: None (this
    process), a ``distributed.Client``, a scheduler address, a number of local worker
    processes, or an executor. ``**kw``: :func:`seg_explain.agg2exp`'s keywords (``method``,
    ``extra_rois``, ``names``, ``ground_truth``, ``classes``, ``seed``, ``batch_size``, the
    method's parameters) or :func:`seg_explain.metrics.evaluate`'s. Everything is checked here,
    before any image. Close the run (``with run:`` or ``run.close()``) to close a cluster it
    started."""
    from .checks import as_int, class_indices

    device = kw.pop("device", None)
    path, dev, digest = _model_identity(model)
    if isinstance(model, (str, os.PathLike)):
        loaded = worker_model(path, "cpu" if client is not None else (device or "auto"))
        dev = device or "auto"
    else:
        loaded = model
        dev = device or dev
    if client is not None and not isinstance(client, InProcess) and not path:
        raise InputMismatchError("a Dask run needs the model as a file: pass its path (or a model from "
                                 "load_model); each worker loads it once")
    names = kw.pop("names", None)
    if kind == "agg2exp":
        from .explainers.registry import resolve_params

        method = kw.pop("method", "smoothgrad")
        extra_rois = kw.pop("extra_rois", None)
        ground_truth = kw.pop("ground_truth", None)
        classes = kw.pop("classes", None)
        seed = as_int("seed", kw.pop("seed", 0), 0, 2 ** 31 - 1)
        batch_size = kw.pop("batch_size", None)
        precision = loaded.with_precision(kw.pop("precision", None)).precision
        resolve_params(method, kw)
        records, roi_names = records_from(images, names, ground_truth, extra_rois)
        classes = class_indices(loaded, classes)
        job: _Job = Agg2ExpJob(model=path, device=dev, threads=threads, method=method, params=dict(kw),
                               classes=classes, seed=seed, batch_size=batch_size,
                               row_names=list(loaded.class_names), roi_names=roi_names,
                               with_dice=any(r.ground_truth is not None for r in records), model_digest=digest,
                               precision=precision)
    elif kind == "evaluate":
        from .metrics import plan_evaluation

        plan = plan_evaluation(loaded, **kw)
        records, _ = records_from(images, names)
        job = EvaluateJob(model=path, device=dev, threads=threads, plan=plan, model_digest=digest)
    else:
        raise ValueError(f"kind must be 'agg2exp' or 'evaluate', got {kind!r}")
    executor = make_executor(client=client, threads=threads, model=loaded)
    owned = not isinstance(client, (InProcess, DaskExecutor))     # an executor passed in stays open
    try:
        run = DatasetRun(job, records, executor=executor, out=out, overwrite=overwrite, model=loaded)
    except BaseException:
        if owned:
            executor.close()
        raise
    run.owns_executor = owned
    return run


def run_python(kind: str, model, images, *, progress: Callable | None = None, client=None,
               out: str | os.PathLike | None = None, overwrite: bool = False,
               token: CancelToken | None = None, threads: int | None = None, **kw):
    """``agg2exp(..., client=..., out=...)`` / ``evaluate(...)`` as a data-set run
    (:func:`prepare_run`), driven to its end. ``on_error="raise"`` (the default) stops at the
    first failing image (what finished is kept in ``out``); ``"skip"`` lists failures in the
    result. ``on_image`` (Agg2Exp in this process only) sees each image's maps."""
    on_error = kw.pop("on_error", "raise")
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    on_image = kw.pop("on_image", None)
    if on_image is not None and client is not None:
        raise InputMismatchError("on_image sees voxel maps, which stay on the workers; run in this process")
    with prepare_run(kind, model, images, client=client, out=out, overwrite=overwrite, threads=threads,
                     **kw) as run:
        gen = run.events(token, on_image=on_image)
        try:
            for ev in gen:
                if ev.state == "failed" and on_error == "raise":
                    raise InputMismatchError(f"{ev.image}: {ev.error}")
                if progress is not None:
                    progress(ev.done, ev.total)
        finally:
            gen.close()
        if out is not None:
            run.write_failures(out)
    res = run.result()
    if not run.rows and run.failures:
        raise InputMismatchError(f"No image could be {'explained' if kind == 'agg2exp' else 'evaluated'}: "
                                 + "; ".join(f"{n}: {m}" for n, m in run.failures.items()))
    return res


# ------------------------------------------------------------------- terminal side --
class TerminalProgress:
    """A progress bar on stderr (tqdm: images done/total, rate, ETA, failures); plain lines
    when tqdm is not installed. Messages go through :meth:`write` so they do not break it."""

    def __init__(self, desc: str, total: int, initial: int = 0, quiet: bool = False):
        self.quiet = quiet
        self.desc = desc
        self.total = total
        self.bar = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._initial = initial
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="image", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5 if tty else 5.0, smoothing=0.2, leave=True)

    def update(self, ev: ImageProgress) -> None:
        if self.quiet:
            return
        fail = f"{ev.n_failed} failed" if ev.n_failed else ""
        if self.bar is not None:
            if ev.state in ("done", "failed"):
                self.bar.set_postfix_str(fail, refresh=False)
                self.bar.update(1)
            elif ev.state == "running":
                now = time.perf_counter()
                if now - self._last > 0.5:
                    self._last = now
                    cur = f"{ev.image} {100 * (ev.done % STEPS_PER_IMAGE) / STEPS_PER_IMAGE:.0f}%"
                    self.bar.set_postfix_str(", ".join(s for s in (fail, cur) if s), refresh=False)
                    self.bar.refresh()
            return
        now = time.perf_counter()
        if ev.state in ("done", "failed") and (now - self._last > 2.0 or ev.n_done + ev.n_failed == ev.n_total):
            self._last = now
            eta = ""
            if ev.eta_s is not None:
                from .explainers.registry import human_seconds

                eta = f", about {human_seconds(ev.eta_s)} left"
            print(f"{self.desc} {ev.n_done + ev.n_failed}/{ev.n_total} images"
                  + (f", {ev.n_failed} failed" if ev.n_failed else "") + f", {now - self._t0:.1f}s{eta}",
                  file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_dataset_arguments(p) -> None:
    """``--workers``, ``--scheduler``, ``--threads``, ``--overwrite`` for a subcommand."""
    g = p.add_argument_group("data sets (Dask, resuming)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, default=None, metavar="N",
                    help="run on a local Dask cluster of N worker processes (needs the [dask] extra)")
    ex.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run on an existing Dask cluster: scheduler address (tcp://host:8786) or "
                         "scheduler file (dask scheduler --scheduler-file)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per worker (default: cores / workers with --workers; "
                        "torch's default in-process; the workers' own setting with --scheduler)")
    g.add_argument("--overwrite", action="store_true",
                   help="recompute images already done in --out (default: a rerun skips them)")


def check_dataset_arguments(args) -> None:
    """Bounds of ``--workers`` / ``--threads`` from this machine (cores, open-file limit)."""
    from .checks import as_int, cpu_cores, max_threads, max_workers, open_files_limit

    if args.workers is not None:
        hi = max_workers()
        try:
            as_int("--workers", args.workers, 1, hi)
        except SegExplainError:
            raise InputMismatchError(
                f"--workers must be a whole number in [1, {hi}], got {args.workers!r}: this machine has "
                f"{cpu_cores()} core(s) and allows {open_files_limit()} open files (each worker process "
                "computes one image at a time)") from None
    if args.threads is not None:
        remote = bool(getattr(args, "scheduler", None))
        hi = max_threads(remote)
        try:
            as_int("--threads", args.threads, 1, hi)
        except SegExplainError:
            where = "a remote worker" if remote else f"this machine has {cpu_cores()} core(s)"
            raise InputMismatchError(f"--threads must be a whole number in [1, {hi}] ({where}), "
                                     f"got {args.threads!r}") from None


def check_inputs_outside_results(inputs: Sequence, out: str | os.PathLike) -> None:
    """No input may lie in ``OUT/images``: that folder is the run's own (``--overwrite``
    replaces what is there)."""
    from .files import OutputError

    res = Path(out) / RESULTS_DIR
    for i in inputs:
        if isinstance(i, (str, os.PathLike)) and _inside(Path(i), res):
            raise OutputError(f"the input {printable(i)} lies in {printable(res)}, the results folder this run "
                              "writes; move it or choose another --out (nothing was written)")


def run_command(run: DatasetRun, desc: str, quiet: bool, out: Path, what: str = "image") -> Any:
    """Drive ``run`` for a command: resume message, progress bar, failures as they happen,
    ``failures.csv``; on Ctrl-C / SIGTERM say what is kept. Returns the result."""
    if run.resumed:
        k = len(run.resumed)
        print(f"seg-explain: skipping {k} {what}{'s' if k != 1 else ''} already done in {printable(out)} "
              f"(--overwrite recomputes them)", file=sys.stderr)
    for name, why in run.rejected:
        print(f"seg-explain: recomputing {printable(name)}: its stored result is not trusted ({why})",
              file=sys.stderr)
    if run.previous_failures:
        print(f"seg-explain: retrying {len(run.previous_failures)} {what}(s) that failed before", file=sys.stderr)
    if not quiet:
        print(f"{desc} {len(run.todo)} of {run.n_total} {what}(s) to compute {run.executor.description}",
              file=sys.stderr, flush=True)
    bar = TerminalProgress(desc, run.n_total, len(run.resumed), quiet)
    try:
        gen = run.events()
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                res = stop.value
                break
            if ev.state == "failed":
                bar.write(f"seg-explain: failed: {printable(ev.image)}: {printable(ev.error)}")
            bar.update(ev)
    except BaseException as exc:
        bar.close()
        done = run.store.n_finished() if run.store is not None else len(run.rows)
        kept = (f"{done} {what}(s) finished are kept in {printable(out / RESULTS_DIR)}; rerun the same "
                "command to resume")
        if not isinstance(exc, Exception) or isinstance(exc, Cancelled):   # Ctrl-C, SIGTERM
            print(f"seg-explain: {kept}", file=sys.stderr)
        elif isinstance(exc, OSError):          # a full disk, a folder gone: say what is kept
            from .files import OutputError

            raise OutputError(f"{first_line(exc)}; {kept}; no table was written") from exc
        raise
    bar.close()
    return res


__all__ = ["ImageRecord", "collect_images", "records_from", "read_manifest", "image_seed", "file_key",
           "Agg2ExpJob", "EvaluateJob", "run_image", "worker_model", "InProcess", "DaskExecutor",
           "make_executor", "ResultStore", "DatasetRun", "ImageProgress", "TerminalProgress", "prepare_run",
           "EXIT_OK", "EXIT_BAD_INPUT", "EXIT_SOME_FAILED", "ClusterError", "RUN_FILE", "RESULTS_DIR",
           "FAILURES_FILE", "inputs_digest", "model_digest", "check_template", "scheduler_address"]
