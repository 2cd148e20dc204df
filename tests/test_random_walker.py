"""``rawks_triton.random_walker``: parity with scikit-image, and its conventions.

Parity: the same labels on at least 99.9% of pixels and probabilities within 1e-3 of
``skimage.segmentation.random_walker`` with the same arguments, solved exactly by
scikit-image (``mode="bf"``), on scikit-image's example images and on random images
(scikit-image is an optional test dependency). Every mode of this library solves to
``tol`` in P itself; scikit-image's iterative modes stop on a residual norm, and at
tol=1e-3 their probabilities are off by up to 4e-2 on its own example images
(docs/benchmarks.md), so they are no reference for the answer.
"""

import warnings

import numpy as np
import pytest
import torch

import rawks_triton as rt
from rawks_triton.solve.choose import triton_available

LABEL_AGREEMENT = 0.999
PROBABILITY_TOL = 1e-3


def compare_with_skimage(data, labels, *, what: str, **kwargs):
    """Our labels and probabilities against scikit-image's exact solve of the same call.

    Jacobi (mode "cg_j", scikit-image's default) cannot reach a small error in P on some
    high-contrast problems before its rounding floor; there it must say so (scikit-image's
    own iterative modes return probabilities off by up to 1 on such problems, silently).
    """
    skimage_segmentation = pytest.importorskip("skimage.segmentation")
    exact = {k: v for k, v in kwargs.items() if k not in ("mode", "tol")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # both warn about probabilities outside [0, 1] alike
        expected_labels = skimage_segmentation.random_walker(data, labels.copy(), mode="bf", **exact)
        expected_prob = skimage_segmentation.random_walker(
            data, labels.copy(), return_full_prob=True, mode="bf", **exact
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_labels = rt.random_walker(data, labels.copy(), **kwargs)
        got_prob = rt.random_walker(data, labels.copy(), return_full_prob=True, **kwargs)
    assert got_labels.dtype == expected_labels.dtype and got_labels.shape == expected_labels.shape
    assert got_prob.shape == expected_prob.shape, f"{what}: probabilities {got_prob.shape} != {expected_prob.shape}"
    if any(issubclass(w.category, rt.ConvergenceWarning) for w in caught):
        assert kwargs.get("mode") in (None, "cg_j"), f"{what}: mode {kwargs.get('mode')!r} did not converge"
        return
    tol = max(PROBABILITY_TOL, 5 * kwargs.get("tol", 1e-3))
    diff = np.abs(got_prob - expected_prob)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    assert float(diff.max()) <= tol, (
        f"{what}: probabilities differ by up to {float(diff.max()):.3g} at {tuple(int(i) for i in worst)} "
        f"(got {got_prob[worst]:.6f}, scikit-image {expected_prob[worst]:.6f})"
    )
    # labels: where the exact probabilities leave no tie within the tolerance
    ranked = np.sort(expected_prob, axis=0)
    decided = (ranked[-1] - ranked[-2] > 2 * tol) if ranked.shape[0] > 1 else np.ones(ranked.shape[1:], dtype=bool)
    decided |= labels != 0
    agreement = float(np.mean((got_labels == expected_labels)[decided]))
    bad = np.argwhere((got_labels != expected_labels) & decided)[:5].tolist()
    assert agreement >= LABEL_AGREEMENT, (
        f"{what}: labels agree on {agreement:.5f} of pixels; first differences at {bad}"
    )


def quantile_markers(grey: np.ndarray, low=0.15, high=0.85) -> np.ndarray:
    """The scikit-image gallery's markers: darkest pixels phase 1, brightest phase 2."""
    markers = np.zeros(grey.shape, dtype=np.int32)
    markers[grey <= np.quantile(grey, low)] = 1
    markers[grey >= np.quantile(grey, high)] = 2
    return markers


def example_image(name: str):
    skimage_data = pytest.importorskip("skimage.data")
    if name == "camera":
        image = skimage_data.camera()[100:164, 200:296]
        return image, quantile_markers(image), {}
    if name == "coins":
        image = skimage_data.coins()[40:120, 40:136]
        return image, quantile_markers(image, 0.3, 0.9), {}
    if name == "astronaut-rgb":
        image = skimage_data.astronaut()[60:124, 150:230]
        return image, quantile_markers(image.mean(axis=-1)), {"channel_axis": -1}
    if name == "blobs-noisy":  # the scikit-image gallery example, smaller
        rng = np.random.default_rng(3)
        blobs = skimage_data.binary_blobs(length=96, rng=1, volume_fraction=0.4).astype(float)
        noisy = blobs + 0.35 * rng.standard_normal(blobs.shape)
        markers = np.zeros(noisy.shape, dtype=np.uint8)
        markers[noisy < -0.3] = 1
        markers[noisy > 1.3] = 2
        return noisy, markers, {"beta": 90}
    raise ValueError(name)


@pytest.mark.parametrize("name", ["camera", "coins", "astronaut-rgb", "blobs-noisy"])
@pytest.mark.parametrize("mode", ["cg_j", "bf"])
def test_matches_skimage_on_its_example_images(name, mode):
    image, markers, kwargs = example_image(name)
    compare_with_skimage(image, markers, what=f"{name} {mode}", mode=mode, **kwargs)


def random_problem(rng, h, w, channels, num_labels, inactive: bool):
    smooth = np.kron(
        rng.random((h // 4 + 1, w // 4 + 1) + ((channels,) if channels else ())),
        np.ones((4, 4) + ((1,) if channels else ())),
    )
    data = smooth[:h, :w] + 0.1 * rng.standard_normal(smooth[:h, :w].shape)
    labels = np.zeros((h, w), dtype=np.int64)
    seeds = rng.random((h, w)) < 0.03
    values = rng.choice([1, 2, 5, 9][:num_labels], size=(h, w))
    labels[seeds] = values[seeds]
    labels.flat[rng.choice(h * w, size=num_labels, replace=False)] = [1, 2, 5, 9][:num_labels]
    if inactive and min(h, w) >= 4:
        # A rectangle of inactive pixels (one rectangle cannot cut a seed off on its own).
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        labels[y : y + h // 3 + 1, x : x + w // 3 + 1] = -1
    return data, labels


CASES = [
    # h, w, channels, labels, inactive, dtype, tol
    (1, 17, 0, 2, False, np.float64, 1e-3),
    (7, 13, 0, 3, True, np.float64, 1e-3),
    (33, 31, 0, 4, True, np.float64, 1e-3),
    (40, 52, 0, 3, False, np.float32, 1e-3),
    (29, 35, 3, 2, True, np.float64, 1e-3),
    (45, 38, 2, 3, False, np.float64, 1e-5),
    (63, 65, 0, 4, True, np.float32, 1e-4),
]


@pytest.mark.parametrize(
    "h,w,channels,num_labels,inactive,dtype,tol",
    CASES,
    ids=[
        f"{h}x{w}-c{c}-L{n}-{'inactive' if i else 'all'}-{np.dtype(d).name}-tol{t:g}" for h, w, c, n, i, d, t in CASES
    ],
)
def test_matches_skimage_on_random_images(rng, h, w, channels, num_labels, inactive, dtype, tol):
    data, labels = random_problem(rng, h, w, channels, num_labels, inactive)
    kwargs = dict(tol=tol, beta=130)
    if channels:
        kwargs["channel_axis"] = -1
    compare_with_skimage(data.astype(dtype), labels, what=f"{h}x{w}", **kwargs)


def test_matches_skimage_with_spacing_channel_axis_and_integer_data(rng):
    data = (rng.random((3, 30, 26)) * 255).astype(np.uint8)  # channels first
    labels = np.zeros((30, 26), dtype=np.int32)
    labels[2, 2:9], labels[25, 10:20], labels[12:18, 22] = 1, 2, 3
    compare_with_skimage(data, labels, what="uint8, spacing", channel_axis=0, spacing=(1.0, 2.5), beta=50, tol=1e-4)


def test_matches_skimage_when_a_wall_of_inactive_pixels_isolates_a_region():
    rng = np.random.default_rng(7)
    data = rng.random((12, 14))
    labels = np.zeros((12, 14), dtype=np.int16)
    labels[:, 6] = -3  # everything right of the wall is out of reach of the seeds
    labels[1, 1], labels[10, 4] = 4, 8
    compare_with_skimage(data, labels, what="wall", tol=1e-6)
    out = rt.random_walker(data, labels, tol=1e-8)
    assert np.all(out[:, 7:] == 0) and np.all(out[:, 6] == -1)  # unreachable stay 0, inactive renumbered
    assert set(np.unique(out[:, :6])) == {1, 2}


def test_mode_none_is_cg_j_as_in_skimage(rng):
    data, labels = random_problem(rng, 21, 19, 0, 2, False)
    compare_with_skimage(data, labels, what="mode None", mode=None)
    np.testing.assert_array_equal(
        rt.random_walker(data, labels, mode=None, return_full_prob=True),
        rt.random_walker(data, labels, mode="cg_j", return_full_prob=True),
    )


def test_cg_mg_mode_matches_skimage(rng):
    data, labels = random_problem(rng, 36, 40, 0, 3, False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rt.random_walker(data, labels, mode="cg_mg")
    assert not [w for w in caught if "cg_mg" in str(w.message)], [str(w.message) for w in caught]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        compare_with_skimage(data, labels, what="cg_mg", mode="cg_mg", tol=1e-6)


# ---- conventions that need no scikit-image ----


def test_labels_are_renumbered_and_inactive_pixels_keep_a_negative_label():
    data = np.linspace(0, 1, 60).reshape(6, 10)
    labels = np.zeros((6, 10), dtype=np.int32)
    labels[0, 0], labels[5, 9] = 3, 7
    labels[2, 4:6] = -5
    labels[4, 1] = -2
    out = rt.random_walker(data, labels, tol=1e-8)
    assert out.dtype == np.int32
    assert set(np.unique(out).tolist()) == {-2, -1, 1, 2}
    assert np.all(out[2, 4:6] == -2) and out[4, 1] == -1
    prob = rt.random_walker(data, labels, tol=1e-8, return_full_prob=True)
    assert prob.shape == (2, 6, 10) and prob.dtype == np.float64
    assert np.all(prob[:, 2, 4:6] == 0) and np.all(prob[:, 4, 1] == 0)
    active = labels >= 0
    np.testing.assert_allclose(prob.sum(axis=0)[active], 1.0, atol=1e-6)
    assert prob[0, 0, 0] == 1 and prob[1, 5, 9] == 1


def test_a_seed_cut_off_by_inactive_pixels_keeps_its_label():
    data = np.random.default_rng(0).random((6, 6))
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[0, 0], labels[0, 1], labels[1, 0] = 1, -1, -1
    labels[4, 4], labels[3, 3] = 2, 1
    out = rt.random_walker(data, labels, tol=1e-8)
    prob = rt.random_walker(data, labels, return_full_prob=True, tol=1e-8)
    assert out[0, 0] == 1 and np.isfinite(prob).all()
    assert set(np.unique(out[labels == 0]).tolist()) <= {1, 2}


def test_warns_and_returns_labels_when_nothing_is_unknown_or_reachable():
    data = np.random.default_rng(1).random((5, 5))
    labels = np.ones((5, 5), dtype=np.int64)
    labels[2, 2] = 2
    with pytest.warns(UserWarning, match="unlabeled"):
        out = rt.random_walker(data, labels)
    np.testing.assert_array_equal(out, labels)
    with pytest.warns(UserWarning, match="unlabeled"):
        prob = rt.random_walker(data, labels, return_full_prob=True)
    assert prob.shape == (2, 5, 5) and prob[1, 2, 2] == 1 and prob[0, 2, 2] == 0

    isolated = np.zeros((5, 5), dtype=np.int64)
    isolated[:, 2] = -1
    isolated[:, :2] = 1  # every unknown pixel lies right of the wall, out of reach
    with pytest.warns(UserWarning, match="cut off"):
        out = rt.random_walker(data, isolated)
    np.testing.assert_array_equal(out, isolated)


def test_copy_false_writes_the_segmentation_into_labels():
    data = np.random.default_rng(2).random((8, 9))
    labels = np.zeros((8, 9), dtype=np.int64)
    labels[0, 0], labels[7, 8] = 1, 2
    expected = rt.random_walker(data, labels)
    out = rt.random_walker(data, labels, copy=False)
    assert out is labels
    np.testing.assert_array_equal(labels, expected)
    assert np.all(labels > 0)


def test_copy_false_on_a_read_only_array_names_labels_and_copy():
    data = np.random.default_rng(2).random((8, 9))
    labels = np.zeros((8, 9), dtype=np.int64)
    labels[0, 0], labels[7, 8] = 1, 2
    expected = rt.random_walker(data, labels)
    labels.setflags(write=False)
    with pytest.raises(ValueError, match=r"`labels` must be a writable array when copy=False.*read-only"):
        rt.random_walker(data, labels, copy=False)
    assert np.count_nonzero(labels) == 2  # untouched
    # copy=True, and the probabilities (nothing is written into `labels`), still work on it
    np.testing.assert_array_equal(rt.random_walker(data, labels), expected)
    assert rt.random_walker(data, labels, copy=False, return_full_prob=True).shape == (2, 8, 9)


def test_tensors_in_tensors_out_and_backends_agree():
    rng = np.random.default_rng(4)
    data = rng.random((20, 24))
    labels = np.zeros((20, 24), dtype=np.int64)
    labels[2, 2:10], labels[17, 5:20] = 1, 2
    expected = rt.random_walker(data, labels, tol=1e-8, return_full_prob=True)
    got = rt.random_walker(torch.from_numpy(data), torch.from_numpy(labels), tol=1e-8, return_full_prob=True)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    seg = rt.random_walker(torch.from_numpy(data), torch.from_numpy(labels).int(), tol=1e-8)
    assert isinstance(seg, torch.Tensor) and seg.dtype == torch.int32
    np.testing.assert_array_equal(seg.numpy(), np.argmax(expected, axis=0) + 1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        single = rt.random_walker(torch.from_numpy(data).float(), torch.from_numpy(labels), return_full_prob=True)
    assert single.dtype == torch.float32  # float32 data is solved in float32, as scikit-image does
    if not any(issubclass(w.category, rt.ConvergenceWarning) for w in record):  # right, or it says so
        np.testing.assert_allclose(single.double().numpy(), expected, atol=5e-3)
    direct = rt.random_walker(data, labels, mode="bf", return_full_prob=True)
    np.testing.assert_allclose(direct, expected, atol=1e-6)


@pytest.mark.interpreter
def test_triton_backend_agrees_with_torch():
    if not triton_available(torch.device("cpu")) and not torch.cuda.is_available():
        pytest.skip("triton needs CUDA tensors or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(8)
    data = rng.random((7, 11))
    labels = np.zeros((7, 11), dtype=np.int64)
    labels[1, 1:5], labels[5, 6:10] = 1, 2
    # beta 2: a well-conditioned problem, few iterations (the interpreter is slow).
    expected = rt.random_walker(data, labels, beta=2, tol=1e-10, return_full_prob=True)
    got = rt.random_walker(
        torch.from_numpy(data).to(device),
        torch.from_numpy(labels).to(device),
        beta=2,
        tol=1e-6,
        backend="triton",
        return_full_prob=True,
    )
    np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cuda_tensors_stay_on_the_gpu(backend):
    rng = np.random.default_rng(6)
    data = rng.random((33, 47))
    labels = np.zeros((33, 47), dtype=np.int64)
    labels[3, 2:20], labels[30, 10:40], labels[10:20, 44] = 1, 2, 3
    labels[15:18, 5:25] = -1
    expected = rt.random_walker(data, labels, tol=1e-6, return_full_prob=True)
    data_cuda = torch.from_numpy(data).float().cuda()
    labels_cuda = torch.from_numpy(labels).cuda()
    prob = rt.random_walker(data_cuda, labels_cuda, tol=1e-6, return_full_prob=True, backend=backend)
    seg = rt.random_walker(data_cuda, labels_cuda, tol=1e-6, backend=backend)
    assert prob.is_cuda and seg.is_cuda and seg.dtype == torch.int64
    np.testing.assert_allclose(prob.cpu().numpy(), expected, atol=1e-3)
    agree = float((seg.cpu().numpy() == np.argmax(expected, axis=0) + 1)[labels == 0].mean())
    assert agree >= LABEL_AGREEMENT


def test_a_constant_image_gives_uniform_weights_not_nan():
    labels = np.zeros((7, 9), dtype=np.int64)
    labels[3, 0], labels[3, 8] = 1, 2
    prob = rt.random_walker(np.full((7, 9), 0.5), labels, return_full_prob=True, tol=1e-8)
    assert np.isfinite(prob).all()
    np.testing.assert_allclose(prob[0], prob[1][:, ::-1], atol=1e-6)  # mirror symmetry


def test_non_convergence_warns_in_its_own_terms():
    rng = np.random.default_rng(5)
    labels = np.zeros((30, 30), dtype=np.int64)
    labels[0, 0], labels[29, 29] = 1, 2
    with pytest.warns(rt.ConvergenceWarning, match="beta"):
        rt.random_walker(rng.random((30, 30)), labels, mode="cg_j", maxiter=2, prob_tol=10.0)


@pytest.mark.parametrize(
    "kwargs,data_shape,labels_shape,error,match",
    [
        (dict(mode="cg_x"), (5, 5), (5, 5), ValueError, "`mode`"),
        (dict(beta=-1.0), (5, 5), (5, 5), ValueError, "`beta`"),
        (dict(tol=-1e-3), (5, 5), (5, 5), ValueError, "`tol`"),
        (dict(spacing=(1.0,)), (5, 5), (5, 5), ValueError, "`spacing`"),
        (dict(spacing=(1.0, 0.0)), (5, 5), (5, 5), ValueError, "`spacing`"),
        (dict(copy="yes"), (5, 5), (5, 5), TypeError, "`copy`"),
        (dict(channel_axis=1.5), (5, 5, 3), (5, 5), TypeError, "`channel_axis`"),
        (dict(channel_axis=3), (5, 5, 3), (5, 5), ValueError, "`channel_axis`"),
        ({}, (5, 6), (5, 5), ValueError, "`labels`"),
        ({}, (5,), (5,), ValueError, "`labels`"),
        ({}, (4, 5, 6), (4, 5), ValueError, "`data`"),
        (dict(channel_axis=-1), (4, 5, 6, 2, 2), (4, 5, 6), ValueError, "`data`"),
        (dict(spacing=(1.0, 1.0)), (4, 5, 6), (4, 5, 6), ValueError, "`spacing`"),
        ({}, (2, 3, 4, 5), (2, 3, 4, 5), ValueError, "`labels`"),
    ],
    ids=[
        "mode",
        "beta",
        "tol",
        "spacing-length",
        "spacing-zero",
        "copy",
        "channel-axis-type",
        "channel-axis-range",
        "shape-mismatch",
        "1d",
        "3d-data-2d-labels",
        "3d-multichannel-extra-axis",
        "3d-spacing-length",
        "4d",
    ],
)
def test_bad_input_names_the_argument(kwargs, data_shape, labels_shape, error, match):
    data = np.zeros(data_shape)
    labels = np.zeros(labels_shape, dtype=np.int64)
    labels.flat[0] = 1
    with pytest.raises(error, match=match):
        rt.random_walker(data, labels, **kwargs)


def test_bad_labels_and_data_values():
    data = np.zeros((4, 4))
    with pytest.raises(ValueError, match="positive"):
        rt.random_walker(data, np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="`labels`"):
        rt.random_walker(data, np.zeros((4, 4)))
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[0, 0] = 1
    with pytest.raises(ValueError, match="`data`"):
        rt.random_walker(np.full((4, 4), np.nan), labels)
    with pytest.raises(TypeError, match="`data`"):
        rt.random_walker(np.zeros((4, 4), dtype=complex), labels)
