"""The two networks of RAWKS training: Q (segmentation logits) and B (boundary scores >= 0).

Defaults are small fully-convolutional networks that train on a CPU in minutes:

* :class:`SegmentationNet`: two stride-2 stages and dilated convolutions for context,
  bilinear upsampling, and a full-resolution skip for sharp edges; outputs [N, L, H, W]
  logits at the input size.
* :class:`BoundaryNet`: the image and its per-channel gradient magnitudes (fixed,
  parameter-free features) through a few 3x3 convolutions; outputs [N, 1, H, W]
  boundary scores through softplus, so B >= 0. The last bias starts at
  ``initial_logit`` (default -10, B = 4.5e-5): the "rawks" walk survives a step with
  probability exp(-B) and needs on the order of (image side)^2 steps to cross a region,
  so B must start close to 0 or every pixel far from a scribble is unreachable.

:class:`ResNetFCN` (``arch="resnet18"`` ... ``"resnet101"``, the paper used ResNet-101
for both networks) needs torchvision, imported only when asked for; weights are read
from a local file when given, nothing is downloaded.

On volumes ([N, C, D, H, W]) the networks are either :class:`PerSlice` (the 2D network
on every slice, ``volume_net="per-slice"``) or the small networks with 3D convolutions
(``volume_net="3d"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("small", "resnet18", "resnet34", "resnet50", "resnet101")
# Networks on volumes: the 2D networks on every slice, or small 3D convolutions.
VOLUME_NETS = ("per-slice", "3d")


def _block(cin: int, cout: int, dilation: int = 1, stride: int = 1, dims: int = 2) -> nn.Sequential:
    """3x3 convolution, group norm, ReLU; ``dims=3``: a 3x3x3 convolution whose stride and
    dilation are in-plane only (the slices of a volume are thick, the depth is short)."""
    if dims == 2:
        conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation)
    else:
        conv = nn.Conv3d(
            cin, cout, 3, stride=(1, stride, stride), padding=(1, dilation, dilation), dilation=(1, dilation, dilation)
        )
    return nn.Sequential(conv, nn.GroupNorm(min(4, cout), cout), nn.ReLU(inplace=True))


def _centred(image: torch.Tensor) -> torch.Tensor:
    return image - 0.5


class SegmentationNet(nn.Module):
    """Q: a small FCN, [N, C, H, W] images in [0, 1] -> [N, num_labels, H, W] logits.

    ``dims=3``: the same network with 3D convolutions, [N, C, D, H, W] volumes ->
    [N, num_labels, D, H, W] logits (strides and dilations in-plane only).
    """

    def __init__(self, in_channels: int, num_labels: int, width: int = 32, dims: int = 2):
        super().__init__()
        conv1x1 = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.stem = nn.Sequential(_block(in_channels, width // 2, dims=dims), _block(width // 2, width // 2, dims=dims))
        self.down1 = _block(width // 2, width, stride=2, dims=dims)
        self.down2 = _block(width, width, stride=2, dims=dims)
        self.context = nn.Sequential(
            _block(width, width, 2, dims=dims), _block(width, width, 4, dims=dims), _block(width, width, 8, dims=dims)
        )
        self.fuse = nn.Sequential(conv1x1(width + width // 2, width, 1), nn.ReLU(inplace=True))
        self.head = conv1x1(width, num_labels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            _check_grid("image", image, 3)
        full = self.stem(_centred(image))
        coarse = self.context(self.down2(self.down1(full)))
        mode = "bilinear" if self.dims == 2 else "trilinear"
        coarse = F.interpolate(coarse, size=full.shape[2:], mode=mode, align_corners=False)
        return self.head(self.fuse(torch.cat([coarse, full], dim=1)))


def _check_grid(name: str, image: torch.Tensor, dims: int) -> None:
    if image.dim() != dims + 2:
        raise ValueError(
            f"`{name}` must be (N, C, D, H, W) volumes for this 3D network, got shape {tuple(image.shape)}"
        )


def gradient_features(image: torch.Tensor) -> torch.Tensor:
    """Per-channel central-difference gradient magnitudes, [N, C, H, W] (0 on the border)."""
    gx = torch.zeros_like(image)
    gy = torch.zeros_like(image)
    gx[..., :, 1:-1] = 0.5 * (image[..., :, 2:] - image[..., :, :-2])
    gy[..., 1:-1, :] = 0.5 * (image[..., 2:, :] - image[..., :-2, :])
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


# The hand-made boundary of ``rawks propagate`` without a checkpoint.
HAND_MADE_GAIN = 2000.0
HAND_MADE_THRESHOLD = 0.02


def hand_made_boundary(
    image: torch.Tensor, gain: float = HAND_MADE_GAIN, threshold: float = HAND_MADE_THRESHOLD, power: float = 2.0
) -> torch.Tensor:
    """[C, H, W] image -> [1, 1, H, W] boundary scores without a network: 0 where the image is flat, large across edges.

    B = gain * relu(m - threshold) ** power, with m the largest over channels of the
    central-difference gradient magnitude of the image smoothed by a 3x3 box filter.
    """
    smooth = F.avg_pool2d(image[None], 3, stride=1, padding=1, count_include_pad=False)
    magnitude = gradient_features(smooth).amax(dim=1, keepdim=True)
    return gain * torch.relu(magnitude - threshold) ** power


class BoundaryNet(nn.Module):
    """B: [N, C, H, W] images in [0, 1] -> [N, 1, H, W] boundary scores, softplus so B >= 0.

    ``dims=3``: 3D convolutions, [N, C, D, H, W] volumes -> [N, 1, D, H, W] scores.
    """

    def __init__(self, in_channels: int, width: int = 16, initial_logit: float = -10.0, dims: int = 2):
        super().__init__()
        self.dims = dims
        self.body = nn.Sequential(
            _block(2 * in_channels, width, dims=dims),
            _block(width, width, 2, dims=dims),
            _block(width, width, 1, dims=dims),
        )
        self.head = (nn.Conv2d if dims == 2 else nn.Conv3d)(width, 1, 1)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.constant_(self.head.bias, initial_logit)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.dims == 3:
            _check_grid("image", image, 3)
        # In-plane gradients on volumes too (the last two dimensions).
        features = torch.cat([_centred(image), 10.0 * gradient_features(image)], dim=1)
        return F.softplus(self.head(self.body(features)))


class ResNetFCN(nn.Module):
    """A torchvision ResNet trunk with a 1x1 head, upsampled to the input size.

    ``softplus=True`` makes it a boundary network (one output channel, B >= 0). ResNet-50
    and -101 use dilation in the last two stages (output stride 8), 18 and 34 output stride 32.
    ``weights``: a local state-dict file for the trunk (e.g. ImageNet weights saved
    earlier); missing head keys are expected, trunk keys must all load.
    """

    def __init__(
        self,
        arch: str,
        in_channels: int,
        out_channels: int,
        weights: str | None = None,
        softplus: bool = False,
        initial_logit: float = -10.0,
    ):
        super().__init__()
        try:
            import torchvision
        except Exception as err:  # ImportError, or a torchvision built for another torch
            raise ImportError(
                f"arch={arch!r} needs torchvision, which cannot be imported here ({type(err).__name__}: {err}). "
                f"Install the torchvision build that matches torch {torch.__version__}, or use arch='small'."
            ) from err
        if arch not in ARCHS[1:]:
            raise ValueError(f"`arch` must be one of {list(ARCHS[1:])} for ResNetFCN, got {arch!r}")
        dilate = arch in ("resnet50", "resnet101")
        trunk = getattr(torchvision.models, arch)(
            weights=None, replace_stride_with_dilation=[False, True, True] if dilate else None
        )
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = trunk.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"`weights` {weights} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        if in_channels != 3:
            old = trunk.conv1
            trunk.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, stride=2, padding=3, bias=False)
            with torch.no_grad():
                trunk.conv1.weight.copy_(old.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1))
        self.trunk = nn.Sequential(
            trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        )
        features = trunk.fc.in_features
        self.head = nn.Conv2d(features, out_channels, 1)
        self.softplus = softplus
        if softplus:
            nn.init.normal_(self.head.weight, std=1e-4)
            nn.init.constant_(self.head.bias, initial_logit)
        self.register_buffer(
            "mean",
            torch.tensor([0.485, 0.456, 0.406][:in_channels] if in_channels == 3 else [0.5] * in_channels).view(
                1, -1, 1, 1
            ),
        )
        self.register_buffer(
            "std",
            torch.tensor([0.229, 0.224, 0.225][:in_channels] if in_channels == 3 else [0.25] * in_channels).view(
                1, -1, 1, 1
            ),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.head(self.trunk((image - self.mean) / self.std))
        out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return F.softplus(out) if self.softplus else out


def _is_small(arch: str, weights: str | None) -> bool:
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {list(ARCHS)}, got {arch!r}")
    if arch == "small" and weights is not None:
        raise ValueError("`weights` is only for the ResNet architectures; arch='small' trains from scratch")
    return arch == "small"


class PerSlice(nn.Module):
    """A 2D network applied to every slice of a volume: [N, C, D, H, W] -> [N, K, D, H, W].

    The slices go through ``net`` as one batch of N * D images ([N * D, C, H, W]), so
    normalisation and every weight are shared across slices; [N, C, H, W] images pass
    straight through.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() == 4:
            return self.net(image)
        if image.dim() != 5:
            raise ValueError(
                f"`image` must be (N, C, D, H, W) volumes or (N, C, H, W) images, got {tuple(image.shape)}"
            )
        n, c, depth, height, width = image.shape
        slices = image.transpose(1, 2).reshape(n * depth, c, height, width)
        out = self.net(slices)  # [N * D, K, H, W]
        return out.reshape(n, depth, out.shape[1], height, width).transpose(1, 2)


def _check_volume_net(volume_net: str | None, arch: str) -> None:
    if volume_net is not None and volume_net not in VOLUME_NETS:
        raise ValueError(f"`volume_net` must be one of {list(VOLUME_NETS)} (or None for images), got {volume_net!r}")
    if volume_net == "3d" and arch != "small":
        raise ValueError(f"volume_net='3d' is a small network: it needs arch='small', got arch={arch!r}")


def _build(arch: str, weights: str | None, volume_net: str | None, small, resnet) -> nn.Module:
    """``small(dims)`` or ``resnet()`` for images, per slice, or (small only) in 3D."""
    _check_volume_net(volume_net, arch)
    if volume_net == "3d":
        return small(3)
    net = small(2) if _is_small(arch, weights) else resnet()
    return PerSlice(net) if volume_net == "per-slice" else net


def build_segmentation_net(
    arch: str,
    in_channels: int,
    num_labels: int,
    width: int = 32,
    weights: str | None = None,
    volume_net: str | None = None,
) -> nn.Module:
    """Q for images (``volume_net=None``) or volumes ("per-slice" or "3d")."""

    def small(dims):
        return SegmentationNet(in_channels, num_labels, width, dims=dims)

    return _build(arch, weights, volume_net, small, lambda: ResNetFCN(arch, in_channels, num_labels, weights))


def build_boundary_net(
    arch: str,
    in_channels: int,
    width: int = 16,
    weights: str | None = None,
    initial_logit: float = -10.0,
    volume_net: str | None = None,
) -> nn.Module:
    """B for images (``volume_net=None``) or volumes ("per-slice" or "3d")."""

    def small(dims):
        return BoundaryNet(in_channels, width, initial_logit, dims=dims)

    def resnet():
        return ResNetFCN(arch, in_channels, 1, weights, softplus=True, initial_logit=initial_logit)

    return _build(arch, weights, volume_net, small, resnet)
