"""Every file a run writes is checked like --out, written only after every request was
validated, and never holds NaN (issues 20 §2-3 and 25, outputs)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import UNET_DEF, digest, make_unet, run_cli, write_bundle


@pytest.fixture
def case(tmp_path):
    """A small 2D bundle and two 2D images (.npy)."""
    b = write_bundle(tmp_path / "b2", {**UNET_DEF, "spatial_dims": 2}, make_unet(2),
                     ["bg", "a", "b", "c"], (32, 32))
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(2):
        p = tmp_path / f"case{i}.npy"
        np.save(p, rng.random((32, 28)).astype(np.float32))
        imgs.append(p)
    return b, imgs


@pytest.fixture
def nan_bundle(tmp_path, sample_bundle2d):
    """A copy of the shipped 2D sample bundle with one NaN in its first convolution's weights."""
    b = tmp_path / "nan_bundle"
    shutil.copytree(sample_bundle2d, b)
    sd = torch.load(b / "models" / "model.pt", weights_only=True)
    key = next(k for k, v in sd.items() if k.endswith("weight") and v.ndim == 4)
    sd[key].view(-1)[0] = float("nan")
    torch.save(sd, b / "models" / "model.pt")
    return b, key


def _sample_image(tmp_path) -> Path:
    """The shipped 2D sample image (108 x 90)."""
    import seg_explain

    src = Path(seg_explain.__file__).parent / "sample_data" / "brain2d" / "colin27_axial_t1.tif"
    dst = tmp_path / "t1.tif"
    shutil.copy(src, dst)
    return dst


def _agg(imgs, b, out, *extra):
    return ["agg2exp", *map(str, imgs), "--model", str(b), "--method", "gradient", "--out", str(out),
            "--quiet", *extra]


# ------------------------------------------------------------- validated before written --
def test_a_refused_table_request_leaves_the_old_output(case, tmp_path, capsys):
    b, imgs = case
    out = tmp_path / "attr.npy"
    np.save(out, np.arange(3.0))
    before = digest(out)
    rc, err = run_cli(["explain", str(imgs[0]), "--model", str(b), "--method", "gradient", "--target", "0",
                    "--out", str(out), "--table", str(tmp_path / "t.csv"), "--quiet"], capsys)
    assert rc == 2 and "makes no per-region table" in err and len(err.splitlines()) == 1
    assert digest(out) == before and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("where", ["configs/inference.json", "configs/new.csv", "models/model.pt"])
def test_table_and_out_never_inside_the_bundle(case, tmp_path, capsys, where):
    b, imgs = case
    victim = b / where
    before = digest(victim) if victim.exists() else None
    for flag in ("--out", "--table"):
        out = victim if flag == "--out" else tmp_path / "attr.npy"
        args = ["explain", str(imgs[0]), "--model", str(b), "--method", "pdcr", "--target", "0",
                "--out", str(out if flag == "--out" else tmp_path / "attr.npy"), "--quiet"]
        if flag == "--table":
            args += ["--table", str(victim)]
        rc, err = run_cli(args, capsys)
        assert rc == 2 and "lies in the model's files" in err and len(err.splitlines()) == 1, err
        assert (digest(victim) if victim.exists() else None) == before


def test_torchscript_sidecar_and_nnunet_plans_are_model_files(tmp_path):
    from seg_explain.files import OutputError, check_output

    ts = tmp_path / "m.ts"
    ts.write_bytes(b"x")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(OutputError, match="lies in the model's files"):
        check_output(tmp_path / "m.json", [], model=ts)
    check_output(tmp_path / "other.csv", [], model=ts)           # beside it is fine
    trainer = tmp_path / "Dataset1" / "nnUNetTrainer__nnUNetPlans__2d"
    (trainer / "fold_0").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        (trainer / f).write_text("{}")
    with pytest.raises(OutputError, match="lies in the model's files"):
        check_output(trainer / "plans.json", [], model=trainer / "fold_0")     # a fold's plans are a level up
    with pytest.raises(OutputError, match="lies in the model's files"):
        check_output(trainer / "fold_0" / "out", [], folder=True, names=["a.csv"], model=trainer)


# --------------------------------------------------------------------- NaN policy --
def test_nan_weights_give_an_error_not_a_nan_map(nan_bundle, tmp_path, capsys):
    b, key = nan_bundle
    img = _sample_image(tmp_path)
    out = tmp_path / "attr.tif"
    rc, err = run_cli(["explain", str(img), "--model", str(b), "--method", "gradient", "--target", "0",
                    "--out", str(out), "--quiet"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    h, w = 108, 90
    assert f"has {h * w} non-finite value(s) (NaN)" in err and f"first: {key}" in err and "weights" in err
    assert not out.exists()


def test_nan_weights_in_agg2exp_write_no_table(nan_bundle, tmp_path, capsys):
    b, _ = nan_bundle
    img = _sample_image(tmp_path)
    out = tmp_path / "agg"
    rc, err = run_cli(["agg2exp", str(img), "--model", str(b), "--method", "gradient", "--classes", "0,1",
                    "--out", str(out), "--quiet"], capsys)
    assert rc == 2 and "non-finite" in err and "none of the 1 images could be explained" in err
    assert not (out / "local_importance.csv").exists()
    fails = list(csv.DictReader(open(out / "failures.csv"))) if (out / "failures.csv").exists() else []
    assert not fails or "non-finite" in fails[0]["error"]


def _results(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").iterdir() if p.suffix == ".npz")


def _rewrite_npz(p: Path, change, digest: bool):
    from seg_explain.dataset import Agg2ExpJob

    with np.load(p, allow_pickle=False) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    change(arrays)
    if digest:          # an attacker who recomputes the digest too
        job = Agg2ExpJob(model="")
        row = {**arrays, "n_forward": meta["n_forward"], "n_backward": meta["n_backward"]}
        meta["digest"] = job.digest(row)
    with open(p, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)


@pytest.mark.parametrize("digest", [False, True])
def test_a_damaged_or_forged_result_is_recomputed(case, tmp_path, capsys, digest):
    b, imgs = case
    out = tmp_path / "agg"
    assert run_cli(_agg(imgs, b, out), capsys)[0] == 0
    first = (out / "local_importance.csv").read_text()
    victim = _results(out)[0]

    def plant(arrays):
        m = arrays["mass"]
        row = int(np.flatnonzero(arrays["present"])[0])
        m[row, 0] = np.nan if digest else m[row, 0] + 0.25    # NaN with a matching digest / a changed number

    _rewrite_npz(victim, plant, digest)
    rc, err = run_cli(_agg(imgs, b, out), capsys)
    assert rc == 0 and "its stored result is not trusted" in err
    assert "skipping 1 image already done" in err
    assert (out / "local_importance.csv").read_text() == first


# ------------------------------------------------------------------ what is deleted --
def test_overwrite_deletes_only_what_the_run_wrote(case, tmp_path, capsys):
    b, imgs = case
    out = tmp_path / "agg"
    assert run_cli(_agg(imgs, b, out), capsys)[0] == 0
    ours = {p.name for p in _results(out)}
    assert set(json.loads((out / "run.json").read_text())["written"]) == ours
    notes = out / "images" / "notes.txt"
    notes.write_text("my notes")
    lookalike = out / "images" / "case9-0123456789.npz"        # named like a result, not written by us
    lookalike.write_bytes(b"someone else's")
    outside = tmp_path / "keep.npz"
    outside.write_bytes(b"keep")
    run = json.loads((out / "run.json").read_text())
    run["written"] += ["../../keep.npz", "/etc/passwd"]          # a forged manifest names nothing outside
    (out / "run.json").write_text(json.dumps(run))
    assert run_cli(_agg(imgs, b, out, "--overwrite"), capsys)[0] == 0
    assert notes.read_text() == "my notes" and lookalike.read_bytes() == b"someone else's"
    assert outside.read_bytes() == b"keep"
    assert {p.name for p in _results(out)} == ours | {lookalike.name}


def test_a_rerun_removes_the_part_files_of_a_killed_run(case, tmp_path, capsys):
    b, imgs = case
    out = tmp_path / "agg"
    (out / "images").mkdir(parents=True)
    stale = [out / ".local_importance.csv.k1ll3d00.part.csv", out / ".heatmap.png.abcdefgh.part.png",
             out / "images" / ".case0-0123456789.npz.zz9_a1b2.part.npz"]
    for p in stale:
        p.write_bytes(b"half")
    keep = out / ".my-hidden-notes"
    keep.write_text("mine")
    assert run_cli(_agg(imgs, b, out), capsys)[0] == 0
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    single = tmp_path / "attr.npy"
    part = tmp_path / ".attr.npy.q1w2e3r4.part.npy"
    part.write_bytes(b"half")
    rc, _ = run_cli(["explain", str(imgs[0]), "--model", str(b), "--method", "gradient", "--target", "0",
                  "--out", str(single), "--quiet"], capsys)
    assert rc == 0 and single.exists() and not part.exists()


def test_full_disk_says_exactly_what_was_written(case, tmp_path, capsys, monkeypatch):
    b, imgs = case
    out = tmp_path / "agg"
    from seg_explain import plots

    def full(fig, path, dpi=150):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "save_figure", full)
    rc, err = run_cli(_agg(imgs, b, out), capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "nothing was changed" not in err
    assert "No space left on device" in err
    assert "written before it: local_importance.csv, global_importance.csv" in err
    assert "not written: heatmap.png, graph.png" in err
    assert (out / "local_importance.csv").exists() and not (out / "heatmap.png").exists()
