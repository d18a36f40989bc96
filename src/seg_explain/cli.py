"""``seg-explain`` command line: a thin argparse front-end over the public API.

Each subcommand lives in ``seg_explain.commands.<name>`` with ``add_parser(sub)`` and
``run(args) -> int``. Every error ends in one line on stderr (names from files escaped)
and exit code 2 (bad input; 3 is a data-set run where some images failed); ``--debug``
on any subcommand shows the traceback too.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .explainers.registry import parse_params  # noqa: F401 (the commands' parser: --param k=v)

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
        sp.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback (for a bug report) besides the one line")
        sp.set_defaults(_run=mod.run)
    return p


def common_params(params: dict, seed_arg=None) -> tuple[int, int | None]:
    """Take ``seed`` and ``batch_size`` out of ``params`` -> ``(seed, batch_size)``; ``seed``
    also comes from ``--seed`` (``seed_arg``; both given and different is an error)."""
    from .checks import as_int
    from .errors import MethodError

    seed = params.pop("seed", None)
    batch_size = params.pop("batch_size", None)
    if seed_arg is not None:
        arg = as_int("--seed", seed_arg, 0, 2 ** 31 - 1)
        if seed is not None and int(seed) != arg:
            raise MethodError(f"--seed {arg} and --param seed={seed} differ; give one of them")
        seed = arg
    return (0 if seed is None else int(seed)), batch_size


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the run unwinds (partial outputs removed)."""


def _terminate(signum, _frame):
    raise Terminated(signum)


def main(argv=None) -> int:
    from .allocator import tune_allocator
    from .errors import SegExplainError, first_line

    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    # a command-line run owns its process: reuse freed tensor buffers (seg_explain.allocator)
    tune_allocator()
    # SIGTERM unwinds like Ctrl-C, so partial outputs are removed and finished files kept
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _terminate)
    else:  # pragma: no cover - main() called from a worker thread (tests)
        old = None

    def fail(msg: str, code: int = 2) -> int:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"seg-explain: error: {msg}", file=sys.stderr)
        return code

    try:
        return int(args._run(args) or 0)
    except (SegExplainError, ValueError, OSError) as exc:   # bad values, unreadable/unwritable paths, full disk
        return fail(first_line(exc))
    except MemoryError:
        return fail("out of memory; try a smaller batch_size, fewer samples or a crop")
    except RecursionError:
        return fail("the input is nested too deeply to read (a damaged or hostile file); check it")
    except KeyboardInterrupt:
        print("seg-explain: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Terminated:
        print("seg-explain: terminated; nothing half-written was left behind", file=sys.stderr)
        return 143
    except Exception as exc:  # noqa: BLE001 - a bug or a library's surprise: still one line
        return fail(f"{first_line(exc, with_type=True)} (unexpected; rerun with --debug for the "
                    "traceback and report it)")
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
