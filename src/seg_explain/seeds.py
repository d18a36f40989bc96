"""Per-image seeds: an image's result never depends on the order it was computed in."""
from __future__ import annotations

import hashlib


def image_seed(seed: int, name: str) -> int:
    """The seed image ``name`` is explained with: a hash of (``seed``, ``name``) in
    ``[0, 2**31 - 1)``, so it depends on the image, never on the order of execution."""
    h = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % (2 ** 31 - 1)
