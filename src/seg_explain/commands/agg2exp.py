"""``seg-explain agg2exp IMAGE... --model M --method NAME --out DIR``.

Writes ``local_importance.csv`` (image, explained_class, region, mass, mass_pos,
mass_neg), ``global_importance.csv``, ``outliers.csv`` (with 5 images or more),
``heatmap.png`` and ``graph.png``. Progress goes to stderr. An image that cannot be read
or explained is reported and skipped; the run succeeds (exit 0, with a warning line) when
at least one image was explained.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

MIN_IMAGES_FOR_OUTLIERS = 5
OUTPUTS = ("local_importance.csv", "global_importance.csv", "outliers.csv", "heatmap.png", "graph.png")


def add_parser(sub):
    p = sub.add_parser("agg2exp", help="class-to-region importance over many images (Agg2Exp)",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (NIfTI, TIFF, ...)")
    p.add_argument("--model", required=True, help="MONAI bundle folder or TorchScript/.pt2 file")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _stem(path: str) -> str:
    from ..aggregate import _stem as stem

    return stem(Path(path))


def parse_extra_rois(items, images) -> dict:
    """``[NAME=]FILE`` items -> ``{name: path or template}`` for :func:`agg2exp`."""
    out = {}
    for it in items:
        name, _, path = it.partition("=") if "=" in it else ("", "", it)
        path = path or it
        if not name:
            name = _stem(path.replace("{stem}", "")) or "roi"
        if "{" in path:   # one mask per image
            out[name] = [path.format(stem=_stem(im)) for im in images]
        elif not Path(path).exists():
            raise FileNotFoundError(f"extra RoI file not found: {path}")
        else:
            out[name] = path
    return out


def run(args) -> int:
    from ..aggregate import Agg2ExpRun
    from ..cli import parse_params
    from ..errors import InputMismatchError
    from ..models import load_model

    from ..checks import as_int
    from ..files import check_output

    params = parse_params(args.param, args.method)
    seed = as_int("--seed", args.seed, 0, 2 ** 31 - 1)
    as_int("--top-k", args.top_k, 1)
    extra = parse_extra_rois(args.extra_roi, args.images)
    gt = None
    if args.ground_truth:
        gt = [args.ground_truth.format(stem=_stem(p)) for p in args.images]
    inputs = list(args.images) + [args.model] + list(gt or []) + [
        v for spec in extra.values() for v in (spec if isinstance(spec, list) else [spec])]
    out = check_output(args.out, inputs, folder=True, names=OUTPUTS)   # before any computation
    model = load_model(args.model, device=args.device)
    names = [_stem(p) for p in args.images]
    if len(set(names)) != len(names):  # same stem in different folders: keep them apart
        names = [str(Path(p)) for p in args.images]
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None

    runner = Agg2ExpRun(model, list(args.images), args.method, extra or None, names=names,
                        ground_truth=gt, classes=classes, seed=seed, on_error="skip", **params)
    t0 = time.perf_counter()
    n = len(args.images)
    last = [-1.0]
    reported = 0
    for done, total in runner.run_iter():
        while reported < len(runner.skipped):
            nm, msg = runner.skipped[reported]
            print(f"seg-explain: skipping {nm}: {msg}", file=sys.stderr)
            reported += 1
        if not args.quiet:
            now = time.perf_counter()
            if now - last[0] > 1.0 or done == total:
                last[0] = now
                i = min(n, done // 1000 + 1)
                print(f"[agg2exp] {100 * done / total:5.1f}%  image {min(i, n)}/{n}  "
                      f"{now - t0:6.1f}s", file=sys.stderr, flush=True)
    res = runner.result()
    if res.n_images == 0:
        raise InputMismatchError(f"none of the {n} images could be explained (see the messages above)")

    res.to_csv(out / "local_importance.csv")
    res.global_to_csv(out / "global_importance.csv")
    written = ["local_importance.csv", "global_importance.csv"]
    if res.n_images >= MIN_IMAGES_FOR_OUTLIERS:
        from ..outliers import detect_outliers

        det = detect_outliers(res, seed=seed)
        det.to_csv(out / "outliers.csv")
        written.append("outliers.csv")
        if det.spearman and not args.quiet:
            rho, pval, k = det.spearman["mean"]
            print(f"[agg2exp] Spearman(decision function, Dice), per image averaged over classes "
                  f"(the paper's test; rho > 0: unusual explanations go with lower Dice), {k} images: "
                  f"rho={rho:.3f} (p={pval:.3g}); per class in outliers.csv", file=sys.stderr)
    elif not args.quiet:
        print(f"[agg2exp] outliers.csv needs >= {MIN_IMAGES_FOR_OUTLIERS} images; skipped", file=sys.stderr)
    from ..plots import plot_graph, plot_heatmap, save_figure

    title = f"Agg2Exp ({res.method}), {res.n_images} image(s)"
    save_figure(plot_heatmap(res, title=title, drop_empty_rows=True), out / "heatmap.png")
    save_figure(plot_graph(res, top_k=args.top_k, title=title), out / "graph.png")
    written += ["heatmap.png", "graph.png"]
    print(f"[agg2exp] wrote {', '.join(written)} to {out}", file=sys.stderr)
    if res.skipped:
        print(f"seg-explain: warning: {len(res.skipped)} of {n} image(s) skipped: "
              + ", ".join(nm for nm, _ in res.skipped), file=sys.stderr)
    return 0
