"""Model factory: models by name, initial weights from a local file, a weights package or timm's hub, param groups."""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg, group_parameters
from timm.models._manipulate import adapt_input_conv
from torch import nn

from project.models.pretrained import (
    OFFLINE_WEIGHTS,
    PretrainedWeightsUnavailable,
    has_offline_weights,
    offline_state_dict,
)

logger = logging.getLogger(__name__)

# Our own models, imported only when asked for.
_OWN_BUILDERS = {
    "my_convnext": "project.models.convnext:build_my_convnext",
    "my_densenet": "project.models.densenet:build_my_densenet",
    "my_efficientnet": "project.models.efficientnet:build_my_efficientnet",
    "my_efficientnet_features": "project.models.efficientnet:build_my_efficientnet_features",
    "outline_fpn": "project.models.outline:build_outline_net",
    "two_view": "project.models.two_view:build_two_view",
    "whole_image": "project.models.whole_image:build_whole_image",
}
# Keys under which training frameworks nest the weights (Lightning, FB/DeiT, plain torch).
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")
# Prefixes added by wrappers: DistributedDataParallel, Lightning modules, torch.compile.
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
# Prefixes under which our own wrappers hold a network (WithLesionMap's `net.`): a file of the bare
# network loads into the wrapped one.
_MODEL_WRAPPER_PREFIXES = ("net.",)
_HUB_PROBE_TIMEOUT_S = 5.0


class InitWeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    """What load_init_weights did with each tensor of a weights file."""

    path: str
    loaded: list[str]
    skipped: dict[str, str]  # key in the file -> why it was not loaded
    missing: list[str]  # model keys the file did not provide

    def summary(self) -> str:
        skipped = ", ".join(f"{key} ({why})" for key, why in self.skipped.items())
        return (
            f"{self.path}: loaded {len(self.loaded)} tensors; skipped {len(self.skipped)}"
            f"{': ' + skipped if skipped else ''}; missing {len(self.missing)}"
            f"{': ' + ', '.join(self.missing) if self.missing else ''}"
        )


def create_model(
    name: str, pretrained: bool = False, lesion_map: bool = False, lesion_map_stride: int = 32, **kwargs
) -> nn.Module:
    """'my_convnext', 'my_densenet' or any timm model name (resnet50, densenet121, ...).

    kwargs go to the builder (num_classes for all). With pretrained, the ImageNet weights of the
    matching timm model come from its weights package when one exists (tf_efficientnet_lite0/1/2,
    no network needed), else from timm's hub (or its local cache). Every pretrained tensor but the
    classifier must load; the classifier is re-initialised when the class count differs. With
    lesion_map, the model gets an auxiliary lesion-map head (project.models.lesion_map) after that, on
    the grid of `lesion_map_stride` (32, 16 or 8).
    """
    model = _build(name, **kwargs)
    if pretrained:
        report = load_pretrained(model, _timm_name_of(model, name))
        logger.info("pretrained weights for %s: %s", name, report.summary())
    if lesion_map:
        from project.models.lesion_map import WithLesionMap  # it builds on this module's param_groups

        model = WithLesionMap(model, lesion_map_stride)
    return model


def load_pretrained(model: nn.Module, timm_name: str) -> LoadReport:
    """ImageNet weights of `timm_name` ('tf_efficientnet_lite0', 'convnext_atto.d2_in1k') into a model built on it."""
    architecture = timm_name.partition(".")[0]
    if has_offline_weights(architecture):
        state, source = offline_state_dict(architecture), OFFLINE_WEIGHTS[architecture].distribution
    else:
        path = pretrained_weights_file(timm_name)
        state, source = read_state_dict(path), str(path)
    cfg = get_pretrained_cfg(architecture)
    report = load_state(model, adapt_first_conv(state, model.state_dict(), cfg.first_conv), source)
    classifier = cfg.classifier or "classifier"
    unloaded = [key for key in report.skipped if not _without_model_wrapper(key).startswith(f"{classifier}.")]
    if unloaded:
        raise InitWeightsError(f"{source}: pretrained tensors that do not fit {timm_name}: {unloaded[:5]}")
    if report.skipped and hasattr(model, "get_classifier"):
        _start_small(model.get_classifier())
    return report


def adapt_first_conv(
    state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], first_conv: str | Sequence[str] | None
) -> dict[str, torch.Tensor]:
    """`state` with the first convolution's kernels fitted to the model's input channels, as timm does.

    timm adapts RGB weights itself only when it loads them; here a state dict is loaded, so a model
    built with `in_chans=1` gets the sum of the RGB kernels (on a grey picture, R = G = B, the summed
    kernel gives what the three gave, exactly where the channels share mean and std), other counts
    the kernels repeated and rescaled (`timm.models._manipulate.adapt_input_conv`).
    """
    names = [first_conv] if isinstance(first_conv, str) else list(first_conv or ())
    adapted = dict(state)
    for key in (f"{name}.weight" for name in names):
        source, target = state.get(key), model_state.get(key)
        if source is not None and target is not None and source.ndim == 4 and source.shape[1] != target.shape[1]:
            adapted[key] = adapt_input_conv(target.shape[1], source)
    return adapted


def _start_small(classifier: nn.Module) -> None:
    """A new classifier on a pretrained trunk starts near zero, like timm's ViT/ConvNeXt heads.

    timm's EfficientNet init draws a K-class head from U(-1/sqrt(K), 1/sqrt(K)): with 1280
    features that gives logits of several units, a first loss near 3 for 4 classes, and large
    random gradients flowing into the pretrained trunk during the first epoch.
    """
    for layer in classifier.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)


def _build(name: str, **kwargs) -> nn.Module:
    if name in _OWN_BUILDERS:
        module_name, function_name = _OWN_BUILDERS[name].split(":")
        return getattr(importlib.import_module(module_name), function_name)(**kwargs)
    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}: use {', '.join(_OWN_BUILDERS)} or a timm model name "
            "such as resnet50, densenet121 or seresnext26d_32x4d"
        )
    return timm.create_model(name, pretrained=False, **kwargs)


def _timm_name_of(model: nn.Module, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or not cfg.get("architecture"):
        raise PretrainedWeightsUnavailable(
            f"model {name!r} names no timm architecture to take pretrained weights from; "
            "pass --init-weights PATH with a local weights file instead"
        )
    return ".".join(filter(None, (cfg["architecture"], cfg.get("tag"))))


def pretrained_weights_file(timm_name: str) -> Path:
    """Local path of the hub weights of a timm model ('convnext_atto' or 'convnext_atto.d2_in1k').

    Offline (HF_HUB_OFFLINE) or when the hub does not answer within a few seconds, only the
    local Hugging Face cache is looked at, so a machine without network fails at once rather
    than after the hub client's retries.
    """
    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise PretrainedWeightsUnavailable(
            f"timm publishes no hub weights for {timm_name!r}; "
            "pass --init-weights PATH with a local weights file instead"
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    unreachable = _offline_reason() or _hub_unreachable_reason()
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            cfg.hf_hub_filename or "model.safetensors",
            revision=revision or None,
            local_files_only=bool(unreachable),
        )
    except (OSError, huggingface_hub.errors.EntryNotFoundError) as err:
        where = f"{unreachable} and they are not in the local cache" if unreachable else str(err)
        raise PretrainedWeightsUnavailable(
            f"cannot get pretrained weights for {timm_name!r} ({repo_id}) from timm's hub: "
            f"{where}. Pass --init-weights PATH with a local .safetensors or .pth file instead"
        ) from err
    return Path(path)


def _offline_reason() -> str | None:
    # The environment is read at call time: huggingface_hub reads it only once, at import.
    flag = os.environ.get("HF_HUB_OFFLINE", "")
    if flag.upper() in {"1", "ON", "YES", "TRUE"} or huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return None


def _hub_unreachable_reason() -> str | None:
    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        huggingface_hub.get_session().head(endpoint, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception as err:  # the client's error types vary by version; any failure means no
        return f"the hub at {endpoint} is unreachable ({err})"
    return None


def load_init_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load every tensor of a weights file whose name and shape fit the model; report the rest.

    Reads .safetensors, or torch state-dict files (.pth, .pt, .bin) with weights_only. Unwraps
    checkpoints that nest the weights ('state_dict', 'model', ...) and strips wrapper prefixes
    ('module.', 'model.', '_orig_mod.'). timm ConvNeXt keys fit my_convnext as they are.
    """
    return load_state(model, read_state_dict(path), str(path))


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Load the tensors of `state` whose name and shape fit the model; report the rest."""
    model_state = model.state_dict()
    state = _add_model_wrapper_prefix(_strip_wrapper_prefixes(dict(state), model_state), model_state)
    loadable: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for key, tensor in state.items():
        target = model_state.get(key)
        if target is None:
            skipped[key] = "not in the model"
        elif target.shape != tensor.shape:
            skipped[key] = f"shape {tuple(tensor.shape)} in the file, {tuple(target.shape)} here"
        else:
            loadable[key] = tensor
    if not loadable:
        raise InitWeightsError(
            f"none of the {len(state)} tensors in {source} fits the model "
            f"{type(model).__name__} (first keys: {list(state)[:3]})"
        )
    model.load_state_dict(loadable, strict=False)
    missing = [key for key in model_state if key not in loadable]
    return LoadReport(source, list(loadable), skipped, missing)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch weights file, unwrapped from checkpoint nesting."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            content = load_file(path, device="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        raise InitWeightsError(f"cannot read weights from {path}: {err}") from err
    content = _unnest(content)
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)} if isinstance(content, Mapping) else {}
    if not tensors:
        raise InitWeightsError(f"{path} holds no state dict of tensors")
    return tensors


def _unnest(content: object) -> object:
    """The weights inside checkpoints that nest them under 'state_dict', 'model', ..."""
    while isinstance(content, Mapping):
        nested = next((content[k] for k in _NESTING_KEYS if isinstance(content.get(k), Mapping)), None)
        if nested is None:
            return content
        content = nested
    return content


def _strip_wrapper_prefixes(
    state: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop prefixes that every file key carries and no model key does."""
    while prefix := _wrapper_prefix(state, model_state):
        state = {key[len(prefix) :]: tensor for key, tensor in state.items()}
    return state


def _add_model_wrapper_prefix(
    state: dict[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The keys under the model's wrapper prefix when none fits as it is and some fit under it."""
    if any(key in model_state for key in state):
        return state
    for prefix in _MODEL_WRAPPER_PREFIXES:
        if any(f"{prefix}{key}" in model_state for key in state):
            return {f"{prefix}{key}": tensor for key, tensor in state.items()}
    return state


def _without_model_wrapper(key: str) -> str:
    """A model key as the bare network names it (`net.classifier.weight` → `classifier.weight`)."""
    prefix = next((prefix for prefix in _MODEL_WRAPPER_PREFIXES if key.startswith(prefix)), "")
    return key[len(prefix):]


def _wrapper_prefix(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> str | None:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_state):
            return prefix
    return None


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by depth, top first: 'head', 'stage<n-1>' ... 'stage0', 'stem'.

    Uses the model's own param_groups() when it has one (MyConvNeXt), otherwise timm's coarse
    group_matcher (ResNet, DenseNet, SE-ResNeXt, ...), whose unmatched top layers form the head.
    """
    if hasattr(model, "param_groups"):
        return model.param_groups()
    if not hasattr(model, "group_matcher"):
        raise TypeError(f"{type(model).__name__} offers neither param_groups() nor group_matcher()")
    by_depth = group_parameters(model, model.group_matcher(coarse=True), return_values=True)
    depths = sorted(by_depth)
    names = {depths[0]: "stem", depths[-1]: "head"}
    names.update({depth: f"stage{i}" for i, depth in enumerate(depths[1:-1])})
    return {names[depth]: by_depth[depth] for depth in reversed(depths)}
