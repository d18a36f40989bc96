"""``seg-explain evaluate IMAGE... --model M --method NAME [--method NAME ...] --out DIR``.

Faithfulness, sensitivity, complexity and efficiency (Agg2Exp §3.3) of each method on
every predicted class of every image, in model space. Writes ``metrics.csv`` (one row per
image, class and method) and ``metrics_summary.csv`` (mean and sd per method), and prints
the mean ± sd table. A method may carry its own parameters: ``--method
kernel_shap:features=semantic:n_samples=100``; ``--param k=v`` applies to every method
that has parameter ``k``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("evaluate", help="faithfulness / sensitivity / complexity / time of methods",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True)
    p.add_argument("--method", action="append", required=True, metavar="NAME[:k=v...]",
                   help="method to evaluate (repeat for several)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--param", action="append", default=[], metavar="K=V")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: all predicted)")
    p.add_argument("--n-faithfulness", type=int, default=100, help="random subsets (default 100)")
    p.add_argument("--subset", type=float, default=0.05,
                   help="voxels per subset: a fraction (<1) or a count (default 0.05)")
    p.add_argument("--n-sensitivity", type=int, default=3, help="noisy copies (default 3)")
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--theta", type=float, default=0.1)
    p.add_argument("--baseline", default="min")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    return p


def run(args) -> int:
    from ..aggregate import _stem
    from ..cli import parse_params
    from ..metrics import evaluate_iter
    from ..models import load_model

    from ..checks import as_int
    from ..files import check_output

    params = parse_params(args.param)
    seed = as_int("--seed", args.seed, 0, 2 ** 31 - 1)
    out = check_output(args.out, list(args.images) + [args.model], folder=True,
                       names=("metrics.csv", "metrics_summary.csv"))   # before any computation
    model = load_model(args.model, device=args.device)
    subset = args.subset   # a fraction (< 1) or a whole number of voxels (checked by evaluate)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    names = [_stem(Path(p)) for p in args.images]
    if len(set(names)) != len(names):
        names = list(args.images)
    gen = evaluate_iter(model, list(args.images), args.method, classes=classes, names=names,
                        seed=seed, n_faithfulness=args.n_faithfulness, subset=subset,
                        n_sensitivity=args.n_sensitivity, noise=args.noise, theta=args.theta,
                        baseline=_number_or_text(args.baseline), on_error="skip", **params)
    t0 = time.perf_counter()
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        if not args.quiet:
            print(f"[evaluate] {done}/{total} (image x method)  {time.perf_counter() - t0:6.1f}s",
                  file=sys.stderr, flush=True)
    for nm, msg in res.settings.get("skipped", []):
        print(f"seg-explain: skipping {nm}: {msg}", file=sys.stderr)
    for nm, cls, meth, msg in res.settings.get("failed", []):
        print(f"seg-explain: {meth} could not explain {cls} in {nm}: {msg}", file=sys.stderr)
    res.to_csv(out / "metrics.csv")
    res.summary_to_csv(out / "metrics_summary.csv")
    print(res.table())
    print(f"[evaluate] wrote metrics.csv, metrics_summary.csv to {out}", file=sys.stderr)
    if res.settings.get("skipped"):
        print(f"seg-explain: warning: {len(res.settings['skipped'])} of {len(args.images)} image(s) skipped",
              file=sys.stderr)
    return 0


def _number_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v
