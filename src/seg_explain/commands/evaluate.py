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

import math
import sys

from ..models.formats import formats_help

OUTPUTS = ("metrics.csv", "metrics_summary.csv")


def add_parser(sub):
    p = sub.add_parser("evaluate", help="faithfulness / sensitivity / complexity / time of methods",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders, glob patterns or CSV manifests")
    p.add_argument("--model", required=True, help=f"the model: {formats_help()}")
    p.add_argument("--method", action="append", required=True, metavar="NAME[:k=v...]",
                   help="method to evaluate (repeat for several)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--param", action="append", default=[], metavar="K=V")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: all predicted)")
    p.add_argument("--n-faithfulness", default=100, metavar="N", help="random subsets (default 100, at most 10000)")
    p.add_argument("--protocol", choices=("default", "agg2exp"), default="default",
                   help="default: RoI fixed from the clean prediction, noise × image range, 5 %% subsets; "
                        "agg2exp: the Agg2Exp authors' Quantus settings (RoI recomputed from each perturbed "
                        "prediction, fresh explainer noise, absolute noise, 224² voxels per subset)")
    p.add_argument("--subset", type=float, default=None,
                   help="voxels per subset: a fraction (<1) or a count (default: the protocol's, 0.05 / 50176)")
    p.add_argument("--n-sensitivity", default=3, metavar="N", help="noisy copies (default 3, at most 1000)")
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--theta", type=float, default=0.1)
    p.add_argument("--baseline", default=None, help="removed voxels (default: the protocol's, min / global_min)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0; also --param seed=N)")
    from ..precision import HELP, PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    from .datasets import add_dataset_arguments

    add_dataset_arguments(p)
    return p


def run(args) -> int:
    from ..cli import common_params, parse_params
    from ..dataset import FAILURES_FILE, RESULTS_DIR, RUN_FILE, collect_images, make_executor, prepare_run
    from ..errors import InputMismatchError, printable
    from ..files import WriteLog, check_output
    from ..models import load_model
    from .datasets import EXIT_OK, EXIT_SOME_FAILED, check_dataset_arguments, check_inputs_outside_results, run_command

    params = parse_params(args.param)
    seed, batch_size = common_params(params, args.seed)
    check_dataset_arguments(args)
    n_faith, n_sens = check_metric_bounds(args)
    records, _rois, manifests = collect_images(args.images, exclude=args.out)
    inputs = [r.image for r in records if isinstance(r.image, str)] + manifests + [args.model]
    out = check_output(args.out, inputs, folder=True, model=args.model,
                       names=OUTPUTS + (RUN_FILE, FAILURES_FILE, RESULTS_DIR))   # before any computation
    check_inputs_outside_results(inputs, out)
    distributed = bool(args.workers or args.scheduler)
    model = load_model(args.model, device="cpu" if distributed else args.device)
    subset = args.subset   # a fraction (< 1) or a whole number of voxels (checked by the plan)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    # images carry no ground truth or RoIs here
    for r in records:
        r.ground_truth, r.rois = None, {}
    with make_executor(args.workers, args.scheduler, threads=args.threads, model=model) as executor:
        run_ = prepare_run("evaluate", model, records, client=executor, out=out, overwrite=args.overwrite,
                           threads=args.threads, device=args.device, methods=args.method, classes=classes,
                           seed=seed, n_faithfulness=n_faith, subset=subset, n_sensitivity=n_sens,
                           noise=args.noise, theta=args.theta,
                           baseline=None if args.baseline is None else _number_or_text(args.baseline),
                           batch_size=batch_size, protocol=args.protocol, precision=args.precision, **params)
        res = run_command(run_, "[evaluate]", args.quiet, out)
    n = len(records)
    if not res.rows and res.settings.get("skipped"):
        raise InputMismatchError(f"none of the {n} images could be evaluated (see the messages above); "
                                 "no table was written")
    for nm, cls, meth, msg in res.settings.get("failed", []):
        print(f"seg-explain: {printable(meth)} could not explain {printable(cls)} in {printable(nm)}: "
              f"{printable(msg)}", file=sys.stderr)
    # everything is computed and validated: only now are the tables written
    log = WriteLog([out / nm for nm in OUTPUTS])
    log.write(out / "metrics.csv", res.to_csv)
    log.write(out / "metrics_summary.csv", res.summary_to_csv)
    log.write(out / FAILURES_FILE, lambda _p: run_.write_failures(out))
    print(res.table())
    print(f"[evaluate] wrote metrics.csv, metrics_summary.csv to {printable(out)}", file=sys.stderr)
    if res.settings.get("skipped"):
        print(f"seg-explain: warning: {len(res.settings['skipped'])} of {n} image(s) failed (listed in "
              f"{printable(out / FAILURES_FILE)}; a rerun retries them)", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


# upper bounds of the metric settings, from the method: each faithfulness subset is one
# forward pass and one row of voxel indices, each sensitivity copy one whole explanation
N_FAITHFULNESS_MAX = 10_000
N_SENSITIVITY_MAX = 1_000
NOISE_MAX = 10.0


def check_metric_bounds(args) -> tuple[int, int]:
    """Every numeric setting bounded before any image: ``--n-faithfulness``, ``--n-sensitivity``,
    ``--noise``, ``--subset`` (a voxel count times the subsets must fit in memory)."""
    from ..checks import as_float, as_int, memory_bytes
    from ..errors import MethodError

    # upper bounds here; the lower ones (and the typing of the rest) are plan_evaluation's
    nf = as_int("n_faithfulness", args.n_faithfulness, hi=N_FAITHFULNESS_MAX)
    ns = as_int("n_sensitivity", args.n_sensitivity, hi=N_SENSITIVITY_MAX)
    if math.isfinite(args.noise) and args.noise > NOISE_MAX:
        as_float("noise", args.noise, 0.0, NOISE_MAX)
    sub = args.subset
    if sub is not None and math.isfinite(sub) and sub >= 1 and nf >= 1:
        budget = memory_bytes() // 4
        hi = max(1, budget // (8 * nf))      # the subsets' voxel indices (int64) must fit
        if sub != int(sub) or sub > hi:
            raise MethodError(f"--subset must be a fraction in (0, 1) or a whole number of voxels <= {hi} "
                              f"(with --n-faithfulness {nf}, the subsets' indices must fit in a quarter of "
                              f"this machine's memory), got {args.subset!r}")
    return nf, ns


def _number_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v
