"""``seg-explain methods``: the registered explainers, what they ask, their parameters and units."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("methods", help="list attribution methods and their parameters",
                       description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--markdown", action="store_true", help="the README's method table")
    p.add_argument("--write", metavar="FILE",
                   help="with --markdown: replace the table between the methods-table markers in FILE "
                        "(e.g. README.md) instead of printing it")
    return p


START, END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"


def write_table(path: str, table: str) -> None:
    """Replace the text between the table markers of ``path`` (atomically; nothing else changes)."""
    from pathlib import Path

    from ..errors import InputMismatchError
    from ..files import atomic_write

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    a, b = text.find(START), text.find(END)
    if a < 0 or b < a:
        raise InputMismatchError(f"{p.name} has no {START} ... {END} markers to write the table between")
    new = text[: a + len(START)] + "\n" + table.strip() + "\n" + text[b:]
    with atomic_write(p) as tmp:
        tmp.write_text(new, encoding="utf-8")


def run(args) -> int:
    from ..explainers.registry import COMMON, methods_markdown, params_markdown, specs

    if args.write and not args.markdown:
        from ..errors import InputMismatchError

        raise InputMismatchError("--write needs --markdown (it writes the README's method table)")
    if args.markdown:
        table = methods_markdown() + "\n\n" + params_markdown()
        if args.write:
            write_table(args.write, table)
            print(f"wrote the method table ({len(specs())} methods) into {args.write}")
            return 0
        print(table)
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
