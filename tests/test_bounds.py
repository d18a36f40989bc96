"""Every numeric CLI argument has an upper bound from the machine or the method, refused in
one line before any work; the parameters `seg-explain methods` lists for every method are
accepted (issue 25)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from seg_explain.cli import main


@pytest.fixture
def no_model(monkeypatch):
    """Bounds are checked before anything is loaded or computed."""
    from seg_explain import models

    def never(*_a, **_k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", never)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cmd", ["agg2exp", "evaluate"])
@pytest.mark.parametrize("extra, match", [
    (["--workers", "10000"], "--workers must be a whole number in [1, {cores}]"),
    (["--threads", "100000"], "--threads must be a whole number in [1, {cores}]"),
])
def test_workers_and_threads_are_bounded_by_the_machine(case, tmp_path, capsys, no_model, cmd, extra, match):
    b, img = case
    rc, err = run_cli([cmd, str(img), "--model", str(b), "--method", "gradient", "--out", str(tmp_path / "o"),
                    "--quiet", *extra], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and match.format(cores=_cores()) in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, match", [
    (["--n-sensitivity", "1000000000"], "n_sensitivity must be a whole number <= 1000, got '1000000000'"),
    (["--n-faithfulness", "1e9"], "n_faithfulness must be a whole number <= 10000, got '1e9'"),
    (["--noise", "1e300"], "noise must be a finite number in [0.0, 10.0]"),
    (["--subset", "1e15"], "--subset must be a fraction in (0, 1) or a whole number of voxels <="),
])
def test_metric_settings_are_bounded(case, tmp_path, capsys, no_model, extra, match):
    b, img = case
    rc, err = run_cli(["evaluate", str(img), "--model", str(b), "--method", "gradient", "--out",
                    str(tmp_path / "o"), "--quiet", *extra], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and match in err, err


def test_batch_size_is_bounded_by_memory(case, tmp_path, capsys, no_model):
    from seg_explain.checks import max_batch_size, memory_bytes

    assert max_batch_size() == memory_bytes() // (16 * 1024 * 1024)
    b, img = case
    rc, err = run_cli(["explain", str(img), "--model", str(b), "--method", "gradient", "--out",
                    str(tmp_path / "a.npy"), "--param", "batch_size=1000000000"], capsys)
    assert rc == 2 and f"batch_size must be a whole number in [1, {max_batch_size()}]" in err


def test_common_params_are_accepted_everywhere(case, tmp_path, capsys):
    """seed and batch_size, listed by `seg-explain methods` for every method."""
    b, img = case
    common = ["--method", "smoothgrad", "--param", "n_samples=3"]
    a1, a2 = tmp_path / "p.npy", tmp_path / "s.npy"
    assert main(["explain", str(img), "--model", str(b), *common, "--target", "0", "--out", str(a1), "--quiet",
                 "--param", "seed=3", "--param", "batch_size=2"]) == 0
    assert main(["explain", str(img), "--model", str(b), *common, "--target", "0", "--out", str(a2), "--quiet",
                 "--seed", "3", "--param", "batch_size=2"]) == 0
    np.testing.assert_array_equal(np.load(a1), np.load(a2))        # --param seed=3 is --seed 3
    a3 = tmp_path / "other.npy"
    assert main(["explain", str(img), "--model", str(b), *common, "--target", "0", "--out", str(a3), "--quiet",
                 "--seed", "4", "--param", "batch_size=2"]) == 0
    assert not np.allclose(np.load(a1), np.load(a3))                # and the seed does reach the method
    rc, err = run_cli(["explain", str(img), "--model", str(b), *common, "--target", "0", "--out", str(a1), "--quiet",
                    "--param", "seed=3", "--seed", "4"], capsys)
    assert rc == 2 and "--seed 4 and --param seed=3 differ" in err
    assert main(["agg2exp", str(img), "--model", str(b), "--method", "gradient", "--out", str(tmp_path / "g"),
                 "--quiet", "--param", "seed=3", "--param", "batch_size=4"]) == 0
    import json

    settings = json.loads((tmp_path / "g" / "run.json").read_text())["settings"]
    assert settings["seed"] == 3 and settings["batch_size"] == 4
    assert main(["evaluate", str(img), "--model", str(b), "--method", "gradient", "--out", str(tmp_path / "e"),
                 "--quiet", "--n-faithfulness", "2", "--n-sensitivity", "0", "--param", "seed=3",
                 "--param", "batch_size=4"]) == 0
    plan = json.loads((tmp_path / "e" / "run.json").read_text())["settings"]["plan"]
    assert plan["seed"] == 3 and plan["batch_size"] == 4


def test_a_non_ascii_digit_target_is_one_line(case, tmp_path, capsys):
    b, img = case
    rc, err = run_cli(["explain", str(img), "--model", str(b), "--method", "gradient", "--target", "²",
                    "--out", str(tmp_path / "a.npy")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "Unknown target class '²'" in err
    assert "invalid literal" not in err


def test_install_script_waits_for_the_package_manager_lock():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "scripts" / "install.sh").read_text()
    calls = [line for line in text.splitlines() if "apt-get" in line and not line.lstrip().startswith("#")
             and "command -v" not in line]
    assert calls and all("DPkg::Lock::Timeout" in line or "${APT[@]}" in line for line in calls), calls
