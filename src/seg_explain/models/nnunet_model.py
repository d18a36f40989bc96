"""The :class:`SegModel` of an nnU-Net v2 trained-model folder: images prepared and windows
run as ``nnUNetPredictor`` does (``tests/test_nnunet.py`` compares on held-out images).

- **Geometry.** nnU-Net works on the voxel array as SimpleITK reads the file (axes
  ``(k, j, i)``, never reoriented), transposed by ``transpose_forward``. An image from
  :func:`seg_explain.load_image` keeps its file's orientation in ``meta``, so the LPS array is
  turned back into that array (``orientation="RAS"`` instead reorients every image to that
  orientation first, as TotalSegmentator does before calling nnU-Net). Arrays without a file
  are taken to be nnU-Net's array already, at the configuration's spacing.
- **Preprocessing**: crop to the nonzero box, normalise, resample
  (``seg_explain.models.nnunet_normalization``, ``seg_explain.models.nnunet_resampling``);
  logits go back with the plans' probability resampling (``seg_explain.models.nnunet_grid``),
  background outside the box. A 2D configuration explains one slice of a volume at a time,
  the slice prepared as nnU-Net prepares the whole volume (:meth:`NnUNetModel.volume_slice`).
- **Sliding windows** ``compute_steps_for_sliding_window`` (tile step 0.5), padding to the
  patch, nnU-Net's float16 Gaussian (sigma 1/8, scaled to 10, zeros lifted to the minimum;
  ``seg_explain.models.nnunet_windows``). Sums are kept in float32 (nnU-Net 2.8 keeps them
  in float16, which costs it up to ~0.5 logit where the Gaussian weights underflow;
  ``accumulate_dtype = torch.float16`` reproduces that too).

Explainers call :meth:`SegModel.forward` on patch-sized windows; this model always windows
at the patch size (also images smaller than the patch are padded to it), so instance
normalisation sees what it sees in nnU-Net. The explainers take their windows and weights
from the model (``seg_explain.windows``, ``seg_explain.explainers.engine``):
:meth:`NnUNetModel.tiling` is nnU-Net's windows and padding, :meth:`NnUNetModel.importance_map`
its float16 Gaussian (as float32), from which :meth:`SegModel.window_weights` gives each
window's ``w / sum w``, and f-hat of a batch is :meth:`NnUNetModel.blended_logits`, nnU-Net's
own blend. So the explained f-hat is ``logits_tensor``'s (``tests/test_nnunet.py`` rebuilds
``logits_tensor`` from ``tiling`` and ``importance_map``; ``tests/test_model_contract.py``
checks every evaluation against the model's own output). The two differ only by rounding, most
with ``accumulate_dtype = torch.float16``: the window weights are still summed in float32, and
``logits_tensor`` blends several folds one by one where ``blended_logits`` blends their mean.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputMismatchError
from ..io import LoadedImage
from ..model_grid import ModelGrid, orientation_transform
from .nnunet_grid import NnUNetGrid
from .nnunet_network import NnUNetEnsemble
from .nnunet_normalization import crop_to_nonzero, intensity_properties, normalize_channel
from .nnunet_resampling import ANISO_THRESHOLD, Resampling, compute_new_shape
from .nnunet_windows import nnunet_gaussian, sliding_window_steps
from .segmodel import Prepared, SegModel

TWO_D_THICKNESS = 999.0      # slice thickness nnU-Net's 2D readers give a 2D image
OUTSIDE_LOGIT = -30.0        # non-background logits where nnU-Net never runs (softmax bg ~ 1)
MAX_MODEL_VOXELS = 2 ** 31


def _divisor(strides, sd: int) -> int:
    """Least common multiple of the per-axis products of the stage strides."""
    per_axis = [1] * sd
    for st in strides or []:
        vals = st if isinstance(st, list) else [st] * sd
        for i, v in enumerate(vals[:sd]):
            per_axis[i] *= int(v) if isinstance(v, int) and v > 0 else 1
    return int(np.lcm.reduce(per_axis))


class NnUNetModel(SegModel):
    """A :class:`SegModel` that prepares images and runs windows exactly as nnU-Net v2 does.

    Extra attributes: ``mirror`` (test-time mirroring, off by default), ``tile_step_size``
    (0.5), ``accumulate_dtype`` (float32; float16 reproduces nnUNetPredictor's float16
    buffers), ``orientation`` (None: each file's own, as nnU-Net), ``folds``,
    ``configuration``, ``trainer``, ``checkpoints``."""

    def __init__(self, network: NnUNetEnsemble, *, plans: dict, conf: dict, configuration: str,
                 in_channels: int, class_names: Sequence[str], orientation: str | None = None,
                 tile_step_size: float = 0.5, **kw):
        sd = len(conf["patch_size"])
        self.transpose_forward = tuple(int(t) for t in plans.get("transpose_forward", range(3)))
        self.conf_spacing = tuple(float(s) for s in conf["spacing"])
        tb = np.argsort(self.transpose_forward)
        spacing = self.conf_spacing if sd == 2 else tuple(self.conf_spacing[int(i)] for i in tb)
        divisor = _divisor(conf["architecture"]["arch_kwargs"].get("strides"), sd)
        super().__init__(network, spatial_dims=sd, in_channels=in_channels, class_names=class_names,
                         patch_size=conf["patch_size"], spacing=spacing, axcodes=None, divisor=divisor,
                         overlap=0.5, blend="gaussian", owns_network=True, **kw)
        self.sigma_scale = 1.0 / 8
        self.plans = plans
        self.conf = conf
        self.configuration = configuration
        self.orientation = orientation
        self.tile_step_size = float(tile_step_size)
        self.accumulate_dtype = torch.float32
        self.schemes = list(conf["normalization_schemes"])
        self.use_mask = [bool(v) for v in conf["use_mask_for_norm"]]
        fip = plans.get("foreground_intensity_properties_per_channel",
                        plans.get("foreground_intensity_properties_by_modality", {})) or {}
        self.intensity = [intensity_properties(fip.get(str(c)), s,
                                     f"plans.json.foreground_intensity_properties_per_channel.{c}")
                          for c, s in enumerate(self.schemes)]
        self.data_kwargs = dict(conf.get("resampling_fn_data_kwargs") or {})
        self.prob_kwargs = dict(conf.get("resampling_fn_probabilities_kwargs") or {})

    # ------------------------------------------------------------------ options --
    @property
    def mirror(self) -> bool:
        """nnU-Net's test-time mirroring (off by default for explanations)."""
        return bool(self.network.mirror)

    @mirror.setter
    def mirror(self, value: bool) -> None:
        self.network.mirror = bool(value)

    @property
    def folds(self) -> list[str]:
        return list(self.meta["nnunet"]["folds"])

    def __repr__(self) -> str:
        n = self.meta.get("nnunet", {})
        return (f"NnUNetModel({self.name!r}, {self.spatial_dims}D, folds={n.get('folds')}, "
                f"mirror={self.mirror}, in={self.in_channels}, classes={len(self.class_names)}, "
                f"patch={self.patch_size}, spacing={self.conf_spacing}, device={self.device})")

    # ------------------------------------------------------------------ geometry --
    def _sitk_codes(self, image) -> tuple[str, ...] | None:
        if self.orientation:
            return tuple(reversed(tuple(self.orientation.upper())))
        if isinstance(image, LoadedImage) and image.spatial_dims == 3:
            m = image.meta or {}
            if m.get("src_affine") is not None:
                import nibabel as nib

                return tuple(reversed(nib.aff2axcodes(np.asarray(m["src_affine"], float))))
            so = m.get("sitk_orientation")
            if isinstance(so, str) and len(so) == 3:
                return tuple(reversed(tuple(so.upper())))
        return None

    def _slicing(self, image: LoadedImage) -> tuple[ModelGrid, tuple[int, ...], list[float]]:
        if not isinstance(image, LoadedImage) or image.spatial_dims != 3:
            raise InputMismatchError("a 2D nnU-Net configuration slices a 3D image from load_image")
        codes = self._sitk_codes(image)
        ornt = orientation_transform(codes) if codes else None
        grid = ModelGrid(image.spatial_shape, image.spatial_shape, ornt)
        order = np.argsort(ornt[:, 0]) if ornt is not None else range(3)
        sp_q = [float(image.spacing[int(i)]) for i in order]
        return grid, self.transpose_forward, sp_q

    def _to_t(self, arr: np.ndarray, image: LoadedImage) -> np.ndarray:
        """A volume-grid array ``(C, *volume)`` -> nnU-Net's transposed array ``(C, Zt, Yt, Xt)``."""
        grid, tf, _ = self._slicing(image)
        return grid.reorient(np.asarray(arr), inverse=False).transpose([0] + [a + 1 for a in tf])

    def n_slices(self, image: LoadedImage) -> int:
        """How many slices :meth:`volume_slice` can take from ``image``."""
        grid, tf, _ = self._slicing(image)
        return int(grid.oriented_shape[tf[0]])

    def slice_of(self, arr, image: LoadedImage, index: int) -> np.ndarray:
        """Slice ``index`` of a volume-grid array (an RoI, a label map) in nnU-Net's plane."""
        a = np.asarray(arr)
        t = self._to_t(a[None], image)
        if not 0 <= int(index) < t.shape[1]:
            raise InputMismatchError(f"slice {index} is outside 0..{t.shape[1] - 1}")
        return np.ascontiguousarray(t[0, int(index)])

    def volume_slice(self, image: LoadedImage, index: int) -> LoadedImage:
        """Slice ``index`` of a 3D image as the 2D image a 2D configuration sees: the plane
        nnU-Net slices (its first axis after ``transpose_forward``, usually axial), in the
        file's voxel order, with the in-plane spacing. It is prepared as nnU-Net prepares
        the whole volume (crop to the *volume's* nonzero box, normalisation over the cropped
        volume, in-plane resampling), so explaining a slice explains what
        :meth:`predict` outputs on it. :meth:`embed_slice` puts a result back on the volume."""
        arr = image.data if image.data.ndim == 4 else image.data[None]
        k = int(index)
        if not 0 <= k < self.n_slices(image):
            raise InputMismatchError(f"slice {index} is outside 0..{self.n_slices(image) - 1}")
        sl = np.ascontiguousarray(self._to_t(arr, image)[:, k])
        x3, grid3 = self._prepare_volume(image)
        (z0, z1), bb_y, bb_x = grid3.bbox
        if not z0 <= k < z1:
            raise InputMismatchError(
                f"slice {k} lies outside the image's nonzero box (slices {z0}..{z1 - 1} in nnU-Net's plane): "
                "nnU-Net predicts background there without running the network, so there is nothing to explain")
        _, _, sp_q = self._slicing(image)
        tf = self.transpose_forward
        sp = (sp_q[tf[1]], sp_q[tf[2]])
        crop = (int(bb_y[0]), int(bb_y[1])), (int(bb_x[0]), int(bb_x[1]))
        box, model_plane = (1, crop[0][1] - crop[0][0], crop[1][1] - crop[1][0]), (1,) + tuple(x3.shape[2:])

        def in_plane(r: Resampling, src, dst) -> Resampling:
            # the volume's resampling restricted to one slice (the slice axis keeps its size)
            return Resampling(src, dst, r.order, r.order_z, 0 if r.axis is None else r.axis)

        grid2 = NnUNetGrid(tuple(sl.shape[1:]), tuple(x3.shape[2:]), None, transpose=None, two_d=True,
                           t_shape=(1,) + tuple(sl.shape[1:]), bbox=((0, 1),) + crop,
                           data_rs=in_plane(grid3.data_rs, box, model_plane),
                           prob_rs=in_plane(grid3.prob_rs, model_plane, box))
        data = sl[0] if image.data.ndim == 3 else sl
        prep = Prepared(torch.from_numpy(np.ascontiguousarray(x3[:, k - z0])), grid2, tuple(sl.shape[1:]))
        return LoadedImage(data, sp, np.diag([sp[0], sp[1], 1.0, 1.0]), image.path, 2,
                           {"format": "array", "nnunet_slice": k, "nnunet_prepared": (data, prep)})

    def embed_slice(self, arr, image: LoadedImage, index: int, fill=0) -> np.ndarray:
        """A map on :meth:`volume_slice` ``(..., Y, X)`` -> ``image``'s 3D grid, ``fill``
        on every other voxel."""
        grid, tf, _ = self._slicing(image)
        a = np.asarray(arr)
        q_shape = grid.oriented_shape
        t_shape = tuple(q_shape[i] for i in tf)
        if a.shape[-2:] != t_shape[1:]:
            raise InputMismatchError(f"a map of shape {a.shape} is not on this volume's slices {t_shape[1:]}")
        vol = np.full(a.shape[:-2] + t_shape, fill, dtype=a.dtype)
        vol[..., int(index), :, :] = a
        lead = a.ndim - 2
        back = vol.transpose(list(range(lead)) + [lead + int(i) for i in np.argsort(tf)])
        return grid.reorient(np.ascontiguousarray(back), inverse=True)

    def _prepare_volume(self, image: LoadedImage) -> tuple[np.ndarray, NnUNetGrid]:
        """A 2D configuration's preprocessing of a whole volume, as nnU-Net runs it: the
        volume in nnU-Net's axes, cropped to its 3D nonzero box, normalised over that box,
        resampled in plane to the configuration's spacing (the slice axis keeps its own)
        -> (model-space volume ``(C, Z, Y', X')``, its 3D grid)."""
        key = id(image.data)
        cached = getattr(self, "_volume_cache", None)
        if cached is not None and cached[0] == key and cached[1] is image.data:
            return cached[2], cached[3]
        arr, spacing = self._as_volume(image)
        x, grid = self._preprocess(arr, spacing, image, two_d_volume=True)
        self._volume_cache = (key, image.data, x, grid)
        return x, grid

    def _as_volume(self, image: LoadedImage):
        arr = image.data if image.data.ndim == 4 else image.data[None]
        if arr.shape[0] != self.in_channels:
            raise InputMismatchError(
                f"The model expects {self.in_channels} channel(s) but the image has {arr.shape[0]}")
        from ..checks import require_finite

        require_finite(arr, "The image")
        return arr, image.spacing

    def volume_logits(self, image: LoadedImage) -> np.ndarray:
        """A 2D configuration's logits of a whole volume on its grid, as nnUNetPredictor
        computes them: the volume prepared once (:meth:`_prepare_volume`), each slice of the
        model-space volume through the 2D windows, nnU-Net's probability resampling back,
        background outside the nonzero box."""
        x3, grid3 = self._prepare_volume(image)
        lg = np.stack([self.logits_tensor(torch.from_numpy(np.ascontiguousarray(x3[:, z]))).numpy()
                       for z in range(x3.shape[1])], axis=1)
        return self._fill_to_image(grid3, lg)

    def _fill_to_image(self, grid, lg: np.ndarray) -> np.ndarray:
        if self.accumulate_dtype == torch.float16:
            lg = lg.astype(np.float16)        # nnU-Net resamples its float16 logits as float16
        fill = np.full(lg.shape[0], OUTSIDE_LOGIT, lg.dtype)
        fill[0] = 0.0
        return grid.to_image(lg, order=1, fill=fill).astype(np.float32)

    def prepare(self, image) -> Prepared:
        """nnU-Net's preprocessing for inference -> :class:`Prepared` (model space)."""
        if isinstance(image, Prepared):
            return image
        own = image.meta.get("nnunet_prepared") if isinstance(image, LoadedImage) else None
        if own is not None and own[0] is image.data:     # a slice cut by volume_slice
            return own[1]
        arr, spacing = self._as_channels_first(image)
        x, grid = self._preprocess(arr, spacing, image)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return Prepared(xt, grid, tuple(arr.shape[1:]))

    def _preprocess(self, arr: np.ndarray, spacing, image, two_d_volume: bool = False):
        """nnU-Net's ``DefaultPreprocessor`` for inference: reorient and transpose, crop to
        the nonzero box, normalise, resample -> (model-space array, its grid)."""
        image_shape = tuple(arr.shape[1:])
        if self.spatial_dims == 3 or two_d_volume:
            codes = self._sitk_codes(image)
            ornt = orientation_transform(codes) if codes else None
            grid0 = ModelGrid(image_shape, image_shape, ornt)
            q = grid0.reorient(arr, inverse=False)
            if spacing is None:
                sp_q = list(self.spacing)
            else:
                order = np.argsort(ornt[:, 0]) if ornt is not None else range(3)
                sp_q = [float(spacing[int(i)]) for i in order]
            tf = self.transpose_forward
            t = q.transpose([0] + [a + 1 for a in tf])
            sp_t = [sp_q[a] for a in tf]
            # a 2D configuration keeps the slice axis' own spacing (nnU-Net's preprocessor)
            target = [sp_t[0]] + list(self.conf_spacing) if two_d_volume else list(self.conf_spacing)
        else:
            ornt, tf = None, None
            t = arr[:, None]
            sp_t = [TWO_D_THICKNESS] + list(spacing if spacing is not None else self.conf_spacing)
            target = [sp_t[0]] + list(self.conf_spacing)
        t = t.astype(np.float32)
        bbox, mask = crop_to_nonzero(t)
        c = t[(slice(None),) + tuple(slice(a, b) for a, b in bbox)]
        c = np.ascontiguousarray(c)
        for ch in range(c.shape[0]):
            c[ch] = normalize_channel(c[ch], self.schemes[ch], self.use_mask[ch], self.intensity[ch], mask)
        new_shape = compute_new_shape(c.shape[1:], sp_t, target)
        if int(np.prod(new_shape, dtype=np.int64)) * c.shape[0] > MAX_MODEL_VOXELS:
            raise InputMismatchError(f"The image would be {new_shape} voxels on this nnU-Net model's grid "
                                     f"(spacing {self.conf_spacing}); check its voxel spacing")
        kw = self.data_kwargs
        data_rs = Resampling.plan(c.shape[1:], new_shape, sp_t, target, kw.get("order", 3), kw.get("order_z", 0),
                                  kw.get("force_separate_z"), kw.get("separate_z_anisotropy_threshold",
                                                                     ANISO_THRESHOLD))
        pk = self.prob_kwargs
        prob_rs = Resampling.plan(new_shape, c.shape[1:], target, sp_t, pk.get("order", 1), pk.get("order_z", 0),
                                  pk.get("force_separate_z"), pk.get("separate_z_anisotropy_threshold",
                                                                     ANISO_THRESHOLD))
        x = c if data_rs.identity else data_rs.apply(c).astype(np.float32)
        two_d = self.spatial_dims == 2 and not two_d_volume
        if two_d:
            x = x[:, 0]
        grid = NnUNetGrid(image_shape, tuple(x.shape[1:]), ornt, transpose=tf, two_d=two_d,
                          t_shape=tuple(t.shape[1:]), bbox=bbox, data_rs=data_rs, prob_rs=prob_rs)
        from ..checks import require_finite

        require_finite(x, "The preprocessed image (after nnU-Net's normalisation)")
        return np.ascontiguousarray(x, dtype=np.float32), grid

    # --------------------------------------------------------------- inference --
    def needs_windows(self, shape: Sequence[int]) -> bool:
        """Always windows of the patch size (smaller images are padded to it), as nnU-Net."""
        return tuple(int(s) for s in shape) != tuple(self.patch_size)

    def window_starts(self, shape: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], list[list[int]]]:
        """(padding per axis, window start positions per axis) nnU-Net uses for a model-grid
        image of ``shape``."""
        patch = self.patch_size
        padded = [max(int(s), p) for s, p in zip(shape, patch)]
        pads = tuple(((p - int(s)) // 2, (p - int(s)) - (p - int(s)) // 2) for s, p in zip(shape, padded))
        return pads, sliding_window_steps(padded, patch, self.tile_step_size)

    def tiling(self, shape: Sequence[int]):
        """nnU-Net's windows as a :class:`seg_explain.windows.Tiling`."""
        from ..windows import Tiling

        pads, steps = self.window_starts(shape)
        wins = tuple(tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))
                     for starts in itertools.product(*steps))
        return Tiling(tuple(int(s) for s in shape), tuple(self.patch_size), pads, wins)

    def importance_map(self) -> torch.Tensor:
        """nnU-Net's blending weights for one window (its float16 Gaussian, as float32)."""
        return nnunet_gaussian(tuple(self.patch_size)).float()

    def _blend(self, x: torch.Tensor, run) -> torch.Tensor:
        """nnU-Net's ``predict_sliding_window_return_logits`` with ``run`` as the network:
        pad to the patch, windows at its steps, Gaussian-weighted sums in
        ``accumulate_dtype``, divide, crop."""
        shape = tuple(x.shape[1:])
        pads, steps = self.window_starts(shape)
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        xp = torch.nn.functional.pad(x, flat) if any(flat) else x
        padded = tuple(xp.shape[1:])
        dt = self.accumulate_dtype
        g = nnunet_gaussian(tuple(self.patch_size)).to(self.device).clone()   # cached: maybe an inference tensor
        acc = torch.zeros((self.out_channels,) + padded, dtype=dt, device=self.device)
        norm = torch.zeros(padded, dtype=dt, device=self.device)
        for starts in itertools.product(*steps):
            sl = tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size))
            pred = run(xp[(slice(None),) + sl][None].to(self.device))[0].float()
            pred = pred * g
            acc[(slice(None),) + sl] += pred
            norm[sl] += g
        out = torch.div(acc, norm)
        return out[(slice(None),) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))]

    def blended_logits(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of prepared images ``(B, C, *S)`` as nnU-Net blends them (the
        explainers' f̂ of a batch, e.g. KernelSHAP's coalitions)."""
        return torch.stack([self._blend(x, self.forward).float() for x in xb])

    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(L, *S)`` of one prepared image: nnU-Net's sliding windows and blending
        (several folds: the mean of their logits)."""
        with torch.inference_mode():
            if self.accumulate_dtype == torch.float32 or len(self.network.folds) == 1:
                return self._blend(x, self.forward).float().cpu()
            # nnUNetPredictor's own order: each fold blended, then summed and divided, all in
            # accumulate_dtype (only matters for its float16 rounding)
            total = None
            for net in self.network.folds:
                out = self._blend(x, lambda xb, n=net: self.network.run_one(n, xb)).cpu()
                total = out if total is None else total + out
            total /= len(self.network.folds)
            return total.float()

    def image_logits(self, prep: Prepared, logits) -> np.ndarray:
        """Logits on the image's grid: nnU-Net's probability resampling; outside the
        nonzero box nnU-Net never runs (background there: 0 for background, -30 others)."""
        lg = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        return self._fill_to_image(prep.grid, lg)

    def labels_from_logits(self, logits):
        """nnU-Net's ``convert_logits_to_segmentation``: argmax of the softmax."""
        if isinstance(logits, np.ndarray):
            return torch.softmax(torch.from_numpy(logits), 0).argmax(0).numpy()
        return torch.softmax(logits.float(), 0).argmax(0)

    def cam_networks(self) -> list[torch.nn.Module]:
        """One network per fold: a CAM hooks the same layer in each and is their mean."""
        return list(self.network.folds)
