"""The Slicer-free part of the SegExplain module (importable with slicer-core alone)."""
from .logic import SegExplainLogic

__all__ = ["SegExplainLogic"]
