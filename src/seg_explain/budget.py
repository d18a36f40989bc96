"""The memory budget: sizes read from headers, archives and configs are checked against it
*before* anything of that size is allocated, decompressed or built.

The budget is ``SEG_EXPLAIN_MEMORY_LIMIT`` (bytes, or a number with K/M/G/T, e.g. ``32G``)
or, by default, half of this machine's memory (the smaller of its RAM and the cgroup limit
it runs under). A refusal is one line with the figure, the limit and how to raise it.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

from .errors import ModelLoadError, UnsafeConfigError

ENV = "SEG_EXPLAIN_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def machine_memory() -> int:
    """Bytes of memory this process may use: physical RAM, or a smaller cgroup limit."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        ram = 16 * 1024 ** 3
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(f) as fh:
                v = fh.read().strip()
        except OSError:
            continue
        if v.isdigit() and 0 < int(v) < ram:
            ram = int(v)
    return int(ram)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(text)
    n = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not (math.isfinite(n) and n > 0):
        raise ValueError(text)
    return int(n)


def memory_budget(error=ModelLoadError) -> tuple[int, str]:
    """(bytes, where the figure comes from)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        try:
            return parse_size(raw), f"{ENV}={raw}"
        except ValueError:
            raise error(f"{ENV}={raw!r} is not a size; write e.g. 16G or 800M") from None
    return machine_memory() // 2, "half this machine's memory"


def fmt_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_bytes(nbytes: float, what: str, error=ModelLoadError) -> None:
    """Raise ``error`` when ``what`` (a phrase: "this image", "the network") would need more
    than the budget."""
    limit, source = memory_budget(error)
    if nbytes > limit:
        raise error(f"{what} would need {fmt_bytes(nbytes)} of memory, more than the budget of "
                    f"{fmt_bytes(limit)} ({source}); set {ENV} (e.g. {ENV}=64G) to allow more")


def safe_member_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or ".." in parts or "\x00" in name or re.match(r"^[A-Za-z]:", name))


def check_zip_members(infos: Iterable, archive: str) -> None:
    """An archive's member names (no ``..``, no absolute paths) and its decompressed size
    (the sizes its directory declares; readers never decompress past them) within budget."""
    total = 0
    for info in infos:
        if not safe_member_name(info.filename):
            raise UnsafeConfigError(f"{archive}: member {info.filename!r} points outside the archive; such a "
                                    "file is never loaded")
        total += int(info.file_size)
    check_bytes(total, f"{archive} (decompressed)")
