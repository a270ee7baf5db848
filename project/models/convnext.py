"""MyConvNeXt, the BI-RADS classifier: a timm ConvNeXt trunk with block dropout and an MLP head.

Papers:
- Z. Liu et al., "A ConvNet for the 2020s", CVPR 2022 (ConvNeXt). https://arxiv.org/abs/2201.03545
- S. Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
  CVPR 2023 (ConvNeXt V2). https://arxiv.org/abs/2301.00808
- G. Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
  https://arxiv.org/abs/1603.09382
"""

from __future__ import annotations

from collections import OrderedDict

import timm
import torch
from timm.layers import NormMlpClassifierHead, trunc_normal_
from timm.models.convnext import ConvNeXt
from torch import nn


class MyConvNeXt(nn.Module):
    """ConvNeXt stem and stages, dropout after every block, pool-norm-MLP head to K logits.

    The trunk's parts keep timm's attribute names (stem, stages, norm_pre, head.norm), so a
    timm ConvNeXt state dict loads into this model key for key.
    """

    def __init__(self, trunk: ConvNeXt, num_classes: int, p_block: float, p_head: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = trunk.num_features
        self.pretrained_cfg = trunk.pretrained_cfg
        self.stem = trunk.stem
        self.stages = trunk.stages
        for stage in self.stages:
            stage.blocks = followed_by_dropout(stage.blocks, p_block)
        self.norm_pre = trunk.norm_pre
        self.head = NormMlpClassifierHead(
            self.num_features,
            num_classes,
            hidden_size=self.num_features // 2,
            pool_type="avg",
            drop_rate=p_head,
            norm_layer="layernorm2d",
            act_layer="gelu",
        )
        init_linear_layers(self.head)
        # Set by build_my_convnext: the JSON kwargs that rebuild this model.
        self.model_kwargs: dict[str, str | int | float] | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [B, C, H/32, W/32] of the last stage."""
        return self.norm_pre(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits [B, K] from a feature map; with pre_logits, the [B, C/2] hidden features."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by depth, top first: 'head', 'stage3' ... 'stage0', 'stem'.

        For staged unfreezing: each group can be frozen, thawed and given its own learning rate.
        The final norm of head-norm-first variants (norm_pre) trains with the head.
        """
        groups = {"head": [*self.norm_pre.parameters(), *self.head.parameters()]}
        for index in reversed(range(len(self.stages))):
            groups[f"stage{index}"] = list(self.stages[index].parameters())
        groups["stem"] = list(self.stem.parameters())
        return groups


def followed_by_dropout(blocks: nn.Sequential, p: float) -> nn.Sequential:
    """The same blocks under the same names, each followed by nn.Dropout(p) named '<i>_dropout'."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, block in blocks.named_children():
        layers[name] = block
        layers[f"{name}_dropout"] = nn.Dropout(p)
    return nn.Sequential(layers)


def init_linear_layers(module: nn.Module) -> None:
    """timm's ConvNeXt initialisation for linear layers: truncated normal (std 0.02), zero bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)


def build_my_convnext(
    backbone: str = "convnext_tiny",
    num_classes: int = 6,
    p_block: float = 0.05,
    sd_max: float = 0.6,
    p_head: float = 0.5,
    **trunk_kwargs,
) -> MyConvNeXt:
    """MyConvNeXt on the named timm ConvNeXt or ConvNeXt V2 (convnext_atto ... convnextv2_base).

    timm spreads stochastic depth linearly over all blocks: rate 0 at the first block (which then
    gets no DropPath), sd_max at the last. `trunk_kwargs` go to timm's ConvNeXt, e.g.
    ls_init_value=1.0: timm's default layer scale of 1e-6 suits long ImageNet schedules, but
    from scratch on a small dataset it keeps the blocks silent for many epochs.
    """
    trunk = timm.create_model(backbone, pretrained=False, num_classes=0, drop_path_rate=sd_max, **trunk_kwargs)
    if not isinstance(trunk, ConvNeXt):
        raise ValueError(f"backbone {backbone!r} is not a timm ConvNeXt; use e.g. convnext_tiny or convnextv2_atto")
    model = MyConvNeXt(trunk, num_classes=num_classes, p_block=p_block, p_head=p_head)
    model.model_kwargs = {
        "backbone": backbone,
        "num_classes": num_classes,
        "p_block": p_block,
        "sd_max": sd_max,
        "p_head": p_head,
        **trunk_kwargs,
    }
    return model
