"""The memory a network's weights would take, known before any weight is allocated: the
network is built on PyTorch's ``meta`` device (shapes only, no storage), its parameters and
buffers counted, and the figure checked against the memory budget (:mod:`seg_explain.budget`).
A 374-byte config asking for a 5 GB UNet is refused before a byte of it exists.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

from ..budget import check_bytes, fmt_bytes

_ITEM_LOCK = threading.Lock()
_item_users = 0
_real_item = torch.Tensor.item


def _item(self):
    return 0.0 if self.is_meta else _real_item(self)


@contextlib.contextmanager
def _meta_item() -> Iterator[None]:
    """Let ``Tensor.item()`` of a meta tensor give 0 while a network is built on the meta
    device (SwinUNETR reads its drop-path rates from a linspace with .item(); the value does
    not change any shape). Other tensors are unaffected; nested/concurrent uses are counted."""
    global _item_users
    with _ITEM_LOCK:
        _item_users += 1
        torch.Tensor.item = _item
    try:
        yield
    finally:
        with _ITEM_LOCK:
            _item_users -= 1
            if _item_users == 0:
                torch.Tensor.item = _real_item


def meta_bytes(build: Callable[[], torch.nn.Module]) -> int | None:
    """Bytes of the parameters and buffers of ``build()`` built on the meta device (None when
    the network cannot be built there; building it for real then reports the error)."""
    try:
        with _meta_item(), torch.device("meta"):
            net = build()
    except Exception:  # noqa: BLE001 - the real build reports it
        return None
    if not isinstance(net, torch.nn.Module):
        return None
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def check_network_size(build: Callable[[], torch.nn.Module], what: str, copies: int = 2) -> int | None:
    """Refuse (ModelLoadError) a network whose weights x ``copies`` (the network and the weights
    file loaded into it) exceed the budget; returns the weights' bytes."""
    n = meta_bytes(build)
    if n is not None:
        check_bytes(n * copies, f"{what} ({fmt_bytes(n)} of weights, loaded twice while building)")
    return n
