"""The walker prior of the trainer (``walker_beta``): B = 0 is scikit-image's random walker."""

import pytest
import torch

import rawks_triton as rt
from rawks_triton.training.config import TrainConfig
from rawks_triton.training.propagate import PropagationSettings, propagate_scribbles


def _scene(channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(channels, 14, 17, generator=g, dtype=torch.float64)
    image[:, :, 9:] += 0.6
    image = image / image.max()
    scribbles = torch.full((14, 17), -1, dtype=torch.long)
    scribbles[3, 1:6] = 0
    scribbles[10, 11:16] = 1
    scribbles[7, 8] = 2
    return image, scribbles


@pytest.mark.parametrize("channels", [1, 3])
def test_zero_boundary_is_the_random_walker(channels):
    image, scribbles = _scene(channels)
    settings = PropagationSettings(model="grady", backend="scipy", rtol=0.0, walker_beta=90.0)
    boundary = torch.zeros(1, 1, 14, 17, dtype=torch.float64)
    P, reachable, _ = propagate_scribbles(boundary, scribbles[None], 3, settings, image[None])
    data = image[0] if channels == 1 else image.permute(1, 2, 0)
    expected = rt.random_walker(
        data, scribbles + 1, beta=90.0, mode="bf", return_full_prob=True, channel_axis=None if channels == 1 else -1
    )
    assert bool(reachable.all())
    torch.testing.assert_close(P[0], expected, atol=1e-10, rtol=0)


def test_a_constant_boundary_changes_nothing_and_a_wall_cuts():
    image, scribbles = _scene(1)
    settings = PropagationSettings(model="grady", backend="scipy", rtol=0.0, walker_beta=90.0)
    run = lambda b: propagate_scribbles(b, scribbles[None], 3, settings, image[None])  # noqa: E731
    zero = run(torch.zeros(1, 1, 14, 17, dtype=torch.float64))
    shifted = run(torch.full((1, 1, 14, 17), 3.0, dtype=torch.float64))
    torch.testing.assert_close(zero[0], shifted[0], atol=1e-12, rtol=0)
    wall = torch.zeros(1, 1, 14, 17, dtype=torch.float64)
    wall[..., :, 8] = 30.0  # a wall between the label-0 stroke and the label-2 seed's column
    walled = run(wall)
    assert float(walled[0][0, 0, 3, 12]) < float(zero[0][0, 0, 3, 12])


def test_gradient_reaches_the_boundary():
    image, scribbles = _scene(3)
    image, scribbles = image[:, 1:8, 5:12], scribbles[1:8, 5:12]  # labels 0 (row 3) and 2 (7, 8)
    settings = PropagationSettings(model="grady", backend="scipy", rtol=0.0, walker_beta=90.0)
    g = torch.Generator().manual_seed(1)
    boundary = (0.5 * torch.rand(1, 1, 7, 7, dtype=torch.float64, generator=g)).requires_grad_()
    check = lambda b: propagate_scribbles(b, scribbles[None], 3, settings, image[None])[0]  # noqa: E731
    assert torch.autograd.gradcheck(check, (boundary,), eps=1e-6, atol=1e-5)


def test_errors_name_the_problem():
    image, scribbles = _scene(1)
    boundary = torch.zeros(1, 1, 14, 17, dtype=torch.float64)
    with pytest.raises(ValueError, match="`image` is needed"):
        propagate_scribbles(boundary, scribbles[None], 3, PropagationSettings(model="grady", walker_beta=90.0))
    with pytest.raises(ValueError, match="needs model 'grady'"):
        propagate_scribbles(boundary, scribbles[None], 3, PropagationSettings(walker_beta=90.0), image[None])
    with pytest.raises(ValueError, match="walker_beta.*needs model='grady'"):
        TrainConfig(walker_beta=100.0).validate()
    with pytest.raises(ValueError, match="walker_beta.*> 0"):
        TrainConfig(model="grady", walker_beta=0.0).validate()
    assert TrainConfig(model="grady", walker_beta=100.0).validate().propagation.walker_beta == 100.0
