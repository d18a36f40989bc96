#!/usr/bin/env python
"""Agg2Exp on a data set: serial vs a local Dask cluster vs an external ``dask scheduler`` with
``dask worker`` processes, on this machine (seg_explain.dataset, the code behind
``seg-explain agg2exp --workers N / --scheduler ADDRESS``).

    python benchmarks/bench_scale.py [--images 12] [--workers 2] [--n-samples 20] [--json out.json]

Data: ``--images`` axial slices (2 mm, raw intensities) of the two sample T1 volumes
(Colin27 and MNI152 2009a, ``sample_data/brain3d``; slices around the middle, alternating
volumes) with their label slices as ground truth; model: the 2D sample bundle
(``sample_data/models/brain2d``, 16 classes); method: SmoothGrad (``--n-samples``, the
paper's 20), every predicted class explained with shared passes.

Runs (each on the same images, results kept in memory):

1. **serial**: this process, one image after another, torch's default threads (all cores),
   then again with one torch thread (``--threads 1``, the workers' setting here);
2. **local**: ``DaskExecutor.local(N)`` = ``--workers N``: a LocalCluster of N worker processes,
   one task each, ``cores // N`` torch threads;
3. **external**: ``dask scheduler`` + N ``dask worker --nthreads 1`` processes started here as
   subprocesses on 127.0.0.1, reached through their scheduler file = ``--scheduler FILE``.

Per run: wall time (from the first task submitted to the last result; the workers' imports
and model load are inside it), cluster start-up, per-image compute time on the worker (mean
and median; the first image of each worker includes loading the model), Dask's own overhead
per task (100 empty tasks through the same cluster: wall / 100 with all workers busy), the
busy fraction (Σ image time / (wall × workers)), and the peak resident memory of each worker
process (``ru_maxrss``). The tables of the Dask runs are compared with the serial ones: bit for
bit at equal torch thread counts (as the tests check); torch's CPU reductions depend on the
thread count, so 2 threads vs 1 differ in the float32 rounding (~5e-6 of a mass fraction here).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
sys.path.insert(0, str(ROOT / "src"))


def make_images(folder: Path, n: int) -> list:
    """``n`` axial slices (alternating Colin27 / MNI152, around the middle) + label slices."""
    from seg_explain import load_image

    vols = [(name, load_image(SAMPLE / "brain3d" / f"{name}_t1_2mm.nii.gz").data,
             load_image(SAMPLE / "brain3d" / f"{name}_labels_2mm.nii.gz").data)
            for name in ("colin27", "mni152_2009a")]
    recs = []
    from seg_explain.dataset import ImageRecord

    for i in range(n):
        name, t1, lab = vols[i % 2]
        z = t1.shape[0] // 2 + 8 + 3 * ((i // 2) - (n // 4))
        img, gt = folder / f"{name}_z{z}.npy", folder / f"{name}_z{z}_labels.npy"
        np.save(img, t1[z].astype(np.float32))
        np.save(gt, lab[z].astype(np.int16))
        recs.append(ImageRecord(f"{name}_z{z}", str(img), str(gt)))
    return recs


def overhead_per_task(client, n: int = 100) -> float:
    """Seconds per empty task through the cluster (submit -> result), all workers busy."""
    from distributed import wait

    wait(client.map(lambda i: i, range(8), pure=False))          # warm the path
    t0 = time.perf_counter()
    futs = client.map(lambda i: i, range(n), pure=False)
    wait(futs)
    return (time.perf_counter() - t0) / n


def run_once(label, job, records, executor, n_workers):
    from seg_explain.dataset import DatasetRun

    run = DatasetRun(job, records, executor=executor)
    t0 = time.perf_counter()
    res = run.run()
    wall = time.perf_counter() - t0
    secs = np.array([o["seconds"] for o in run.outcomes if o["status"] == "done"])
    peaks: dict = {}
    for o in run.outcomes:
        if o.get("peak_rss"):
            peaks[o["pid"]] = max(peaks.get(o["pid"], 0), o["peak_rss"])
    return res, {"run": label, "workers": n_workers, "wall_s": wall, "per_image_mean_s": float(secs.mean()),
                 "per_image_median_s": float(np.median(secs)), "busy": float(secs.sum() / (wall * n_workers)),
                 "peak_rss_mb": sorted(round(v / 2 ** 20) for v in peaks.values()),
                 "failed": len(run.failures), "per_image_s": [round(float(x), 2) for x in secs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-samples", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from seg_explain import load_model
    from seg_explain.dataset import Agg2ExpJob, DaskExecutor, InProcess, cores, model_digest

    model_path = str(SAMPLE / "models" / "brain2d")
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    records = make_images(tmp, args.images)
    t0 = time.perf_counter()
    model = load_model(model_path, device="cpu")
    load_s = time.perf_counter() - t0
    job = Agg2ExpJob(model=model_path, device="cpu", method="smoothgrad", params={"n_samples": args.n_samples},
                     row_names=list(model.class_names), with_dice=True, model_digest=model_digest(model_path))
    with open("/proc/loadavg") as fh:
        load_before = fh.read().split()[:3]
    rows = []
    print(f"{args.images} images {records[0].name}..., SmoothGrad n_samples={args.n_samples}, "
          f"{cores()} cores, torch {torch.__version__}, load average {' '.join(load_before)}", file=sys.stderr)

    def compare(res, ref):
        a, b = ref.local, res.local
        same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
        return float(np.nanmax(np.abs(a - b))) if same_nan else float("inf")

    # 1. serial, in this process: torch's default threads (all cores), then one thread
    #    (= --threads 1: the workers' setting, so the tables must be bit-identical)
    ser, row = run_once("serial (in-process)", job, records, InProcess(model), 1)
    row.update(setup_s=load_s, overhead_ms=None, threads=torch.get_num_threads())
    row["peak_rss_mb"] = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)]
    rows.append(row)
    print(row, file=sys.stderr)
    ser1, row = run_once("serial (in-process, --threads 1)", dataclasses.replace(job, threads=1), records,
                         InProcess(model), 1)
    row.update(setup_s=0.0, overhead_ms=None, threads=1, max_abs_diff_vs_serial=compare(ser1, ser))
    row["peak_rss_mb"] = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)]
    rows.append(row)
    print(row, file=sys.stderr)

    # 2. --workers N: a LocalCluster
    t0 = time.perf_counter()
    with DaskExecutor.local(args.workers) as ex:
        setup = time.perf_counter() - t0
        local, row = run_once(f"--workers {args.workers} (LocalCluster)", job, records, ex, args.workers)
        row.update(setup_s=setup, overhead_ms=1000 * overhead_per_task(ex.client), threads=ex.threads,
                   max_abs_diff_vs_serial=compare(local, ser), max_abs_diff_vs_serial1=compare(local, ser1))
    rows.append(row)
    print(row, file=sys.stderr)

    # 3. --scheduler: dask scheduler + N dask worker processes
    sf = tmp / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    dask = [sys.executable, "-m", "dask"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*dask, "scheduler", "--scheduler-file", str(sf), "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        while not (sf.exists() and sf.stat().st_size):
            time.sleep(0.05)
        procs += [subprocess.Popen([*dask, "worker", "--scheduler-file", str(sf), "--nthreads", "1",
                                    "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for _ in range(args.workers)]
        ex = DaskExecutor.connect(str(sf), threads=max(1, cores() // args.workers))
        ex.client.wait_for_workers(args.workers, timeout=120)
        setup = time.perf_counter() - t0
        res, row = run_once(f"--scheduler (dask scheduler + {args.workers} dask worker)", job, records, ex,
                            args.workers)
        row.update(setup_s=setup, overhead_ms=1000 * overhead_per_task(ex.client), threads=ex.threads,
                   max_abs_diff_vs_serial=compare(res, ser), max_abs_diff_vs_serial1=compare(res, ser1),
                   max_abs_diff_vs_local=compare(res, local))
        ex.close()
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
    rows.append(row)
    print(row, file=sys.stderr)
    with open("/proc/loadavg") as fh:
        load_after = fh.read().split()[:3]

    print(f"\nmax |Δ| of the local importance, 1 torch thread everywhere: LocalCluster vs serial "
          f"{rows[-2]['max_abs_diff_vs_serial1']:.1e}, external vs serial {rows[-1]['max_abs_diff_vs_serial1']:.1e}, "
          f"external vs LocalCluster {rows[-1]['max_abs_diff_vs_local']:.1e} (0 = bit-identical)")
    print(f"\n{args.images} images (2D slices {ser.local.shape[1]} classes), SmoothGrad n_samples={args.n_samples}; "
          f"load average before {' '.join(load_before)}, after {' '.join(load_after)}\n")
    print("| run | torch threads × workers | start-up s | wall s | per image s (mean / median) | "
          "Dask overhead ms/task | busy | peak RSS per worker MB | max |Δ| vs serial |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        oh = f"{r['overhead_ms']:.1f}" if r.get("overhead_ms") is not None else "–"
        d = r.get("max_abs_diff_vs_serial")
        print(f"| {r['run']} | {r['threads']} × {r['workers']} | {r['setup_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['per_image_mean_s']:.2f} / {r['per_image_median_s']:.2f} | {oh} | {100 * r['busy']:.0f} % | "
              f"{', '.join(map(str, r['peak_rss_mb']))} | {'–' if d is None else f'{d:.1e}'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load_before": load_before, "load_after": load_after,
                                               "images": args.images, "n_samples": args.n_samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
