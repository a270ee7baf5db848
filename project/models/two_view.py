"""A lesion crop and its whole image seen by one network: a shared trunk, both views' features side by side, a head.

The crop shows the lesion's margin and inner echo at full resolution; the whole image shows where it
lies and what surrounds it (ducts, skin, the chest wall, other lesions). As in the global and local
views of GMIC, both views' pooled features are concatenated before one classifier, so the head can weigh
the lesion against its surroundings rather than averaging two separate opinions.

Paper: Y. Shen, N. Wu, J. Phang et al., "An interpretable classifier for high-resolution breast cancer
screening images utilizing weakly supervised localization", Medical Image Analysis 68:101908 (2021).
https://arxiv.org/abs/2002.07613

Input: [B, 6, H, W], the crop's RGB then the whole image's (Preprocess.whole_view). The trunk is any
timm model, held as `net` under timm's names, so its ImageNet weights load as for the bare model.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from project.models.convnext import init_linear_layers
from project.models.factory import param_groups

VIEWS = 2


class TwoView(nn.Module):
    """One timm trunk run on both views; dropout and a linear layer on their concatenated pooled features."""

    views = VIEWS

    def __init__(self, network: nn.Module, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.net = network
        self.pretrained_cfg = network.pretrained_cfg
        self.num_classes = num_classes
        self.num_features = VIEWS * network.num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes)
        init_linear_layers(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2C]: the crop's pooled trunk features, then the whole image's; one trunk pass over both."""
        if x.shape[1] != 3 * VIEWS:
            raise ValueError(f"a two-view model takes {3 * VIEWS} channels (crop RGB, whole RGB), got {x.shape[1]}")
        crop, whole = x[:, :3], x[:, 3:]
        pooled = self.net(torch.cat([crop, whole]))
        return torch.cat(pooled.chunk(VIEWS), dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trunk's groups by depth (factory.param_groups), the new head joining its top group, 'head'."""
        groups = param_groups(self.net)
        groups["head"] = [*groups.get("head", []), *self.head.parameters()]
        return groups


def build_two_view(
    backbone: str = "tf_efficientnet_lite0", num_classes: int = 6, drop_rate: float = 0.2, **trunk_kwargs: Any
) -> TwoView:
    """The two-view classifier on a timm trunk (its classifier removed; global average pooling kept)."""
    network = timm.create_model(backbone, pretrained=False, num_classes=0, **trunk_kwargs)
    return TwoView(network, num_classes, drop_rate)
