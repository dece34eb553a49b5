"""SuperSimpleNet (Rolih et al., ICPR 2024) on any timm CNN, with our weights or random init.

anomalib's SupersimplenetModel builds ``TimmFeatureExtractor(backbone, layers)`` with no
``pre_trained`` argument, i.e. always ``pretrained=True``: a hub name is downloaded (offline: an
error) and the random arm cannot exist. The subclasses below build the same modules in the same
order (so the same seed draws the same adaptor and heads) with ``pre_trained`` honoured; the
upscaling, adaptor, segmentation-detection heads, feature-space anomaly generator (Gaussian noise in
thresholded Perlin masks, drawn from torch's generator: no files, no download), losses and
optimiser stay anomalib's. The backbone is frozen, as upstream (``no_grad`` + ``eval``).

anomalib's Perlin noise draws its scale from 1..32 cells per side over the next power of two of the
(upscaled) feature map; on a map of 16 cells or fewer a scale of 32 leaves no pixel per cell and the
training step fails with a shape error, at random (seen at 64 px input, layer2). Inputs that small
are refused here, by name.
"""

from __future__ import annotations

import math

from anomalib.models import Supersimplenet as AnomalibSupersimplenet
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
from anomalib.models.image.supersimplenet.anomaly_generator import AnomalyGenerator
from anomalib.models.image.supersimplenet.loss import SSNLoss
from anomalib.models.image.supersimplenet.torch_model import (
    AnomalyMapGenerator,
    FeatureAdapter,
    SegmentationDetectionModule,
    SupersimplenetModel,
    UpscalingFeatureExtractor,
)
from torch import nn

from detectors.layers import feature_layers

PERLIN_MAX_SCALE = 32  # anomalib's generate_perlin_noise: 2 ** randint(0, 6) cells per side


class TimmUpscalingFeatureExtractor(UpscalingFeatureExtractor):
    def __init__(self, backbone: str, layers, pre_trained: bool, patch_size: int = 3) -> None:
        nn.Module.__init__(self)  # UpscalingFeatureExtractor.__init__ always loads pre-trained weights
        self.feature_extractor = TimmFeatureExtractor(backbone=backbone, layers=list(layers), pre_trained=pre_trained)
        self.pooler = nn.AvgPool2d(kernel_size=patch_size, stride=1, padding=patch_size // 2)


class TimmSupersimplenetModel(SupersimplenetModel):
    def __init__(self, perlin_threshold: float, backbone: str, layers, pre_trained: bool, stop_grad: bool,
                 adapt_cls_features: bool) -> None:
        nn.Module.__init__(self)
        self.feature_extractor = TimmUpscalingFeatureExtractor(backbone, layers, pre_trained)
        channels = self.feature_extractor.get_channels_dim()
        self.adapt_cls_features = adapt_cls_features
        self.adaptor = FeatureAdapter(channels)
        self.segdec = SegmentationDetectionModule(channel_dim=channels, stop_grad=stop_grad)
        self.anomaly_generator = AnomalyGenerator(noise_mean=0, noise_std=0.015, threshold=perlin_threshold)
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=4)


class Supersimplenet(AnomalibSupersimplenet):
    def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, perlin_threshold: float = 0.2,
                 supervised: bool = False, adapt_cls_features: bool = False, **components) -> None:
        AnomalibModule.__init__(self, **components)
        if self.input_size is None:
            raise ValueError("SuperSimpleNet needs an input size: give it a pre_processor with a Resize.")
        reduction = min(f.reduction for f in feature_layers(arch) if f.name in layers)
        side = 2 * math.ceil(min(self.input_size) / reduction)  # the upscaled feature map's shorter side
        if side <= PERLIN_MAX_SCALE // 2:
            raise ValueError(f"SuperSimpleNet's feature map would be {side} cells on its shorter side at input "
                             f"{tuple(self.input_size)} with layers {list(layers)}; anomalib's Perlin masks need more "
                             f"than {PERLIN_MAX_SCALE // 2}: use an input of at least {reduction * 8 + 1} px")
        self.supervised = supervised
        stop_grad, self.norm_clip_val = (False, 1) if supervised else (True, 0)  # as upstream
        self.model = TimmSupersimplenetModel(perlin_threshold, backbone, layers, pre_trained, stop_grad,
                                             adapt_cls_features)
        self.loss = SSNLoss()
