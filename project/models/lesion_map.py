"""An auxiliary lesion-map head: a 1x1 convolution on a classifier's last feature map, learnt during training only.

Segmentation as an auxiliary task asks the trunk to find the lesion, which the class label alone
says nothing about; on small ultrasound sets it is a common way to steer a classifier towards the
lesion (e.g. Y. Zhou et al., "Multi-task learning for segmentation and classification of tumors
in 3D automated breast ultrasound images", Medical Image Analysis 70:101918, 2021). Here the head is
as light as it can be: one logit per cell of the stride-32 grid, so it shapes the features that
the class head pools, and costs nothing at prediction. Read on its own (`lesion_map`), it locates the
lesion for a lesion-crop classifier (project.localise).
"""

from __future__ import annotations

import torch
from torch import nn

from project.models.factory import param_groups


class WithLesionMap(nn.Module):
    """`net` (any model with forward_features → [B, C, h, w] and forward_head) plus a lesion-map logit per cell.

    In training mode forward returns (the network's logits, the map's logits [B, h, w]), which
    losses.LesionMapLoss reads; in eval mode the network's logits alone, so prediction,
    evaluation and TTA never see the map.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pretrained_cfg = getattr(net, "pretrained_cfg", None)
        self.lesion_head = nn.Conv2d(net.num_features, 1, kernel_size=1)
        nn.init.zeros_(self.lesion_head.weight)
        nn.init.zeros_(self.lesion_head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.net.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(x)
        logits = self.forward_head(features)
        if not self.training:
            return logits
        return logits, self.lesion_head(features).squeeze(1)

    def lesion_map(self, x: torch.Tensor) -> torch.Tensor:
        """The lesion logit of every cell [B, h, w]: where a localiser (project.localise) finds the lesion."""
        return self.lesion_head(self.forward_features(x)).squeeze(1)

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The network's groups, top first; the lesion head trains with the class head."""
        groups = dict(param_groups(self.net))
        groups["head"] = [*groups["head"], *self.lesion_head.parameters()]
        return groups
