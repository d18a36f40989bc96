"""``seg-explain agg2exp IMAGE... --model M --method NAME --out DIR``.

Writes ``local_importance.csv`` (image, explained_class, region, mass, mass_pos,
mass_neg), ``global_importance.csv``, ``outliers.csv`` (with 5 images or more),
``heatmap.png`` and ``graph.png``. IMAGE may be a file, a folder (its image files), a glob
pattern ("scans/*.nii.gz") or a CSV manifest (columns image, and optionally name,
ground_truth, roi_<name>). Every finished image is written at once to DIR/images/, so a
rerun with the same --out skips the images already done (--overwrite recomputes them); with
--workers N (a local Dask cluster) or --scheduler ADDRESS (an existing one) the images are
computed in parallel, with the same tables. An image that cannot be read or explained is
reported (DIR/failures.csv) and the others go on. Exit code: 0 all images done; 3 some
failed (tables written from the others); 2 bad input or no image could be explained.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..io import image_stem
from ..models.formats import formats_help

MIN_IMAGES_FOR_OUTLIERS = 5
OUTPUTS = ("local_importance.csv", "global_importance.csv", "outliers.csv", "heatmap.png", "graph.png")


def add_parser(sub):
    p = sub.add_parser("agg2exp", help="class-to-region importance over many images (Agg2Exp)",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (NIfTI, TIFF, ...), folders, glob patterns or CSV manifests")
    p.add_argument("--model", required=True, help=f"the model: {formats_help()}")
    p.add_argument("--method", default="smoothgrad", help="attribution method (default: smoothgrad)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter")
    p.add_argument("--extra-roi", action="append", default=[], metavar="[NAME=]FILE",
                   help="extra region column from a mask file (nonzero voxels); FILE may contain "
                        "{stem} (the image's file name without extension) for per-image masks")
    p.add_argument("--ground-truth", metavar="TEMPLATE", default=None,
                   help="ground-truth label maps, e.g. 'labels/{stem}_seg.nii.gz' (adds Dice to outliers.csv)")
    p.add_argument("--classes", default=None, help="comma-separated classes to explain (default: all predicted)")
    p.add_argument("--top-k", type=int, default=3, help="incoming edges per class in graph.png")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0; also --param seed=N)")
    from ..precision import HELP, PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    from .datasets import add_dataset_arguments

    add_dataset_arguments(p)
    return p


def parse_extra_rois(items) -> dict[str, str]:
    """``[NAME=]FILE`` items -> ``{name: path or template with {stem}}``."""
    out = {}
    for it in items:
        name, _, path = it.partition("=") if "=" in it else ("", "", it)
        path = path or it
        if not name:
            name = image_stem(path.replace("{stem}", "")) or "roi"
        if "{" not in path and not Path(path).exists():
            raise FileNotFoundError(f"extra RoI file not found: {path}")
        out[name] = path
    return out


def run(args) -> int:
    from ..checks import as_int
    from ..cli import common_params, parse_params
    from ..dataset import FAILURES_FILE, RESULTS_DIR, RUN_FILE, collect_images, make_executor, prepare_run
    from ..errors import InputMismatchError, printable
    from ..explainers.registry import resolve_params
    from ..files import WriteLog, check_output
    from ..models import load_model
    from .datasets import EXIT_OK, EXIT_SOME_FAILED, check_dataset_arguments, check_inputs_outside_results, run_command

    params = parse_params(args.param, args.method)
    seed, batch_size = common_params(params, args.seed)
    resolve_params(args.method, params)       # unknown or bad parameters fail before any image
    top_k = as_int("--top-k", args.top_k, 1, 10_000)
    check_dataset_arguments(args)
    extra = parse_extra_rois(args.extra_roi)
    records, roi_names, manifests = collect_images(args.images, args.ground_truth, extra, exclude=args.out)
    inputs = [p for r in records for p in r.paths()] + manifests + [args.model] + [
        v for v in extra.values() if "{" not in v]
    out = check_output(args.out, inputs, folder=True, model=args.model,
                       names=OUTPUTS + (RUN_FILE, FAILURES_FILE, RESULTS_DIR))   # before any computation
    check_inputs_outside_results(inputs, out)
    distributed = bool(args.workers or args.scheduler)
    # the class names (and an early, clear error for a bad model) come from a copy loaded here;
    # on a cluster each worker loads its own, once, on --device
    model = load_model(args.model, device="cpu" if distributed else args.device)
    classes = None
    if args.classes:
        classes = [model.class_index(c.strip()) for c in args.classes.split(",")]
    as_int("--top-k", top_k, 1, len(model.class_names) + len(roi_names))   # edges come from the regions
    with make_executor(args.workers, args.scheduler, threads=args.threads, model=model) as executor:
        run_ = prepare_run("agg2exp", model, records, client=executor, out=out, overwrite=args.overwrite,
                           threads=args.threads, device=args.device, method=args.method, classes=classes,
                           seed=seed, batch_size=batch_size, precision=args.precision, **params)
        res = run_command(run_, "[agg2exp]", args.quiet, out)
    n = len(records)
    if res.n_images == 0:
        raise InputMismatchError(f"none of the {n} images could be explained (see the messages above); "
                                 "no table was written")

    # everything is computed and validated: only now are the tables and plots made, then written
    det = None
    if res.n_images >= MIN_IMAGES_FOR_OUTLIERS:
        from ..outliers import detect_outliers

        det = detect_outliers(res, seed=seed)
    from ..plots import plot_graph, plot_heatmap, save_figure

    title = f"Agg2Exp ({res.method}), {res.n_images} image(s)"
    figs = {"heatmap.png": plot_heatmap(res, title=title, drop_empty_rows=True),
            "graph.png": plot_graph(res, top_k=top_k, title=title)}
    names = ["local_importance.csv", "global_importance.csv"] + (["outliers.csv"] if det else []) + list(figs)
    log = WriteLog([out / nm for nm in names])
    log.write(out / "local_importance.csv", res.to_csv)
    log.write(out / "global_importance.csv", res.global_to_csv)
    if det is not None:
        log.write(out / "outliers.csv", det.to_csv)
    elif (out / "outliers.csv").exists():     # from an earlier run on more images: stale now
        (out / "outliers.csv").unlink()
    for nm, fig in figs.items():
        log.write(out / nm, lambda p, fig=fig: save_figure(fig, p))
    log.write(out / FAILURES_FILE, lambda _p: run_.write_failures(out))
    if det is not None and det.spearman and not args.quiet:
        rho, pval, k = det.spearman["mean"]
        print(f"[agg2exp] Spearman(decision function, Dice), per image averaged over classes "
              f"(the paper's test; rho > 0: unusual explanations go with lower Dice), {k} images: "
              f"rho={rho:.3f} (p={pval:.3g}); per class in outliers.csv", file=sys.stderr)
    elif det is None and not args.quiet:
        print(f"[agg2exp] outliers.csv needs >= {MIN_IMAGES_FOR_OUTLIERS} images; skipped", file=sys.stderr)
    print(f"[agg2exp] wrote {', '.join(names)} to {printable(out)}", file=sys.stderr)
    if res.skipped:
        print(f"seg-explain: warning: {len(res.skipped)} of {n} image(s) failed (listed in "
              f"{printable(out / FAILURES_FILE)}; a rerun retries them): "
              + ", ".join(printable(nm) for nm, _ in res.skipped), file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
