"""Both ultrasound heads on an EfficientNet(-Lite) trunk, the one with offline ImageNet weights.

MyEfficientNet is the BI-RADS classifier's recipe (dropout after every block, linearly rising
stochastic depth, LayerNorm → Linear → GELU → Dropout → Linear head, as MyConvNeXt) on this trunk;
MyEfficientNetFeatures is the feature recogniser's (CBAM after every resolution level, embedding
head, task decoupling, as MyDenseNet). Both keep timm's parameter names (conv_stem, bn1, blocks,
conv_head, bn2), so the packaged ImageNet weights load by name.

Papers:
- M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019. https://arxiv.org/abs/1905.11946 (EfficientNet-Lite: the variant without
  squeeze-excitation and swish, https://blog.tensorflow.org/2020/03/higher-accuracy-on-vision-models-with-efficientnet-lite.html)
- G. Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016. https://arxiv.org/abs/1603.09382
- S. Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.layers import NormMlpClassifierHead, SelectAdaptivePool2d
from timm.models.efficientnet import EfficientNet
from torch import nn

from project.data.classes import FEATURE_TASKS
from project.models.convnext import followed_by_dropout, init_linear_layers
from project.models.densenet import EMBED_DIM, block_cbam, embedding_head, task_heads


class EfficientNetBody(nn.Module):
    """timm's EfficientNet without its classifier, under timm's names, with optional modules after chosen stages."""

    def __init__(self, network: EfficientNet, after_stage: dict[int, nn.Module] | None = None) -> None:
        super().__init__()
        self.pretrained_cfg = network.pretrained_cfg
        self.num_features = network.num_features
        self.conv_stem, self.bn1, self.blocks = network.conv_stem, network.bn1, network.blocks
        self.conv_head, self.bn2 = network.conv_head, network.bn2
        self.after_stage = nn.ModuleDict({str(i): module for i, module in (after_stage or {}).items()})
        # Set by the builders: the JSON kwargs that rebuild the model.
        self.model_kwargs: dict[str, Any] | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [B, num_features, H/32, W/32] after the 1x1 head convolution."""
        x = self.bn1(self.conv_stem(x))
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if str(index) in self.after_stage:
                x = self.after_stage[str(index)](x)
        return self.bn2(self.conv_head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by depth, top first: 'head' (with conv_head and bn2), 'stage<n-1>' ... 'stage0', 'stem'.

        A module placed after a stage trains with that stage.
        """
        stages = {f"stage{i}": [*stage.parameters(), *self._after(i)] for i, stage in enumerate(self.blocks)}
        stem = [*self.conv_stem.parameters(), *self.bn1.parameters()]
        grouped = {id(p) for group in [*stages.values(), stem] for p in group}
        head = [p for p in self.parameters() if id(p) not in grouped]
        return {"head": head, **dict(reversed(stages.items())), "stem": stem}

    def _after(self, index: int) -> list[nn.Parameter]:
        module = self.after_stage[str(index)] if str(index) in self.after_stage else None
        return list(module.parameters()) if module is not None else []


class MyEfficientNet(EfficientNetBody):
    """EfficientNet trunk with dropout after every block and a pool-norm-MLP head to K logits."""

    def __init__(self, network: EfficientNet, num_classes: int, p_block: float, p_head: float) -> None:
        for index, stage in enumerate(network.blocks):
            network.blocks[index] = followed_by_dropout(stage, p_block)
        super().__init__(network)
        self.num_classes = num_classes
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, hidden_size=self.num_features // 2, pool_type="avg",
            drop_rate=p_head, norm_layer="layernorm2d", act_layer="gelu",
        )
        init_linear_layers(self.head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits [B, K] from a feature map; with pre_logits, the [B, C/2] hidden features."""
        return self.head(x, pre_logits=pre_logits)


class MyEfficientNetFeatures(EfficientNetBody):
    """EfficientNet trunk with CBAM after each resolution level, an embedding head and task decoupling.

    forward returns logits [B, T, 2], T = len(tasks), in the order of `tasks`. `cbam` is one of
    CBAM_KINDS ('none' leaves the attention out, for ablations); `decouple_dim=0` puts one joint
    head in place of the decoupling.
    """

    def __init__(
        self, network: EfficientNet, tasks: Sequence[str], p_head: float, decouple_dim: int, cbam: str = "plain"
    ) -> None:
        super().__init__(network, after_stage=None if cbam == "none" else _cbam_per_level(network, cbam))
        self.tasks = tuple(tasks)
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.head = embedding_head(self.num_features, p_head)
        self.decoupling = task_heads(EMBED_DIM, len(self.tasks), decouple_dim)

    def cbam_modules(self) -> list[nn.Module]:
        """The CBAM modules, one per resolution level, in forward order."""
        return list(self.after_stage.values())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits [B, T, 2] from a feature map, or the [B, 256] embedding when pre_logits."""
        x = self.head(self.global_pool(x))
        return x if pre_logits else self.decoupling(x)


def _cbam_per_level(network: EfficientNet, kind: str) -> dict[int, nn.Module]:
    """A CBAM after the last stage of each resolution level (timm's feature_info), reductions 8, 16, 24, ..."""
    levels = [info for info in network.feature_info if info["module"].startswith("blocks.")]
    return {int(info["module"].split(".")[1]): block_cbam(info["num_chs"], level, kind)
            for level, info in enumerate(levels)}


def _network(backbone: str, sd_max: float, **kwargs: Any) -> EfficientNet:
    network = timm.create_model(backbone, pretrained=False, num_classes=0, drop_path_rate=sd_max, **kwargs)
    if not isinstance(network, EfficientNet):
        raise ValueError(f"backbone {backbone!r} is not a timm EfficientNet; use e.g. tf_efficientnet_lite0")
    return network


def build_my_efficientnet(
    backbone: str = "tf_efficientnet_lite0",
    num_classes: int = 6,
    p_block: float = 0.05,
    sd_max: float = 0.2,
    p_head: float = 0.5,
    **trunk_kwargs: Any,
) -> MyEfficientNet:
    """The BI-RADS classifier on an EfficientNet trunk; timm rises stochastic depth linearly to sd_max."""
    model = MyEfficientNet(_network(backbone, sd_max, **trunk_kwargs), num_classes, p_block, p_head)
    model.model_kwargs = {"backbone": backbone, "num_classes": num_classes, "p_block": p_block, "sd_max": sd_max,
                          "p_head": p_head, **trunk_kwargs}
    return model


def build_my_efficientnet_features(
    backbone: str = "tf_efficientnet_lite0",
    tasks: Sequence[str] = FEATURE_TASKS,
    sd_max: float = 0.1,
    p_head: float = 0.5,
    decouple_dim: int = 128,
    cbam: str = "plain",
    **trunk_kwargs: Any,
) -> MyEfficientNetFeatures:
    """The lesion-feature recogniser on an EfficientNet trunk (stochastic depth stands in for dense-layer dropout).

    `cbam` defaults to 'plain', the kind of every checkpoint written before the option existed
    (their kwargs lack it); the feature trainer asks for 'residual' (`--cbam`), which leaves the
    pretrained trunk unchanged at initialisation.
    """
    model = MyEfficientNetFeatures(_network(backbone, sd_max, **trunk_kwargs), tasks, p_head, decouple_dim, cbam)
    model.model_kwargs = {"backbone": backbone, "tasks": list(tasks), "sd_max": sd_max, "p_head": p_head,
                          "decouple_dim": decouple_dim, "cbam": cbam, **trunk_kwargs}
    return model
