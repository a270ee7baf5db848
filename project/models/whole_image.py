"""Shen et al.'s all-convolutional whole-image classifier: a patch backbone, two convolutional blocks, pooling, a head.

L. Shen, L. R. Margolies, J. H. Rothstein, E. Fluder, R. McBride, W. Sieh, "Deep learning to
improve breast cancer detection on screening mammography", Scientific Reports 9:12495 (2019).
A classifier trained on lesion patches keeps its convolutional layers; on its feature map of a
whole mammogram sit two new blocks (ResNet bottleneck blocks or VGG-style blocks, each halving
the resolution), global average pooling and a linear classifier. Training goes in two stages:
the new layers first (param group ``head``), then everything at a lower rate.

``create_model("whole_image", backbone="resnet10t")`` builds one from scratch;
``patch_checkpoint=FILE`` takes the backbone's name, kwargs and weights from a patch classifier's
checkpoint. ``python -m project.models.whole_image --patch P.safetensors --out W.safetensors``
writes the converted model as a self-describing checkpoint whose kwargs no longer name the patch
file, to start training from (``--init-weights``) or to load anywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from timm.layers import ClassifierHead, ConvNormAct
from timm.models.resnet import Bottleneck, downsample_conv
from torch import nn

from project.models.checkpoint import CheckpointConfig, read_config, save_checkpoint
from project.models.factory import InitWeightsError, create_model, load_state, param_groups, read_state_dict

BLOCKS = ("resnet", "vgg")
MODEL_NAME = "whole_image"
_BACKBONE_OWN_KWARGS = ("num_classes", "global_pool")  # set here, not taken from the patch classifier


def resnet_top(in_channels: int, planes: int) -> nn.Sequential:
    """Two bottleneck blocks [planes, planes, 4·planes], each with stride 2 and a projection shortcut."""
    out = planes * Bottleneck.expansion
    return nn.Sequential(
        Bottleneck(in_channels, planes, stride=2, downsample=downsample_conv(in_channels, out, 1, stride=2)),
        Bottleneck(out, planes, stride=2, downsample=downsample_conv(out, out, 1, stride=2)),
    )


def vgg_top(in_channels: int, width: int) -> nn.Sequential:
    """Two VGG blocks: two 3x3 conv-BN-ReLU layers of `width` channels, then a 2x2 max pool."""

    def block(channels: int) -> list[nn.Module]:
        return [ConvNormAct(channels, width, 3), ConvNormAct(width, width, 3), nn.MaxPool2d(2, ceil_mode=True)]

    return nn.Sequential(*block(in_channels), *block(width))


class WholeImageClassifier(nn.Module):
    """backbone.forward_features -> two top blocks -> global average pool -> linear."""

    def __init__(self, backbone: nn.Module, num_classes: int = 1, block: str = "resnet", width: int | None = None,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, not {block!r}")
        channels = int(backbone.num_features)
        self.backbone = backbone
        # the backbone's input normalisation (timm's data config reads it), which its patch training used
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        if block == "resnet":
            planes = width or max(16, channels // 4)
            self.top, self.num_features = resnet_top(channels, planes), planes * Bottleneck.expansion
        else:
            self.top, self.num_features = vgg_top(channels, width or channels), width or channels
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, pool_type="avg", drop_rate=drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.backbone.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """'head': the new layers (top blocks and classifier); then the backbone's groups, top first,
        as 'stage<n-1>' ... 'stage0' and 'stem'."""
        backbone = [params for params in param_groups(self.backbone).values() if params]  # top first
        names = [f"stage{i}" for i in reversed(range(len(backbone) - 1))] + ["stem"]
        return {"head": [*self.top.parameters(), *self.head.parameters()], **dict(zip(names, backbone, strict=True))}


def patch_backbone_spec(patch_checkpoint: str | Path) -> tuple[str, dict[str, Any]]:
    """(timm name, kwargs) of the backbone of a patch classifier's checkpoint."""
    config = read_config(patch_checkpoint)
    if config.model_name == MODEL_NAME:
        raise InitWeightsError(f"{patch_checkpoint}: already a whole-image model, not a patch classifier")
    return config.model_name, {k: v for k, v in config.model_kwargs.items() if k not in _BACKBONE_OWN_KWARGS}


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A model without classifier or pooling, so that forward_features gives its last feature map."""
    return create_model(name, **{"in_chans": 1, **kwargs, "num_classes": 0, "global_pool": ""})


def load_patch_weights(backbone: nn.Module, patch_checkpoint: str | Path) -> None:
    """Every backbone tensor from the patch checkpoint (only its classifier is left out)."""
    report = load_state(backbone, read_state_dict(patch_checkpoint), str(patch_checkpoint))
    if report.missing:
        raise InitWeightsError(f"{patch_checkpoint}: the patch classifier lacks backbone tensors {report.missing[:5]}")


def build_whole_image(
    backbone: str | None = None,
    patch_checkpoint: str | Path | None = None,
    num_classes: int = 1,
    block: str = "resnet",
    width: int | None = None,
    drop_rate: float = 0.0,
    **backbone_kwargs: Any,
) -> WholeImageClassifier:
    """The factory's 'whole_image': a timm `backbone` (one input channel unless in_chans says
    otherwise), or the backbone of `patch_checkpoint` with its trained weights."""
    if patch_checkpoint is not None:
        name, kwargs = patch_backbone_spec(patch_checkpoint)
        if backbone is not None and backbone != name:
            raise ValueError(f"backbone {backbone!r} given, but {patch_checkpoint} holds a {name!r}")
        net = create_backbone(name, **{**kwargs, **backbone_kwargs})
        load_patch_weights(net, patch_checkpoint)
    elif backbone is None:
        raise ValueError("whole_image needs a backbone name or a patch_checkpoint")
    else:
        net = create_backbone(backbone, **backbone_kwargs)
    return WholeImageClassifier(net, num_classes, block, width, drop_rate)


def from_patch_checkpoint(patch_checkpoint: str | Path, **top_kwargs: Any) -> tuple[WholeImageClassifier, dict]:
    """The whole-image model on a trained patch classifier, and the kwargs that rebuild it without the file."""
    name, kwargs = patch_backbone_spec(patch_checkpoint)
    model = build_whole_image(patch_checkpoint=patch_checkpoint, **top_kwargs)
    return model, {"backbone": name, **kwargs, **top_kwargs}


def convert(patch_checkpoint: Path, out: Path, labels: Sequence[str] = ("cancer",), task: str = "mammo",
            **top_kwargs: Any) -> CheckpointConfig:
    """Write the converted model to `out` as a checkpoint of `task` (the patch checkpoint's preprocessing)."""
    model, kwargs = from_patch_checkpoint(patch_checkpoint, num_classes=len(labels), **top_kwargs)
    patch = read_config(patch_checkpoint)
    config = replace(patch, task=task, model_name=MODEL_NAME, model_kwargs=kwargs, labels=list(labels),
                     thresholds={}, metrics={}, epoch=None, code_version="", created="")
    save_checkpoint(out, model, config)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.models.whole_image",
        description="Turn a trained patch classifier into Shen et al.'s whole-image classifier (a checkpoint).",
    )
    parser.add_argument("--patch", type=Path, required=True, help="the patch classifier's checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the whole-image checkpoint to write")
    parser.add_argument("--block", choices=BLOCKS, default="resnet", help="the two top blocks")
    parser.add_argument("--width", type=int, help="bottleneck planes or VGG channels (default from the backbone)")
    parser.add_argument("--task", default="mammo", help="the task the whole-image checkpoint is for")
    parser.add_argument("--labels", nargs="+", default=["cancer"], help="its labels (one: a single logit)")
    args = parser.parse_args(argv)
    try:
        config = convert(args.patch, args.out, args.labels, args.task, block=args.block, width=args.width)
    except (InitWeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: whole_image {config.model_kwargs} on the backbone of {args.patch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
