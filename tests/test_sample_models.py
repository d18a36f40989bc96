"""The shipped sample models, measured exactly as a user would (public API, original files)."""
import numpy as np
import pytest

from seg_explain import load_image, load_model
from seg_explain.paths import sample_path


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


@pytest.fixture(scope="module")
def model3d():
    return load_model(sample_path("models", "brain3d"))


def test_sample_bundles_describe_themselves(model3d):
    assert model3d.spatial_dims == 3 and model3d.in_channels == 1
    assert len(model3d.class_names) >= 8 and model3d.class_names[0] == "background"
    m2 = load_model(sample_path("models", "brain2d"))
    assert m2.spatial_dims == 2 and m2.class_names == model3d.class_names


@pytest.mark.slow
def test_heldout_brain_dice_3d(model3d):
    """Brain (union of non-background classes) Dice >= 0.85 on the held-out ITK T1."""
    img = load_image(sample_path("heldout", "KmeansTest_T1UCharRaw.nii.gz"))
    mask = load_image(sample_path("heldout", "KmeansTest_T1RawSkullStrip.nii.gz"))
    pred = model3d.predict(img)
    assert pred.shape == img.data.shape
    assert dice(pred > 0, mask.data > 0) >= 0.85
