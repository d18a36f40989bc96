"""``seg-explain evaluate IMAGE... --model M --method NAME [--method NAME ...] --out DIR``.

Faithfulness, sensitivity, complexity and efficiency (Agg2Exp §3.3) of each method on
every predicted class of every image, in model space. Writes ``metrics.csv`` (one row per
image, class and method) and ``metrics_summary.csv`` (mean and sd per method), and prints
the mean ± sd table. A method may carry its own parameters: ``--method
kernel_shap:features=semantic:n_samples=100``; ``--param k=v`` applies to every method
that has parameter ``k``. IMAGE may be a file, a folder, a glob pattern or a CSV manifest
(column image, optionally name). Every finished image is written at once to DIR/images/; a
rerun with the same --out skips the images already done (--overwrite recomputes them);
--workers N / --scheduler ADDRESS compute the images on Dask. Exit code: 0 all images done;
3 some failed (tables written from the others); 2 bad input or no image could be evaluated.
"""
from __future__ import annotations

import os
import sys

OUTPUTS = ("metrics.csv", "metrics_summary.csv")


def add_parser(sub):
    p = sub.add_parser("evaluate", help="faithfulness / sensitivity / complexity / time of methods",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders, glob patterns or CSV manifests")
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
    from ..precision import HELP, PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    from ..dataset import add_dataset_arguments

    add_dataset_arguments(p)
    return p


def run(args) -> int:
    from ..checks import as_int
    from ..cli import parse_params
    from ..dataset import (
        EXIT_OK,
        EXIT_SOME_FAILED,
        FAILURES_FILE,
        RESULTS_DIR,
        RUN_FILE,
        DatasetRun,
        EvaluateJob,
        check_dataset_arguments,
        collect_images,
        make_executor,
        model_digest,
        run_command,
    )
    from ..errors import InputMismatchError
    from ..files import check_output
    from ..metrics import plan_evaluation
    from ..models import load_model

    params = parse_params(args.param)
    seed = as_int("--seed", args.seed, 0, 2 ** 31 - 1)
    check_dataset_arguments(args)
    records, _rois, manifests = collect_images(args.images, exclude=args.out)
    inputs = [r.image for r in records if isinstance(r.image, str)] + manifests + [args.model]
    out = check_output(args.out, inputs, folder=True,
                       names=OUTPUTS + (RUN_FILE, FAILURES_FILE, RESULTS_DIR))   # before any computation
    distributed = bool(args.workers or args.scheduler)
    model = load_model(args.model, device="cpu" if distributed else args.device)
    subset = args.subset   # a fraction (< 1) or a whole number of voxels (checked by the plan)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    plan = plan_evaluation(model, args.method, classes=classes, seed=seed, n_faithfulness=args.n_faithfulness,
                           subset=subset, n_sensitivity=args.n_sensitivity, noise=args.noise, theta=args.theta,
                           baseline=_number_or_text(args.baseline), precision=args.precision, **params)
    # images carry no ground truth or RoIs here
    for r in records:
        r.ground_truth, r.rois = None, {}
    job = EvaluateJob(model=os.path.abspath(args.model), device=args.device, threads=args.threads, plan=plan,
                      model_digest=model_digest(args.model))
    with make_executor(args.workers, args.scheduler, threads=args.threads, model=model) as executor:
        run_ = DatasetRun(job, records, executor=executor, out=out, overwrite=args.overwrite)
        res = run_command(run_, "[evaluate]", args.quiet, out)
    n = len(records)
    if not res.rows and res.settings.get("skipped"):
        raise InputMismatchError(f"none of the {n} images could be evaluated (see the messages above)")
    for nm, cls, meth, msg in res.settings.get("failed", []):
        print(f"seg-explain: {meth} could not explain {cls} in {nm}: {msg}", file=sys.stderr)
    res.to_csv(out / "metrics.csv")
    res.summary_to_csv(out / "metrics_summary.csv")
    print(res.table())
    print(f"[evaluate] wrote metrics.csv, metrics_summary.csv to {out}", file=sys.stderr)
    if res.settings.get("skipped"):
        print(f"seg-explain: warning: {len(res.settings['skipped'])} of {n} image(s) failed (listed in "
              f"{out / FAILURES_FILE}; a rerun retries them)", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _number_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v
