"""Data-set runs (seg_explain.dataset): inputs (paths, folders, globs, CSV manifests), seeds
per image, serial vs a real local Dask cluster vs a real external ``dask scheduler`` + two
``dask worker`` processes (identical tables), resuming after a real Ctrl-C, a real killed
worker, corrupted images recorded and skipped."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import UNET_DEF, make_unet, wait_until, wrap, write_bundle

from seg_explain.cli import main
from seg_explain.dataset import ImageRecord, collect_images, file_key, image_seed, read_manifest, records_from
from seg_explain.errors import InputMismatchError

CLASSES = ["background", "a", "b", "c"]
TABLES = ("local_importance.csv", "global_importance.csv", "outliers.csv")
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def bundle2d(root: Path) -> Path:
    return write_bundle(root, {**UNET_DEF, "spatial_dims": 2}, make_unet(2), CLASSES, (32, 32))


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"case{i:02d}.npy"
        np.save(p, (rng.random((size, size)) * 100).astype(np.float32))
        np.save(folder / f"gt{i:02d}.npy", rng.integers(0, 4, (size, size)).astype(np.uint8))
        out.append(str(p))
    return out


def read(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def same_tables(a: Path, b: Path, names=TABLES) -> None:
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def finished(out: Path) -> list[Path]:
    """Finished-image files (not the hidden temporary file of a write in progress)."""
    return sorted(p for p in (out / "images").glob("*.npz") if not p.name.startswith("."))


def results(out: Path) -> dict[str, tuple[int, int]]:
    """Finished-image files -> (inode, mtime_ns), to prove they are not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished(out)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 2D bundle, six 32×32 images with ground truth, and a corrupted image."""
    root = tmp_path_factory.mktemp("data")
    model = bundle2d(root / "bundle")
    imgs = write_images(root / "imgs", 6)
    bad = root / "imgs" / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    return {"root": root, "model": str(model), "images": imgs, "bad": str(bad)}


def cli_args(data, out, *extra, quiet=True):
    imgs = [*data["images"][:3], data["bad"], *data["images"][3:]]
    return ["agg2exp", *imgs, "--model", data["model"], "--method", "smoothgrad", "--param", "n_samples=4",
            "--out", str(out), "--threads", "1", *(["--quiet"] if quiet else []), *extra]


# ------------------------------------------------------------------------- inputs --
def test_inputs_paths_folders_globs_manifest(tmp_path):
    a = write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 1)
    (tmp_path / "a" / "notes.txt").write_text("x")
    # a folder: its image files, sorted (not the text file)
    recs, rois, mans = collect_images([tmp_path / "a"])
    assert [r.name for r in recs] == ["case00", "case01", "gt00", "gt01"] and not rois and not mans
    # a glob; colliding stems get their folder
    recs, _, _ = collect_images([str(tmp_path / "*" / "case0*.npy")])
    assert [r.name for r in recs] == ["a/case00", "case01", "b/case00"]
    assert all(os.path.isabs(r.image) for r in recs)
    with pytest.raises(InputMismatchError, match="no image file matches"):
        collect_images([str(tmp_path / "*.nii.gz")])
    # a manifest: relative paths, names, ground truth, per-image RoIs; unknown columns ignored
    (tmp_path / "m.csv").write_text("image,name,label,roi_lesion,age\n"
                                    "a/case00.npy,p1,a/gt00.npy,a/gt01.npy,50\n"
                                    "a/case01.npy,,,,61\n")
    recs, rois, mans = collect_images([tmp_path / "m.csv"], extra_rois={"box": str(tmp_path / "a/gt00.npy")})
    assert [r.name for r in recs] == ["p1", "case01"] and rois == ["box", "lesion"]
    assert recs[0].ground_truth == str(tmp_path / "a" / "gt00.npy") and recs[1].ground_truth is None
    assert recs[0].rois == {"box": str(tmp_path / "a/gt00.npy"), "lesion": str(tmp_path / "a" / "gt01.npy")}
    assert recs[1].rois["lesion"] is None and mans == [str(tmp_path / "m.csv")]
    # a ground-truth template fills rows without one
    recs, _, _ = collect_images([a[1]], ground_truth=str(tmp_path / "a" / "{stem}_gt.npy"))
    assert recs[0].ground_truth == str(tmp_path / "a" / "case01_gt.npy")
    # bad manifests and duplicates are input errors
    (tmp_path / "bad.csv").write_text("file_name,x\nfoo,1\n")
    with pytest.raises(InputMismatchError, match="no 'image' column"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(InputMismatchError, match="two images are named"):
        collect_images([a[0], a[0]])


def test_seeds_and_keys_depend_on_the_image_only():
    assert image_seed(0, "case1") == image_seed(0, "case1") != image_seed(0, "case2")
    assert image_seed(1, "case1") != image_seed(0, "case1")
    assert 0 <= image_seed(7, "x") < 2 ** 31 - 1
    k = file_key("../a b/c:d")
    assert "/" not in k and ":" not in k and k != file_key("../a b/c;d")
    recs, names = records_from([np.zeros((4, 4)), np.ones((4, 4))], extra_rois={"m": np.ones((4, 4))})
    assert [r.name for r in recs] == ["image_0", "image_1"] and names == ["m"]
    assert all(a is b for a, b in zip(records_from(recs)[0], recs))


def test_manifest_run_and_resume_in_process(data, tmp_path, capsys):
    """A CSV manifest with ground truth and a per-image RoI; a second run skips everything and
    writes the same tables; --overwrite recomputes; other settings are refused."""
    imgs = data["images"]
    lines = ["image,ground_truth,roi_lesion"] + [
        f"{p},{p.replace('case', 'gt')},{imgs[0].replace('case', 'gt') if i % 2 else ''}" for i, p in enumerate(imgs)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["agg2exp", str(tmp_path / "m.csv"), "--model", data["model"], "--method", "gradient", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[agg2exp]" in err and "6 of 6 image(s) to compute" in err
    rows = read(out / "local_importance.csv")
    assert {r["region"] for r in rows} == {*CLASSES, "lesion"}
    lesion = [r for r in rows if r["region"] == "lesion" and r["mass"] != ""]
    assert {r["image"] for r in lesion} == {"case01", "case03", "case05"}
    assert all(0 <= float(r["dice"]) <= 1 for r in read(out / "outliers.csv"))
    before = results(out)
    tables = {n: (out / n).read_bytes() for n in TABLES}
    assert main(args) == 0
    assert "skipping 6 images already done" in capsys.readouterr().err
    assert results(out) == before and {n: (out / n).read_bytes() for n in TABLES} == tables
    # other settings on the same folder: refused before computing
    assert main([*args[:5], "smoothgrad", *args[6:]]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert "skipping" not in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in TABLES} == tables
    assert all(results(out)[k][1] != before[k][1] or results(out)[k][0] != before[k][0] for k in before)


# ------------------------------------------------------------------ Dask: identical --
@pytest.fixture(scope="module")
def serial(data, tmp_path_factory):
    """The serial run (in this process, one torch thread) the Dask runs must equal."""
    out = tmp_path_factory.mktemp("serial") / "out"
    assert main(cli_args(data, out)) == 3                         # one corrupted image: recorded, exit 3
    return out


@pytest.mark.slow
def test_serial_and_local_cluster_give_identical_tables(data, serial, tmp_path, capsys):
    dask2 = tmp_path / "dask2"
    capsys.readouterr()
    assert main(cli_args(data, dask2, "--workers", "2", quiet=False)) == 3
    same_tables(serial, dask2)
    for out in (serial, dask2):
        fails = read(out / "failures.csv")
        assert [f["image"] for f in fails] == ["broken"] and fails[0]["error"]
        assert len(finished(out)) == 6
        assert len(list((out / "images").glob("*.failed.json"))) == 1
    err = capsys.readouterr().err
    assert "local Dask cluster: 2 worker process(es), 1 torch thread(s) each" in err
    assert "failed: broken" in err


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """A real ``dask scheduler`` and two ``dask worker`` processes on localhost."""
    distributed = pytest.importorskip("distributed")
    root = tmp_path_factory.mktemp("cluster")
    sf = root / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--scheduler-file", str(sf), "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard"], env=ENV, cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_until(lambda: sf.exists() and sf.stat().st_size > 0, "the scheduler file")
        for i in range(2):
            procs.append(subprocess.Popen([*dask, "worker", "--scheduler-file", str(sf), "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
                                           "--name", f"w{i}"], env=ENV, cwd=root,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(sf.read_text())["address"]
        client = distributed.Client(address, timeout=30)
        client.wait_for_workers(2, timeout=60)
        yield address, client
        client.close()
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(10)


def test_external_scheduler_gives_identical_tables(data, serial, external, tmp_path, capsys):
    from seg_explain.dataset import executors

    address, client = external
    ext = tmp_path / "ext"
    loads = client.run(lambda: executors.MODEL_LOADS["count"])
    assert main(cli_args(data, ext, "--scheduler", address, quiet=False)) == 3
    same_tables(serial, ext)
    assert "on the Dask cluster at tcp://127.0.0.1" in capsys.readouterr().err
    # each worker loaded the model once (not per image), whatever it computed
    after = client.run(lambda: executors.MODEL_LOADS["count"])
    assert all(after[w] - loads[w] <= 1 for w in after) and sum(after.values()) > sum(loads.values())


def test_evaluate_on_a_cluster_and_resumed(data, external, tmp_path, capsys):
    address, _client = external
    args = ["evaluate", *data["images"][:2], "--model", data["model"], "--method", "gradient",
            "--method", "smoothgrad:n_samples=2", "--n-faithfulness", "8", "--n-sensitivity", "1",
            "--classes", "0,1", "--threads", "1", "--quiet"]
    ser, ext = tmp_path / "ser", tmp_path / "ext"
    assert main([*args, "--out", str(ser)]) == 0
    assert main([*args, "--out", str(ext), "--scheduler", address]) == 0

    def rows(out):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read(out / "metrics.csv")]

    assert rows(ser) == rows(ext) and len(rows(ser)) == 2 * 2 * 2
    table = (ser / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", str(ser)]) == 0                   # resumed: nothing recomputed
    assert "skipping 2 images already done" in capsys.readouterr().err
    assert (ser / "metrics.csv").read_bytes() == table


def test_python_api_on_a_cluster_equals_serial(data, external, tmp_path):
    from seg_explain import load_model
    from seg_explain.dataset import agg2exp, evaluate

    _address, client = external
    imgs = data["images"][:4]
    model = load_model(data["model"], device="cpu")
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)       # the workers use one thread: same floating-point sums
    try:
        ser = agg2exp(model, imgs, method="smoothgrad", n_samples=4)
        dist = agg2exp(data["model"], imgs, method="smoothgrad", n_samples=4, client=client, threads=1)
        ev_ser = evaluate(model, imgs[:2], ["gradient", "smoothgrad:n_samples=2"], n_faithfulness=8,
                          n_sensitivity=1, classes=[0, 1])
        ev_dist = evaluate(data["model"], imgs[:2], ["gradient", "smoothgrad:n_samples=2"], n_faithfulness=8,
                           n_sensitivity=1, classes=[0, 1], client=client, threads=1, out=tmp_path / "ev")
    finally:
        torch.set_num_threads(n)
    assert dist.image_names == ser.image_names
    for k in ("local", "local_pos", "local_neg", "local_per_voxel", "volumes", "present"):
        np.testing.assert_array_equal(getattr(dist, k), getattr(ser, k))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ev_ser.rows]
    assert json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in ev_dist.rows]) == json.dumps(strip)
    assert len(list((tmp_path / "ev" / "images").glob("*.json"))) == 2
    # a model built in Python has no file a worker could load
    with pytest.raises(InputMismatchError, match="needs the model as a file"):
        agg2exp(wrap(make_unet(2), 2), imgs, method="gradient", client=client)
    # a failing image with on_error="raise" stops the run; "skip" lists it
    with pytest.raises(InputMismatchError, match="broken"):
        agg2exp(data["model"], [imgs[0], data["bad"]], method="gradient", client=client)
    res = agg2exp(data["model"], [imgs[0], data["bad"]], method="gradient", client=client, on_error="skip")
    assert res.image_names == ["case00"] and [n for n, _ in res.skipped] == ["broken"]


def test_events_for_a_gui_partial_result_cancel_and_resume(data, tmp_path):
    """What the napari dock uses: events from a worker thread, the partial result, a
    CancelToken that stops the run with the finished images kept, then a resumed run."""
    import threading

    from seg_explain import load_model
    from seg_explain.dataset import ImageProgress, agg2exp, prepare_run
    from seg_explain.errors import Cancelled
    from seg_explain.jobs import CancelToken

    imgs, out = data["images"], tmp_path / "o"
    token, seen, events, box = CancelToken(), [], [], {}

    def worker():               # as a GUI worker thread would
        with prepare_run("agg2exp", data["model"], imgs, method="gradient", out=out) as run:
            try:
                for ev in run.events(token, on_image=lambda name, exps, labels: seen.append((name, labels.shape))):
                    events.append(ev)
                    if ev.state == "done" and ev.n_done == 2:
                        box["partial"] = run.result()
                        token.cancel()
            except Cancelled:
                box["cancelled"] = True

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert box.get("cancelled") and box["partial"].image_names == ["case00", "case01"]
    assert seen == [("case00", (32, 32)), ("case01", (32, 32))]
    assert all(isinstance(e, ImageProgress) for e in events) and events[-1].n_total == 6
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].total == 6000
    with prepare_run("agg2exp", data["model"], imgs, method="gradient", out=out) as run:
        assert run.resumed == ["case00", "case01"] and len(run.todo) == 4
        res = run.run()
    ref = agg2exp(load_model(data["model"], device="cpu"), imgs, method="gradient")
    np.testing.assert_array_equal(res.local, ref.local)


# -------------------------------------------------------- interrupted / killed runs --
# A run is stopped at an exact point, not after a sleep: a ``sitecustomize`` module on the
# subprocess's PYTHONPATH (imported by every Python process the run starts, Dask workers
# included) wraps Agg2ExpJob.compute so that once the named image has done its first step,
# the process computing it sends itself the named signal (a real Ctrl-C / SIGKILL) and
# records its pid in a marker file (once: the image's retry then runs normally).
STOP_SHIM = """
import os, signal

_spec = os.environ.get("SEG_TEST_STOP")          # "<image name>:<signal>:<marker file>"
if _spec:
    from seg_explain.dataset import kinds

    _name, _sig, _marker = _spec.split(":", 2)
    _compute = kinds.Agg2ExpJob.compute

    def _compute_then_stop(self, model, rec, *a, **k):
        gen = _compute(self, model, rec, *a, **k)
        step = next(gen)                         # the image is half-way through its computation
        if rec.name == _name:
            try:
                fd = os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), getattr(signal, _sig))
        yield step
        return (yield from gen)

    kinds.Agg2ExpJob.compute = _compute_then_stop
"""


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory):
    """The six readable images, the CLI arguments of their run and its uninterrupted serial tables."""
    root = tmp_path_factory.mktemp("clean")
    args = ["agg2exp", *data["images"], "--model", data["model"], "--method", "smoothgrad", "--param",
            "n_samples=4", "--threads", "1", "--quiet"]
    assert main([*args, "--out", str(root / "ref")]) == 0
    return data["images"], args, root / "ref"


def start_cli(args, stop: str, marker: Path):
    """The CLI in a subprocess that stops as ``stop`` ("<image>:<signal>") says (STOP_SHIM)."""
    shim = marker.parent / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(STOP_SHIM)
    env = {**ENV, "SEG_TEST_STOP": f"{stop}:{marker}",
           "PYTHONPATH": os.pathsep.join([str(shim), *filter(None, [ENV.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-m", "seg_explain.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_interrupted_run_resumes_without_recomputing(clean, tmp_path, capsys):
    imgs, args, ref = clean
    out, marker = tmp_path / "out", tmp_path / "stopped"
    proc = start_cli([*args, "--out", str(out)], "case03:SIGINT", marker)   # Ctrl-C inside the 4th image
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert marker.read_text() == str(proc.pid)                  # the interrupt came from inside case03
    kept = results(out)
    assert [n.split("-")[0] for n in kept] == ["case00", "case01", "case02"]   # exactly those finished
    assert "3 image(s) finished are kept" in err and "interrupted" in err
    assert not list((out / "images").glob(".*part*"))           # nothing half-written
    assert not (out / "local_importance.csv").exists()
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 0
    assert "skipping 3 images already done" in capsys.readouterr().err
    now = results(out)
    assert {k: now[k] for k in kept} == kept                    # finished images not recomputed
    assert len(now) == len(imgs)
    same_tables(ref, out)


@pytest.mark.slow
def test_killed_worker_loses_no_finished_image(clean, tmp_path):
    pytest.importorskip("distributed")
    imgs, args, ref = clean
    out, marker = tmp_path / "out", tmp_path / "killed"
    proc = start_cli([*args, "--out", str(out), "--workers", "2"], "case03:SIGKILL", marker)
    wait_until(lambda: marker.exists() and marker.read_text() or proc.poll() is not None, "the worker's death")
    before = results(out)                                       # what had finished when the worker died
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    victim = int(marker.read_text())                            # the worker computing case03 died mid-image
    assert victim != proc.pid
    now = results(out)
    assert {k: now[k] for k in before} == before                # what finished stays as written
    assert len(now) == len(imgs)
    same_tables(ref, out)                                       # and the tables are the serial ones
    (redone,) = (out / "images").glob("case03-*.npz")
    with np.load(redone) as z:
        assert json.loads(str(z["meta"]))["pid"] not in (victim, proc.pid)   # another worker redid it


def test_bad_dataset_arguments(data, tmp_path, capsys):
    pytest.importorskip("distributed")
    out = tmp_path / "o"
    assert main(cli_args(data, out, "--workers", "0")) == 2
    assert "--workers" in capsys.readouterr().err
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(cli_args(data, out, "--scheduler", "tcp://127.0.0.1:1")) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(cli_args(data, out, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"))
    # a record is a plain dataclass that travels to workers
    r = ImageRecord("x", "/a.npy")
    assert r.key.startswith("x-") and r.paths() == ["/a.npy"]


def test_without_dask_or_tqdm(data, tmp_path, capsys, monkeypatch):
    """The in-process path needs neither Dask nor tqdm (plain progress lines); --workers says
    what to install."""
    monkeypatch.setitem(sys.modules, "distributed", None)      # import distributed -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm", None)
    out = tmp_path / "o"
    assert main(cli_args(data, out, quiet=False)) == 3
    err = capsys.readouterr().err
    assert "[agg2exp] 7/7 images, 1 failed" in err and "in this process" in err
    assert main(cli_args(data, tmp_path / "p", "--workers", "2")) == 2
    assert "pip install 'napari-seg-explain[dask]'" in capsys.readouterr().err

