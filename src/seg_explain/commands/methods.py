"""``seg-explain methods``: the registered explainers, what they ask, their parameters and units."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("methods", help="list attribution methods and their parameters",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--markdown", action="store_true", help="the README's method table")
    return p


def run(args) -> int:
    from ..explainers.registry import COMMON, methods_markdown, params_markdown, specs

    if args.markdown:
        print(methods_markdown())
        print()
        print(params_markdown())
        return 0
    if args.json:
        print(json.dumps([{
            "name": s.name, "title": s.title, "question": s.question, "source": s.source, "unit": s.unit,
            "cost_class": s.cost_class, "dims": list(s.caps.dims), "map_kind": s.caps.map_kind,
            "positive": s.positive, "negative": s.negative,
            "parameters": {p.name: {"kind": p.kind, "default": p.text(p.default), "help": p.help, "unit": p.unit,
                                    "choices": list(p.choices), "min": p.lo, "max": p.hi}
                           for p in (*s.params, *COMMON)}} for s in specs()], indent=1))
        return 0
    for s in specs():
        print(f"{s.name}  —  {s.title} ({s.cost_class}; {s.source})")
        print(f"    asks: {s.question}")
        print(f"    values: {s.unit}")
        for p in s.params:
            print(f"    --param {p.describe()}    {p.help}")
    print("\nevery method also takes: " + ", ".join(p.describe() for p in COMMON))
    return 0
