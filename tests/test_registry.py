"""The method registry: one entry per method that everything else reads."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_unet, wrap

from seg_explain import MethodError, explain
from seg_explain.explainers.registry import COMMON, Cost, cost_input, get_spec, methods_markdown, params_markdown, specs

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"smoothgrad": {"n_samples": 2}, "integrated_gradients": {"steps": 3},
         "kernel_shap": {"n_samples": 8, "grid": 2}, "pdcr": {"bank": "zero", "block_size": 4}}


@pytest.mark.parametrize("sd", [2, 3])
def test_every_method_runs_in_2d_and_3d_and_reports_what_it_declares(sd):
    model = wrap(make_unet(sd), sd)
    shape = (32, 32) if sd == 2 else (16, 16, 16)
    x = np.random.default_rng(sd).random(shape).astype(np.float32)
    roi = np.zeros(shape, bool)
    roi[(slice(4, 9),) * sd] = True
    for spec in specs():
        assert sd in spec.caps.dims and spec.title and spec.question and spec.unit and spec.source
        e = explain(model, x, spec.name, target=1, roi=roi, **SMALL.get(spec.name, {}))
        assert e.attribution.shape == shape and np.isfinite(e.attribution).all(), spec.name
        assert e.prediction is not None and e.prediction.shape == shape
        for f in spec.summary_fields:
            assert f in e.extras, (spec.name, f)
        assert e.spec is spec and e.summary()["unit"] == spec.unit


@pytest.mark.parametrize("method, params", [("gradient", {}), ("smoothgrad", {"n_samples": 5}),
                                            ("integrated_gradients", {"steps": 4}), ("seg_grad_cam", {}),
                                            ("kernel_shap", {"n_samples": 10, "grid": 2})])
def test_cost_model_counts_the_passes_a_run_makes(method, params):
    """The estimate the GUI shows before running equals the passes the run really makes
    (one window here; the clean prediction is the +1)."""
    model = wrap(make_unet(2), 2)
    x = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[5:12, 5:12] = True
    e = explain(model, x, method, target=1, roi=roi, **params)
    c = get_spec(method).estimate(cost_input(model, (32, 32), roi), params)
    assert isinstance(c, Cost)
    assert e.n_forward == c.forward + 1 and e.n_backward == c.backward, (e.n_forward, e.n_backward, c)


def test_windowed_cost_counts_roi_windows():
    model = wrap(make_unet(2), 2, patch=(16, 16))
    x = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    roi = np.zeros((40, 40), bool)
    roi[2:6, 2:6] = True            # one corner: only the windows holding it are run
    info = cost_input(model, (40, 40), roi)
    assert info.n_windows_all > info.n_windows >= 1
    e = explain(model, x, "smoothgrad", target=1, roi=roi, n_samples=3)
    c = get_spec("smoothgrad").estimate(info, {"n_samples": 3})
    assert e.n_backward == c.backward == 3 * info.n_windows


def test_one_parser_for_api_cli_and_gui_text():
    spec = get_spec("smoothgrad")
    assert spec.param("n_samples").parse("12") == 12 and spec.param("noise_level").parse("0.05") == 0.05
    for bad in ("7.5", "many", "0", "inf"):
        with pytest.raises(MethodError, match="smoothgrad: n_samples"):
            spec.param("n_samples").parse(bad, "smoothgrad")
    ks = get_spec("kernel_shap")
    assert ks.param("grid").parse("4,6,6") == [4, 6, 6] and ks.param("grid").parse("auto") is None
    assert ks.param("baseline").parse("0.5") == 0.5 and ks.param("baseline").parse("blur:2") == "blur:2"
    with pytest.raises(MethodError, match="kernel_shap: features must be one of cubes, semantic"):
        ks.param("features").parse("spheres", "kernel_shap")
    from seg_explain.cli import parse_params

    assert parse_params(["n_samples=3", "noise_level=0.2"], "smoothgrad") == {"n_samples": 3, "noise_level": 0.2}
    with pytest.raises(MethodError, match="smoothgrad has no parameter 'steps'"):
        parse_params(["steps=3"], "smoothgrad")
    assert COMMON[0].name == "seed" and COMMON[1].parse("auto") is None


def test_readme_method_table_is_the_registry():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- methods-table:start -->\n(.*?)\n<!-- methods-table:end -->", text, re.S)
    assert block, "README has no generated method table"
    assert block.group(1).strip() == (methods_markdown() + "\n\n" + params_markdown()).strip()


EXAMPLE = ROOT / "docs" / "examples" / "grad_x_input.py"


def test_architecture_worked_example_adds_a_method(tmp_path):
    """The worked example (docs/examples/grad_x_input.py, shown whole in docs/ARCHITECTURE.md) run
    as the guide says: a module of the explainers package, then the README table regenerated
    with ``seg-explain methods --markdown --write``."""
    import importlib.util
    import shutil
    import sys

    from seg_explain.cli import main
    from seg_explain.explainers import registry

    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    shown = re.search(r"```python\n(# Copy to src/seg_explain/explainers/grad_x_input.py.*?)```", doc, re.S)
    assert shown and shown.group(1) == EXAMPLE.read_text(encoding="utf-8")
    name = "seg_explain.explainers.grad_x_input"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
        assert "grad_x_input" in registry.methods()
        model = wrap(make_unet(2), 2)
        x = np.random.default_rng(0).random((32, 32)).astype(np.float32)
        e = explain(model, x, "grad_x_input", target=0)
        g = explain(model, x, "gradient", target=0)
        np.testing.assert_allclose(e.attribution, x * g.attribution, rtol=1e-5, atol=1e-6)
        readme = tmp_path / "README.md"
        shutil.copy(ROOT / "README.md", readme)
        assert main(["methods", "--markdown", "--write", str(readme)]) == 0
        text = readme.read_text(encoding="utf-8")
        assert "| `grad_x_input` |" in text and text.count("<!-- methods-table:start -->") == 1
        before = (ROOT / "README.md").read_text(encoding="utf-8")
        outside = re.compile(r"<!-- methods-table:start -->.*<!-- methods-table:end -->", re.S)
        assert outside.sub("", text) == outside.sub("", before)       # nothing else changed
    finally:
        registry.REGISTRY.pop("grad_x_input", None)
        sys.modules.pop(name, None)


def test_methods_write_refuses_a_file_without_markers(tmp_path, capsys):
    from seg_explain.cli import main

    other = tmp_path / "notes.md"
    other.write_text("# notes\n")
    assert main(["methods", "--markdown", "--write", str(other)]) == 2
    assert "has no <!-- methods-table:start -->" in capsys.readouterr().err
    assert other.read_text() == "# notes\n"


OWNERS = {"gradient": "gradients.py", "smoothgrad": "gradients.py", "integrated_gradients": "gradients.py",
          "seg_grad_cam": "cams.py", "seg_hires_grad_cam": "cams.py", "pdcr": "pdcr.py",
          "kernel_shap": "kernel_shap.py"}


def test_no_method_name_is_compared_outside_its_module():
    src = ROOT / "src" / "seg_explain"
    for f in src.rglob("*.py"):
        if f.name == "registry.py":
            continue
        text = f.read_text(encoding="utf-8")
        for s in specs():
            if f.name == OWNERS.get(s.name, f"{s.name}.py") or s.name == "smoothgrad":
                continue   # (smoothgrad is the documented default of agg2exp, a value, never compared)
            assert not re.findall(rf"[\"']{s.name}[\"']", text), f"{f.relative_to(ROOT)} names {s.name!r}"


def test_methods_command_prints_the_registry(capsys):
    from seg_explain.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for s in specs():
        assert s.title in out and s.unit in out
        for p in s.params:
            assert f"--param {p.name}=" in out
    assert main(["methods", "--markdown"]) == 0
    assert methods_markdown() in capsys.readouterr().out


def test_legend_says_what_each_colour_means_and_one_sided_maps_have_one_colour():
    from seg_explain.explainers.registry import legend

    pdcr = get_spec("pdcr")
    # PdCR against the model's own prediction: M0 = 100 points, ATE <= 0, one colour (supporting blocks)
    assert pdcr.is_one_sided({"reference": None})
    assert legend(pdcr, "frontal_L", {"reference": None}).startswith(
        "colour = blocks whose content supports frontal_L")
    # against a reference both signs are measurable: red (ATE < 0) supports, blue raised the Dice
    two = legend(pdcr, "frontal_L", {"reference": "<ndarray>"})
    assert two.startswith("red = blocks whose content supports frontal_L") and "blue = blocks whose replacement" in two
    assert legend(get_spec("gradient"), "a").startswith("red = ") and not get_spec("gradient").is_one_sided({})
    assert get_spec("seg_grad_cam").is_one_sided({"relu": True}) and not get_spec("seg_grad_cam").is_one_sided(
        {"relu": False})
