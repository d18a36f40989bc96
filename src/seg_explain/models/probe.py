"""The load-time probe: a few small forward passes that find the smallest input a network
takes (``min_size``) and check its channels against the metadata.

For a network we built ourselves (allow-listed MONAI / nnU-Net classes) the probe runs
here. An untrusted TorchScript program with a loop is probed in a **child process with a
deadline** (:func:`probe_isolated`): its scan has passed, so it cannot touch files, but a
loop can run forever (``while True`` in ``forward``), and a loop inside
TorchScript's interpreter never returns to Python, so neither a timeout in a thread nor
SIGTERM could stop it here. The child is killed (SIGKILL) at the deadline and the model is
refused with one line. The deadline is ``SEG_EXPLAIN_PROBE_TIMEOUT`` seconds (default
:data:`DEFAULT_TIMEOUT`; it includes starting Python and torch in the child, a few seconds).
A loop-free program (every traced one) always finishes: TorchScript has no recursion, so
it is probed here (see :func:`.torchscript_scan.may_loop`).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

from ..budget import fmt_bytes
from ..errors import ModelLoadError

ENV = "SEG_EXPLAIN_PROBE_TIMEOUT"
DEFAULT_TIMEOUT = 180.0


def forward_ok(net, shape, device) -> tuple[object | None, str]:
    """One inference pass on zeros of ``shape``: (output, "") or (None, first error line)."""
    x = torch.zeros(shape, device=device)
    try:
        with torch.inference_mode():
            y = net(x)
    except Exception as exc:  # noqa: BLE001 - a failed probe is reported by the caller
        return None, _reason(exc)
    if isinstance(y, (list, tuple)):
        y = y[0]
    if isinstance(y, dict):
        y = next(iter(y.values()))
    return y, ""


def _reason(exc: Exception) -> str:
    """One line for a failed pass. TorchScript's errors start with "The following operation
    failed in the TorchScript interpreter" and a traceback of the program; the cause is the
    last line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
    alloc = re.search(r"tried to allocate (\d+) bytes", line)
    if alloc:
        return f"it tried to allocate {fmt_bytes(int(alloc.group(1)))}, more than this machine has"
    line = re.sub(r"^\w+(Error|Exception): ", "", line)
    line = re.sub(r"\[enforce fail at [^\]]*\]\s*", "", line)
    return line[:200]


def probe(net, s: dict, where: str) -> None:
    """Small forward passes: find the smallest input the network takes (``min_size``) and
    check that its channels agree with the metadata. Never a full-patch pass (a 4096² patch
    would cost gigabytes just to load)."""
    sd, c = s["spatial_dims"], s["in_channels"]
    dev = next(iter(net.parameters()), torch.zeros(())).device if hasattr(net, "parameters") else "cpu"
    fixed = s.get("fixed_shape")
    div = max(1, int(s["divisor"]))
    batch = (s.get("batch_range") or (1, 1))[0] or 1
    sizes = [tuple(fixed)] if fixed else [(div * k,) * sd for k in (1, 2, 3, 4) if div * k >= 8 or k == 4]
    err = ""
    for shape in sizes:
        y, err = forward_ok(net, (batch, c) + tuple(shape), dev)
        if y is not None:
            s["min_size"] = min(shape)
            break
    else:
        raise ModelLoadError(
            f"{where}: the network does not accept {c}-channel {sd}D input as the metadata says "
            f"(tried {sizes[-1]}: {err})")
    want = 1 if s.get("sigmoid") else len(s["class_names"])
    if not isinstance(y, torch.Tensor) or y.ndim != sd + 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelLoadError(f"{where}: the network outputs {shape} but the metadata names {want} "
                             "class channel(s)")
    if y.shape[1] != want:
        raise ModelLoadError(f"{where}: the network outputs {y.shape[1]} channels but the metadata names "
                             f"{want} classes")


def timeout_s() -> float:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        t = float(raw)
        if not (t > 0 and t < 1e7):
            raise ValueError
    except ValueError:
        raise ModelLoadError(f"{ENV}={raw!r} must be a number of seconds > 0") from None
    return t


_KEYS = ("spatial_dims", "in_channels", "fixed_shape", "divisor", "batch_range", "sigmoid", "class_names")


def probe_isolated(data: bytes, s: dict, where: str) -> None:
    """:func:`probe` of the TorchScript program ``data`` (already scanned) in a child
    process that is killed at the deadline; sets ``s["min_size"]`` like :func:`probe`."""
    limit = timeout_s()
    head = json.dumps({k: s.get(k) for k in _KEYS} | {"where": where, "threads": torch.get_num_threads(),
                                                      "parent": os.getpid()})
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        r = subprocess.run([sys.executable, "-c", "from seg_explain.models.probe import child_main; child_main()"],
                           input=head.encode() + b"\n" + data, capture_output=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"{where}: the program's test pass did not finish within {limit:g} s (it may never return) and "
            f"was stopped; set {ENV} to a larger number of seconds if it is only slow") from None
    lines = r.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        sig = f" (killed by signal {-r.returncode})" if r.returncode < 0 else f" (exit code {r.returncode})"
        raise ModelLoadError(f"{where}: the program's test pass crashed{sig}") from None
    if out.get("error"):
        raise ModelLoadError(str(out["error"]))
    s["min_size"] = int(out["min_size"])


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child process
    """Linux: the kernel kills this child when its parent ends (a looping program would
    otherwise spin on, orphaned, after the loading process was stopped)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:          # the parent ended before prctl took effect
        os._exit(1)


def child_main() -> None:  # pragma: no cover - runs in the child process
    import io

    raw = sys.stdin.buffer.read()
    head, _, data = raw.partition(b"\n")
    cfg = json.loads(head)
    _die_with_parent(int(cfg.pop("parent")))
    torch.set_num_threads(max(1, int(cfg.pop("threads", 1))))
    where = cfg.pop("where")
    try:
        net = torch.jit.load(io.BytesIO(data), map_location="cpu")
        net.eval()
        probe(net, cfg, where)
        result = {"min_size": cfg["min_size"]}
    except ModelLoadError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported as one line by the parent
        result = {"error": f"{where}: the program's test pass failed: {str(exc).strip()[:200]}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
