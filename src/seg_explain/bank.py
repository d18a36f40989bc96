"""The PdCR reference bank: real blocks cropped from *other* images, in model space.

PdCR (METHODS.md "PdCR") intervenes on a block of the explained image by replacing it with
a block cropped from another image of the same kind (paper §3.3: "distributional
plausibility"). The blocks must live where the perturbation happens, i.e. in *model
space*: every bank image goes through the model's own preparation (``model.prepare``:
resampling to the model grid when it is a :class:`~seg_explain.io.LoadedImage` with a
spacing, then the bundle's intensity preprocessing) *before* blocks are cropped from it,
exactly like the explained image.

What a bank can be built from (:func:`resolve_bank`):

- a :class:`Bank` (reused as is; re-cropped when another block size is asked for);
- a list of images: numpy arrays (taken to be on the model grid, raw intensities, like
  ``explain``'s ``image``), :class:`~seg_explain.io.LoadedImage` objects, or paths;
- a folder path (every image file inside, sorted by name), a single image path;
- an ``.npz`` file (the format of the shipped ``sample_data/pdcr_bank_{2d,3d}.npz``):

  ``images``  ``(N, *S)`` or ``(N, C, *S)`` raw intensities (preferred: each is prepared
              as a whole image, then blocks are cropped), optional ``spacing`` (mm, array
              axis order) to resample them to the model's spacing;
  ``blocks``  ``(K, *B)`` or ``(K, C, *B)`` raw-intensity blocks, used only when there is
              no ``images`` key; they are preprocessed together as one mosaic (a per-image
              intensity normalisation then sees the whole bank);
  ``model_blocks`` ``(K, C, *B)`` blocks already in model space (what :meth:`Bank.save`
              writes), used as they are.

``bank=None`` in a PdCR explanation uses the shipped sample bank for the model's
dimensionality when there is one, else asks for a bank.

``bank="zero"``: **zero occlusion** (the reference code's ``zero_local`` ablation): every
replacement block is all zeros *in model space*, i.e. in the preprocessed network input,
not in the raw image (after a z-score normalisation 0 is the mean intensity; after a
0–1 rescaling it is the darkest value). The bank then holds one block, so every draw is
the same: PdCR and progressive perturbation take one pass per block instead of
``n_screen`` + ``n_draws`` (:attr:`Bank.deterministic`). To load a folder literally named
``zero``, give it as ``./zero``.

Raw arrays given for a bank (lists of arrays, ``.npz`` contents) are refused if they hold
NaN or ±Inf (:func:`seg_explain.checks.require_finite`).

Blocks are random crops (uniform positions, ``per_image=100`` per image as in the paper,
seeded). A bank image identical to the explained image is refused: PdCR must never draw
its perturbations from the image it explains.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import require_finite
from .errors import ImageLoadError, InputMismatchError, MethodError

PER_IMAGE = 100
ZERO = "zero"


@dataclass
class Bank:
    """Reference blocks in model space.

    ``blocks``: float32 tensor ``(K, C, *B)``; ``images``: the prepared source images
    ``(C, *S)`` when known (lets the bank be re-cropped at another block size).
    ``kind``: ``"real"`` (blocks cropped from images) or ``"zero"`` (zero occlusion, see
    :func:`zero_bank`).
    """

    blocks: torch.Tensor
    images: list[torch.Tensor] = field(default_factory=list)
    source: str = ""
    per_image: int = PER_IMAGE
    seed: int = 0
    kind: str = "real"

    @property
    def deterministic(self) -> bool:
        """True when every draw gives the same block (zero occlusion, or a one-block
        bank): one pass per block says all there is to say."""
        return self.kind == ZERO or len(self) == 1

    @property
    def spatial_dims(self) -> int:
        return self.blocks.ndim - 2

    @property
    def channels(self) -> int:
        return int(self.blocks.shape[1])

    @property
    def block_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.blocks.shape[2:])

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __repr__(self) -> str:
        return (f"Bank({len(self)} blocks of {self.block_shape}, {self.channels} channel(s), "
                f"{len(self.images)} source image(s), {self.source!r})")

    # ------------------------------------------------------------------------------
    def check(self, model, block_size: int) -> None:
        """Raise InputMismatchError unless the bank fits ``model`` and ``block_size``."""
        require_finite(self.blocks, "The PdCR bank's blocks")
        if self.spatial_dims != model.spatial_dims:
            raise InputMismatchError(
                f"The PdCR bank holds {self.spatial_dims}D blocks but the model is {model.spatial_dims}D; "
                f"build the bank from {model.spatial_dims}D images")
        if self.channels != model.in_channels:
            raise InputMismatchError(
                f"The PdCR bank has {self.channels} channel(s) but the model expects {model.in_channels}; "
                "build the bank from images with the model's channels")
        if len(self) == 0:
            raise InputMismatchError("The PdCR bank is empty; give it at least one image larger than a block")
        if min(self.block_shape) < block_size and not self.images and self.kind != ZERO:
            raise InputMismatchError(
                f"The PdCR bank's blocks are {self.block_shape} but block_size is {block_size}; "
                "use a smaller block_size or rebuild the bank from images")

    def refuse_identical(self, x: torch.Tensor) -> None:
        """Refuse a bank holding the explained image itself (model space ``(C, *S)``)."""
        for i, im in enumerate(self.images):
            if tuple(im.shape) == tuple(x.shape) and torch.equal(im, x.to(im.dtype)):
                raise InputMismatchError(
                    f"PdCR bank image {i} is the image being explained; the bank must come from "
                    "other images (perturbations are drawn from the natural distribution, never from "
                    "the image itself)")

    def for_block_size(self, block_size: int, seed: int | None = None) -> torch.Tensor:
        """Blocks of edge ``block_size``: ``(K, C, b, ..)``.

        Re-cropped from the source images when the bank was built at another size,
        else random (seeded) sub-crops of larger stored blocks."""
        b = int(block_size)
        if self.block_shape == (b,) * self.spatial_dims:
            return self.blocks
        if self.kind == ZERO:
            return torch.zeros((len(self), self.channels) + (b,) * self.spatial_dims)
        if self.images:
            return crop_blocks(self.images, b, self.per_image, self.seed if seed is None else seed)
        if min(self.block_shape) < b:
            raise InputMismatchError(
                f"The PdCR bank's blocks are {self.block_shape} but block_size is {b}")
        g = torch.Generator().manual_seed(int(self.seed if seed is None else seed))
        out = []
        for blk in self.blocks:
            sl = [slice(None)]
            for s in blk.shape[1:]:
                o = int(torch.randint(0, s - b + 1, (1,), generator=g))
                sl.append(slice(o, o + b))
            out.append(blk[tuple(sl)])
        return torch.stack(out)

    def describe(self) -> str:
        """One line for reports: what the replacement content is."""
        if self.kind == ZERO:
            return "zero occlusion (blocks set to 0 in model space)"
        return f"{len(self)} real blocks from {self.source or 'the given images'}"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model-space blocks (``model_blocks``) to an ``.npz`` for reuse."""
        p = Path(path)
        np.savez_compressed(p, model_blocks=self.blocks.numpy().astype(np.float32),
                            source=np.asarray(self.source))
        return p


# ---------------------------------------------------------------------------- cropping --
def crop_blocks(images: Sequence[torch.Tensor], block_size: int, per_image: int = PER_IMAGE,
                seed: int = 0) -> torch.Tensor:
    """``per_image`` random ``block_size`` crops from each ``(C, *S)`` image -> ``(K, C, *B)``."""
    b = int(block_size)
    g = torch.Generator().manual_seed(int(seed))
    out = []
    small = []
    for i, im in enumerate(images):
        spatial = tuple(im.shape[1:])
        if min(spatial) < b:
            small.append((i, spatial))
            continue
        origins = torch.stack([torch.randint(0, s - b + 1, (per_image,), generator=g) for s in spatial], 1)
        for o in origins.tolist():
            out.append(im[(slice(None),) + tuple(slice(v, v + b) for v in o)])
    if not out:
        raise InputMismatchError(
            f"No PdCR bank image is at least {b} voxels along every axis "
            f"(shapes {[s for _, s in small]}); use a smaller block_size or larger images")
    return torch.stack(out).float().contiguous()


def zero_bank(model, block_size: int = 8) -> Bank:
    """Zero occlusion: one all-zero block in *model space* (the preprocessed network input).

    Works at any block size (:meth:`Bank.for_block_size` returns zeros of that size)."""
    b = int(block_size)
    blocks = torch.zeros((1, int(model.in_channels)) + (b,) * int(model.spatial_dims))
    return Bank(blocks, [], "zero occlusion (model space)", 1, 0, ZERO)


def _prepare(model, img, label: str) -> torch.Tensor:
    try:
        return model.prepare(img).x.float().contiguous()
    except InputMismatchError as exc:
        raise InputMismatchError(f"PdCR bank {label}: {exc}") from exc


def _as_stack(arr: np.ndarray, model, what: str) -> np.ndarray:
    """``(N, *S)`` / ``(N, C, *S)`` -> ``(N, C, *S)`` with a clear error on mismatch."""
    sd = model.spatial_dims
    if arr.ndim == sd + 1:
        arr = arr[:, None]
    if arr.ndim != sd + 2:
        raise InputMismatchError(
            f"PdCR bank {what} of shape {arr.shape} are not {sd}D: expected (N, *spatial) or "
            f"(N, C, *spatial) with {sd} spatial axes")
    if arr.shape[1] != model.in_channels:
        raise InputMismatchError(
            f"The PdCR bank's {what} have {arr.shape[1]} channel(s) but the model expects "
            f"{model.in_channels}; build the bank from images with the model's channels")
    return arr


def _npz_images(z, model) -> list:
    from .io import LoadedImage

    imgs = _as_stack(np.asarray(z["images"]), model, "images")
    require_finite(imgs, "PdCR bank images")
    spacing = tuple(float(s) for s in np.asarray(z["spacing"]).ravel()) if "spacing" in z.files else None
    out: list = []
    resample = (spacing is not None and model.spacing is not None
                and len(spacing) == model.spatial_dims
                and not np.allclose(spacing, model.spacing))
    for im in imgs:
        data = im if model.in_channels > 1 else im[0]
        if resample:
            out.append(LoadedImage.from_array(data, spacing, spatial_dims=model.spatial_dims))
        else:
            out.append(data)
    return out


def _load_npz(path: Path, model, block_size: int, per_image: int, seed: int, exclude) -> Bank:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ImageLoadError(f"Cannot read PdCR bank {path}: {exc}") from exc
    with z:
        if "images" in z.files:
            return build_bank(model, _npz_images(z, model), block_size, per_image, seed, exclude,
                              source=str(path))
        if "model_blocks" in z.files:
            blocks = torch.from_numpy(np.asarray(z["model_blocks"], dtype=np.float32))
            blocks = torch.as_tensor(_as_stack(blocks.numpy(), model, "blocks"))
            require_finite(blocks, f"PdCR bank {path.name} (model_blocks)")
            return Bank(blocks, [], str(path), per_image, seed)
        if "blocks" in z.files:
            raw = _as_stack(np.asarray(z["blocks"]), model, "blocks").astype(np.float32)
            require_finite(raw, f"PdCR bank {path.name} (blocks)")
            k, c, *bs = raw.shape
            # one mosaic (strip along the last axis) so that a per-image intensity
            # normalisation is computed over the whole bank, then cut back into blocks
            strip = np.concatenate(list(raw), axis=-1)
            x = _prepare(model, strip if c > 1 else strip[0], "blocks")
            blocks = torch.stack(torch.split(x, bs[-1], dim=-1)).contiguous()
            return Bank(blocks, [], str(path), per_image, seed)
    raise InputMismatchError(f"PdCR bank {path} has none of the keys images / blocks / model_blocks")


def default_bank_path(spatial_dims: int) -> Path | None:
    """The shipped sample bank for 2D or 3D models, if present."""
    try:
        from .paths import sample_path

        p = sample_path(f"pdcr_bank_{int(spatial_dims)}d.npz")
    except FileNotFoundError:
        return None
    return p if p.is_file() else None


def content_ids(blocks: torch.Tensor) -> torch.Tensor:
    """For each block of ``(K, ...)``, the index of the first block with exactly the same
    voxels (identical blocks share one id; ``-0.0`` and ``0.0`` count as different)."""
    arr = blocks.detach().to("cpu").contiguous().numpy()
    first: dict[bytes, int] = {}
    return torch.tensor([first.setdefault(arr[i].tobytes(), i) for i in range(len(arr))], dtype=torch.long)


def identical_groups(blocks: torch.Tensor) -> tuple[int, ...]:
    """Sizes of the groups of exactly identical blocks in ``(K, ...)`` (largest first)."""
    counts = torch.bincount(content_ids(blocks)) if len(blocks) else torch.zeros(0, dtype=torch.long)
    return tuple(sorted((int(c) for c in counts if c > 0), reverse=True))


def expected_distinct(groups: Sequence[int], n: float) -> float:
    """Expected number of distinct blocks among ``n`` uniform draws (with replacement) from
    a bank whose identical blocks form ``groups``: sum over groups of ``1 - (1 - p)^n``."""
    k = float(sum(groups))
    return float(sum(1.0 - (1.0 - g / k) ** n for g in groups)) if k else 0.0


@functools.lru_cache(maxsize=32)
def default_bank_groups(spatial_dims: int, block_size: int, per_image: int = PER_IMAGE,
                        seed: int = 0) -> tuple[int, ...]:
    """:func:`identical_groups` of the shipped sample bank at ``block_size``, for cost
    estimates (no model needed): blocks cropped from its stored images as :func:`crop_blocks`
    crops them, on their stored grid and intensities. The model's intensity preprocessing
    maps equal blocks to equal blocks, so it can only merge groups; resampling to another
    grid can change them. ``()`` when no bank is shipped or it has no ``images``."""
    p = default_bank_path(spatial_dims)
    if p is None:
        return ()
    try:
        with np.load(p, allow_pickle=False) as z:
            if "images" not in z.files:
                return ()
            imgs = np.asarray(z["images"], dtype=np.float32)
    except (OSError, ValueError):
        return ()
    if imgs.ndim == spatial_dims + 1:
        imgs = imgs[:, None]
    try:
        blocks = crop_blocks([torch.from_numpy(im) for im in imgs], block_size, per_image, seed)
    except InputMismatchError:
        return ()
    return identical_groups(blocks)


def _image_files(folder: Path) -> list[Path]:
    from .io import SUPPORTED_EXT

    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and any(p.name.lower().endswith(e) for e in SUPPORTED_EXT + (".npz",))]
    if not files:
        raise ImageLoadError(f"The PdCR bank folder {folder} holds no image files")
    return files


def build_bank(model, images: Iterable[Any], block_size: int = 8, per_image: int = PER_IMAGE,
               seed: int = 0, exclude: torch.Tensor | None = None, source: str = "") -> Bank:
    """Prepare each image like the model does, then crop ``per_image`` random blocks.

    ``images``: arrays (model grid, raw), LoadedImage objects or paths. ``exclude``: the
    prepared explained image ``(C, *S)``; a bank image identical to it is refused.
    """
    from .io import LoadedImage, load_image

    prepared: list[torch.Tensor] = []
    for i, im in enumerate(images):
        if isinstance(im, (str, os.PathLike)):
            im = load_image(im)
        elif isinstance(im, torch.Tensor):
            im = im.detach().cpu().numpy()
        require_finite(im.data if isinstance(im, LoadedImage) else np.asarray(im), f"PdCR bank image {i}")
        prepared.append(_prepare(model, im, f"image {i}"))
    if not prepared:
        raise InputMismatchError("The PdCR bank is empty; give it at least one image")
    bank = Bank(crop_blocks(prepared, block_size, per_image, seed), prepared, source or f"{len(prepared)} image(s)",
                per_image, seed)
    if exclude is not None:
        bank.refuse_identical(exclude)
    return bank


def resolve_bank(bank, model, block_size: int = 8, per_image: int = PER_IMAGE, seed: int = 0,
                 exclude: torch.Tensor | None = None) -> Bank:
    """Whatever the user gave as ``bank`` (see the module docstring) -> a checked :class:`Bank`.

    ``"zero"`` (any case) is zero occlusion (:func:`zero_bank`), never a path."""
    if isinstance(bank, str) and bank.strip().lower() == ZERO:
        out = zero_bank(model, block_size)
        out.check(model, block_size)
        return out
    if bank is None:
        p = default_bank_path(model.spatial_dims)
        if p is None:
            raise MethodError(
                f"PdCR needs a reference bank of {model.spatial_dims}D images like the explained one "
                "(bank=[arrays or files], a folder, or an .npz); no default sample bank is installed")
        bank = p
    if isinstance(bank, Bank):
        out = bank
    elif isinstance(bank, (str, os.PathLike)):
        p = Path(bank).expanduser()
        if not p.exists():
            raise ImageLoadError(f"No such PdCR bank file or folder: {p}")
        if p.is_dir():
            files = _image_files(p)
            npz = [f for f in files if f.suffix == ".npz"]
            imgs = [f for f in files if f.suffix != ".npz"]
            banks = [_load_npz(f, model, block_size, per_image, seed, exclude) for f in npz]
            if imgs:
                banks.append(build_bank(model, imgs, block_size, per_image, seed, exclude, source=str(p)))
            out = banks[0] if len(banks) == 1 else _concat(banks, block_size, seed, str(p))
        elif p.suffix == ".npz":
            out = _load_npz(p, model, block_size, per_image, seed, exclude)
        else:
            out = build_bank(model, [p], block_size, per_image, seed, exclude, source=str(p))
    elif isinstance(bank, (np.ndarray, torch.Tensor)):
        out = build_bank(model, [bank], block_size, per_image, seed, exclude, source="1 array")
    elif isinstance(bank, (list, tuple)):
        out = build_bank(model, list(bank), block_size, per_image, seed, exclude)
    else:
        from .io import LoadedImage

        if isinstance(bank, LoadedImage):
            out = build_bank(model, [bank], block_size, per_image, seed, exclude)
        else:
            raise MethodError(
                f"bank must be a list of images (arrays, loaded images or paths), a folder, an .npz "
                f"or a Bank, not {type(bank).__name__}")
    out.check(model, block_size)
    if exclude is not None:
        out.refuse_identical(exclude)
    return out


def _concat(banks: list[Bank], block_size: int, seed: int, source: str) -> Bank:
    blocks = torch.cat([b.for_block_size(block_size, seed) for b in banks])
    images = [im for b in banks for im in b.images]
    if any(b.kind == ZERO for b in banks):
        raise MethodError("zero occlusion cannot be mixed with real bank blocks")
    return Bank(blocks, images if all(b.images for b in banks) else [], source, banks[0].per_image, seed)
