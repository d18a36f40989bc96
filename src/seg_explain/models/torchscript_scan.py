"""TorchScript programs checked before any of their code runs.

A TorchScript archive is a program. Two things of it can run: its methods (``forward``
and everything it calls) and, already while ``torch.jit.load`` opens it, any
``__setstate__`` method its classes define. So:

1. :func:`check_archive` looks at the archive's bytes *before* ``torch.jit.load``: members'
   decompressed sizes against the memory budget, no ``../`` names, and no ``__setstate__``
   anywhere in its source (``code/**.py``), the one hook that runs at load.
2. :func:`scan_program` then reads every graph the program holds: every method of every
   submodule, each **inlined** (``torch._C._jit_pass_inline`` on a copy, so scripted
   functions called through ``prim::CallFunction`` and methods called through
   ``prim::CallMethod`` are read where they are), walking ``if``/loop blocks and
   sub-graphs (``fork``). Ops are checked against an **allow-list of namespaces**
   (``aten::`` and ``prim::``) minus the ops in them that touch files, the terminal, the
   network or Python; a call that cannot be inlined (an interface method) is refused too,
   since what it calls cannot be read.

:func:`load_torchscript` does both on bytes read once, so the file cannot change between
the check and the load.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import torch

from ..budget import check_zip_members
from ..errors import ModelLoadError, UnsafeConfigError

ALLOWED_NAMESPACES = ("aten", "prim")
# ops inside the allowed namespaces that reach outside the program's tensors
DENIED_OPS = {
    "aten::save": "writes a file", "aten::from_file": "reads a file", "aten::_print": "prints",
    "prim::Print": "prints to the terminal", "prim::PythonOp": "calls Python",
    "prim::IgnoredPythonOp": "calls Python", "prim::rpc_async": "calls over the network",
    "prim::rpc_sync": "calls over the network", "prim::rpc_remote": "calls over the network",
    "prim::CallFunction": "calls a function that cannot be read",
    "prim::CallMethod": "calls a method that cannot be read (an interface)",
}
_SETSTATE = re.compile(rb"__setstate__")


def check_archive(data: bytes, name: str) -> None:
    """Refuse a TorchScript archive (its bytes) before ``torch.jit.load`` sees it."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{name} is not a TorchScript archive (not a zip file)") from None
    with z:
        infos = z.infolist()
        check_zip_members(infos, name)
        for info in infos:
            if info.filename.endswith(".py") and _SETSTATE.search(z.read(info)):
                raise UnsafeConfigError(
                    f"{name}: the program defines __setstate__ ({info.filename}), code that runs while the "
                    "file is opened; such a program is never loaded")


def _walk(graph, out: set) -> None:
    for node in graph.nodes():
        out.add(node.kind())
        for block in node.blocks():
            _walk(block, out)
        for attr in node.attributeNames():
            kind = node.kindOf(attr)
            if kind in ("g", "gs"):
                for g in (node.g(attr),) if kind == "g" else node.gs(attr):
                    _walk(_inlined(g), out)


def _inlined(graph):
    """A copy of ``graph`` with every known function and method call inlined."""
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    return graph


def _modules(module) -> list:
    """``module`` and all its submodules, recursively (a loaded ScriptModule lists them)."""
    seen, stack, out = set(), [module], []
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        children = getattr(m, "children", None)
        if children is not None:
            stack.extend(children())
    return out


def program_ops(module) -> set[str]:
    """Every op kind in every inlined graph of ``module`` and its submodules."""
    kinds: set[str] = set()
    for m in _modules(module):
        c = getattr(m, "_c", None)
        if c is None:
            continue
        for meth in c._method_names():
            _walk(_inlined(c._get_method(meth).graph), kinds)
    return kinds


def refused_ops(kinds: set[str]) -> dict[str, str]:
    """op -> why, for the ops of ``kinds`` a program may not use."""
    bad = {}
    for k in sorted(kinds):
        ns = k.split("::", 1)[0]
        if k in DENIED_OPS:
            bad[k] = DENIED_OPS[k]
        elif ns not in ALLOWED_NAMESPACES:
            bad[k] = f"is outside the {'/'.join(ALLOWED_NAMESPACES)} ops a network needs"
    return bad


def scan_program(module, name: str = "the TorchScript program") -> set[str]:
    """Refuse a loaded TorchScript program that uses an op outside the allow-list; return the
    op kinds it uses."""
    kinds = program_ops(module)
    bad = refused_ops(kinds)
    if bad:
        what = "; ".join(f"{k} ({why})" for k, why in list(bad.items())[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise UnsafeConfigError(f"{name} uses {what}{more}; only tensor ops (aten::, prim::) may run, so "
                                "such a model is never run")
    return kinds


def may_loop(kinds: set[str]) -> bool:
    """Whether a scanned program can run for unbounded time: TorchScript has no recursion and
    no goto, so only a loop (``prim::Loop``: ``while``, ``for``) can keep it from finishing.
    A traced program has none (tracing unrolls loops)."""
    return "prim::Loop" in kinds


def load_torchscript(path: Path, data: bytes | None = None):
    """``torch.jit.load`` of ``path``'s bytes (read once), checked before and after loading:
    (the program, the op kinds it uses); nothing of the program has run when this returns."""
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    check_archive(data, path.name)
    try:
        net = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} is not a TorchScript program (a state dict needs a MONAI bundle with "
            "network_def; a pickled whole model is never loaded)") from exc
    return net, scan_program(net, path.name)


# ------------------------------------------------------------------ torch.export --
def exported_ops(prog) -> set[str]:
    """Every call_function target of an exported program, nested graphs (cond branches)
    included, as ``namespace::name`` (``aten::conv2d``) or ``python::module.name``."""
    import operator

    kinds: set[str] = set()
    for gm in prog.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for n in graph.nodes:
            if n.op != "call_function":
                continue
            t = n.target
            if isinstance(t, torch._ops.OpOverload):
                kinds.add(f"{t.namespace}::{t._schema.name.split('::')[-1]}")
            elif getattr(operator, getattr(t, "__name__", ""), None) is t:
                kinds.add(f"prim::{t.__name__}")  # getitem / add / mul on sizes: plain Python operators
            else:
                kinds.add(f"python::{getattr(t, '__module__', '?')}.{getattr(t, '__name__', t)}")
    return kinds


def scan_exported(prog, name: str) -> None:
    """Refuse an exported program that calls anything but tensor ops (file ops, higher-order
    loops, custom or Python functions)."""
    bad = refused_ops(exported_ops(prog))
    if bad:
        what = "; ".join(f"{k} ({why})" for k, why in list(bad.items())[:4])
        raise UnsafeConfigError(f"{name} calls {what}; only tensor ops (aten::) may run, so such a model is "
                                "never run")
