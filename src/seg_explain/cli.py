"""``seg-explain`` command line: a thin argparse front-end over the public API.

Each subcommand lives in ``seg_explain.commands.<name>`` with ``add_parser(sub)`` and
``run(args) -> int``. Bad input ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("explain", "methods", "agg2exp", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seg-explain",
                                description="Explain medical image segmentation models.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"seg_explain.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"seg_explain.commands.{name}":
                continue  # not built yet
            raise
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def parse_params(items, method: str | None = None) -> dict:
    """``["k=v", ...]`` -> dict. With ``method`` the values are typed and checked by that
    method's registry entry (the same parser the GUI uses); without, they stay text and are
    typed when a method takes them."""
    from .explainers.registry import parse_text_params

    return parse_text_params(items, method)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the run unwinds (partial outputs removed)."""


def _terminate(signum, _frame):
    raise Terminated(signum)


def main(argv=None) -> int:
    from .allocator import tune_allocator
    from .errors import SegExplainError

    args = build_parser().parse_args(argv)
    # a command-line run owns its process: reuse freed tensor buffers (seg_explain.allocator)
    tune_allocator()
    # SIGTERM unwinds like Ctrl-C, so partial outputs are removed and finished files kept
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _terminate)
    else:  # pragma: no cover - main() called from a worker thread (tests)
        old = None
    try:
        return int(args._run(args) or 0)
    except SegExplainError as exc:
        print(f"seg-explain: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:   # bad values, unreadable/unwritable paths, full disk
        print(f"seg-explain: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("seg-explain: error: out of memory; try a smaller batch_size, fewer samples or a crop",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seg-explain: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Terminated:
        print("seg-explain: terminated; nothing half-written was left behind", file=sys.stderr)
        return 143
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
