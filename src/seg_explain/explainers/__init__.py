"""One module per explainer; each registers itself in :mod:`.base`'s registry."""
from .base import Context, Explanation, drive, explain, explain_iter, get_spec, methods, register

__all__ = ["Context", "Explanation", "drive", "explain", "explain_iter", "get_spec", "methods", "register"]
