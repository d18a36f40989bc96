"""The method registry: everything the program knows about an explainer, in one entry.

Each explainer module ends with one :func:`register` call holding a :class:`MethodSpec`:
its parameters (:class:`Param`: kind, default, range or choices, unit, one-line help), its
capabilities (2D/3D, gradients, a hookable layer, multi-class sharing, what kind of map it
makes), the sign convention in words, the unit of its values, the summary fields it reports
and a cost model (forward/backward passes as a function of the image and the parameters).

Everything else reads it and never compares a method's name:

- the core validates and coerces parameters with :func:`resolve_params` (one parser for the
  Python API, the CLI's ``--param k=v`` and the GUI's text fields: :meth:`Param.parse`);
- ``seg-explain methods``, the README's method table (:func:`methods_markdown`, kept equal by
  a test) and the CLI help come from it;
- the napari dock builds its forms (with tooltips, ranges, units, per-dimension defaults),
  its cost estimate and its legend from it.

Adding a method = one module with a generator function and one ``register(MethodSpec(...))``
(see ``docs/ARCHITECTURE.md``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..checks import as_bool, as_choice, as_float, as_int
from ..errors import MethodError
from ..precision import PRECISIONS

PARAM_KINDS = ("int", "float", "bool", "choice", "baseline", "auto_int", "auto_ints", "layer",
               "bank", "label_map", "bool_or_fraction")
MAP_KINDS = ("voxel", "block", "heatmap")   # transfer to the image grid: adjoint / nearest / linear


# ---------------------------------------------------------------------- parameters --
@dataclass(frozen=True)
class Param:
    """One explainer parameter.

    ``kind``: ``int`` / ``float`` (``lo``/``hi``), ``bool``, ``choice`` (``choices``),
    ``baseline`` (one of ``choices``, a number, ``"blur:S"`` when ``blur_sigma``, or an array
    in the API), ``auto_int`` (None = automatic, or an int >= ``lo``), ``auto_ints`` (None,
    an int or one int per axis), ``layer`` (a network module name or None), ``bank`` (PdCR
    bank: None, ``"zero"``, a path, or images in the API), ``label_map`` (a label map / path
    or None), ``bool_or_fraction`` (true/false or a number in (0, 1]).
    ``gui_default_3d``: the default the GUI proposes for a 3D model when it differs
    (sane costs on a CPU); the API and CLI keep ``default``.
    """

    name: str
    kind: str
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    unit: str = ""
    blur_sigma: bool = False
    gui_default_3d: Any = None

    def __post_init__(self):
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")

    # -- values --------------------------------------------------------------------
    def parse(self, value: Any, method: str | None = None) -> Any:
        """A value from Python, the CLI or a GUI text field -> the typed, checked value."""
        k, who = self.kind, method
        if isinstance(value, str):
            value = value.strip()
        if k == "int":
            return as_int(self.name, value, _int(self.lo), _int(self.hi), who)
        if k == "float":
            return as_float(self.name, value, self.lo, self.hi, who, self.lo_open)
        if k == "bool":
            return as_bool(self.name, value, who)
        if k == "choice":
            return as_choice(self.name, value, self.choices, who)
        if k in ("auto_int", "auto_ints"):
            if value is None or (isinstance(value, str) and value.lower() in ("", "auto", "none")):
                return None
            if k == "auto_ints":
                items = _listish(value)
                if items is not None:
                    return [as_int(self.name, v, _int(self.lo), _int(self.hi), who) for v in items]
            return as_int(self.name, value, _int(self.lo), _int(self.hi), who)
        if k == "layer":
            if value is None or value == "" or (isinstance(value, str) and value.lower() in ("none", "auto")):
                return None
            if not isinstance(value, str):
                raise MethodError(f"{who}: {self.name} must be a module name, got {value!r}")
            return value
        if k == "baseline":
            return self._baseline(value, who)
        if k == "bool_or_fraction":
            if isinstance(value, (bool, int)) or (isinstance(value, str) and value.lower() in
                                                   ("true", "false", "yes", "no", "on", "off", "0", "1")):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in (0, 1):
                    return as_float(self.name, value, 0.0, 1.0, who, lo_open=True)
                return as_bool(self.name, value, who)
            return as_float(self.name, value, 0.0, 1.0, who, lo_open=True)
        if k in ("bank", "label_map"):
            if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
                return None
            if isinstance(value, str) and k == "bank" and value.lower() == "zero":
                return "zero"
            return value          # arrays, images, paths: checked by the explainer that reads them
        raise AssertionError(k)  # pragma: no cover

    def _baseline(self, value, who):
        import numpy as np

        if isinstance(value, str):
            low = value.lower()
            if low in self.choices:
                return low
            if self.blur_sigma and low.startswith("blur:"):
                try:
                    as_float(self.name, low.split(":", 1)[1], 0.0, None, who, lo_open=True)
                except MethodError:
                    raise MethodError(f"{who}: {self.name} {value!r}: expected 'blur' or 'blur:SIGMA' with a "
                                      "finite SIGMA > 0 (voxels)") from None
                return low
            try:
                return as_float(self.name, float(low), method=who)
            except ValueError:
                pass
            extra = " or 'blur:SIGMA'" if self.blur_sigma else ""
            raise MethodError(f"{who}: {self.name} must be one of {', '.join(self.choices)}, a number{extra} "
                              f"or an array, got {value!r}")
        if isinstance(value, bool):
            raise MethodError(f"{who}: {self.name} must be one of {', '.join(self.choices)}, a number or an "
                              f"array, got {value!r}")
        if isinstance(value, (int, float, np.integer, np.floating)):
            return as_float(self.name, value, method=who)
        return value               # an array: its shape and values are checked where it is used

    def text(self, value: Any) -> str:
        """How a value reads in a text field / on the command line (inverse of :meth:`parse`)."""
        if value is None:
            return "auto" if self.kind in ("auto_int", "auto_ints", "layer") else ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value)

    @property
    def is_object(self) -> bool:
        """Values that are objects in the GUI (chosen from layers/files, not typed)."""
        return self.kind in ("bank", "label_map", "layer")

    def describe(self) -> str:
        """``name=default`` with range/choices and unit, for the CLI and the README."""
        d = self.text(self.default) or "none"
        rng = ""
        if self.kind in ("int", "float", "auto_int", "auto_ints") and (self.lo is not None or self.hi is not None):
            lo = "" if self.lo is None else f"{_fmt(self.lo)}"
            hi = "" if self.hi is None else f"{_fmt(self.hi)}"
            rng = f" [{lo}..{hi}]" if hi else f" (>{'' if self.lo_open else '='}{lo})"
        elif self.choices:
            rng = " {" + "|".join(self.choices) + "}"
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name}={d}{rng}{unit}"


def _int(v):
    return None if v is None else int(v)


def _fmt(v) -> str:
    return str(int(v)) if float(v) == int(v) else f"{v:g}"


def _listish(value):
    import numpy as np

    if isinstance(value, str):
        t = value.strip().strip("[]()")
        if "," in t:
            return [s.strip() for s in t.split(",") if s.strip()]
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return None


# ------------------------------------------------------------------------- costs --
@dataclass(frozen=True)
class CostInput:
    """What a cost model may look at: the model-grid shape, its windows, the RoI.

    ``roi`` (model-grid boolean mask) and ``roi_boxes`` (the image-grid boxes of the sliding
    windows that hold RoI voxels, ``((lo, hi), ...)`` per axis) let a cost model count only
    what the RoI can reach (:func:`block_reach`); None / () = unknown (the RoI is assumed to
    be a cube of ``roi_fraction`` of the image, inside one window)."""

    shape: tuple[int, ...]            # model-grid spatial shape
    spatial_dims: int
    n_windows: int = 1                # sliding windows holding RoI voxels (1 when it fits)
    n_windows_all: int = 1            # all sliding windows of the image
    window_voxels: int = 1            # voxels of one network pass (window or whole image)
    roi_fraction: float = 0.1         # share of the image the RoI covers (model grid)
    n_classes: int = 1                # classes explained together (Agg2Exp)
    roi: Any = field(default=None, compare=False, repr=False)
    roi_boxes: tuple = ()


@dataclass(frozen=True)
class Cost:
    """Network passes an explanation costs (each pass = one window or image of the batch).

    ``forward``: the expected count; ``forward_max`` / ``forward_min``: bounds when the count
    depends on the data (PdCR: every reachable block passes screening / none does)."""

    forward: int
    backward: int = 0
    forward_max: int | None = None    # upper bound when data-dependent (PdCR's relevant blocks)
    note: str = ""
    forward_min: int | None = None    # lower bound when data-dependent


@dataclass(frozen=True)
class BlockReach:
    """Blocks of a block partition seen from the RoI (see :func:`block_reach`)."""

    n_blocks: int
    n_roi: int                        # blocks holding RoI voxels (never perturbed)
    n_perturbable: int
    n_reachable: int                  # perturbable blocks some RoI window sees
    rows: int                         # window passes of one draw on every reachable block


def block_reach(info: CostInput, block_size: int) -> BlockReach:
    """Which blocks of edge ``block_size`` (cubes, from the origin, the last ones cut by the
    image edge) a perturbation method must run, from the RoI alone, without the network.

    A block outside the RoI is *reachable* when it intersects a sliding window that holds
    RoI voxels (a block no such window sees cannot change the RoI's prediction: it costs no
    pass); one draw on it costs one pass per such window (one pass when the image fits the
    network). Without a RoI mask the RoI is taken as a cube of ``roi_fraction`` of the image,
    every block reachable."""
    import numpy as np

    b = max(1, int(block_size))
    shape = tuple(int(s) for s in info.shape)
    g = tuple(math.ceil(s / b) for s in shape)
    n_blocks = int(np.prod(g))
    if info.roi is not None:
        r = np.zeros(tuple(n * b for n in g), bool)
        r[tuple(slice(0, s) for s in shape)] = np.asarray(info.roi, bool)
        in_roi = r.reshape([v for n in g for v in (n, b)]).any(axis=tuple(range(1, 2 * len(g), 2)))
    else:
        # the RoI as a cube of its volume: the blocks it overlaps (half a block more per axis on
        # average, for its position relative to the grid)
        side = [max(info.roi_fraction, 0.0) ** (1 / info.spatial_dims) * s for s in shape]
        n_roi = round(float(np.prod([min(n, w / b + 0.5) for n, w in zip(g, side)]))) if info.roi_fraction > 0 else 0
        n_pert = max(n_blocks - n_roi, 0)
        return BlockReach(n_blocks, n_roi, n_pert, n_pert, n_pert)
    seen = np.zeros(g, np.int64)
    if info.roi_boxes:
        for box in info.roi_boxes:
            seen[tuple(slice(lo // b, -(-hi // b)) for lo, hi in box)] += 1
    else:
        seen[...] = 1
    seen[in_roi] = 0
    n_roi = int(in_roi.sum())
    return BlockReach(n_blocks, n_roi, n_blocks - n_roi, int((seen > 0).sum()), int(seen.sum()))


# -------------------------------------------------------------------------- specs --
@dataclass(frozen=True)
class Capabilities:
    dims: tuple[int, ...] = (2, 3)
    gradients: bool = True            # needs a differentiable network
    hooks: bool = False               # needs a hookable layer (not TorchScript / exported)
    multiclass: bool = False          # several classes share forward passes (Agg2Exp)
    map_kind: str = "voxel"           # voxel (gradient maps) | block | heatmap
    clean_segments: bool = False      # its features come from the clean prediction (KernelSHAP's
                                      # semantic supervoxels): kept for perturbed copies


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one explainer (see the module docstring)."""

    name: str
    fn: Callable                      # generator fn(ctx, **params) -> attr or (attr, extras)
    title: str                        # human name ("SmoothGrad")
    question: str                     # what it asks, in a sentence
    source: str                       # the paper
    params: tuple[Param, ...] = ()
    caps: Capabilities = field(default_factory=Capabilities)
    unit: str = ""                    # unit of the map's values
    positive: str = ""                # what a positive value means, in words
    negative: str = ""                # what a negative value means, in words
    red_is_negative: bool = False     # PdCR: red = ATE < 0 (supporting evidence)
    one_sided: Callable[[dict], bool] | None = None  # params -> map has one sign (e.g. CAM + ReLU)
    summary_fields: tuple[str, ...] = ()
    rank: str = "abs"                 # progressive perturbation: how blocks are ranked
    cost: Callable[[CostInput, dict], Cost] | None = None
    cheaper: Callable[[dict, int], dict] | None = None   # (params, spatial_dims) -> cheaper settings
    cost_class: str = "cheap"         # cheap | moderate | expensive (for menus)
    multi: Callable | None = None     # multi-class form (shared forward passes)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    @property
    def orientation(self) -> float:
        """Sign that makes "positive = supports the RoI" (metrics, rankings)."""
        return -1.0 if self.red_is_negative else 1.0

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise MethodError(f"{self.name} has no parameter {name!r}; its parameters are: "
                          f"{', '.join(p.name for p in self.params) or 'none'}")

    def gui_defaults(self, spatial_dims: int) -> dict[str, Any]:
        return {p.name: (p.gui_default_3d if spatial_dims == 3 and p.gui_default_3d is not None else p.default)
                for p in self.params}

    def is_one_sided(self, params: dict) -> bool:
        return bool(self.one_sided(params)) if self.one_sided else False

    def estimate(self, info: CostInput, params: dict) -> Cost:
        full = {**self.defaults, **params}
        return self.cost(info, full) if self.cost else Cost(0, 0, note="no cost model")


REGISTRY: dict[str, MethodSpec] = {}
COMMON = (Param("seed", "int", 0, "random seed (noise, draws, coalitions)", lo=0, hi=2 ** 31 - 1),
          Param("batch_size", "auto_int", None, "images per network pass (auto: from free memory)", lo=1),
          Param("precision", "choice", "fp32", "network precision: bf16 = autocast bfloat16 (CPU or GPU), "
                "fp16 = autocast float16 (GPU); opt-in, see seg_explain.precision", choices=PRECISIONS))


def register(spec: MethodSpec) -> MethodSpec:
    """Add (or replace) an explainer; returns the spec."""
    if spec.caps.map_kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}")
    names = [p.name for p in spec.params]
    if len(set(names)) != len(names) or set(names) & {p.name for p in COMMON}:
        raise ValueError(f"{spec.name}: parameter names must be unique and not {[p.name for p in COMMON]}")
    REGISTRY[spec.name] = spec
    return spec


# the explainers package's shared machinery (every other module there is one explainer)
SHARED_MODULES = ("base", "registry", "engine", "multiclass", "job", "cost", "roi_dice")


def _load_all() -> None:
    """Import every explainer module (each registers itself)."""
    import importlib
    import pkgutil
    from pathlib import Path

    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):   # this package, not imported by name
        if not m.name.startswith("_") and m.name not in SHARED_MODULES:
            importlib.import_module(f"{__package__}.{m.name}")


def methods() -> list[str]:
    """Names of all registered explainers."""
    _load_all()
    return sorted(REGISTRY)


def specs() -> list[MethodSpec]:
    return [REGISTRY[m] for m in methods()]


def get_spec(method: str) -> MethodSpec:
    _load_all()
    if method not in REGISTRY:
        raise MethodError(f"Unknown method {method!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[method]


def resolve_params(method: str, params: dict[str, Any]) -> tuple[MethodSpec, dict[str, Any]]:
    """``(spec, params with defaults filled in, each parsed and checked)``.

    Unknown names are a MethodError naming the method's parameters."""
    spec = get_spec(method)
    known = {p.name for p in spec.params}
    unknown = set(params) - known
    if unknown:
        raise MethodError(f"{method} has no parameter(s) {', '.join(sorted(unknown))}; "
                          f"its parameters are: {', '.join(sorted(known)) or 'none'}")
    out = {}
    for p in spec.params:
        out[p.name] = p.parse(params[p.name], method) if p.name in params else p.default
    return spec, out


def parse_text_params(items: Iterable[str], method: str | None = None) -> dict[str, Any]:
    """CLI ``k=v`` items -> dict; typed and checked by ``method``'s parameters when given
    (an unknown name is an error), else kept as text for :func:`resolve_params`."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise MethodError(f"--param expects k=v, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    if method is not None:
        spec = get_spec(method)
        out = {k: spec.param(k).parse(v, method) for k, v in out.items()}
    return out


# ---------------------------------------------------------------------- documents --
def methods_markdown() -> str:
    """The README's method table (a test keeps the README equal to this)."""
    rows = ["| method | name | what it asks | values | cost | source |",
            "|---|---|---|---|---|---|"]
    for s in specs():
        dims = "/".join(f"{d}D" for d in s.caps.dims)
        rows.append(f"| `{s.name}` | {s.title} | {s.question} | {s.unit} | {s.cost_class} ({dims}) | {s.source} |")
    return "\n".join(rows)


def params_markdown() -> str:
    """One line per method with its parameters (README)."""
    lines = []
    for s in specs():
        ps = ", ".join(f"`{p.describe()}`" for p in s.params) or "—"
        lines.append(f"- `{s.name}`: {ps}")
    lines.append("- every method: " + ", ".join(f"`{p.describe()}`" for p in COMMON))
    return "\n".join(lines)


def legend(spec: MethodSpec, class_name: str, params: dict | None = None) -> str:
    """One line for the dock: what the colours mean for this method and class."""
    if spec.is_one_sided(params or {}):
        shown = spec.negative if spec.red_is_negative else spec.positive
        return f"colour = {shown.format(cls=class_name)}; transparent = none"
    red, blue = (spec.negative, spec.positive) if spec.red_is_negative else (spec.positive, spec.negative)
    return f"red = {red.format(cls=class_name)}; blue = {blue.format(cls=class_name)}; transparent = 0"


def cost_input(model, shape: Sequence[int], roi=None, n_classes: int = 1) -> CostInput:
    """A :class:`CostInput` for ``model`` on a model-grid ``shape`` (``roi``: model-grid mask,
    or None: assume it lies in one window)."""
    import numpy as np

    shape = tuple(int(s) for s in shape)
    n_all = n_roi = 1
    win_vox = int(np.prod(shape))
    boxes: tuple = ()
    mask = None if roi is None else np.asarray(roi, bool)
    if model.needs_windows(shape):
        from ..windows import model_tiling

        tiling = model_tiling(model, shape)
        n_all = len(tiling.windows)
        win_vox = int(np.prod(model.patch_size))
        if mask is not None:
            touching = tiling.touching(torch_mask(mask))
            n_roi = len(touching)
            boxes = tuple(tuple((s.start, s.stop) for s in tiling.inner(tiling.windows[i])[0])
                          for i in touching)
    frac = float(np.mean(mask)) if mask is not None else 0.05
    return CostInput(shape, model.spatial_dims, max(1, n_roi), n_all, win_vox, frac, n_classes,
                     mask, boxes)


def torch_mask(roi):
    import numpy as np
    import torch

    return roi if isinstance(roi, torch.Tensor) else torch.as_tensor(np.asarray(roi, bool))


def parse_params(items, method: str | None = None) -> dict:
    """``["k=v", ...]`` -> dict. With ``method`` the values are typed and checked by that
    method's registry entry (the same parser the GUI uses); without, they stay text and are
    typed when a method takes them. The parameters every method takes (``seed``,
    ``batch_size``: ``seg-explain methods`` lists them) are typed here, bounded, and kept
    in the dict under their names; :func:`common_params` takes them out."""
    common_names = {p.name for p in COMMON}
    mine = [it for it in (items or []) if it.split("=", 1)[0].strip() in common_names]
    rest = [it for it in (items or []) if it not in mine]
    out = parse_text_params(rest, method)
    for name, value in parse_text_params(mine).items():
        spec = next(p for p in COMMON if p.name == name)
        v = spec.parse(value, method)
        if name == "batch_size" and v is not None:
            from ..checks import as_int, max_batch_size

            v = as_int("batch_size", v, 1, max_batch_size(), method)
        out[name] = v
    return out
