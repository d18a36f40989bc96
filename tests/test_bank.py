"""The PdCR reference bank (bank.py): sources, model-space preprocessing, checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_explain import ImageLoadError, InputMismatchError, MethodError
from seg_explain.bank import Bank, build_bank, crop_blocks, default_bank_path, resolve_bank
from seg_explain.io import LoadedImage
from seg_explain.models import SegModel


class Ident(torch.nn.Module):
    def forward(self, x):
        return torch.cat([-x[:, :1], x[:, :1]], 1)


def model_(sd=2, ch=1, preprocess=(), spacing=None):
    return SegModel(Ident(), spatial_dims=sd, in_channels=ch, class_names=["bg", "fg"],
                    preprocess=preprocess, spacing=spacing, device="cpu")


def imgs(n=2, shape=(20, 24), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(shape).astype(np.float32) for _ in range(n)]


def test_blocks_are_random_crops_of_preprocessed_images():
    m = model_(preprocess=[lambda t: t * 10.0 + 1.0])
    src = imgs()
    bank = build_bank(m, src, block_size=8, per_image=100, seed=0)
    assert bank.blocks.shape == (200, 1, 8, 8) and len(bank.images) == 2
    # every block is a crop of a *preprocessed* image (raw * 10 + 1)
    pre = [torch.from_numpy(s * 10.0 + 1.0) for s in src]
    blk = bank.blocks[0, 0]
    found = any(torch.allclose(p[y:y + 8, x:x + 8], blk) for p in pre[:1]
                for y in range(13) for x in range(17))
    assert found
    assert float(bank.blocks.min()) >= 1.0
    # seeded
    again = build_bank(m, src, block_size=8, per_image=100, seed=0)
    other = build_bank(m, src, block_size=8, per_image=100, seed=1)
    assert torch.equal(bank.blocks, again.blocks) and not torch.equal(bank.blocks, other.blocks)


def test_sources_list_folder_paths_loaded(tmp_path):
    m = model_()
    src = imgs(3)
    folder = tmp_path / "bank"
    folder.mkdir()
    for i, a in enumerate(src):
        np.save(folder / f"b{i}.npy", a)
    (folder / "notes.txt").write_text("not an image")
    by_folder = resolve_bank(str(folder), m, 8, per_image=5)
    by_paths = resolve_bank([folder / f"b{i}.npy" for i in range(3)], m, 8, per_image=5)
    by_arrays = resolve_bank(src, m, 8, per_image=5)
    assert len(by_folder) == 15
    assert torch.equal(by_folder.blocks, by_arrays.blocks) and torch.equal(by_paths.blocks, by_arrays.blocks)
    loaded = LoadedImage(src[0], (1.0, 1.0), np.eye(4), None, 2)
    assert len(resolve_bank([loaded], m, 8, per_image=7)) == 7
    assert resolve_bank(by_arrays, m, 8) is by_arrays


def test_npz_formats(tmp_path):
    m = model_(preprocess=[lambda t: t / t.max()])
    src = np.stack(imgs(2))
    np.savez(tmp_path / "images.npz", images=src)
    b1 = resolve_bank(tmp_path / "images.npz", m, 8, per_image=4)
    assert b1.blocks.shape == (8, 1, 8, 8) and len(b1.images) == 2
    # raw blocks only: preprocessed together as one mosaic (max over the whole bank = 1)
    raw = np.stack([np.full((8, 8), v, np.float32) for v in (1.0, 2.0, 4.0)])
    np.savez(tmp_path / "blocks.npz", blocks=raw)
    b2 = resolve_bank(tmp_path / "blocks.npz", m, 8)
    assert torch.allclose(b2.blocks[:, 0, 0, 0], torch.tensor([0.25, 0.5, 1.0]))
    # a saved bank round-trips in model space, untouched
    b2.save(tmp_path / "saved.npz")
    b3 = resolve_bank(tmp_path / "saved.npz", m, 8)
    assert torch.equal(b3.blocks, b2.blocks)
    # larger stored blocks are sub-cropped to the block size; smaller ones are refused
    assert resolve_bank(tmp_path / "saved.npz", m, 4).for_block_size(4).shape == (3, 1, 4, 4)
    with pytest.raises(InputMismatchError, match="block_size is 16"):
        resolve_bank(tmp_path / "saved.npz", m, 16)
    with pytest.raises(InputMismatchError, match="none of the keys"):
        np.savez(tmp_path / "bad.npz", other=src)
        resolve_bank(tmp_path / "bad.npz", m, 8)


def test_rebuild_at_other_block_size_from_images():
    m = model_()
    src = imgs()
    bank = build_bank(m, src, 8, per_image=10)
    for b in (4, 16):       # re-cropped from the source images at the new size, not resized blocks
        blocks = bank.for_block_size(b)
        assert blocks.shape == (20, 1, b, b)
        for k, blk in enumerate(blocks):
            im = src[k // 10]
            assert any(np.array_equal(blk[0].numpy(), im[y:y + b, x:x + b])
                       for y in range(im.shape[0] - b + 1) for x in range(im.shape[1] - b + 1)), (b, k)


def test_mismatches_are_clear():
    m2 = model_()
    with pytest.raises(InputMismatchError, match="channel"):
        resolve_bank([np.zeros((2, 16, 16), np.float32)], m2, 8)
    with pytest.raises(InputMismatchError, match="2D"):
        resolve_bank([np.zeros((4, 16, 16, 16), np.float32)], m2, 8)
    with pytest.raises(InputMismatchError, match="3D blocks"):
        Bank(torch.zeros(5, 1, 8, 8, 8)).check(m2, 8)
    with pytest.raises(InputMismatchError, match="at least 8 voxels"):
        resolve_bank([np.zeros((6, 30), np.float32)], m2, 8)
    m3c = model_(ch=2)
    with pytest.raises(InputMismatchError, match="1 channel"):
        Bank(torch.zeros(5, 1, 8, 8)).check(m3c, 8)
    with pytest.raises(ImageLoadError):
        resolve_bank("/nonexistent/bank", m2, 8)
    with pytest.raises(MethodError):
        resolve_bank(42, m2, 8)


def test_refuses_the_explained_image():
    m = model_(preprocess=[lambda t: t * 2])
    src = imgs(2)
    x = m.prepare(src[1]).x
    with pytest.raises(InputMismatchError, match="image being explained"):
        resolve_bank(src, m, 8, exclude=x)
    resolve_bank(src[:1], m, 8, exclude=x)   # fine without it


def test_default_sample_banks():
    for sd, shape in ((2, (8, 8)), (3, (8, 8, 8))):
        p = default_bank_path(sd)
        if p is None:
            pytest.skip("sample banks not installed")
        m = model_(sd=sd, preprocess=[lambda t: t / 255.0])
        bank = resolve_bank(None, m, 8)
        assert bank.block_shape == shape and len(bank) >= 100 and bank.images
        assert 0 <= float(bank.blocks.min()) and float(bank.blocks.max()) <= 1.0


def test_no_default_bank_is_a_clear_error(monkeypatch):
    import seg_explain.bank as bank_mod

    monkeypatch.setattr(bank_mod, "default_bank_path", lambda sd: None)
    with pytest.raises(MethodError, match="reference bank"):
        resolve_bank(None, model_(), 8)


def test_crop_blocks_count_and_shape_3d():
    ims = [torch.rand(1, 10, 12, 9)]
    b = crop_blocks(ims, 8, per_image=17, seed=3)
    assert b.shape == (17, 1, 8, 8, 8)
    corners = [(z, y, x) for z in range(3) for y in range(5) for x in range(2)]
    for blk in b:                  # each block is one of the volume's 8³ crops
        assert any(torch.equal(blk, ims[0][:, z:z + 8, y:y + 8, x:x + 8]) for z, y, x in corners)
    assert torch.equal(b, crop_blocks(ims, 8, per_image=17, seed=3))        # seeded


def test_explanation_params_stay_json_safe_with_a_bank_object(tmp_path):
    """Layer metadata and CLI sidecars serialise params: a Bank, arrays and paths must not leak."""
    import json

    from seg_explain import explain

    m = model_()
    img = np.zeros((16, 16), np.float32)
    img[:4, :4] = 1.0
    roi = np.zeros((16, 16), bool)
    roi[12:, 12:] = True
    bank = build_bank(m, imgs(2, (16, 16), seed=5), 4, per_image=8)
    e = explain(m, img, "pdcr", target="fg", roi=roi, bank=bank, block_size=4,
                n_screen=2, n_draws=3, reference=np.zeros((16, 16), np.int64))
    p = json.loads(json.dumps(e.params))
    assert p["bank"] == "<Bank>" and p["reference"] == "<ndarray>"
    assert p["block_size"] == 4 and p["n_draws"] == 3 and p["tau"] == 0.02


def test_zero_occlusion_bank_is_zero_in_model_space():
    """bank="zero": one all-zero block of the model's channels at any block size, in model
    space (the preprocessed input), deterministic (one draw says everything)."""
    from seg_explain.bank import zero_bank

    m = model_(ch=2)
    for name in ("zero", "ZERO", " Zero "):
        b = resolve_bank(name, m, 8)
        assert b.kind == "zero" and b.deterministic and len(b) == 1
    assert torch.equal(b.for_block_size(8), torch.zeros(1, 2, 8, 8))
    assert torch.equal(b.for_block_size(5), torch.zeros(1, 2, 5, 5))      # any block size
    b3 = zero_bank(model_(sd=3), 4)
    assert b3.for_block_size(6).shape == (1, 1, 6, 6, 6) and "model space" in b3.describe()
    assert not build_bank(model_(), imgs(), 8, per_image=3).deterministic
    with pytest.raises(MethodError, match="zero occlusion cannot be mixed"):
        from seg_explain.bank import _concat

        _concat([b, build_bank(m, [np.zeros((2, 16, 16), np.float32)], 8, per_image=2)], 8, 0, "x")


def test_zero_occlusion_through_pdcr_perturbs_the_network_input_with_zeros():
    """With a preprocessing x -> 2x + 3, raw 0 would reach the network as 3: zero occlusion
    must put 0 into the network input, one pass per perturbable block."""
    from seg_explain import explain

    seen = []

    class Rec(torch.nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.cat([-x[:, :1], x[:, :1]], 1)

    m = SegModel(Rec(), spatial_dims=2, in_channels=1, class_names=["bg", "fg"],
                 preprocess=[lambda t: t * 2.0 + 3.0], device="cpu")
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    roi = np.zeros((16, 16), bool)
    roi[12:, 12:] = True
    e = explain(m, img, "pdcr", target="fg", roi=roi, bank="zero", block_size=4, n_screen=3, n_draws=50)
    rows = torch.cat(seen)[:, 0]
    clean = torch.from_numpy(img * 2.0 + 3.0)
    n_pert = 16 - 1
    assert e.n_forward == rows.shape[0] == n_pert + 1 and e.extras["occlusion"] == "zero"
    for b, row in zip([b for b in e.extras["blocks"] if b["status"] != "roi"], rows[1:]):
        (i, j) = b["origin"]
        assert torch.equal(row[i:i + 4, j:j + 4], torch.zeros(4, 4))
        rest = torch.ones(16, 16, dtype=torch.bool)
        rest[i:i + 4, j:j + 4] = False
        assert torch.allclose(row[rest], clean[rest])
        assert b["n_draws"] == 1


def test_non_finite_bank_arrays_are_refused(tmp_path):
    m = model_()
    bad = imgs(2)
    bad[1][3, 4] = np.nan
    with pytest.raises(InputMismatchError, match="bank image 1 has 1 non-finite"):
        resolve_bank(bad, m, 8)
    arr = np.stack(imgs(2))
    arr[0, 0, 0] = np.inf
    np.savez(tmp_path / "images.npz", images=arr)
    with pytest.raises(InputMismatchError, match="non-finite"):
        resolve_bank(tmp_path / "images.npz", m, 8)
    blocks = np.zeros((3, 1, 8, 8), np.float32)
    blocks[2, 0, 1, 1] = np.nan
    np.savez(tmp_path / "mb.npz", model_blocks=blocks)
    with pytest.raises(InputMismatchError, match="model_blocks.*non-finite"):
        resolve_bank(tmp_path / "mb.npz", m, 8)


def test_bank_from_layer_copies_is_built_in_model_space(unet2d):
    """The dock builds banks from layers as LoadedImage copies: they are prepared like the
    explained image (spacing, preprocessing) before blocks are cut; the explained image
    itself is refused."""
    rng = np.random.default_rng(6)
    imgs = [LoadedImage(rng.random((40, 40)).astype(np.float32), (1.0, 1.0), np.eye(4), None, 2, {"format": "array"})
            for _ in range(2)]
    bank = resolve_bank(imgs, unet2d, block_size=8, seed=0)
    assert len(bank) == 200 and bank.block_shape == (8, 8)
    for b in bank.blocks[:20]:
        assert any(torch.equal(b[0], im_t[0][y:y + 8, x:x + 8]) for im_t in bank.images
                   for y in range(33) for x in range(33) if float(im_t[0][y, x]) == float(b[0, 0, 0]))
    x = unet2d.prepare(imgs[0].data).x
    with pytest.raises(InputMismatchError, match="is the image being explained"):
        resolve_bank(imgs, unet2d, block_size=8, exclude=x)


def test_identical_blocks_share_an_id_and_a_group():
    import torch

    from seg_explain.bank import content_ids, default_bank_groups, expected_distinct, identical_groups

    blocks = torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
    assert content_ids(blocks).tolist() == [0, 1, 0, 1, 1, 5]
    assert identical_groups(blocks) == (3, 2, 1)
    # n draws from 6 blocks in groups 3/2/1: expected distinct = sum of 1 - (1 - g/6)^n
    assert expected_distinct((3, 2, 1), 2) == pytest.approx(0.75 + 5 / 9 + 11 / 36)
    groups = default_bank_groups(2, 8)
    assert sum(groups) == 2000 and groups[0] == 907     # the shipped 2D bank: 907 background blocks
