"""CFA on a timm backbone. anomalib's CfaModel loads torchvision ImageNet weights in its constructor
(a download) and knows descriptor widths for four names only: ours takes our timm backbone and
sizes the descriptor from its channels.

The subclass changes nothing else: training steps, losses and anomaly maps stay anomalib's. The
upstream ``__init__`` it bypasses and the attributes it sets are checked against the pinned
anomalib in detectors.anomalib_private."""

from __future__ import annotations

import torch
from anomalib.models import Cfa as AnomalibCfa
from anomalib.models.components import (
    AnomalibModule,
    DynamicBufferMixin,
    TimmFeatureExtractor,
)
from anomalib.models.image.cfa.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.cfa.loss import CfaLoss
from anomalib.models.image.cfa.torch_model import CfaModel, CoordConv2d, Descriptor
from torch import nn

from detectors.layers import feature_layers, layer_channels


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
        reductions = {f.name: f.reduction for f in feature_layers(arch)}
        self.reduction = min(reductions[layer] for layer in layers)
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
