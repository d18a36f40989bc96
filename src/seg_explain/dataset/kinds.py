"""The job kinds of a data-set run (:class:`Agg2ExpJob`, :class:`EvaluateJob`): small picklable
descriptions of the per-image computation, how its rows are written, read, checked and assembled."""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .inputs import ImageRecord
from .store import (
    FORMAT,
    RESULT_MAX_BYTES,
    content_digest,
    jsonable,
)


# ---------------------------------------------------------------------------- jobs --
@dataclass
class Job:
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
class Agg2ExpJob(Job):
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
        from ..aggregate import agg2exp_image_iter

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
        from ..checks import require_finite_row

        require_finite_row(row, what)

    def assemble(self, rows: list[dict], failures: list[tuple[str, str]]):
        from ..aggregate import assemble_result

        return assemble_result(rows, self.row_names, self.col_names, method=self.method,
                               params={**self.params, "seed": self.seed, "batch_size": self.batch_size,
                                       **({"precision": self.precision} if self.precision not in (None, "fp32")
                                          else {})},
                               with_dice=self.with_dice, skipped=failures)


@dataclass
class EvaluateJob(Job):
    """Evaluation-metric rows of one image (:func:`seg_explain.metrics.evaluate_image_iter`)."""

    plan: Any = None                 # seg_explain.metrics.EvalPlan
    model_digest: str = ""
    on_error: str = "skip"           # a method that cannot explain one class: "skip" lists it, "raise" raises

    kind: ClassVar[str] = "evaluate"
    suffix: ClassVar[str] = ".json"

    def compute(self, model, rec: ImageRecord, on_image: Callable | None = None, labels_fn=None):
        from ..metrics import evaluate_image_iter

        return (yield from evaluate_image_iter(model, rec.image, rec.name, self.plan, on_error=self.on_error))

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
        from ..files import read_json

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
                    from ..errors import NonFiniteResultError

                    raise NonFiniteResultError(f"{what}: {k} is {v}")

    def assemble(self, rows: list[dict], failures: list[tuple[str, str]]):
        from ..metrics import MetricsResult

        plan = self.plan
        return MetricsResult([r for row in rows for r in row["rows"]], plan.labels,
                             {**plan.settings(), "skipped": list(failures),
                              "failed": [f for row in rows for f in row["failed"]]})


