"""STFPM with the teacher's ``pre_trained`` flag honoured. anomalib's STFPMModel always loads the
teacher with ``pre_trained=True`` (a hub download, impossible offline and wrong for a random-init
baseline).

The subclass changes nothing else: training steps, losses and anomaly maps stay anomalib's. The
upstream ``__init__`` it bypasses and the attributes it sets are checked against the pinned
anomalib in detectors.anomalib_private."""

from __future__ import annotations

from anomalib.models import Stfpm as AnomalibStfpm
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator
from anomalib.models.image.stfpm.loss import STFPMLoss
from anomalib.models.image.stfpm.torch_model import STFPMModel
from torch import nn


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
