"""FastFlow on any timm CNN. anomalib's FastflowModel accepts only the names ``resnet18`` and
``wide_resnet50_2`` (a name check, not a technical limit): the same flows on any timm CNN's
``features_only`` stages.

The subclass changes nothing else: training steps, losses and anomaly maps stay anomalib's. The
upstream ``__init__`` it bypasses and the attributes it sets are checked against the pinned
anomalib in detectors.anomalib_private."""

from __future__ import annotations

import timm
from anomalib.models import Fastflow as AnomalibFastflow
from anomalib.models.components import AnomalibModule
from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.fastflow.loss import FastflowLoss
from anomalib.models.image.fastflow.torch_model import (
    FastflowModel,
    create_fast_flow_block,
)
from torch import nn

from detectors.layers import layer_indices


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
