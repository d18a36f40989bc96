"""Evaluation metrics for attribution methods (Agg2Exp §3.3, appendix B.2; METHODS.md).

All metrics work **in model space**: the image is prepared once (``model.prepare``: the
model grid and the bundle's intensity preprocessing), the explainer runs on a
:class:`~seg_explain.explainers.base.Context` and returns its model-grid attribution, and
every perturbation is applied to the prepared tensor and scored with the shared target
``f̂_c`` (``ctx.f_hat``: the class-c logits summed over the RoI fixed from the clean image).

``protocol`` picks the rules (:mod:`seg_explain.protocols`): ``"default"`` is described
below; ``"agg2exp"`` is the Agg2Exp authors' Quantus setup (RoI recomputed from each
perturbed prediction, fresh explainer noise, absolute noise, 224² voxels per subset,
removed voxels set to the image minimum over all channels).
"Voxel" below means a model-grid voxel; multi-channel attributions are summed over
channels and a removed voxel has all its channels set to the baseline.

Attributions are normalised to ``max |a| = 1`` before each metric.

- **Faithfulness** (↑): ``n`` (100) random subsets S of ``m`` voxels; Pearson correlation
  over the subsets of ``Σ_{v∈S} a_v`` and ``f̂(x) − f̂(x_S)``, where ``x_S`` sets S to the
  baseline (``"min"``: the per-channel image minimum; also ``"zero"``, ``"mean"``, a number).
  ``m`` (``subset``) is an int or a fraction of the voxels; default 0.05 (the authors'
  protocol: 224² = 50176 voxels whatever the image size; a count larger than the image is
  an error). A map whose supporting evidence is negative (PdCR: ATE < 0 =
  support; the registry's ``orientation``) is negated here.
- **Sensitivity** (↓): mean over ``n`` (3, as in the paper) noisy copies
  ``x' = x + U(−0.1, 0.1)·(max x − min x)`` of ``‖a − a'‖ / ‖a‖`` (both normalised; the
  RoI and class are those of the clean image; the explainer gets the same seed, so only the
  input changes).
- **Complexity** (↓): fraction of voxels with ``|a| > θ`` (θ = 0.1).
- **Efficiency**: wall seconds of the clean explanation and its forward / backward pass
  counts (the clean prediction that fixes the RoI is shared and not counted).

Every random draw comes from a ``numpy`` generator seeded by ``(seed, image, class)``, where
"image" is ``image_seed(seed, name)`` (:func:`seg_explain.dataset.image_seed`; the explainer
gets that seed too), so results are reproducible, independent of which methods are evaluated
together and of the order (or the process, or the resumed run) in which images are computed.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputMismatchError, MethodError

DEFAULTS = {"n_faithfulness": 100, "subset": 0.05, "n_sensitivity": 3, "noise": 0.1,
            "theta": 0.1, "baseline": "min"}   # protocol "default"; see seg_explain.protocols
METRIC_COLUMNS = ["faithfulness", "sensitivity", "complexity", "seconds", "n_forward", "n_backward"]


# ----------------------------------------------------------------------- pure metrics --
def normalise(a) -> np.ndarray:
    """``a / max|a|`` (float64; all-zero stays zero)."""
    a = np.asarray(a, dtype=np.float64)
    m = np.abs(a).max() if a.size else 0.0
    return a / m if m > 0 else a.copy()


def complexity(a, theta: float = 0.1) -> float:
    """Fraction of voxels with ``|a| > theta`` after normalising to ``max|a| = 1``."""
    an = normalise(a)
    return float((np.abs(an) > theta).mean())


def pearson(u, v) -> float:
    u = np.asarray(u, float)
    v = np.asarray(v, float)
    if len(u) < 2 or np.std(u) == 0 or np.std(v) == 0:
        return float("nan")
    return float(np.corrcoef(u, v)[0, 1])


def subset_size(p: int, subset) -> int:
    if subset is None:
        subset = DEFAULTS["subset"]
    if isinstance(subset, float) and subset < 1:
        return max(1, int(round(subset * p)))
    return max(1, min(p, int(subset)))


def faithfulness(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, attribution,
                 n: int = 100, subset=0.05, baseline="min", rng: np.random.Generator | None = None,
                 batch_size: int = 16) -> tuple[float, dict[str, Any]]:
    """Faithfulness correlation of ``attribution`` (``(*S)``) for the scalar model ``f``.

    ``f`` maps a batch ``(B, C, *S)`` to ``(B,)``; ``x`` is ``(C, *S)``. Returns the Pearson
    correlation and the raw pairs (``attr_sums``, ``deltas``).
    """
    from .explainers.engine import baseline_tensor

    rng = rng or np.random.default_rng(0)
    a = normalise(attribution).ravel()
    p = a.size
    if tuple(x.shape[1:]) != tuple(np.shape(attribution)):
        raise InputMismatchError(f"attribution {np.shape(attribution)} and image {tuple(x.shape[1:])} differ")
    if not (isinstance(subset, float) and subset < 1) and subset is not None and int(subset) > p:
        raise InputMismatchError(f"faithfulness subset of {int(subset)} voxels is larger than the image "
                                 f"({p} model-grid voxels); pass subset= a smaller count or a fraction")
    m = subset_size(p, subset)
    base = baseline_tensor(x, baseline)
    subsets = np.stack([rng.choice(p, size=m, replace=False) for _ in range(n)])
    sums = a[subsets].sum(1)
    f_x = float(f(x[None])[0])
    deltas = np.empty(n)
    flat_x = x.reshape(x.shape[0], -1)
    flat_b = base.reshape(x.shape[0], -1)
    for s in range(0, n, batch_size):
        idx = subsets[s:s + batch_size]
        xb = flat_x[None].repeat(len(idx), 1, 1)
        for j, sub in enumerate(idx):
            t = torch.from_numpy(sub)
            xb[j][:, t] = flat_b[:, t]
        out = f(xb.reshape(len(idx), *x.shape))
        deltas[s:s + len(idx)] = f_x - np.asarray(out, dtype=np.float64)
    return pearson(sums, deltas), {"attr_sums": sums, "deltas": deltas, "subset": m, "f_x": f_x}


def sensitivity(explain_fn: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, attribution,
                n: int = 3, noise: float = 0.1, rng: np.random.Generator | None = None,
                scale: str = "range") -> float:
    """Mean ``‖a − a'‖ / ‖a‖`` over ``n`` copies ``x + U(−noise, noise)·range(x)``
    (``scale="absolute"``: ``x + U(−noise, noise)``, Quantus' ``uniform_noise``)."""
    if scale not in ("range", "absolute"):
        raise ValueError(f"scale must be 'range' or 'absolute', got {scale!r}")
    rng = rng or np.random.default_rng(0)
    a = normalise(attribution)
    na = np.linalg.norm(a)
    if na == 0:
        return float("nan")
    rngx = float(x.max() - x.min()) if scale == "range" else 1.0
    vals = []
    for _ in range(n):
        eps = rng.uniform(-noise, noise, size=tuple(x.shape)).astype(np.float32) * rngx
        a2 = normalise(explain_fn(x + torch.from_numpy(eps)))
        vals.append(np.linalg.norm(a - a2) / na)
    return float(np.mean(vals))


# ------------------------------------------------------------------------ the method spec --
@dataclass
class EvaluatedMethod:
    """One row of the table: a label, a registered method and its parameters."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, item) -> EvaluatedMethod:
        """``"name"``, ``"name:k=v:k=v"``, ``(label, name, params)``, a dict or an EvaluatedMethod."""
        if isinstance(item, EvaluatedMethod):
            return item
        if isinstance(item, dict):
            return cls(item.get("label") or item["method"], item["method"], dict(item.get("params") or {}))
        if isinstance(item, (tuple, list)):
            label, name, *rest = item
            return cls(label, name, dict(rest[0]) if rest else {})
        s = str(item)
        name, *kvs = s.split(":")
        params = {}
        if kvs:
            from .explainers.registry import parse_params

            params = parse_params(kvs, name)
        return cls(s, name, params)


def _model_attr(result, sd: int) -> np.ndarray:
    if isinstance(result, tuple):
        result = result[0]
    a = result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
    a = a.astype(np.float64)
    if a.ndim == sd + 1:
        a = a.sum(0)
    return a


# ------------------------------------------------------------------------------ result --
@dataclass
class MetricsResult:
    """Per (image, class, method) metric rows, and the mean ± sd table per method."""

    rows: list[dict[str, Any]]
    labels: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for lab in self.labels:
            rs = [r for r in self.rows if r["method"] == lab]
            row: dict[str, Any] = {"method": lab, "n": len(rs)}
            for k in METRIC_COLUMNS:
                v = np.array([r[k] for r in rs], float)
                v = v[np.isfinite(v)]
                row[f"{k}_mean"] = float(v.mean()) if v.size else float("nan")
                row[f"{k}_sd"] = float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else float("nan"))
            out.append(row)
        return out

    def table(self) -> str:
        """A plain-text table like the paper's Table 1 (mean ± sd over images and classes)."""
        head = ["method", "faithfulness ↑", "sensitivity ↓", "complexity ↓", "seconds ↓", "fwd", "bwd", "n"]
        lines = []
        for s in self.summary():
            def ms(k, fmt="{:.3f}", s=s):
                m, sd = s[f"{k}_mean"], s[f"{k}_sd"]
                return "nan" if not math.isfinite(m) else f"{fmt.format(m)} ± {fmt.format(sd)}"
            lines.append([s["method"], ms("faithfulness"), ms("sensitivity"), ms("complexity"),
                          ms("seconds", "{:.2f}"), f"{s['n_forward_mean']:.0f}", f"{s['n_backward_mean']:.0f}",
                          str(s["n"])])
        widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(head)]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
        return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Per-row metrics (image, class, method, metrics)."""
        from .files import write_csv

        return write_csv(path, self.rows, ["image", "class", "method"] + METRIC_COLUMNS)

    def summary_to_csv(self, path: str | os.PathLike) -> Path:
        from .files import write_csv

        cols = ["method", "n"] + [f"{k}_{s}" for k in METRIC_COLUMNS for s in ("mean", "sd")]
        return write_csv(path, self.summary(), cols)


# ------------------------------------------------------------------------------ driver --
@dataclass
class EvalPlan:
    """What to evaluate, validated once (picklable: Dask workers get it with each image).

    ``methods``: ``(label, method, full parameters)``; ``classes``: class indices (None:
    every predicted class); the metric settings; ``seed`` is the run's base seed (image
    ``name`` uses :func:`seg_explain.dataset.image_seed` of it); ``protocol``: the rules
    (:mod:`seg_explain.protocols`)."""

    methods: list[tuple[str, str, dict[str, Any]]]
    classes: list[int] | None = None
    n_faithfulness: int = 100
    subset: Any = 0.05
    n_sensitivity: int = 3
    noise: float = 0.1
    theta: float = 0.1
    baseline: Any = "min"
    seed: int = 0
    batch_size: int | None = None
    protocol: str = "default"
    precision: str = "fp32"     # network precision (seg_explain.precision)

    @property
    def labels(self) -> list[str]:
        return [lab for lab, _, _ in self.methods]

    def settings(self) -> dict[str, Any]:
        """The run settings as :attr:`MetricsResult.settings` reports them."""
        from .protocols import get_protocol

        return {"protocol": self.protocol, "protocol_rules": get_protocol(self.protocol).describe(),
                "n_faithfulness": self.n_faithfulness, "subset": self.subset, "n_sensitivity": self.n_sensitivity,
                "noise": self.noise, "theta": self.theta, "baseline": self.baseline, "seed": self.seed,
                "seed_per_image": "seg_explain.dataset.image_seed(seed, image name)",
                "method_params": {lab: {k: (f"<{type(v).__name__}>"
                                            if not isinstance(v, (int, float, str, bool, type(None))) else v)
                                        for k, v in full.items()} for lab, _, full in self.methods},
                **self._precision()}

    def describe(self) -> dict[str, Any]:
        """Everything the numbers depend on (for resuming: a run.json fingerprint)."""
        extra = {} if self.protocol == "default" else {"protocol": self.protocol}   # old run folders still match
        return {**extra, "methods": [[lab, m, full] for lab, m, full in self.methods], "classes": self.classes,
                "n_faithfulness": self.n_faithfulness, "subset": self.subset, "n_sensitivity": self.n_sensitivity,
                "noise": self.noise, "theta": self.theta, "baseline": self.baseline, "seed": self.seed,
                "batch_size": self.batch_size, **self._precision()}

    def _precision(self) -> dict[str, str]:
        return {} if self.precision == "fp32" else {"precision": self.precision}


def plan_evaluation(model, methods: Sequence = ("smoothgrad",), classes=None,
                    method_params: dict[str, dict] | None = None, seed: int = 0, batch_size: int | None = None,
                    n_faithfulness: int = 100, subset=None, n_sensitivity: int = 3, noise: float = 0.1,
                    theta: float = 0.1, baseline=None, protocol: str = "default",
                    precision: str | None = None, **params) -> EvalPlan:
    """Check every setting and method parameter (before any image) -> :class:`EvalPlan`.

    ``subset`` / ``baseline`` None: the protocol's (default 0.05 / "min"; agg2exp 50176
    voxels / the image minimum over all channels)."""
    from .checks import as_float, as_int, class_indices
    from .explainers.base import get_spec, resolve_params
    from .protocols import get_protocol

    proto = get_protocol(protocol)
    subset = proto.subset if subset is None else subset
    baseline = proto.baseline if baseline is None else baseline
    n_faithfulness = as_int("n_faithfulness", n_faithfulness, 2)   # a correlation needs >= 2 subsets
    if isinstance(subset, float) and subset < 1:
        subset = as_float("subset", subset, 0.0, 1.0, lo_open=True)
    else:
        subset = as_int("subset", subset, 1)
    n_sensitivity = as_int("n_sensitivity", n_sensitivity, 0)
    noise = as_float("noise", noise, 0.0)
    theta = as_float("theta", theta, 0.0, 1.0)
    seed = as_int("seed", seed, 0, 2 ** 31 - 1)
    classes = class_indices(model, classes)   # an unknown class is an error, not an empty table
    specs = [EvaluatedMethod.parse(m) for m in (methods if not isinstance(methods, str) else [methods])]
    method_params = method_params or {}
    resolved = []
    used: set[str] = set()
    for sp in specs:
        reg = get_spec(sp.method)
        glob = {k: v for k, v in params.items() if k in reg.defaults}
        _, full = resolve_params(sp.method, {**glob, **method_params.get(sp.method, {}),
                                             **method_params.get(sp.label, {}), **sp.params})
        resolved.append((sp.label, sp.method, full))
        used |= set(reg.defaults)
    stray = set(params) - used
    if stray:
        raise MethodError(f"no evaluated method has parameter(s) {', '.join(sorted(stray))}")
    return EvalPlan(resolved, classes, n_faithfulness, subset, n_sensitivity, noise, theta, baseline, seed,
                    batch_size, proto.name, model.with_precision(precision).precision)


def evaluate_image_iter(model, image, name: str, plan: EvalPlan, on_error: str = "skip"
                        ) -> Iterator[tuple[int, int]]:
    """The metrics of one image: yields ``(methods done, methods)``, returns
    ``{"name", "rows": [...], "failed": [(image, class, method, reason), ...]}``.

    The single per-image computation behind :func:`evaluate_iter` (serial) and
    :mod:`seg_explain.dataset` (resumable, Dask workers). An image that cannot be read or
    predicted raises; a method that cannot explain one class is listed in ``failed``
    (``on_error="skip"``) or raises (``"raise"``). Seeds: the explainer gets
    ``image_seed(plan.seed, name)``, the metric draws come from a generator seeded by
    ``(plan.seed, that, class)`` (and, under ``protocol="agg2exp"``, the noisy copies'
    explainer seeds from one seeded by ``(plan.seed, that, class, 1)``): nothing depends on
    the order of the images."""
    from .errors import Cancelled, SegExplainError
    from .explainers.base import Context, get_spec
    from .explainers.engine import f_hat_batch
    from .io import as_loaded
    from .jobs import drive
    from .models.segmodel import Prepared
    from .protocols import get_protocol
    from .seeds import image_seed

    proto = get_protocol(plan.protocol)
    model = model.with_precision(plan.precision)
    prep = model.prepare(as_loaded(image))
    clean = model.logits_tensor(prep.x)
    pred = model.image_labels(prep, clean)       # the one prediction (image grid), as model.predict
    present = [int(c) for c in np.unique(pred)]
    todo = present if plan.classes is None else [c for c in plan.classes if c in present]
    sd = model.spatial_dims
    seed = image_seed(plan.seed, name)
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str, str, str]] = []
    baseline = float(prep.x.min()) if plan.baseline == "global_min" else plan.baseline   # Quantus "black"
    for k, (label, method, full) in enumerate(plan.methods):
        reg = get_spec(method)
        sign = reg.orientation   # a map whose red is negative (PdCR) is negated
        for c in todo:
            roi = torch.from_numpy(prep.roi_to_model(pred == c))
            if not roi.any():        # smaller than one model voxel: nothing to evaluate
                continue
            rng = np.random.default_rng([int(plan.seed), seed, c])
            fresh = np.random.default_rng([int(plan.seed), seed, c, 1])   # agg2exp: new explainer seeds

            def run(x_t, _c=c, _roi=roi, _reg=reg, _full=full, _seed=seed, _clean=None):
                p2 = prep if x_t is prep.x else Prepared(x_t, prep.grid, prep.image_shape)
                ctx2 = Context(model, p2, _c, _roi, seed=_seed, batch_size=plan.batch_size)
                if x_t is prep.x or _clean is not None:
                    ctx2._clean_logits = clean if _clean is None else _clean
                t0 = time.perf_counter()
                out = drive(_reg.fn(ctx2, **_full))
                return _model_attr(out, sd), ctx2, time.perf_counter() - t0

            def run_noisy(x_t, _c=c, _run=run, _fresh=fresh, _reg=reg):
                """The explanation of a noisy copy under the protocol's rules."""
                if proto.roi == "clean":
                    return _run(x_t)[0]
                s2 = int(_fresh.integers(0, 2 ** 31 - 1)) if proto.explainer_seed == "fresh" else seed
                if _reg.caps.clean_segments:   # the authors' KernelSHAP kept the clean segments and RoI
                    return _run(x_t, _seed=s2, _clean=clean)[0]
                own = model.logits_tensor(x_t)
                return _run(x_t, _roi=model.labels_from_logits(own) == _c, _seed=s2, _clean=own)[0]

            try:
                a, ctx, secs = run(prep.x)
            except SegExplainError as exc:   # e.g. PdCR with no block outside a huge RoI
                if on_error == "raise" or isinstance(exc, Cancelled):
                    raise
                failed.append((name, model.class_names[c], label, str(exc)))
                continue
            fctx = Context(model, prep, c, roi, seed=seed, batch_size=plan.batch_size)
            bs = fctx.auto_batch(per_item_bytes=float(np.prod(prep.shape)) * 4 * 40 * model.in_channels, cap=32)
            if proto.roi == "clean":
                f_of = lambda xb, _f=fctx: f_hat_batch(_f, xb).numpy()  # noqa: E731
            else:   # each perturbed input scored over its own class-c region
                f_of = lambda xb, _c=c: _own_f_hat(model, xb, _c)  # noqa: E731
            faith, _ = faithfulness(f_of, prep.x, sign * a, n=plan.n_faithfulness, subset=plan.subset,
                                    baseline=baseline, rng=rng, batch_size=bs)
            sens = (sensitivity(run_noisy, prep.x, a, n=plan.n_sensitivity, noise=plan.noise, rng=rng,
                                scale=proto.noise_scale)
                    if plan.n_sensitivity > 0 else float("nan"))
            rows.append({"image": name, "class": model.class_names[c], "method": label,
                         "faithfulness": faith, "sensitivity": sens, "complexity": complexity(a, plan.theta),
                         "seconds": secs, "n_forward": int(ctx.n_forward), "n_backward": int(ctx.n_backward)})
        yield (k + 1, len(plan.methods))
    return {"name": name, "rows": rows, "failed": failed}


def _own_f_hat(model, xb: torch.Tensor, c: int) -> np.ndarray:
    """f̂_c of a batch with each row's RoI from its own prediction (protocol "agg2exp")."""
    from .explainers.engine import blended_logits
    from .protocols import own_roi_sum

    with torch.inference_mode():
        return own_roi_sum(blended_logits(model, xb), c, model.sigmoid).double().cpu().numpy()


# The data-set runner lives in seg_explain.dataset; these names were defined here before and
# stay importable from here (looked up when first used: this module never imports the runner).
_MOVED = ("evaluate", "evaluate_iter")


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("seg_explain.dataset.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
