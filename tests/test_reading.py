"""The viewer-agnostic reading of results (seg_explain.frontend.reading): no napari, no Qt."""
from __future__ import annotations

import sys

import numpy as np

from seg_explain.explainers.registry import specs
from seg_explain.frontend import reading


def test_frontend_imports_no_viewer():
    import subprocess

    code = ("import sys, seg_explain.frontend.reading as r; from seg_explain.explainers.registry import specs; "
            "[r.legend(s, 'x') for s in specs()]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'PyQt5', 'PyQt6', 'vispy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_legend_colour_words_match_the_colormaps():
    """The words the legend uses are the colours the plugin's colormap draws at full colour."""
    from seg_explain._napari.layers import diverging_colors, one_sided_colors

    signed, _ = diverging_colors()
    warm_lo, warm_hi, cool_hi = signed[len(signed) // 2 + 1, :3], signed[-1, :3], signed[0, :3]
    assert warm_lo[0] > 0.8 and warm_lo[1] < 0.3          # red near 0 ...
    assert warm_hi[0] > 0.9 and warm_hi[1] > 0.8           # ... yellow at full colour: "red to yellow"
    assert cool_hi[2] > 0.9 and cool_hi[1] > 0.8           # cyan at full colour: "blue to cyan"
    one, _ = one_sided_colors()
    assert one[-1, 0] > 0.9 and one[-1, 1] > 0.8
    for spec in specs():
        text = reading.legend(spec, "parietal_L", {})
        assert text.startswith("Red to yellow: ") and "parietal_L" in text, spec.name
        assert text.endswith(f"Values: {reading.shown_unit(spec)}.") and spec.unit.split(" (")[0] in text
        assert ("blue to cyan" in text) != spec.is_one_sided({}), spec.name
        for jargon in ("ATE", "M0", "tau", "φ", "class 3"):
            assert jargon not in text.split("Values:")[0], (spec.name, jargon)


def test_scale_has_three_values_and_the_unit():
    assert reading.scale_ticks(-0.5, 0.5) == [-0.5, 0.0, 0.5]
    assert reading.scale_text(-26.0, 0.0, "Dice points (0-100)") == "scale: -26  |  -13  |  0  (Dice points)"
    assert len(reading.scale_ticks(0, 1, 5)) == 5 and np.allclose(reading.scale_ticks(0, 1, 5)[2], 0.5)


def test_short_names_keep_the_end():
    assert reading.short_name("model.1.submodule.2.conv") == "…2.conv"
    assert reading.short_name("conv") == "conv"
