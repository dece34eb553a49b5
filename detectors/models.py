"""Glue that puts our backbone into each anomalib detector.

A detector config names the class it builds (``_target_: anomalib.models.Patchcore``, or one of the
adapters below, ``detectors.models.Fastflow``) with the study's settings. ``build_detector`` maps our ``Backbone`` onto it: the timm name (``local-dir:<export>`` for
our own weights), ``pre_trained``, layer names resolved for the backbone family (detectors.layers),
and what a model cannot infer for an arbitrary backbone (PaDiM's ``n_features``).

Most anomalib models take any timm CNN through ``TimmFeatureExtractor`` and are built as they are.
Four hard-wire their feature network; for them a thin subclass below swaps in ours and changes
nothing else (training steps, losses, anomaly maps stay anomalib's):

* FastFlow accepts only the names ``resnet18``/``wide_resnet50_2`` (a name check, not a technical
  limit): the subclass builds the same flow on any timm CNN's ``features_only`` stages.
* STFPM always loads the teacher with ``pre_trained=True`` (a hub download, impossible offline and
  wrong for a random-init baseline): the subclass honours ``pre_trained``.
* Reverse Distillation picks its decoder and bottleneck by architecture name: they are built from
  ``arch`` and the encoder is swapped for our weights. Decoders exist for the ResNet family only.
* CFA loads torchvision ImageNet weights in its constructor (a download) and knows descriptor
  widths only for four names: the subclass uses our timm backbone and sizes the descriptor from it.

Models that have no swappable backbone are listed in ``UNSUPPORTED`` with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from console.errors import ConfigError
from detectors.backbone import Backbone
from detectors.layers import layer_channels, layer_indices, resolve_layers

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


def build_detector(cls: type, kwargs: dict[str, Any], backbone: Backbone, **components: Any) -> nn.Module:
    """The anomalib model class ``cls`` with its settings ``kwargs``, on ``backbone``.

    ``components`` are anomalib's auxiliary parts (pre_processor, evaluator, ...), passed through.
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
    if cls.__module__ != __name__ and cls.__name__ in _ADAPTERS:
        raise ConfigError(f"anomalib's {cls.__name__} cannot take our backbone as it is; use the adapter "
                          f"_target_: {__name__}.{cls.__name__} (conf/detector/ does).")
    if cls.__module__ == __name__:  # our adapters build the architecture's own layers too
        kwargs["arch"] = backbone.arch
    if cls.__name__ == "Patchcore" and cls.__module__.startswith("anomalib."):
        cls = _patchcore()  # the same model with a coreset selection that a CPU can afford
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


# ----------------------------------------------------------------------------------------------
# PatchCore with detectors.coreset's k-center greedy (anomalib's selection, bit for bit)
# ----------------------------------------------------------------------------------------------


def _patchcore():
    from anomalib.models import Patchcore as AnomalibPatchcore

    from console.progress import LoopProgress
    from detectors.coreset import select_in_background

    class Patchcore(AnomalibPatchcore):
        """anomalib's Patchcore; only the memory bank's coreset is selected by
        ``detectors.coreset`` (the same indices as anomalib's ``KCenterGreedy``, at a fraction of its
        time and memory traffic on a CPU), with progress lines, on a thread of its own:
        ``fit`` returns once the selection has started, and the bank is filled in before the model
        scores or is saved (``wait_for_memory_bank``), so a second model's fit runs meanwhile."""

        _selection = None

        def fit(self) -> None:
            model = self.model
            if not model.embedding_store:
                raise ValueError("Embedding store is empty. Cannot perform coreset selection.")
            bank = torch.vstack(model.embedding_store)
            model.embedding_store.clear()
            self._selection = bank, select_in_background(bank, self.coreset_sampling_ratio,
                                                         LoopProgress("detect coreset"))

        def wait_for_memory_bank(self) -> None:
            if self._selection is not None:
                bank, selection = self._selection
                self._selection = None
                self.model.memory_bank = bank[selection.result()]

        def on_validation_start(self) -> None:
            super().on_validation_start()
            self.wait_for_memory_bank()

        def on_test_start(self) -> None:
            super().on_test_start()
            self.wait_for_memory_bank()

        def on_predict_start(self) -> None:
            super().on_predict_start()
            self.wait_for_memory_bank()

        def state_dict(self, *args, **kwargs):
            self.wait_for_memory_bank()
            return super().state_dict(*args, **kwargs)

    return Patchcore


# ----------------------------------------------------------------------------------------------
# FastFlow on any timm CNN
# ----------------------------------------------------------------------------------------------


def _fastflow():
    import timm
    from anomalib.models import Fastflow as AnomalibFastflow
    from anomalib.models.components import AnomalibModule
    from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.fastflow.loss import FastflowLoss
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block

    class TimmFastflowModel(FastflowModel):
        """FastflowModel's CNN branch, for any timm backbone and the configured stages."""

        def __init__(self, input_size, backbone: str, arch: str, layers, pre_trained: bool,
                     flow_steps: int, conv3x3_only: bool, hidden_ratio: float) -> None:
            nn.Module.__init__(self)  # FastflowModel.__init__ rejects every name but two
            self.input_size = input_size
            self.feature_extractor = timm.create_model(backbone, pretrained=pre_trained, features_only=True,
                                                       out_indices=layer_indices(arch, layers))
            channels = self.feature_extractor.feature_info.channels()
            scales = self.feature_extractor.feature_info.reduction()
            dims = [[c, int(input_size[0] / s), int(input_size[1] / s)] for c, s in zip(channels, scales)]
            self.norms = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=True) for d in dims)
            for parameter in self.feature_extractor.parameters():
                parameter.requires_grad = False
            self.fast_flow_blocks = nn.ModuleList(
                create_fast_flow_block(input_dimensions=d, conv3x3_only=conv3x3_only,
                                       hidden_ratio=hidden_ratio, flow_steps=flow_steps) for d in dims)
            self.anomaly_map_generator = AnomalyMapGenerator(input_size=input_size)

    class Fastflow(AnomalibFastflow):
        def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, flow_steps: int = 8,
                     conv3x3_only: bool = False, hidden_ratio: float = 1.0, **components) -> None:
            AnomalibModule.__init__(self, **components)
            if self.input_size is None:
                raise ValueError("Fastflow needs an input size: give it a pre_processor with a Resize.")
            self.backbone, self.pre_trained, self.flow_steps = backbone, pre_trained, flow_steps
            self.conv3x3_only, self.hidden_ratio = conv3x3_only, hidden_ratio
            self.model = TimmFastflowModel(tuple(self.input_size), backbone, arch, layers, pre_trained,
                                           flow_steps, conv3x3_only, hidden_ratio)
            self.loss = FastflowLoss()

    return Fastflow


# ----------------------------------------------------------------------------------------------
# STFPM with the teacher's pre_trained flag honoured
# ----------------------------------------------------------------------------------------------


def _stfpm():
    from anomalib.models import Stfpm as AnomalibStfpm
    from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
    from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.stfpm.loss import STFPMLoss
    from anomalib.models.image.stfpm.torch_model import STFPMModel

    class TimmStfpmModel(STFPMModel):
        def __init__(self, backbone: str, layers, pre_trained: bool) -> None:
            nn.Module.__init__(self)  # STFPMModel.__init__ forces a hub-pretrained teacher
            self.tiler = None
            self.backbone = backbone
            self.teacher_model = TimmFeatureExtractor(backbone=backbone, pre_trained=pre_trained, layers=layers).eval()
            self.student_model = TimmFeatureExtractor(backbone=backbone, pre_trained=False, layers=layers,
                                                      requires_grad=True)
            for parameter in self.teacher_model.parameters():
                parameter.requires_grad = False
            self.anomaly_map_generator = AnomalyMapGenerator()

    class Stfpm(AnomalibStfpm):
        def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, **components) -> None:
            AnomalibModule.__init__(self, **components)
            self.model = TimmStfpmModel(backbone, layers, pre_trained)
            self.loss = STFPMLoss()

    return Stfpm


# ----------------------------------------------------------------------------------------------
# Reverse Distillation: decoder by architecture, encoder with our weights
# ----------------------------------------------------------------------------------------------


def _reverse_distillation():
    from anomalib.models import ReverseDistillation as AnomalibRD
    from anomalib.models.components import TimmFeatureExtractor

    decoders = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2")

    class ReverseDistillation(AnomalibRD):
        def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, anomaly_map_mode="add",
                     **components) -> None:
            if arch not in decoders:
                raise ConfigError(f"Reverse Distillation has a decoder only for {', '.join(decoders)}; "
                                  f"backbone.arch={arch} is not one of them. Use one of those or another detector.")
            if len(layers) != 3:
                raise ConfigError(f"Reverse Distillation's decoder mirrors three encoder stages; got layers={layers}.")
            # built on the architecture name without weights (no download), then given our encoder
            super().__init__(backbone=arch, layers=layers, anomaly_map_mode=anomaly_map_mode, pre_trained=False,
                             **components)
            self.backbone, self.pre_trained = backbone, pre_trained
            self.model.encoder = TimmFeatureExtractor(backbone=backbone, pre_trained=pre_trained, layers=layers)

    return ReverseDistillation


# ----------------------------------------------------------------------------------------------
# CFA on a timm backbone
# ----------------------------------------------------------------------------------------------


def _cfa():
    from anomalib.models import Cfa as AnomalibCfa
    from anomalib.models.components import AnomalibModule, DynamicBufferMixin, TimmFeatureExtractor
    from anomalib.models.image.cfa.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.cfa.loss import CfaLoss
    from anomalib.models.image.cfa.torch_model import CfaModel, CoordConv2d, Descriptor

    class TimmDescriptor(Descriptor):
        def __init__(self, gamma_d: int, dim: int) -> None:
            nn.Module.__init__(self)  # Descriptor.__init__ knows widths for four backbone names only
            self.backbone = "timm"
            self.layer = CoordConv2d(in_channels=dim, out_channels=dim // gamma_d, kernel_size=1)

    class TimmCfaModel(CfaModel):
        def __init__(self, backbone: str, arch: str, layers, pre_trained: bool, gamma_c: int, gamma_d: int,
                     num_nearest_neighbors: int, num_hard_negative_features: int, radius: float) -> None:
            DynamicBufferMixin.__init__(self)  # CfaModel.__init__ downloads torchvision weights
            self.gamma_c, self.gamma_d = gamma_c, gamma_d
            self.num_nearest_neighbors = num_nearest_neighbors
            self.num_hard_negative_features = num_hard_negative_features
            self.register_buffer("memory_bank", torch.tensor(0.0))
            self.backbone = arch
            self.reduction = min(f for f in _reductions(arch, layers))
            self.feature_extractor = TimmFeatureExtractor(backbone=backbone, layers=layers, pre_trained=pre_trained).eval()
            self.descriptor = TimmDescriptor(gamma_d, sum(layer_channels(arch, layers)))
            self.radius = torch.ones(1, requires_grad=True) * radius
            self.anomaly_map_generator = AnomalyMapGenerator(num_nearest_neighbors=num_nearest_neighbors)

        def get_scale(self, input_size) -> torch.Size:
            # the first (shallowest) layer sets the descriptor's resolution
            return torch.Size((input_size[0] // self.reduction, input_size[1] // self.reduction))

    class Cfa(AnomalibCfa):
        def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, gamma_c: int = 1, gamma_d: int = 1,
                     num_nearest_neighbors: int = 3, num_hard_negative_features: int = 3, radius: float = 1e-5,
                     **components) -> None:
            AnomalibModule.__init__(self, **components)
            self.model = TimmCfaModel(backbone, arch, layers, pre_trained, gamma_c, gamma_d, num_nearest_neighbors,
                                      num_hard_negative_features, radius)
            self.loss = CfaLoss(num_nearest_neighbors=num_nearest_neighbors,
                                num_hard_negative_features=num_hard_negative_features, radius=radius)

    return Cfa


def _reductions(arch: str, layers) -> list[int]:
    from detectors.layers import feature_layers

    by_name = {f.name: f.reduction for f in feature_layers(arch)}
    return [by_name[layer] for layer in layers]


_ADAPTERS = {"Fastflow": _fastflow, "Stfpm": _stfpm, "ReverseDistillation": _reverse_distillation, "Cfa": _cfa}


def __getattr__(name: str) -> type:
    """``detectors.models.Fastflow`` (``Stfpm``, ``ReverseDistillation``, ``Cfa``): the adapter
    classes the detector configs name, built on first access (importing anomalib's models costs
    seconds, so this module does not do it at import)."""
    if name not in _ADAPTERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _ADAPTERS[name]()
    return cls
