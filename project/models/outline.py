"""OutlineNet: a lesion-probability logit per pixel from a timm trunk's feature pyramid.

The decoder is a small Feature Pyramid Network (T.-Y. Lin et al., "Feature Pyramid Networks for
Object Detection", CVPR 2017): a 1x1 lateral convolution on each of the trunk's stride-4 to
stride-32 levels, summed top-down with bilinear upsampling, then a 3x3 convolution and a 1x1 logit,
upsampled to the input. project.segment trains it on lesion masks and turns its outlines into boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from project.models.factory import create_model


class OutlineNet(nn.Module):
    """A lesion logit per pixel (B x 1 x H x W) from a B x 3 x H x W image."""

    def __init__(self, trunk: str = "tf_efficientnet_lite0", width: int = 64, pretrained_trunk: bool = False) -> None:
        super().__init__()
        self.trunk = create_model(trunk, num_classes=1, pretrained=pretrained_trunk)
        levels = self.trunk.feature_info[1:]
        self.levels = list(range(1, len(levels) + 1))
        self.lateral = nn.ModuleList(nn.Conv2d(level["num_chs"], width, 1) for level in levels)
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 1, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The merged pyramid at the finest level (stride 4)."""
        features = self.trunk.forward_intermediates(x, indices=self.levels, intermediates_only=True)
        merged = self.lateral[-1](features[-1])
        for lateral, finer in zip(reversed(self.lateral[:-1]), reversed(features[:-1]), strict=True):
            merged = F.interpolate(merged, size=finer.shape[-2:], mode="bilinear", align_corners=False) + lateral(finer)
        return merged

    def forward_head(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.head(features), size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), x.shape[-2:])


def build_outline_net(
    trunk: str = "tf_efficientnet_lite0", width: int = 64, pretrained_trunk: bool = False
) -> OutlineNet:
    """OutlineNet on `trunk`; the trunk's ImageNet weights with `pretrained_trunk` (offline for EfficientNet-Lite)."""
    return OutlineNet(trunk, width, pretrained_trunk)
