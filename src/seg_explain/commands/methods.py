"""``seg-explain methods``: the registered attribution methods, their parameters and defaults."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("methods", help="list attribution methods and their parameters",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _fmt(v) -> str:
    return "None" if v is None else (repr(v) if isinstance(v, str) else str(v))


def run(args) -> int:
    from ..explainers.base import get_spec, methods

    specs = [get_spec(m) for m in methods()]
    common = {"seed": 0, "batch_size": None}
    if args.json:
        print(json.dumps([{"name": s.name, "kind": s.kind, "doc": s.doc.splitlines()[0] if s.doc else "",
                           "parameters": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                                          for k, v in {**s.defaults, **common}.items()}}
                          for s in specs], indent=1))
        return 0
    width = max(len(s.name) for s in specs)
    for s in specs:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in s.defaults.items()) or "-"
        doc = s.doc.splitlines()[0] if s.doc else ""
        print(f"{s.name:<{width}}  [{s.kind}]  {params}")
        if doc:
            print(f"{'':<{width}}  {doc}")
    print(f"\nall methods also take: {', '.join(f'{k}={_fmt(v)}' for k, v in common.items())}")
    return 0
