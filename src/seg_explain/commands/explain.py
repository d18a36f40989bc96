"""``seg-explain explain IMAGE --model M --method NAME [--target C] [--roi MASK] [--param k=v ...] --out OUT``.

Writes the attribution map (raw values, sign kept) on the grid of IMAGE: a NIfTI input
gives a NIfTI output with the input's affine and header; 2D inputs are written as
``.tif`` or ``.npy`` (by OUT's extension). Multi-channel inputs are summed over channels
unless ``--per-channel`` is given.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..models.formats import formats_help


def add_parser(sub):
    p = sub.add_parser("explain", help="attribution map of one class in one image",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("image", metavar="IMAGE", help="image file (NIfTI, TIFF, PNG, .npy, ...)")
    p.add_argument("--series", default=None, metavar="UID", help="DICOM folder: the series to read")
    p.add_argument("--magnitude", action="store_true", help="read a complex-valued image as its magnitude")
    p.add_argument("--model", required=True, help=f"the model: {formats_help()}")
    p.add_argument("--method", required=True, help="attribution method (see `seg-explain methods`)")
    p.add_argument("--target", default="1", help="class index or name (default: 1)")
    p.add_argument("--roi", default=None, metavar="MASK",
                   help="RoI mask file on the image grid (default: the voxels predicted as the target)")
    p.add_argument("--roi-mode", default=None, choices=("mask", "intersection"),
                   help="use the mask as is (default) or intersect it with the predicted target")
    p.add_argument("--roi-label", default=None, metavar="K", help="use only this label of a label-map RoI")
    p.add_argument("--reference", default=None, metavar="LABELS",
                   help="PdCR: reference segmentation (label map on the image grid) the RoI Dice is "
                        "measured against; without it negative contributions cannot be measured")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter (repeatable)")
    p.add_argument("--out", required=True, help="output file (.nii.gz, .tif, .npy, .mha, .nrrd)")
    p.add_argument("--per-channel", action="store_true", help="write the (C, ...) per-channel map")
    p.add_argument("--table", default=None, metavar="CSV",
                   help="also write the method's per-region table when it makes one (e.g. PdCR's blocks: "
                        "status, ATE in Dice points, CI, draws)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0; also --param seed=N)")
    from ..precision import HELP, PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _check_out(out: Path, spatial_dims: int) -> None:
    from ..errors import InputMismatchError
    from ..io import NIFTI_EXT, WRITE_EXT, file_ext

    ext = file_ext(out)
    if ext not in WRITE_EXT:
        raise InputMismatchError(f"cannot write '{out.name}': use .nii.gz, .tif, .npy, .mha or .nrrd")
    if spatial_dims == 2 and ext in NIFTI_EXT:
        raise InputMismatchError(f"{out.name}: a 2D image is written as .tif or .npy")


def load_mask(path: str, img, what: str):
    """A mask / label file on ``img``'s grid as an array (grid and values checked)."""
    import numpy as np

    from ..checks import require_finite
    from ..files import require_same_grid
    from ..io import load_image

    r = load_image(path)
    arr = np.asarray(r.data)
    if arr.ndim > img.spatial_dims:
        arr = np.squeeze(arr)
        r = r.with_data(arr)
        r.spatial_dims = img.spatial_dims
    require_same_grid(img, r, f"{what} {Path(path).name}")
    require_finite(arr, f"{what} {Path(path).name}")
    return arr


def parse_target(text, model) -> int:
    """``--target``: a class index (ASCII digits) or a class name -> the class index."""
    from ..errors import InputMismatchError, printable

    t = str(text).strip()
    if re.fullmatch(r"[+-]?[0-9]+", t):
        return model.class_index(int(t))
    if not any(ch.isdigit() for ch in t):
        return model.class_index(t)            # a name (unknown: the model's own one line)
    raise InputMismatchError(
        f"Unknown target class {printable(t)!r} (digits other than 0-9 are not an index); give an index "
        f"0..{len(model.class_names) - 1} or a name: " + ", ".join(f"{i}={printable(n)}"
                                                                 for i, n in enumerate(model.class_names)))


def check_table_request(method: str) -> None:
    """``--table`` only for a method that makes a per-region table, refused before anything runs."""
    from ..errors import MethodError
    from ..explainers.registry import get_spec

    if get_spec(method).caps.map_kind != "block":
        raise MethodError(f"{method} makes no per-region table; drop --table (nothing was written)")


def run(args) -> int:
    from ..checks import as_int
    from ..cli import common_params, parse_params
    from ..errors import printable
    from ..explainers.base import drive, explain_iter
    from ..files import WriteLog, check_output
    from ..io import load_image, save_image
    from ..models import load_model

    params = parse_params(args.param, args.method)
    seed, batch_size = common_params(params, args.seed)
    roi_label = None if args.roi_label is None else as_int("--roi-label", args.roi_label, 0, 2 ** 31 - 1)
    if args.table:
        check_table_request(args.method)
    img = load_image(args.image, series=args.series, magnitude=args.magnitude)
    out = Path(args.out)
    inputs = [args.image, args.model, args.roi, args.reference,
              *(v for v in params.values() if isinstance(v, str))]
    check_output(out, [i for i in inputs if i], model=args.model)     # before any computation
    if args.table:
        check_output(args.table, [i for i in inputs if i] + [out], model=args.model, what="--table")
        if Path(args.table).expanduser().absolute() == out.expanduser().absolute():
            from ..files import OutputError

            raise OutputError("--table and --out name the same file; give two names (nothing was written)")
    _check_out(out, img.spatial_dims)
    roi = load_mask(args.roi, img, "RoI") if args.roi else None
    if args.reference:                 # (the spelled-out form of --param reference=FILE)
        params["reference"] = args.reference
    from ..explainers.registry import get_spec

    for prm in get_spec(args.method).params:      # any label-map parameter: --param k=FILE on the image grid
        if prm.kind == "label_map" and isinstance(params.get(prm.name), str):
            params[prm.name] = load_mask(params[prm.name], img, prm.name)
    model = load_model(args.model, device=args.device)
    target = parse_target(args.target, model)
    gen = explain_iter(model, img, args.method, target=target, roi=roi, seed=seed, batch_size=batch_size,
                       roi_mode=args.roi_mode, roi_label=roi_label,
                       precision=args.precision, **params)
    last = [-1]

    def progress(done, total):
        pct = int(100 * done / max(total, 1))
        if not args.quiet and pct // 10 != last[0]:
            last[0] = pct // 10
            print(f"[explain] {pct:3d}%", file=sys.stderr, flush=True)

    exp = drive(gen, progress)
    data = exp.per_channel if (args.per_channel and exp.per_channel is not None) else exp.attribution
    rows = _table_rows(exp) if args.table else None     # refused here, before anything is written
    # everything is computed and validated: only now are the files written
    log = WriteLog([out] + ([Path(args.table)] if args.table else []))
    path = log.write(out, lambda p: save_image(p, data, like=img))
    if args.table:
        log.write(Path(args.table), lambda p: _write_rows(rows, p))
        print(f"[explain] wrote the per-region table ({len(rows)} rows) to {printable(args.table)}", file=sys.stderr)
    info = {k: v for k, v in exp.summary().items()
            if k not in ("method", "target") and not (isinstance(v, str) and ("\n" in v or len(v) > 200))}
    print(f"[explain] {exp.method} of {printable(exp.target_name)!r} ({exp.roi.sum()} RoI voxels) -> "
          f"{printable(path)}; " + json.dumps(info), file=sys.stderr)
    report = exp.extras.get("report") if isinstance(exp.extras, dict) else None
    if report:   # the result, not progress: printed with --quiet too
        print(str(report).rstrip(), file=sys.stderr)
    for w in (exp.extras.get("warnings") or []) if isinstance(exp.extras, dict) else []:
        print(f"seg-explain: warning: {printable(w)}", file=sys.stderr)
    return 0


def _table_rows(exp) -> list[dict]:
    """The explanation's per-region table (``extras["blocks"]``: one dict per region), checked."""
    from ..checks import require_finite_result
    from ..errors import MethodError

    rows = exp.extras.get("blocks") if isinstance(exp.extras, dict) else None
    if not rows:
        raise MethodError(f"{exp.method} made no per-region table here; drop --table (nothing was written)")
    nums = [v for r in rows for v in r.values() if isinstance(v, float)]
    require_finite_result(nums, f"the {exp.method} per-region table")     # the NaN policy: no NaN cell
    return rows


def _write_rows(rows: list[dict], path: Path) -> Path:
    from ..files import write_csv

    cols = list(rows[0])
    return write_csv(path, [{k: (";".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                              for k, v in r.items()} for r in rows], cols)
