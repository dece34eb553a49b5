"""Reverse Distillation: decoder and bottleneck built from the architecture's name (ResNet family
only), the encoder swapped for our weights.

The subclass changes nothing else: training steps, losses and anomaly maps stay anomalib's; the
anomalib attributes it reads are checked against the pinned anomalib in detectors.anomalib_private."""

from __future__ import annotations

from anomalib.models import ReverseDistillation as AnomalibRD
from anomalib.models.components import TimmFeatureExtractor

from console.errors import ConfigError

# the architectures anomalib has a decoder for
DECODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
            "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2")


class ReverseDistillation(AnomalibRD):
    def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, anomaly_map_mode="add",
                 **components) -> None:
        if arch not in DECODERS:
            raise ConfigError(f"Reverse Distillation has a decoder only for {', '.join(DECODERS)}; "
                              f"backbone.arch={arch} is not one of them. Use one of those or another detector.")
        if len(layers) != 3:
            raise ConfigError(f"Reverse Distillation's decoder mirrors three encoder stages; got layers={layers}.")
        # built on the architecture name without weights (no download), then given our encoder
        super().__init__(backbone=arch, layers=layers, anomaly_map_mode=anomaly_map_mode, pre_trained=False,
                         **components)
        self.backbone, self.pre_trained = backbone, pre_trained
        self.model.encoder = TimmFeatureExtractor(backbone=backbone, pre_trained=pre_trained, layers=layers)
