"""How a result reads: plain words first, the exact quantity second (no viewer imports).

- :func:`legend` the legend of a result: a sentence a radiologist understands (colour words
  that match the plugin's colormaps), then the exact unit;
- :func:`display_defaults` per-method display defaults, chosen by looking at the sample
  results (voxel gradient maps smoothed, masked to the body, top 20 %; CAMs masked to the
  body; block maps as they are), applied to the display only;
- :func:`scale_ticks` / :func:`scale_text` at least three labelled values for a colour scale;
- :func:`short_name` a module path or file path shortened for a list, the full one for its
  tooltip.
"""
from __future__ import annotations

from dataclasses import dataclass

# the words for the plugin's colormaps (seg_explain._napari.layers: warm = dark red -> yellow,
# cool = blue -> cyan, transparent at 0)
WARM = "red to yellow"
COOL = "blue to cyan"

# what each kind of map measures, in words; the registry's unit follows in brackets
PLAIN = {
    "voxel": ("{warm}: brightening these voxels would make the model more sure this is {cls}; "
              "{cool}: it would make the model less sure"),
    "heatmap": ("{warm}: the network's features here support {cls}; "
                "{cool}: they speak against it"),
    "block": ("{warm}: replacing this block with tissue from other scans lowers how well {cls} is "
              "segmented (the model relies on it); {cool}: replacing it improves the segmentation"),
}
PLAIN_ONE_SIDED = {
    "voxel": "{warm}: brightening these voxels would make the model more sure this is {cls}",
    "heatmap": "{warm}: the network's features here support {cls} (evidence against is not shown)",
    "block": ("{warm}: replacing this block with tissue from other scans lowers how well {cls} is "
              "segmented: the model relies on it (stronger colour = more Dice lost)"),
}
SHAP = ("{warm}: this part of the image adds to the model's score for {cls}; "
        "{cool}: it takes away from it")


@dataclass(frozen=True)
class DisplayDefaults:
    """What a result shows first (the raw values are kept and one click away)."""

    smooth: float = 0.0               # Gaussian σ in voxels (in-plane for volumes)
    top_percent: float = 100.0        # strongest share of voxels shown
    body: bool = False                # hide evidence outside the body / head

    @property
    def raw(self) -> bool:
        return self == RAW


RAW = DisplayDefaults()
DISPLAY = {
    # voxel maps are speckle that spills outside the head: smoothed, masked, top 20 %
    "voxel": DisplayDefaults(smooth=1.5, top_percent=20.0, body=True),
    # CAMs are smooth already; the upsampled layer grid bleeds outside the head
    "heatmap": DisplayDefaults(smooth=0.0, top_percent=100.0, body=True),
    # block maps: every block's value as measured
    "block": RAW,
}


def _shapley_like(spec) -> bool:
    """A region map whose positive values add to the score (KernelSHAP's cells), unlike
    PdCR's blocks (support = Dice lost, ``red_is_negative``). From the registry, no names."""
    return spec.caps.map_kind == "block" and not spec.red_is_negative


def display_defaults(spec) -> DisplayDefaults:
    """The display a result of this method opens with (registry ``caps.map_kind``)."""
    if _shapley_like(spec):
        return DisplayDefaults(body=True)     # the cells cover the background too
    return DISPLAY.get(spec.caps.map_kind, RAW)


def _plain(spec, cls: str, one_sided: bool) -> str:
    kind = spec.caps.map_kind
    if _shapley_like(spec):
        text = SHAP
    else:
        text = (PLAIN_ONE_SIDED if one_sided else PLAIN).get(kind, PLAIN["voxel"])
    return text.format(warm=WARM, cool=COOL, cls=cls)


def shown_sign(spec) -> float:
    """The sign a viewer shows a map with, so that positive always means "supports": -1 for
    maps whose supporting evidence is negative (PdCR's ATE < 0 = Dice lost), else +1."""
    return -1.0 if spec.red_is_negative else 1.0


def shown_unit(spec) -> str:
    """The unit of the shown values (:func:`shown_sign` applied), the exact quantity named."""
    if spec.red_is_negative:
        return f"{spec.unit.split(' (')[0]} lost when replaced (= −ATE; the saved map keeps the ATE)"
    return spec.unit


def legend(spec, class_name: str, params: dict | None = None) -> str:
    """``"<plain sentence>. Values: <exact unit>."`` for a result of ``spec`` on ``class_name``."""
    one = spec.is_one_sided(params or {})
    plain = _plain(spec, class_name, one)
    plain = plain[0].upper() + plain[1:]
    return f"{plain}. Values: {shown_unit(spec)}."


def legend_short(spec, class_name: str, params: dict | None = None) -> str:
    """The canvas version: the colours in a few words."""
    if spec.is_one_sided(params or {}):
        return f"{WARM}: supports {class_name}"
    return f"{WARM}: supports {class_name} · {COOL}: opposes"


def scale_ticks(lo: float, hi: float, n: int = 3) -> list[float]:
    """``n`` (>= 3) evenly spaced values from ``lo`` to ``hi`` (0 included for symmetric limits)."""
    n = max(3, int(n))
    if hi == lo:
        return [lo] * n
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def scale_text(lo: float, hi: float, unit: str = "") -> str:
    """A colour scale in words: ``"scale: -0.5 | 0 | 0.5 (unit)"`` (at least three values)."""
    vals = "  |  ".join(_num(v) for v in scale_ticks(lo, hi))
    u = short_unit(unit)
    return f"scale: {vals}" + (f"  ({u})" if u else "")


def short_unit(unit: str) -> str:
    """A unit without its bracketed explanation (canvas text)."""
    return unit.split(" (")[0] if unit else ""


def _num(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:+.2g}" if abs(v) < 1e4 else f"{v:+.3g}"


def short_name(path: str, keep: int = 2, sep: str = ".") -> str:
    """The last ``keep`` parts of a dotted module path (or a file path with ``sep='/'``)."""
    parts = [p for p in str(path).split(sep) if p]
    if len(parts) <= keep:
        return str(path)
    return "…" + sep.join(parts[-keep:])


# candidate colours for a new RoI: saturated, unlike anatomy greys and the attribution ramps
ROI_PALETTE = ((1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.55, 0.0), (0.3, 1.0, 0.0),
               (0.0, 0.4, 1.0), (1.0, 1.0, 0.0), (0.6, 0.2, 1.0))


def distinct_colour(used, palette=ROI_PALETTE) -> tuple[float, float, float]:
    """The palette colour farthest (RGB distance to the nearest) from every colour in ``used``
    (e.g. the colours drawn by the visible label layers), so strokes in a new RoI show."""
    import numpy as np

    u = np.asarray([c[:3] for c in used], float).reshape(-1, 3)
    if not len(u):
        return tuple(palette[0])
    pal = np.asarray(palette, float)
    d = np.sqrt(((pal[:, None, :] - u[None, :, :]) ** 2).sum(-1)).min(1)
    return tuple(float(v) for v in pal[int(np.argmax(d))])


def shape_mismatch(name: str, shape, image_shape) -> str:
    """Why a label layer cannot be the RoI of this image (a disabled list entry's tooltip)."""
    fmt = lambda s: " × ".join(str(int(v)) for v in s)  # noqa: E731
    return (f"'{name}' is {fmt(shape)} but the image is {fmt(image_shape)}: a RoI must be painted on the "
            "image's own grid (use New RoI)")
