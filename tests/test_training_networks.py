"""The default networks, the ResNet option (torchvision, imported lazily) and the training propagation."""

import pytest
import torch

from rawks_triton.training.networks import BoundaryNet, SegmentationNet, build_boundary_net, build_segmentation_net
from rawks_triton.training.propagate import PropagationSettings, downsample_scribbles, propagate_scribbles


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (2, 1, 33, 20)], ids=["7x13", "33x20-grey"])
def test_small_networks_shapes_and_ranges(shape):
    torch.manual_seed(0)
    image = torch.rand(shape)
    q = SegmentationNet(shape[1], 5)(image)
    assert q.shape == (shape[0], 5) + shape[2:] and torch.isfinite(q).all()
    with torch.no_grad():
        b = BoundaryNet(shape[1], initial_logit=-10.0)(image)
    assert b.shape == (shape[0], 1) + shape[2:]
    # softplus: B >= 0, and close to 0 at initialisation so that the walk reaches far
    assert float(b.min()) >= 0 and float(b.max()) < 1e-3


def test_build_rejects_unknown_arch_and_stray_weights():
    with pytest.raises(ValueError, match=r"`arch` must be one of .*got 'vgg'"):
        build_segmentation_net("vgg", 3, 2)
    with pytest.raises(ValueError, match=r"`weights` is only for the ResNet architectures"):
        build_boundary_net("small", 3, weights="w.pt")


@pytest.mark.skipif(_torchvision_importable(), reason="torchvision is importable here")
def test_resnet_without_torchvision_says_what_to_do():
    with pytest.raises(ImportError, match=r"arch='resnet18' needs torchvision.*use arch='small'"):
        build_segmentation_net("resnet18", 3, 2)


@pytest.mark.skipif(not _torchvision_importable(), reason="torchvision is not importable beside this torch")
def test_resnet_fcn_shapes_and_local_weights(tmp_path):
    import torchvision

    path = tmp_path / "trunk.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    q = build_segmentation_net("resnet18", 3, 4, weights=str(path))
    b = build_boundary_net("resnet18", 1, weights=str(path))
    image = torch.rand(1, 3, 40, 48)
    assert q(image).shape == (1, 4, 40, 48)
    out = b(image[:, :1])
    assert out.shape == (1, 1, 40, 48) and float(out.min()) >= 0


def test_downsampled_scribbles_keep_thin_strokes():
    scribbles = torch.full((1, 16, 16), -1)
    scribbles[0, 5, :] = 1  # a one-pixel line
    scribbles[0, 12:, 12:] = 0
    small = downsample_scribbles(scribbles, (4, 4), 2)
    assert small.shape == (1, 4, 4)
    assert torch.equal(small[0, 1], torch.ones(4, dtype=torch.int64))
    assert int(small[0, 3, 3]) == 0 and int((small == -1).sum()) == 16 - 5


@pytest.mark.parametrize("scale", [1.0, 0.5], ids=["full", "half"])
def test_propagate_scribbles_shapes_and_gradients(scale):
    boundary = torch.full((2, 1, 12, 18), 1e-4, requires_grad=True)
    scribbles = torch.full((2, 12, 18), -1)
    scribbles[:, 1, 1:8] = 0
    scribbles[:, 10, 9:17] = 2
    scribbles[1] = -1  # an image without scribbles: unreachable everywhere
    P, reachable, _ = propagate_scribbles(boundary, scribbles, 3, PropagationSettings(scale=scale))
    assert P.shape == (2, 3, 12, 18) and reachable.shape == (2, 12, 18) and P.dtype == torch.float32
    assert bool(reachable[0].all()) and not bool(reachable[1].any())
    assert torch.allclose(P.sum(1), torch.ones(2, 12, 18), atol=1e-5)
    (P[0, 0] * torch.linspace(0, 1, 18)).sum().backward()
    assert torch.isfinite(boundary.grad).all() and bool((boundary.grad != 0).any())


def test_hand_made_boundary_keeps_the_propagate_formula_and_the_demo_numbers():
    from rawks_triton.demo import DEMO_GAIN, DEMO_THRESHOLD, synthetic_scene
    from rawks_triton.training.networks import gradient_features, hand_made_boundary

    torch.manual_seed(0)
    image = torch.rand(3, 13, 17)
    smooth = torch.nn.functional.avg_pool2d(image[None], 3, stride=1, padding=1, count_include_pad=False)
    magnitude = gradient_features(smooth).amax(dim=1, keepdim=True)
    # rawks propagate without a checkpoint: gain * relu(|grad I| - 0.02)^2, gain 2000
    torch.testing.assert_close(hand_made_boundary(image), 2000.0 * torch.relu(magnitude - 0.02) ** 2, rtol=0, atol=0)
    # The demo's scene: a linear ramp above 0.05, gain 60, on the grey image (central differences, 0 on the border).
    grey, _, _ = synthetic_scene()
    smooth = torch.nn.functional.avg_pool2d(grey[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    gx, gy = torch.zeros_like(smooth), torch.zeros_like(smooth)
    gx[:, 1:-1] = 0.5 * (smooth[:, 2:] - smooth[:, :-2])
    gy[1:-1, :] = 0.5 * (smooth[2:, :] - smooth[:-2, :])
    expected = 60.0 * torch.relu(torch.sqrt(gx**2 + gy**2) - 0.05)
    boundary = hand_made_boundary(grey[None], gain=DEMO_GAIN, threshold=DEMO_THRESHOLD, power=1.0)
    assert boundary.shape == (1, 1) + grey.shape
    torch.testing.assert_close(boundary[0, 0], expected, rtol=0, atol=1e-6)
