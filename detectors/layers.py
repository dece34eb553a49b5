"""Which feature layers a detector reads, for any timm CNN family.

The detector configs name layers the way the papers do, by ResNet stage (``layer1`` .. ``layer4``:
stride 4, 8, 16, 32). Other families call their stages differently (``blocks.2`` in EfficientNet,
``stages.1`` in ConvNeXt), and a name absent from the backbone fails deep inside anomalib with a bare
``KeyError``. So names are resolved here, from the backbone's own ``feature_info``:

* a name the backbone exposes (``layer2``, ``blocks.4``) is used as is;
* ``layerN`` on a backbone without it means "the deepest feature layer at stride 2**(N+1)", the
  stage that plays ResNet's ``layerN`` role (``efficientnet_lite0``: layer3 -> ``blocks.4``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import timm
import torch

from console.errors import ConfigError


@dataclass(frozen=True)
class FeatureLayer:
    name: str
    reduction: int  # stride relative to the input image
    channels: int


@lru_cache(maxsize=32)
def feature_layers(arch: str) -> tuple[FeatureLayer, ...]:
    """The feature layers timm exposes for ``arch`` (shallowest first); builds it once, no weights.

    Building the model initialises its weights from the global torch RNG; under the cache that
    happens in the first job of a process only, so a job run after another would draw different
    numbers than the same job alone. A forked RNG leaves the global stream untouched.
    """
    with torch.random.fork_rng(devices=[]):
        info = timm.create_model(arch, pretrained=False, features_only=True).feature_info
    return tuple(FeatureLayer(n, r, c) for n, r, c in zip(info.module_name(), info.reduction(), info.channels()))


_STAGE = re.compile(r"layer([1-4])")


def resolve_layers(arch: str, layers: list[str] | tuple[str, ...]) -> list[str]:
    """Map configured layer names onto ``arch``'s feature layers; raise naming the valid ones."""
    available = feature_layers(arch)
    names = [f.name for f in available]
    resolved, missing = [], []
    for layer in layers:
        layer = str(layer)
        if layer in names:
            resolved.append(layer)
            continue
        stage = _STAGE.fullmatch(layer)
        at_stride = [f.name for f in available if stage and f.reduction == 2 ** (int(stage.group(1)) + 1)]
        if at_stride:
            resolved.append(at_stride[-1])
        else:
            missing.append(layer)
    if missing:
        raise ConfigError(
            f"detector layers {missing} do not exist in {arch}; its feature layers are {names} "
            f"(strides {[f.reduction for f in available]}). Set detector.model.layers to names from that "
            f"list, or to layer1..layer4 for the stages at stride 4..32.")
    return resolved


def layer_channels(arch: str, layers: list[str]) -> list[int]:
    """Channels of each (resolved) layer."""
    by_name = {f.name: f.channels for f in feature_layers(arch)}
    return [by_name[layer] for layer in layers]


def layer_indices(arch: str, layers: list[str]) -> list[int]:
    """timm ``out_indices`` of each (resolved) layer."""
    names = [f.name for f in feature_layers(arch)]
    return [names.index(layer) for layer in layers]
