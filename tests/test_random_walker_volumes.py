"""``rawks_triton.random_walker`` on volumes: parity with scikit-image in 3D, and mode="auto".

Parity as in tests/test_random_walker.py: labels agree on at least 99.9% of the voxels
where scikit-image's exact solve (``mode="bf"``) leaves no tie, and probabilities within
the tolerance, on small synthetic volumes (grey and multichannel, anisotropic spacing,
inactive voxels) and on a crop of one ACDC volume when ../shared/data is present. The
default call (mode "auto") agrees with scikit-image's "cg_mg" on at least 99.5% of voxels.
"""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_random_walker import compare_with_skimage

import rawks_triton as rt
from rawks_triton.solve import choose

DEFAULT_AGREEMENT = 0.995
SHARED = [Path(__file__).resolve().parents[1] / ".." / "shared" / "data", Path("/work/shared/data")]
ACDC = next((root / "acdc-volumes" for root in SHARED if (root / "acdc-volumes").is_dir()), None)


def random_volume(rng, shape, channels, num_labels, inactive: bool):
    """Piecewise-smooth data (blocks of 3 voxels plus noise) and sparse seeds of ``num_labels`` phases."""
    blocks = tuple(n // 3 + 1 for n in shape) + ((channels,) if channels else ())
    smooth = np.kron(rng.random(blocks), np.ones((3, 3, 3) + ((1,) if channels else ())))
    index = tuple(slice(0, n) for n in shape)
    data = smooth[index] + 0.1 * rng.standard_normal(smooth[index].shape)
    values = np.array([1, 2, 5, 9][:num_labels])
    labels = np.zeros(shape, dtype=np.int64)
    seeds = rng.random(shape) < 0.02
    labels[seeds] = rng.choice(values, size=int(seeds.sum()))
    labels.flat[rng.choice(labels.size, size=num_labels, replace=False)] = values
    if inactive:
        d, h, w = shape
        labels[d // 3 : d // 3 + 2, h // 4 : h // 4 + h // 3, w // 4 : w // 4 + w // 3] = -1
    return data, labels


CASES = [
    # shape, channels, labels, inactive, spacing, dtype, tol
    ((1, 9, 13), 0, 2, False, None, np.float64, 1e-3),
    ((5, 7, 9), 0, 3, False, None, np.float64, 1e-3),
    ((7, 13, 11), 0, 4, True, (3.0, 1.0, 1.5), np.float64, 1e-4),
    ((6, 10, 9), 2, 3, False, (2.5, 1.0, 1.0), np.float64, 1e-3),
    ((9, 8, 7), 3, 2, True, None, np.float64, 1e-3),
    ((8, 9, 10), 0, 3, True, None, np.float32, 1e-3),
]


@pytest.mark.parametrize("mode", ["bf", "auto", "cg_j"])
@pytest.mark.parametrize(
    "shape,channels,num_labels,inactive,spacing,dtype,tol",
    CASES,
    ids=[
        f"{'x'.join(map(str, s))}-c{c}-L{n}-{'inactive' if i else 'all'}-sp{sp or 'iso'}-{np.dtype(d).name}"
        for s, c, n, i, sp, d, t in CASES
    ],
)
def test_matches_skimage_on_random_volumes(rng, shape, channels, num_labels, inactive, spacing, dtype, tol, mode):
    data, labels = random_volume(rng, shape, channels, num_labels, inactive)
    kwargs = dict(tol=tol, beta=130, mode=mode)
    if spacing is not None:
        kwargs["spacing"] = spacing
    if channels:
        kwargs["channel_axis"] = -1
    compare_with_skimage(data.astype(dtype), labels, what=f"{shape} {mode}", **kwargs)


def test_channels_first_integer_volume_and_spacing(rng):
    data = (rng.random((2, 6, 11, 10)) * 255).astype(np.uint8)
    labels = np.zeros((6, 11, 10), dtype=np.int32)
    labels[0, 1, 1:6], labels[5, 9, 3:9], labels[3, 2:8, 8] = 1, 2, 3
    compare_with_skimage(data, labels, what="uint8 volume", channel_axis=0, spacing=(4.0, 1.0, 0.5), beta=50)


def test_spacing_scales_the_differences_along_its_axis():
    """A spacing of s along an axis is the same as dividing the data's steps along it by s."""
    rng = np.random.default_rng(11)
    data = rng.random((4, 6, 5))
    labels = np.zeros(data.shape, dtype=np.int64)
    labels[0, 0, 0], labels[3, 5, 4] = 1, 2
    wide = rt.random_walker(data, labels, spacing=(2.0, 1.0, 1.0), return_full_prob=True, mode="bf")
    skimage_segmentation = pytest.importorskip("skimage.segmentation")
    expected = skimage_segmentation.random_walker(data, labels, spacing=(2.0, 1.0, 1.0), return_full_prob=True)
    np.testing.assert_allclose(wide, expected, atol=5e-3)
    iso = rt.random_walker(data, labels, return_full_prob=True, mode="bf")
    assert np.abs(wide - iso).max() > 1e-3  # spacing changes the answer


def test_a_wall_of_inactive_voxels_isolates_a_region():
    rng = np.random.default_rng(7)
    data = rng.random((5, 8, 9))
    labels = np.zeros(data.shape, dtype=np.int16)
    labels[:, :, 4] = -2
    labels[1, 1, 1], labels[3, 6, 2] = 3, 6
    compare_with_skimage(data, labels, what="wall", tol=1e-6, mode="bf")
    out = rt.random_walker(data, labels)
    assert np.all(out[:, :, 5:] == 0) and np.all(out[:, :, 4] == -1)
    prob = rt.random_walker(data, labels, return_full_prob=True)
    assert prob.shape == (2, 5, 8, 9) and np.all(prob[:, :, :, 4:] == 0)
    np.testing.assert_allclose(prob.sum(axis=0)[:, :, :4], 1.0, atol=1e-6)


def test_warns_and_returns_labels_when_nothing_is_unknown_or_reachable():
    data = np.random.default_rng(1).random((3, 4, 5))
    labels = np.ones(data.shape, dtype=np.int64)
    labels[1, 2, 2] = 2
    with pytest.warns(UserWarning, match="unlabeled"):
        prob = rt.random_walker(data, labels, return_full_prob=True)
    assert prob.shape == (2, 3, 4, 5) and prob[1, 1, 2, 2] == 1 and prob[0, 1, 2, 2] == 0
    isolated = np.zeros(data.shape, dtype=np.int64)
    isolated[1] = -1
    isolated[0] = 1  # the unknown voxels lie beyond the inactive slice
    with pytest.warns(UserWarning, match="cut off"):
        out = rt.random_walker(data, isolated)
    np.testing.assert_array_equal(out, isolated)


def test_tensors_in_tensors_out_on_a_volume():
    rng = np.random.default_rng(4)
    data, labels = random_volume(rng, (5, 9, 8), 0, 3, True)
    expected = rt.random_walker(data, labels, mode="bf", return_full_prob=True)
    for mode in ("auto", "cg_j"):
        got = rt.random_walker(
            torch.from_numpy(data), torch.from_numpy(labels), mode=mode, tol=1e-6, return_full_prob=True
        )
        assert isinstance(got, torch.Tensor) and got.shape == (3, 5, 9, 8)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    seg = rt.random_walker(torch.from_numpy(data).float(), torch.from_numpy(labels).int())
    assert isinstance(seg, torch.Tensor) and seg.dtype == torch.int32
    agree = (seg.numpy() == rt.random_walker(data, labels, mode="bf"))[labels == 0].mean()
    assert agree >= 0.999


def test_cg_mg_on_a_volume_says_what_it_runs():
    data, labels = random_volume(np.random.default_rng(2), (4, 6, 7), 0, 2, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = rt.random_walker(data, labels, mode="cg_mg", tol=1e-6, return_full_prob=True)
    assert not [w for w in caught if "cg_mg" in str(w.message)], [str(w.message) for w in caught]
    np.testing.assert_allclose(got, rt.random_walker(data, labels, mode="bf", return_full_prob=True), atol=1e-4)


def test_default_agrees_with_skimage_cg_mg(rng):
    pytest.importorskip("pyamg")
    skimage_segmentation = pytest.importorskip("skimage.segmentation")
    data, labels = random_volume(rng, (8, 20, 18), 0, 3, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = skimage_segmentation.random_walker(data, labels, mode="cg_mg", spacing=(2.0, 1.0, 1.0))
    got = rt.random_walker(data, labels, spacing=(2.0, 1.0, 1.0))
    assert float(np.mean(got == expected)) >= DEFAULT_AGREEMENT


def acdc_crop():
    import h5py

    path = sorted(ACDC.glob("*.h5"))[0]
    with h5py.File(path, "r") as f:
        image, scribble = f["image"][:], f["scribble"][:].astype(np.int64)
    labels = np.where(scribble < 4, scribble + 1, 0)
    heart = np.argwhere((scribble >= 1) & (scribble <= 3))  # the three cardiac classes
    centre = heart.mean(axis=0).astype(int)
    y0, x0 = (max(0, c - 24) for c in centre[1:])
    crop = (slice(None), slice(y0, y0 + 48), slice(x0, x0 + 48))
    return image[crop], labels[crop]


@pytest.mark.skipif(ACDC is None, reason="../shared/data/acdc-volumes is not present")
def test_matches_skimage_on_an_acdc_volume():
    pytest.importorskip("h5py")
    image, labels = acdc_crop()
    assert len(np.unique(labels)) >= 3
    spacing = (10.0, 1.5, 1.5)
    compare_with_skimage(image, labels, what="ACDC", spacing=spacing, mode="bf")
    if importlib.util.find_spec("pyamg") is not None:  # scikit-image's cg_mg needs it
        from skimage.segmentation import random_walker as skimage_random_walker

        expected = skimage_random_walker(image, labels, mode="cg_mg", spacing=spacing)
        assert float(np.mean(rt.random_walker(image, labels, spacing=spacing) == expected)) >= DEFAULT_AGREEMENT


# ---- the mode="auto" rule ----


def test_auto_mode_rule(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose.random_walker_mode(cpu, (128, 128), 3) == "bf"
    assert choose.random_walker_mode(cpu, (4096, 4096), 3) == "cg_mg"
    assert choose.random_walker_mode(cuda, (128, 128), 3) == "cg_mg"
    assert choose.random_walker_mode(cpu, (128, 128), 3, backend="torch") == "cg_mg"
    assert choose.random_walker_mode(cpu, (128, 128), 3, backend="scipy") == "bf"
    assert choose.random_walker_mode(cpu, (8, 16, 16), 3) == "bf"
    assert choose.random_walker_mode(cuda, (8, 16, 16), 3, backend="triton") == "cg_mg"  # its 3D cycle
    assert choose.random_walker_mode(cuda, (8, 16, 16), 3) == "cg_mg"
    assert choose.random_walker_mode(cpu, (512, 512, 512), 3) == "cg_mg"


def test_auto_is_the_default_and_runs_the_rule(monkeypatch):
    data, labels = random_volume(np.random.default_rng(3), (3, 6, 7), 0, 2, False)
    picked = []
    rule = choose.random_walker_mode

    def spy(*args, **kwargs):
        picked.append(rule(*args, **kwargs))
        return picked[-1]

    monkeypatch.setattr(choose, "random_walker_mode", spy)
    rt.random_walker(data, labels)
    assert picked == ["bf"]
    rt.random_walker(data[0], labels[0], mode="cg_j")
    assert picked == ["bf"]  # a named mode is not re-chosen
