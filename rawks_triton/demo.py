"""A one-minute demonstration on a synthetic image: propagate scribbles with both models.

    python -m rawks_triton.demo
"""

from __future__ import annotations

import time

import torch

from .propagation import propagate


def synthetic_scene(height: int = 96, width: int = 128, seed: int = 0):
    """Three regions (background, disc, box) with noise, their truth and one scribble each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    truth = torch.zeros(height, width, dtype=torch.long)
    truth[((yy - 0.5 * height) ** 2 + (xx - 0.3 * width) ** 2) < (0.25 * height) ** 2] = 1
    truth[(yy > 0.2 * height) & (yy < 0.8 * height) & (xx > 0.62 * width) & (xx < 0.88 * width)] = 2
    image = truth.float() * 0.4 + 0.08 * torch.randn(height, width, generator=g)
    seeds = torch.full((height, width), -1, dtype=torch.long)
    seeds[5, 5 : width - 5] = 0
    seeds[height // 2, int(0.2 * width) : int(0.4 * width)] = 1
    seeds[int(0.3 * height) : int(0.7 * height), int(0.75 * width)] = 2
    return image, truth, seeds


def boundary_from_image(image: torch.Tensor, threshold: float = 0.05, gain: float = 60.0) -> torch.Tensor:
    """A hand-made boundary score: 0 where the smoothed image is flat, large across edges."""
    smooth = torch.nn.functional.avg_pool2d(image[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    gx = torch.zeros_like(smooth)
    gy = torch.zeros_like(smooth)
    gx[:, 1:-1] = 0.5 * (smooth[:, 2:] - smooth[:, :-2])
    gy[1:-1, :] = 0.5 * (smooth[2:, :] - smooth[:-2, :])
    return gain * torch.relu(torch.sqrt(gx**2 + gy**2) - threshold)


def main() -> None:
    image, truth, seeds = synthetic_scene()
    boundary = boundary_from_image(image)
    print(f"synthetic image {tuple(image.shape)}, 3 labels, {int((seeds >= 0).sum())} scribbled pixels")
    print(f"{'model':8} {'backend':8} {'accuracy':>9} {'iterations':>11} {'time [ms]':>10}")
    for model in ("rawks", "grady"):
        for backend in ("scipy", "torch"):
            start = time.perf_counter()
            result = propagate(boundary[None], seeds[None], 3, model, backend=backend)
            elapsed = 1e3 * (time.perf_counter() - start)
            accuracy = float((result.P.argmax(1)[0] == truth).float().mean())
            print(f"{model:8} {backend:8} {100 * accuracy:8.2f}% {int(result.iterations.max()):11d} {elapsed:10.1f}")


if __name__ == "__main__":
    main()
