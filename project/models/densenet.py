"""MyDenseNet: a DenseNet with CBAM after each dense block and task-decoupled heads for lesion features.

Papers:
    * Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.
      https://arxiv.org/abs/1608.06993
    * Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
      https://arxiv.org/abs/1807.06521
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.layers import SelectAdaptivePool2d
from timm.layers.cbam import CbamModule
from timm.models.densenet import DenseBlock, DenseLayer, DenseNet
from torch import nn

from project.data.classes import FEATURE_TASKS

EMBED_DIM = 256
# Backbone kwargs of a DenseNet small enough for CPU tests: 16 stem and 32 final channels
# (timm's DenseNet has no num_init_features argument; its stem has 2 * growth_rate channels).
TINY_DENSENET: dict[str, Any] = {"growth_rate": 8, "block_config": [2, 2, 2, 2]}


def cbam_reduction(block_index: int) -> int:
    """Reduction ratio of the CBAM channel MLP after dense block `block_index` (0-based): 8, 16, 24, 32."""
    return 16 * (block_index + 1) // 2


def dense_block_channels(block: DenseBlock) -> int:
    """Channels a dense block outputs: its input plus every layer's new feature maps."""
    layers = list(block.values())
    return layers[0].norm1.num_features + sum(layer.conv2.out_channels for layer in layers)


CBAM_KINDS = ("residual", "plain", "none")


class ResidualCbam(CbamModule):
    """CBAM blended into the identity by a per-channel scale that starts at zero: x + γ ⊙ (CBAM(x) − x).

    Plain CBAM multiplies the features by two sigmoid gates that start near 0.5, which scales a
    pretrained trunk's activations by about a quarter at every insertion and breaks what the next
    pretrained layer expects. Starting from γ = 0 leaves the trunk exactly as loaded; γ still gets a
    gradient from the first step, so the attention is learnt in (ReZero, Bachlechner et al. 2020;
    LayerScale, Touvron et al. 2021).
    """

    def __init__(self, channels: int, rd_channels: int) -> None:
        super().__init__(channels, rd_channels=rd_channels)
        self.gamma = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma.view(1, -1, 1, 1) * (super().forward(x) - x)


def block_cbam(channels: int, block_index: int, kind: str = "plain") -> CbamModule:
    """timm's CBAM (`kind` 'plain') or its residual form ('residual') whose channel MLP has exactly
    max(1, channels // r) hidden units.

    timm derives the width from a fractional rd_ratio with rounding, which can differ from
    channels // r, so the width is passed explicitly.
    """
    hidden = max(1, channels // cbam_reduction(block_index))
    if kind == "residual":
        return ResidualCbam(channels, rd_channels=hidden)
    if kind == "plain":
        return CbamModule(channels, rd_channels=hidden)
    raise ValueError(f"CBAM kind must be one of {CBAM_KINDS[:2]} here, got {kind!r}")


def _dropout_after_dense_layer(
    layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
) -> torch.Tensor:
    return layer.dropout(output)


def add_dense_layer_dropout(features: nn.Module, p: float) -> None:
    """Give every DenseLayer an `nn.Dropout` child applied to the feature maps it adds.

    A forward hook, not a wrapper, keeps timm's parameter names (DenseNet checkpoints still load
    by name) and reuses timm's DenseBlock loop unchanged.
    """
    dense_layers = [module for module in features.modules() if isinstance(module, DenseLayer)]
    for layer in dense_layers:
        layer.dropout = nn.Dropout(p)
        layer.register_forward_hook(_dropout_after_dense_layer)


def insert_cbam(features: nn.Sequential, kind: str = "plain") -> nn.Sequential:
    """The DenseNet feature stack with a CBAM module `cbamN` of `kind` right after each `denseblockN`."""
    stages: list[tuple[str, nn.Module]] = []
    block_index = 0
    for name, module in features.named_children():
        stages.append((name, module))
        if isinstance(module, DenseBlock):
            cbam = block_cbam(dense_block_channels(module), block_index, kind)
            stages.append((f"cbam{block_index + 1}", cbam))
            block_index += 1
    return nn.Sequential(OrderedDict(stages))


def embedding_head(in_features: int, p_drop: float) -> nn.Sequential:
    """Pooled features -> LayerNorm -> 512 (ReLU) -> Dropout -> 256 (GELU)."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.LayerNorm(in_features),
            fc1=nn.Linear(in_features, 512),
            act1=nn.ReLU(),
            drop=nn.Dropout(p_drop),
            fc2=nn.Linear(512, EMBED_DIM),
            act2=nn.GELU(),
        )
    )


def _projector(in_features: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, dim), nn.GELU())


class TaskSpecificDecoupling(nn.Module):
    """A shared and a per-task projection of one embedding; each task's head reads both.

    Task t's logits come from its own head on [shared(x), project_t(x)], so the tasks share what
    they have in common and keep what only one of them needs. Output: [B, T, num_classes].
    """

    def __init__(self, in_features: int, num_tasks: int, dim: int = 128, num_classes: int = 2):
        super().__init__()
        self.shared = _projector(in_features, dim)
        self.task_projectors = nn.ModuleList(_projector(in_features, dim) for _ in range(num_tasks))
        self.task_heads = nn.ModuleList(nn.Linear(2 * dim, num_classes) for _ in range(num_tasks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared(x)
        logits = [
            head(torch.cat([shared, project(x)], dim=1))
            for project, head in zip(self.task_projectors, self.task_heads, strict=True)
        ]
        return torch.stack(logits, dim=1)


class JointTaskHead(nn.Module):
    """One linear layer from the embedding to every task's logits [B, T, num_classes]: the ablation
    of task decoupling (`decouple_dim=0`), where the tasks share everything up to their logits."""

    def __init__(self, in_features: int, num_tasks: int, num_classes: int = 2):
        super().__init__()
        self.num_tasks, self.num_classes = num_tasks, num_classes
        self.fc = nn.Linear(in_features, num_tasks * num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).view(-1, self.num_tasks, self.num_classes)


def task_heads(in_features: int, num_tasks: int, decouple_dim: int) -> nn.Module:
    """Task decoupling with `decouple_dim`-wide projections, or one joint linear head when it is 0."""
    if decouple_dim < 0:
        raise ValueError(f"decouple_dim must be 0 (no decoupling) or positive, got {decouple_dim}")
    if decouple_dim == 0:
        return JointTaskHead(in_features, num_tasks)
    return TaskSpecificDecoupling(in_features, num_tasks, decouple_dim)


class MyDenseNet(nn.Module):
    """DenseNet features with dense-layer dropout and CBAM, an embedding head and task decoupling.

    Takes over `backbone.features` (a timm DenseNet's stem, blocks, transitions and final norm),
    so its parameter names match timm's and a timm DenseNet state dict loads with strict=False.
    forward returns logits [B, T, 2], T = len(tasks), in the order of `tasks`. `cbam` is one of
    CBAM_KINDS ('none' leaves the attention out, for ablations); `decouple_dim=0` puts one joint
    head in place of the decoupling.
    """

    def __init__(
        self,
        backbone: DenseNet,
        tasks: Sequence[str] = FEATURE_TASKS,
        p_layer: float = 0.03,
        p_head: float = 0.5,
        decouple_dim: int = 128,
        cbam: str = "plain",
    ):
        super().__init__()
        self.tasks = tuple(tasks)
        self.num_features = backbone.num_features
        self.pretrained_cfg = backbone.pretrained_cfg
        add_dense_layer_dropout(backbone.features, p_layer)
        self.features = backbone.features if cbam == "none" else insert_cbam(backbone.features, cbam)
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.head = embedding_head(self.num_features, p_head)
        self.decoupling = task_heads(EMBED_DIM, len(self.tasks), decouple_dim)
        # Set by build_my_densenet: the JSON kwargs that rebuild this model.
        self.model_kwargs: dict[str, Any] | None = None

    def cbam_modules(self) -> list[CbamModule]:
        """The CBAM modules, one per dense block, in forward order."""
        return [module for module in self.features if isinstance(module, CbamModule)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map [B, num_features, H/32, W/32]."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits [B, T, 2] from a feature map, or the [B, 256] embedding when pre_logits."""
        x = self.head(self.global_pool(x))
        return x if pre_logits else self.decoupling(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """CBAM spatial attention maps [B, 1, H_i, W_i] in [0, 1], one per dense block."""
        maps: list[torch.Tensor] = []
        handles = [
            cbam.spatial.gate.register_forward_hook(lambda _gate, _inputs, out: maps.append(out))
            for cbam in self.cbam_modules()
        ]
        try:
            self.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        return maps


def build_my_densenet(
    backbone: str = "densenet121",
    tasks: Sequence[str] = FEATURE_TASKS,
    p_layer: float = 0.03,
    p_head: float = 0.5,
    decouple_dim: int = 128,
    cbam: str = "plain",
    **backbone_kwargs: Any,
) -> MyDenseNet:
    """A randomly initialised MyDenseNet on timm's `backbone` (densenet121, 169, 201, 161, ...).

    `cbam` defaults to 'plain', the kind of every checkpoint written before the option existed
    (their kwargs lack it); the feature trainer asks for 'residual' (`--cbam`).

    backbone_kwargs go to timm's DenseNet (growth_rate, block_config, in_chans, memory_efficient,
    ...; see TINY_DENSENET) and must be JSON values: `model.model_kwargs` records every argument
    so that build_my_densenet(**model.model_kwargs) rebuilds the same architecture.
    """
    known = timm.list_models("densenet*")
    if backbone not in known:
        raise ValueError(f"backbone {backbone!r} is not a timm DenseNet; choose one of {known}")
    model_kwargs = {
        "backbone": backbone,
        "tasks": list(tasks),
        "p_layer": p_layer,
        "p_head": p_head,
        "decouple_dim": decouple_dim,
        "cbam": cbam,
        **backbone_kwargs,
    }
    try:
        model_kwargs = json.loads(json.dumps(model_kwargs))
    except TypeError as error:
        raise ValueError(f"MyDenseNet kwargs must be JSON values: {error}") from error
    network = timm.create_model(
        backbone, pretrained=False, num_classes=0, global_pool="", **backbone_kwargs
    )
    model = MyDenseNet(network, tasks, p_layer, p_head, decouple_dim, cbam)
    model.model_kwargs = model_kwargs
    return model
