"""Where the shipped sample data lives, in a wheel and in a source checkout."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_data_dir() -> Path:
    """The `sample_data/` folder shipped with the package (wheel) or the repo root (editable)."""
    here = Path(str(resources.files("seg_explain")))
    for cand in (here / "sample_data", here.parent.parent / "sample_data"):
        if cand.is_dir():
            return cand.resolve()
    raise FileNotFoundError("napari-seg-explain sample_data/ not found; reinstall the package")


def sample_path(*parts: str) -> Path:
    return sample_data_dir().joinpath(*parts)
