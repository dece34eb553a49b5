"""Puts our backbone into an anomalib detector.

A detector config names the class it builds (``_target_: anomalib.models.Padim``, or an adapter of
``detectors.adapters`` where anomalib's class cannot take our backbone) with the study's settings.
``build_detector`` maps our ``Backbone`` onto it: the timm name (``local-dir:<export>`` for our own
weights), ``pre_trained``, layer names resolved for the backbone family (detectors.layers), and what
a model cannot infer for an arbitrary backbone (PaDiM's ``n_features``), and, for models that train
on texture-based synthetic anomalies (GLASS), the folder of those textures. Models that have no
swappable backbone are listed in ``UNSUPPORTED`` with the reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from console.errors import ConfigError
from detectors import adapters
from detectors.backbone import Backbone
from detectors.layers import layer_channels, resolve_layers

# Why each anomalib image model outside this pipeline cannot take our backbone.
UNSUPPORTED = {
    "Draem": "own reconstruction + discriminative U-Nets trained from scratch; no pre-trained backbone",
    "Dsr": "own VQ-VAE with a fixed pre-trained codebook downloaded by anomalib; no backbone option",
    "EfficientAd": "own PDN teacher distilled from WideResNet-101 on ImageNet (downloaded weights)",
    "Csflow": "hard-wired EfficientNet-B5 feature extractor (torchvision ImageNet weights)",
    "Ganomaly": "own DCGAN encoder/decoder trained from scratch; no pre-trained backbone",
    "Uflow": "hard-wired MS-CaiT / ResNet feature pyramids with their own pre-processing",
    "WinClip": "zero-shot CLIP model; no CNN backbone",
    "VlmAd": "vision-language model behind an API; no backbone",
    "Dinomaly": "DINOv2 ViT encoder by design; not a CNN backbone",
    "UniNet": "student/teacher pair with a fixed decoder for WideResNet-50 only",
}

# PaDiM keeps a random subset of the concatenated channels; the paper's sizes where known, else 30%.
PADIM_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}
PADIM_FRACTION = 0.3


def build_detector(cls: type, kwargs: dict[str, Any], backbone: Backbone,
                   anomaly_source: Callable[[], Path | None] | None = None, **components: Any) -> nn.Module:
    """The anomalib model class ``cls`` with its settings ``kwargs``, on ``backbone``.

    ``anomaly_source``: gives the folder of texture images that a model with an
    ``anomaly_source_path`` (GLASS) blends into its training anomalies (None: Perlin noise); called
    only for such a model, so other detectors never render textures. ``components`` are anomalib's
    auxiliary parts (pre_processor, evaluator, ...), passed through.
    """
    kwargs = dict(kwargs)
    if cls.__name__ in UNSUPPORTED:
        raise ConfigError(f"{cls.__name__} cannot take a swappable backbone: {UNSUPPORTED[cls.__name__]}.")
    if "layers" in kwargs:
        kwargs["layers"] = resolve_layers(backbone.arch, kwargs["layers"])
    if "layer" in kwargs:
        kwargs["layer"] = resolve_layers(backbone.arch, [kwargs["layer"]])[0]
    if cls.__name__ == "Padim" and kwargs.get("n_features") is None:
        kwargs["n_features"] = padim_n_features(backbone.arch, kwargs["layers"])
    ours = cls.__module__.startswith(f"{adapters.__name__}.")
    if cls.__name__ in adapters.ADAPTED and not ours:
        raise ConfigError(f"anomalib's {cls.__name__} cannot take our backbone as it is; use the adapter "
                          f"_target_: {adapters.__name__}.{adapters.ADAPTED[cls.__name__]}.{cls.__name__} "
                          f"(conf/detector/ does).")
    if ours:  # our adapters build the architecture's own layers too
        kwargs["arch"] = backbone.arch
    if "anomaly_source_path" in inspect.signature(cls).parameters and "anomaly_source_path" not in kwargs:
        kwargs["anomaly_source_path"] = anomaly_source() if anomaly_source else None
    if cls.__name__ == "Patchcore" and cls.__module__.startswith("anomalib."):
        from detectors.adapters.patchcore import (
            Patchcore as cls,  # the coreset selection a CPU can afford
        )
    model = cls(backbone=backbone.timm_name, pre_trained=backbone.pre_trained, **kwargs, **components)
    extractor = getattr(getattr(model, "model", None), "feature_extractor", None)
    if isinstance(extractor, nn.Module):
        extractor.forward = Blockwise(extractor)
    return model


# Pixels per block of a feature extraction without gradients: 4 images of 256 px, whose activations
# (up to ResNet-50's widths) stay under glibc's mmap threshold and are reused from one block to the
# next (pipeline.allocator) instead of being page-faulted in afresh for every batch.
BLOCK_PIXELS = 2**18


class Blockwise:
    """A module's ``forward`` over a batch in blocks of images when no gradient is recorded
    (memory-bank and density detectors' feature extraction, every detector's scoring), the blocks'
    outputs concatenated: each image's features are computed as in one batch, in a working set that
    the allocator reuses. Tested: equal to the whole batch's features, and a PatchCore job gives the
    same metrics. Set as the extractor's ``forward`` (an instance attribute, so copies of the model
    keep it and point it at themselves)."""

    def __init__(self, module: nn.Module, pixels: int = BLOCK_PIXELS) -> None:
        self.module, self.pixels = module, pixels

    def __call__(self, images: torch.Tensor, *args, **kwargs):
        forward = type(self.module).forward.__get__(self.module)
        size = max(1, self.pixels // (images.shape[-2] * images.shape[-1]))
        if torch.is_grad_enabled() or images.shape[0] <= size:
            return forward(images, *args, **kwargs)
        return _concatenate([forward(images[i:i + size], *args, **kwargs) for i in range(0, images.shape[0], size)])


def _concatenate(parts: list):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: torch.cat([part[key] for part in parts]) for key in first}
    return type(first)(torch.cat(list(tensors)) for tensors in zip(*parts))


def padim_n_features(arch: str, layers: list[str]) -> int:
    total = sum(layer_channels(arch, layers))
    default = PADIM_N_FEATURES.get(arch, round(PADIM_FRACTION * total))
    return min(default, total)
