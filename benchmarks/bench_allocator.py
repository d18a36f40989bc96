#!/usr/bin/env python
"""What the malloc tuning of ``seg_explain.allocator`` buys: the same explanations in fresh
processes with it (default: ``load_model`` applies it) and without it
(``SEG_EXPLAIN_MALLOC_TUNING=0``). Each child calls the library as a user does.

    python benchmarks/bench_allocator.py [--repeat 2] [--threads 2]

Workloads (sample models and images):

- ``smoothgrad 3D``: SmoothGrad n=8 of ``temporal_R`` on the Colin27 volume (8 windows),
  on the main thread and in a worker thread (as the napari dock runs it);
- ``pdcr 2D``: PdCR at the paper's settings on the 2D sample slice and RoI.

Per row: wall seconds of the explanation, user and system CPU seconds, minor page faults,
and the peak RSS of the explanation (VmHWM reset after loading). Best of ``--repeat``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import seg_explain  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

WORKLOADS = ("smoothgrad3d-main", "smoothgrad3d-thread", "pdcr2d-main")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(workload: str, threads: int) -> None:
    import numpy as np
    import torch

    from seg_explain import explain, load_image, load_model
    from seg_explain.allocator import tuned as is_tuned
    from seg_explain.paths import sample_path

    torch.set_num_threads(threads)
    # as a user: load_model applies the tuning (a no-op with SEG_EXPLAIN_MALLOC_TUNING=0)
    if workload.startswith("smoothgrad3d"):
        model = load_model(sample_path("models", "brain3d"))
        img = load_image(sample_path("brain3d", "colin27_t1_2mm.nii.gz"))
        kw = dict(method="smoothgrad", target="temporal_R", n_samples=8)
    else:
        model = load_model(sample_path("models", "brain2d"))
        img = load_image(sample_path("brain2d", "colin27_axial_t1.tif"))
        roi = np.asarray(load_image(sample_path("brain2d", "colin27_axial_roi_frontal_L.tif")).data) > 0
        kw = dict(method="pdcr", target="frontal_L", roi=roi, batch_size=12)
    tuned = is_tuned()
    explain(model, img, "gradient", target=kw["target"])  # warm-up: lazy imports, first allocations
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    except OSError:
        pass
    out: dict = {}

    def run():
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        explain(model, img, kw.pop("method"), **kw)
        out["wall"] = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out.update(user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime,
                   minflt=r1.ru_minflt - r0.ru_minflt)

    if workload.endswith("thread"):
        t = threading.Thread(target=run)
        t.start()
        t.join()
    else:
        run()
    out.update(peak_mb=_status_mb("VmHWM"), tuned=tuned)
    print(json.dumps(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.threads)
        return 0
    print(f"# {os.cpu_count()} CPUs, torch threads {a.threads}, best of {a.repeat} fresh processes")
    print("| workload | malloc tuning | wall s | user s | sys s | minor faults | peak RSS MB | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for w in a.workloads:
        res = {}
        for tuned in (False, True):
            env = dict(os.environ, SEG_EXPLAIN_MALLOC_TUNING="1" if tuned else "0")
            runs = []
            for _ in range(a.repeat):
                p = subprocess.run([sys.executable, __file__, "--child", w, "--threads", str(a.threads)],
                                   capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    print(f"{w}: failed: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    return 1
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
            res[tuned] = min(runs, key=lambda r: r["wall"])
        for tuned in (False, True):
            r = res[tuned]
            label = ("on" if r["tuned"] else "not applied") if tuned else "off"
            sp = f"{res[False]['wall'] / r['wall']:.2f}x" if tuned else "1.00x"
            print(f"| {w} | {label} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | "
                  f"{r['minflt']:,} | {r['peak_mb']:.0f} | {sp} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
