"""The model formats, in one table: how each is recognised, which files it is, what loads
it, and one line that says what it is. The loader (:func:`seg_explain.models.load_model`),
the CLI's ``--model`` help and the napari model picker all read this table, so a new
format is added here once.

Importing this module imports no torch: loaders are named by ``module:function`` and
imported when a model of that format is loaded.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path


def _is_nnunet(p: Path) -> bool:
    from .nnunet_layout import is_nnunet_folder

    return is_nnunet_folder(p)


@dataclass(frozen=True)
class ModelFormat:
    """One model format: ``probe(path)`` says whether a path is one, ``loader``
    (``module:function``, called as ``fn(path, device)``) loads it."""

    name: str
    description: str
    folder: bool
    suffixes: tuple[str, ...]
    loader: str
    probe: Callable[[Path], bool] | None = None

    def matches(self, p: Path) -> bool:
        if self.folder != p.is_dir():
            return False
        if self.suffixes and p.suffix.lower() not in self.suffixes:
            return False
        return self.probe(p) if self.probe is not None else True

    def load(self, p: Path, device):
        mod, fn = self.loader.split(":")
        return getattr(import_module(mod), fn)(p, device)


FORMATS: tuple[ModelFormat, ...] = (
    ModelFormat("nnU-Net v2 folder", "an nnU-Net v2 trained model folder (plans.json, dataset.json, fold_*/)",
                True, (), "seg_explain.models.nnunet:load_nnunet", _is_nnunet),
    ModelFormat("MONAI bundle", "a MONAI bundle folder (configs/metadata.json with models/model.pt + "
                "configs/inference.json network_def, or models/model.ts)",
                True, (), "seg_explain.models.loader:load_bundle"),
    ModelFormat("torch.export program", "a torch.export .pt2 file with a JSON sidecar of the same name",
                False, (".pt2",), "seg_explain.models.loader:load_export_file"),
    ModelFormat("TorchScript file", "a TorchScript .ts/.pt/.pth/.jit file with a JSON sidecar of the same name",
                False, (".ts", ".pt", ".pth", ".jit"), "seg_explain.models.loader:load_torchscript_file"),
)


def model_format(path: str | Path) -> ModelFormat | None:
    """The format of ``path`` (the first row of :data:`FORMATS` that matches), or None."""
    p = Path(path)
    return next((f for f in FORMATS if f.matches(p)), None)


def file_suffixes() -> tuple[str, ...]:
    """Every file suffix a model file may have (for file dialogs)."""
    return tuple(s for f in FORMATS for s in f.suffixes)


def formats_help() -> str:
    """One line naming every format (the CLI's ``--model`` help, error messages)."""
    folders = ", ".join(f.name for f in FORMATS if f.folder)
    files = "; ".join(f"{f.name} {'/'.join(f.suffixes)}" for f in FORMATS if not f.folder)
    return f"a model folder ({folders}) or a model file with a JSON sidecar of the same name ({files})"
