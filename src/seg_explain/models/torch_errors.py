"""torch's own error texts turned into a short reason in our words.

torch's restricted unpickler fails with a page of advice ("Weights only load failed ... In
PyTorch 2.6, we changed the default value of weights_only ... Re-running torch.load with
weights_only set to False will likely succeed ..."): advice to do exactly what must not be
done with an untrusted file. We never paste it; :func:`torch_reason` says what was refused.
"""
from __future__ import annotations

import re

from ..errors import first_line

_WEIGHTS_ONLY = ("weights_only", "Weights only load failed", "WeightsUnpickler", "Unsupported global")


def is_restricted_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's restricted unpickler refusing something."""
    text = str(exc)
    return any(w in text for w in _WEIGHTS_ONLY)


def refused_global(exc: BaseException) -> str | None:
    """The Python object torch's restricted unpickler refused (``module.name``), if it says."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc)) or \
        re.search(r"but got (<class '[^']*'>)", str(exc))
    return m.group(1) if m else None


def torch_reason(exc: BaseException, limit: int = 200) -> str:
    """One short line for a torch loading error."""
    if is_restricted_refusal(exc):
        g = refused_global(exc)
        return ("it holds a pickled Python object" + (f" ({g})" if g else "")
                + " beyond tensors and plain containers, which is never unpickled")
    return first_line(exc)[:limit]
