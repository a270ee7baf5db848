"""An auxiliary lesion-map head: 1x1 convolutions on a classifier's feature maps, learnt during training only.

Segmentation as an auxiliary task asks the trunk to find the lesion, which the class label alone
says nothing about; on small ultrasound sets it is a common way to steer a classifier towards the
lesion (e.g. Y. Zhou et al., "Multi-task learning for segmentation and classification of tumors
in 3D automated breast ultrasound images", Medical Image Analysis 70:101918, 2021). Here the head is
as light as it can be: one logit per cell of the stride-32 grid, so it shapes the features that
the class head pools, and costs nothing at prediction. Read on its own (`lesion_map`), it locates the
lesion for a lesion-crop classifier (project.localise). A finer `stride` adds, as FCN's skip layers do
(J. Long, E. Shelhamer, T. Darrell, "Fully convolutional networks for semantic segmentation", CVPR
2015), the logits of a 1x1 convolution on the trunk's stride-16 or stride-8 features to the
upsampled stride-32 ones, so the map's cells are two or four times smaller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from project.models.factory import param_groups

FINAL_STRIDE = 32


def _zero_conv(channels: int) -> nn.Conv2d:
    """A 1x1 convolution to one logit that starts at zero everywhere (probability 0.5)."""
    conv = nn.Conv2d(channels, 1, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _skip_index(net: nn.Module, stride: int) -> int:
    """The index, in timm's feature_info, of the deepest of the trunk's feature levels at `stride`."""
    levels = [i for i, level in enumerate(getattr(net, "feature_info", None) or []) if level.get("reduction") == stride]
    if not levels or not hasattr(net, "forward_intermediates"):
        raise ValueError(f"{type(net).__name__} names no stride-{stride} features (timm's feature_info and "
                         f"forward_intermediates); its lesion map can only be stride {FINAL_STRIDE}")
    return levels[-1]


class WithLesionMap(nn.Module):
    """`net` (any model with forward_features → [B, C, h, w] and forward_head) plus a lesion-map logit per cell.

    In training mode forward returns (the network's logits, the map's logits [B, h, w]), which
    losses.LesionMapLoss reads; in eval mode the network's logits alone, so prediction,
    evaluation and TTA never see the map. With `stride` 16 or 8 the map has the grid of that
    level of the trunk, which timm's forward_intermediates gives beside the last features.
    """

    def __init__(self, net: nn.Module, stride: int = FINAL_STRIDE) -> None:
        super().__init__()
        self.net = net
        self.pretrained_cfg = getattr(net, "pretrained_cfg", None)
        self.lesion_head = _zero_conv(net.num_features)
        self.skip_index: int | None = None
        self.skip_head: nn.Conv2d | None = None
        if stride != FINAL_STRIDE:
            self.skip_index = _skip_index(net, stride)
            self.skip_head = _zero_conv(net.feature_info[self.skip_index]["num_chs"])

    def _features_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last features [B, C, h, w] and the lesion map's logits [B, H, W] from one pass."""
        if self.skip_head is None:
            features = self.forward_features(x)
            return features, self.lesion_head(features).squeeze(1)
        features, (skip,) = self.net.forward_intermediates(x, indices=[self.skip_index])
        coarse = F.interpolate(self.lesion_head(features), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return features, (self.skip_head(skip) + coarse).squeeze(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.net.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.forward_head(self.forward_features(x))
        features, map_logits = self._features_and_map(x)
        return self.forward_head(features), map_logits

    def lesion_map(self, x: torch.Tensor) -> torch.Tensor:
        """The lesion logit of every cell [B, h, w]: where a localiser (project.localise) finds the lesion."""
        return self._features_and_map(x)[1]

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The network's groups, top first; the lesion heads train with the class head."""
        groups = dict(param_groups(self.net))
        heads = [self.lesion_head, *([self.skip_head] if self.skip_head is not None else [])]
        groups["head"] = [*groups["head"], *(p for head in heads for p in head.parameters())]
        return groups
