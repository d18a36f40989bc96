"""Image input/output with spacing and orientation kept.

Array convention of the whole project
-------------------------------------
3D volumes are returned reoriented to **LPS** with axes ``(Z, Y, X) = (S, P, L)``:
z goes up towards superior, rows (y) go towards posterior, columns (x) go towards the
patient's left. Shown in napari an axial slice then appears in radiological convention
(anterior at the top, the patient's right on the left of the screen). 2D images are
``(Y, X)``. Multi-channel data is channel-first: ``(C, Z, Y, X)`` / ``(C, Y, X)``.
``spacing`` follows the same axis order (mm), and ``affine`` maps an index of the returned
array ``(z, y, x, 1)`` to RAS world millimetres, so napari's ``scale``/``translate`` are
``spacing`` and ``affine[:3, 3]`` when the direction cosines are axis-aligned.

``save_image`` writes an array that lives on a loaded image's grid back in that image's
*original* orientation and header (NIfTI in, NIfTI out with the same affine).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .budget import check_bytes
from .errors import ImageLoadError, InputMismatchError, SegExplainError, first_line
from .files import atomic_write, regular_file
from .model_grid import invert_ornt

NIFTI_EXT = (".nii", ".nii.gz")
ITK_EXT = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
PLAIN2D_EXT = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXT = (".tif", ".tiff")
SUPPORTED_EXT = NIFTI_EXT + ITK_EXT + PLAIN2D_EXT + TIFF_EXT + (".npy",)
WRITE_EXT = NIFTI_EXT + (".mha", ".nrrd") + TIFF_EXT + (".npy",)  # single-file formats only

# (z, y, x) index <-> (i, j, k) index permutation (its own inverse)
AXES_PERM = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class LoadedImage:
    """What :func:`load_image` returns: the array plus its geometry.

    ``spatial_dims`` is 2 or 3; ``channels`` is 1 for single-channel data (stored without
    a channel axis) and C for channel-first data.
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    path: str | None = None
    spatial_dims: int = 3
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.data.shape[0] if self.data.ndim > self.spatial_dims else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[-self.spatial_dims:])

    @property
    def origin(self) -> tuple[float, ...]:
        """World position (RAS mm) of voxel 0 in array axis order, for napari ``translate``.

        Exact for axis-aligned images; napari has no rotation, so oblique direction
        cosines are dropped (the viewer shows the voxel grid)."""
        if self.spatial_dims == 2:
            return tuple(float(v) for v in self.meta.get("origin2d", (0.0, 0.0)))
        # express the world origin along the array axes: project onto each axis direction
        a = self.affine[:3, :3]
        t = self.affine[:3, 3]
        dirs = a / np.linalg.norm(a, axis=0, keepdims=True)
        return tuple(float(v) for v in dirs.T @ t)

    def with_data(self, data: np.ndarray) -> LoadedImage:
        """The same geometry with other voxel values (e.g. an attribution on this grid)."""
        return LoadedImage(np.asarray(data), self.spacing, self.affine, self.path,
                           self.spatial_dims, dict(self.meta))

    # ---- building an image from memory (front ends: 3D Slicer, notebooks) ----------------
    @classmethod
    def from_ijk(cls, array: np.ndarray, ijk_to_ras: np.ndarray, *, path: str | None = None,
                 header: Any = None) -> LoadedImage:
        """An image from a voxel array in stored ``(i, j, k)`` order and its 4×4 IJK→RAS matrix.

        ``array`` is indexed like a NIfTI data array (nibabel's ``dataobj``): ``(i, j, k)``,
        or ``(i, j, k, C)`` with a **trailing** channel axis (NIfTI's layout; a leading axis
        would be ambiguous with a short ``i`` axis). 3D Slicer's ``arrayFromVolume`` is
        ``(k, j, i[, C])``: pass ``a.transpose(2, 1, 0[, 3])`` with the node's IJKToRAS.
        The result is exactly what :func:`load_image` returns for a NIfTI file holding that
        array and affine (:func:`load_image` builds its NIfTI images here): the LPS
        ``(Z, Y, X)`` array, spacing, affine and the stored voxel order in ``meta``
        (``src_affine``, ``xfm``, ``src_shape``), which nnU-Net models read because they
        see voxels in the order they were stored. :meth:`to_ijk` maps an array on the
        result's grid back to the stored order. ``header``: a NIfTI header to keep for
        :func:`save_image` (default: a fresh one for this array and affine).
        Raises :class:`~seg_explain.errors.InputMismatchError` for a bad array or matrix.
        """
        from nibabel import orientations as ornt

        data = np.asanyarray(array)
        aff = np.asarray(ijk_to_ras, dtype=float)
        if data.ndim not in (3, 4):
            raise InputMismatchError(f"from_ijk expects an (i, j, k) or (i, j, k, C) array, got shape {data.shape}")
        if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise InputMismatchError("the IJK→RAS matrix (affine) must be a finite, invertible 4×4 matrix")
        if header is None:
            import nibabel as nib

            try:
                header = nib.Nifti1Image(data, aff).header
            except nib.spatialimages.HeaderDataError:   # bool, float16 ...: a header for the shape
                header = nib.Nifti1Image(np.broadcast_to(np.float32(0), data.shape), aff).header
        src = ornt.io_orientation(aff)
        xfm = ornt.ornt_transform(src, ornt.axcodes2ornt(("L", "P", "S")))
        lps = ornt.apply_orientation(data, xfm)
        aff_ijk = aff @ ornt.inv_ornt_aff(xfm, data.shape[:3])
        zyx = np.moveaxis(lps, (0, 1, 2), (2, 1, 0))  # (k, j, i, [c]) = (z, y, x, [c])
        if zyx.ndim == 4:
            zyx = np.moveaxis(zyx, 3, 0)
            if zyx.shape[0] == 1:
                zyx = zyx[0]
        vox = np.linalg.norm(aff_ijk[:3, :3], axis=0)
        spacing = tuple(float(v) for v in vox[::-1])
        meta = {"format": "nifti", "xfm": xfm, "src_shape": data.shape, "src_affine": aff, "header": header}
        return cls(np.ascontiguousarray(zyx), spacing, aff_ijk @ AXES_PERM, path, 3, meta)

    def to_ijk(self, data: np.ndarray) -> np.ndarray:
        """An array on this image's grid (``(Z, Y, X)`` or channel-first ``(C, Z, Y, X)``) in the
        stored ``(i, j, k[, C])`` order of the array :meth:`from_ijk` (or a NIfTI file) gave,
        so that it lies on the original IJK→RAS matrix (``meta["src_affine"]``)."""
        from nibabel import orientations as ornt

        if self.spatial_dims != 3 or "xfm" not in self.meta:
            raise InputMismatchError("to_ijk needs a 3D image built by from_ijk or read from NIfTI")
        data = np.asarray(data)
        if data.shape[-3:] != self.spatial_shape:
            raise InputMismatchError(f"an array of shape {data.shape} is not on this image's grid {self.spatial_shape}")
        ijk = np.moveaxis(data, (-3, -2, -1), (-1, -2, -3)) if data.ndim == 3 else \
            np.moveaxis(np.moveaxis(data, 0, -1), (0, 1, 2), (2, 1, 0))
        return ornt.apply_orientation(ijk, invert_ornt(self.meta["xfm"]))

    @classmethod
    def from_array(cls, array: np.ndarray, spacing: tuple[float, ...] | None = None, *,
                   spatial_dims: int | None = None, path: str | None = None,
                   origin: tuple[float, ...] | None = None) -> LoadedImage:
        """An image from an array already in the project's axis order: ``(Y, X)`` / ``(C, Y, X)``
        or LPS ``(Z, Y, X)`` / ``(C, Z, Y, X)`` (see the module docstring), with ``spacing``
        in mm in the same order (default 1 mm), axis-aligned. ``spatial_dims`` defaults to
        ``len(spacing)``, else 2 for a 2D array and 3 otherwise. Data without an orientation
        (a TIFF stack, a numpy volume) gets this geometry from :func:`load_image` too.
        ``origin``: where voxel 0 lies, in mm along the array's axes (napari's ``translate``;
        default 0)."""
        arr = np.asarray(array)
        if spatial_dims is None:
            spatial_dims = len(spacing) if spacing is not None else (2 if arr.ndim == 2 else 3)
        if spatial_dims not in (2, 3) or arr.ndim not in (spatial_dims, spatial_dims + 1):
            raise InputMismatchError(f"from_array: an array of shape {arr.shape} is not a {spatial_dims}D image")
        if spacing is not None and (len(spacing) != spatial_dims
                                    or not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing)):
            raise InputMismatchError(f"from_array: spacing {tuple(spacing)} must be {spatial_dims} numbers > 0")
        return _plain(arr, spatial_dims, path, None if spacing is None else tuple(spacing), origin)


def file_ext(path: Path) -> str:
    """The file's extension, lower case, with ``.nii.gz`` as one (``a.NII.GZ`` -> ``.nii.gz``)."""
    name = path.name.lower()
    for e in (".nii.gz",):
        if name.endswith(e):
            return e
    return path.suffix.lower()


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ImageLoadError(f"No such file or folder: {path}")


IMAGE_EXTS_FOR_STEM = (".nii.gz", ".nii", ".tiff", ".tif", ".npy", ".png", ".mha", ".nrrd", ".mhd", ".jpg")


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``case1.nii.gz`` -> ``case1``)."""
    p = Path(path)
    n = p.name
    for ext in IMAGE_EXTS_FOR_STEM:
        if n.lower().endswith(ext):
            return n[: -len(ext)]
    return p.stem


def image_list(images) -> list:
    """One image (array, LoadedImage, path) or a sequence of them -> a list."""
    if isinstance(images, (np.ndarray, LoadedImage, str, os.PathLike)):
        return [images]
    return list(images)


def image_name(img, i: int) -> str:
    """The name of the ``i``-th image in tables: its file stem, else ``image_<i>``."""
    if isinstance(img, (str, os.PathLike)):
        return image_stem(img)
    if isinstance(img, LoadedImage) and img.path:
        return image_stem(img.path)
    return f"image_{i}"


def as_loaded(img):
    """A path is read with :func:`load_image`; arrays and LoadedImages are returned as they are."""
    return load_image(img) if isinstance(img, (str, os.PathLike)) else img


def load_image(path: str | os.PathLike, series: str | None = None, magnitude: bool = False) -> LoadedImage:
    """Read a NIfTI, MHA/MHD/NRRD, DICOM (file or series folder), PNG/JPEG or TIFF image.

    3D data comes back reoriented to LPS ``(Z, Y, X)``; see the module docstring.
    ``series``: the SeriesInstanceUID to read from a DICOM folder holding several series
    (without it such a folder is refused with the list of its series). Complex-valued
    images are refused unless ``magnitude=True`` (their magnitude is then read, and
    ``meta["complex"]`` says so). Sizes from headers are checked against the memory budget
    (:mod:`seg_explain.budget`) before the voxels are read.
    Raises :class:`~seg_explain.errors.ImageLoadError` with a one-line reason.
    """
    p = Path(path).expanduser()
    _check_exists(p)
    regular_file(p, "image file", allow_dir=True)   # never open a FIFO / device / socket
    if series is not None and not p.is_dir():
        raise ImageLoadError(f"A series can only be chosen in a DICOM folder; {p.name} is a file")
    ext = file_ext(p)
    try:
        img = _load_any(p, ext, series)
    except SegExplainError:
        raise
    except Exception as exc:  # corrupt / unreadable: one line, the cause kept
        raise ImageLoadError(f"Cannot read {p.name}: {first_line(exc)}") from exc
    if np.iscomplexobj(img.data):
        if not magnitude:
            raise ImageLoadError(_COMPLEX.format(name=p.name))
        img.data = np.abs(img.data)
        img.meta["complex"] = "magnitude"
    return img


_COMPLEX = ("{name} holds complex values; seg-explain does not guess which part to use. Give the magnitude "
            "image (or load it with magnitude=True / --magnitude to use |value|)")


def _load_any(p: Path, ext: str, series: str | None) -> LoadedImage:
    if p.is_dir():
        return _load_dicom_series(p, series)
    if ext in NIFTI_EXT:
        return _load_nifti(p)
    if ext in ITK_EXT:
        return _load_sitk(p)
    if ext in TIFF_EXT:
        return _load_tiff(p)
    if ext in PLAIN2D_EXT:
        return _load_plain2d(p)
    if ext == ".npy":
        _check_npy_header(p)
        arr = np.load(p, allow_pickle=False)
        nd = 3 if arr.ndim >= 3 and not (arr.ndim == 3 and arr.shape[0] <= 4) else 2
        return _plain(arr, nd, str(p))
    raise ImageLoadError(
        f"Unsupported image type '{ext or p.name}' ({p.name}); use one of "
        + ", ".join(SUPPORTED_EXT) + " or a DICOM folder")


def _check_size(p: Path, shape, dtype, copies: int = 2) -> None:
    """Refuse an image whose header promises more voxels than the memory budget allows, before
    reading them (``copies``: the arrays loading makes: the voxels and the reoriented copy)."""
    shape = tuple(int(v) for v in shape)
    n = float(np.prod([max(v, 0) for v in shape], dtype=np.float64)) * np.dtype(dtype).itemsize * copies
    dims = "\u00d7".join(str(v) for v in shape)
    check_bytes(n, f"{p.name} ({dims} voxels of {np.dtype(dtype).name} by its header)", error=ImageLoadError)


def _check_npy_header(p: Path) -> None:
    with open(p, "rb") as fh:
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(fh)
    _check_size(p, shape, dtype, copies=1)


def _plain(arr: np.ndarray, spatial_dims: int, path: str | None,
           spacing: tuple[float, ...] | None = None, origin: tuple[float, ...] | None = None) -> LoadedImage:
    spacing = tuple(float(s) for s in (spacing or (1.0,) * spatial_dims))
    meta: dict = {"format": "array"}
    if spatial_dims == 3:
        aff = LPS_TO_RAS @ np.diag([spacing[2], spacing[1], spacing[0], 1.0]) @ AXES_PERM
        if origin is not None:
            dirs = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0, keepdims=True)
            aff[:3, 3] = dirs @ np.asarray(origin, float)
    else:
        aff = np.diag([spacing[0], spacing[1], 1.0, 1.0])
        if origin is not None:
            aff[:2, 3] = np.asarray(origin, float)
            meta["origin2d"] = tuple(float(t) for t in origin)
    return LoadedImage(np.ascontiguousarray(arr), spacing, aff, path, spatial_dims, meta)


def _load_nifti(p: Path) -> LoadedImage:
    import nibabel as nib

    img = nib.load(str(p))
    # sizes before allocation: the header's voxel count x dtype (x2 when scaled to float)
    _check_size(p, img.header.get_data_shape(), img.get_data_dtype(),
                copies=2 * (2 if img.dataobj.slope != 1 or img.dataobj.inter != 0 else 1))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, t=1, c)
        data = data[:, :, :, 0]
    if data.ndim == 2:  # a single slice stored as NIfTI
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise ImageLoadError(f"Cannot read {p.name}: expected a 3D or 4D NIfTI, got {data.ndim}D")
    return LoadedImage.from_ijk(data, img.affine, path=str(p), header=img.header)


def _sitk_to_loaded(img, path: str, fmt: str) -> LoadedImage:
    import SimpleITK as sitk

    dim = img.GetDimension()
    if dim == 2 or (dim == 3 and img.GetSize()[2] == 1 and fmt != "dicom"):
        arr = sitk.GetArrayFromImage(img)
        if dim == 3:
            arr = arr[0]
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr = np.moveaxis(arr, -1, 0)
        sp = img.GetSpacing()[:2][::-1]
        lo = _plain(arr, 2, path, sp)
        lo.meta.update(format=fmt, origin2d=tuple(img.GetOrigin()[:2][::-1]))
        return lo
    if dim != 3:
        raise ImageLoadError(f"Cannot read {Path(path).name}: {dim}D images are not supported")
    orig_dir = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
    img = sitk.DICOMOrient(img, "LPS")
    arr = sitk.GetArrayFromImage(img)  # (k, j, i[, c])
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
    d = np.array(img.GetDirection()).reshape(3, 3)
    sp = np.array(img.GetSpacing())
    aff_ijk_lps = np.eye(4)
    aff_ijk_lps[:3, :3] = d * sp[None, :]
    aff_ijk_lps[:3, 3] = img.GetOrigin()
    aff = LPS_TO_RAS @ aff_ijk_lps @ AXES_PERM
    meta = {"format": fmt, "sitk_orientation": orig_dir}
    return LoadedImage(np.ascontiguousarray(arr), tuple(float(s) for s in sp[::-1]), aff,
                       path, 3, meta)


def _sitk_header(reader, p: Path, n_files: int = 1) -> None:
    """After ``ReadImageInformation`` (the header only): refuse a size over the memory budget
    before SimpleITK allocates it (``n_files``: the slices of a DICOM series)."""
    import SimpleITK as sitk

    dims = [max(int(v), 0) for v in reader.GetSize()]
    if n_files > 1:
        dims = dims[:2] + [n_files]
    # the pixel type's numpy dtype from a 1-voxel, 1-component image of the same type
    one = sitk.Image([1] * len(reader.GetSize()), reader.GetPixelID(), 1)
    comps = max(1, int(reader.GetNumberOfComponents()))
    _check_size(p, dims[::-1] + ([comps] if comps > 1 else []), sitk.GetArrayViewFromImage(one).dtype)


def _load_sitk(p: Path) -> LoadedImage:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()   # the header only: sizes are checked before the voxels are read
        _sitk_header(reader, p)
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageLoadError(f"Cannot read {p.name}: {_itk_reason(exc)}") from None
    return _sitk_to_loaded(img, str(p), "dicom" if file_ext(p) == ".dcm" else "itk")


def _itk_reason(exc: Exception) -> str:
    """ITK's own line of an exception ("ITK ERROR: NrrdImageIO(0x55..): <what>") without the
    C++ file/line and object address SimpleITK puts around it."""
    for line in str(exc).splitlines():
        if "ITK ERROR" in line or "Description:" in line:
            return _printable(line.split("):", 1)[-1].split("Description:", 1)[-1].strip(), 200)
    return "not a readable image (SimpleITK could not parse its header)"


def _printable(text: str, limit: int = 64) -> str:
    """A name read from a file, control characters escaped (a DICOM description may hold any)."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text).strip())
    return out[:limit] + ("..." if len(out) > limit else "")


def _dicom_series(p: Path) -> list[tuple[str, str, list[str]]]:
    """(SeriesInstanceUID, description, files) of every series in the folder ``p``."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    out = []
    for uid in reader.GetGDCMSeriesIDs(str(p)):
        files = list(reader.GetGDCMSeriesFileNames(str(p), uid))
        desc = ""
        if files:
            head = sitk.ImageFileReader()
            head.SetFileName(files[0])
            try:
                head.ReadImageInformation()
                desc = head.GetMetaData("0008|103e") if head.HasMetaDataKey("0008|103e") else ""
            except RuntimeError:
                desc = "(unreadable)"
        out.append((uid, desc, files))
    return out


def _load_dicom_series(p: Path, series: str | None = None) -> LoadedImage:
    import SimpleITK as sitk

    found = _dicom_series(p)
    if not found:
        raise ImageLoadError(f"No DICOM series found in folder {p}")
    listing = "; ".join(f"{_printable(uid)} ({_printable(d) or 'no description'}, {len(f)} files)"
                        for uid, d, f in found)
    if series is None and len(found) > 1:
        raise ImageLoadError(f"DICOM folder {p.name} holds {len(found)} series: {listing}; choose one with "
                             "--series UID (load_image(path, series=UID))")
    chosen = [f for uid, _, f in found if series is None or uid == series]
    if not chosen:
        raise ImageLoadError(f"DICOM folder {p.name} has no series '{_printable(series)}'; it holds: {listing}")
    files = chosen[0]
    head = sitk.ImageFileReader()
    head.SetFileName(files[0])
    try:
        head.ReadImageInformation()
        _sitk_header(head, p, n_files=len(files))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        img = reader.Execute()
    except RuntimeError as exc:
        raise ImageLoadError(f"Cannot read the DICOM series in {p.name}: {_itk_reason(exc)}") from None
    return _sitk_to_loaded(img, str(p), "dicom")


def _load_tiff(p: Path) -> LoadedImage:
    import tifffile

    with tifffile.TiffFile(str(p)) as tf:
        arr = tf.asarray()
        ij = tf.imagej_metadata or {}
        page = tf.pages[0]
        sp_xy = []
        for tag in ("YResolution", "XResolution"):
            t = page.tags.get(tag)
            if t is not None and t.value[0]:
                sp_xy.append(t.value[1] / t.value[0])
            else:
                sp_xy.append(1.0)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:  # RGB(A) 2D
        return _plain(np.moveaxis(arr[..., :3], -1, 0), 2, str(p), tuple(sp_xy))
    if arr.ndim == 2:
        return _plain(arr, 2, str(p), tuple(sp_xy))
    if arr.ndim == 3 and arr.shape[0] <= 4 and not ij.get("slices"):
        return _plain(arr, 2, str(p), tuple(sp_xy))  # channel-first 2D
    if arr.ndim in (3, 4):
        sz = float(ij.get("spacing", 1.0))
        if arr.ndim == 4 and arr.shape[1] <= 4:  # ImageJ ZCYX -> CZYX
            arr = np.moveaxis(arr, 1, 0)
        return _plain(arr, 3, str(p), (sz, sp_xy[0], sp_xy[1]))
    raise ImageLoadError(f"Cannot read {p.name}: unsupported TIFF layout {arr.shape}")


def _load_plain2d(p: Path) -> LoadedImage:
    import imageio.v3 as iio

    arr = np.asarray(iio.imread(str(p)))
    if arr.ndim == 3:
        arr = arr[..., :3]
        if np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2]):
            arr = arr[..., 0]  # grey stored as RGB
        else:
            arr = np.moveaxis(arr, -1, 0)
    return _plain(arr, 2, str(p))


def save_image(path: str | os.PathLike, data: np.ndarray, like: LoadedImage | None = None) -> Path:
    """Write ``data`` (on ``like``'s grid, project axis convention) to ``path``.

    NIfTI output of a NIfTI input restores the input's orientation and affine exactly.
    Other inputs get an affine built from ``like.affine``. ``.tif``/``.tiff`` (ImageJ, with
    spacing), ``.npy``, ``.mha``/``.nrrd`` are also written. Returns the path written.
    """
    p = Path(path).expanduser()
    ext = file_ext(p)
    if ext not in WRITE_EXT:
        raise ImageLoadError(f"Cannot write '{ext}' files ({p.name}); use .nii.gz, .tif, .npy, .mha or .nrrd")
    with atomic_write(p) as tmp:   # an interrupted write never leaves a truncated file behind
        _write(tmp, ext, np.asarray(data), like)
    return p


def _write(p: Path, ext: str, data: np.ndarray, like: LoadedImage | None) -> None:
    data = np.asarray(data)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if ext in NIFTI_EXT:
        import nibabel as nib
        from nibabel import orientations as ornt

        if like is not None and like.spatial_dims == 3 and like.meta.get("format") == "nifti":
            ijk = np.moveaxis(data, (-3, -2, -1), (-1, -2, -3)) if data.ndim == 3 else \
                np.moveaxis(np.moveaxis(data, 0, -1), (0, 1, 2), (2, 1, 0))
            back = ornt.apply_orientation(ijk, invert_ornt(like.meta["xfm"]))
            hdr = like.meta["header"].copy()
            hdr.set_data_dtype(back.dtype)
            out = nib.Nifti1Image(back, like.meta["src_affine"], hdr)
        else:
            if data.ndim == 2:
                arr, aff = data.T[:, :, None], np.diag(list((like.spacing if like else (1, 1))[::-1]) + [1, 1])
            else:
                arr = np.moveaxis(data, (-3, -2, -1), (-1, -2, -3)) if data.ndim == 3 else \
                    np.moveaxis(np.moveaxis(data, 0, -1), (0, 1, 2), (2, 1, 0))
                aff = (like.affine if like is not None else np.eye(4)) @ AXES_PERM
            out = nib.Nifti1Image(arr, aff)
        nib.save(out, str(p))
    elif ext in TIFF_EXT:
        import tifffile

        sp = like.spacing if like is not None else (1.0,) * min(data.ndim, 3)
        kw: dict[str, Any] = {"resolution": (1.0 / sp[-1], 1.0 / sp[-2])}
        if data.ndim == 3 and (like is None or like.spatial_dims == 3):
            kw["imagej"] = data.dtype in (np.uint8, np.uint16, np.float32)
            if kw["imagej"]:
                kw["metadata"] = {"spacing": float(sp[0]), "unit": "mm", "axes": "ZYX"}
        tifffile.imwrite(str(p), data, **kw)
    elif ext == ".npy":
        np.save(p, data)
    elif ext in (".mha", ".nrrd"):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(data)
        if like is not None:
            img.SetSpacing(tuple(float(s) for s in like.spacing[::-1]))
            if like.spatial_dims == 3 and data.ndim == 3:
                aff_lps = LPS_TO_RAS @ like.affine @ AXES_PERM
                img.SetOrigin(tuple(float(v) for v in aff_lps[:3, 3]))
                d = aff_lps[:3, :3] / np.linalg.norm(aff_lps[:3, :3], axis=0, keepdims=True)
                img.SetDirection(tuple(float(v) for v in d.ravel()))
        sitk.WriteImage(img, str(p))
