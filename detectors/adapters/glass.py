"""GLASS (Chen et al., ECCV 2024) on our backbone, frozen, with its local anomalies drawn from a
folder we give it.

anomalib's Glass takes a timm name (``local-dir:<export>`` included) and builds its feature
extractor with ``TimmFeatureExtractor``, so the architecture is not the problem. Four things are:

* ``pre_trained=False`` does not mean "random weights" there but "train the backbone": GLASS then
  puts the backbone in training mode (batch-norm statistics move), makes it require gradients and
  gives it an optimiser. Our random arm is a frozen random-init backbone, as in every other
  detector, so the backbone is frozen whatever its weights (``pre_trained`` only picks them).
* ``input_shape`` (default 288 x 288) sizes the anomaly map and the feature dry run; it must be the
  pre-processor's output size, which is read from it here.
* ``pretrain_embed_dim``/``target_embed_dim`` default to 1536, which is WideResNet-50-2's
  layer2 + layer3 width (512 + 1024); ``None`` here means the configured layers' width for the
  backbone at hand (384 for resnet18), the same rule for every backbone.
* ``anomaly_source_path`` that is not an existing folder makes anomalib download DTD; here a
  missing folder is refused instead, and the textures are read in sorted order (anomalib keeps the
  file system's ``rglob`` order, which would make the draws depend on the machine). ``None`` keeps
  anomalib's fallback: Perlin-noise textures, no file read.

Training steps, losses, anomaly synthesis and scoring stay anomalib's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from anomalib.models import Glass as AnomalibGlass

from detectors.layers import layer_channels


def transformed_size(pre_processor) -> tuple[int, int]:
    """Height and width of an image after ``pre_processor``'s transform (as anomalib's
    ``AnomalibModule.input_size`` finds it, but before the module exists)."""
    transform = getattr(pre_processor, "transform", None)
    size = tuple(transform(torch.zeros(1, 3, 1, 1)).shape[-2:]) if transform is not None else (1, 1)
    if size == (1, 1):
        raise ValueError("GLASS needs an input size: give it a pre_processor with a Resize.")
    return size


class Glass(AnomalibGlass):
    def __init__(self, backbone: str, arch: str, pre_trained: bool, layers, anomaly_source_path: str | Path | None,
                 pretrain_embed_dim: int | None = None, target_embed_dim: int | None = None, **settings) -> None:
        if anomaly_source_path is not None and not Path(anomaly_source_path).is_dir():
            raise ValueError(f"GLASS's anomaly source {anomaly_source_path} is not a folder (anomalib would try to "
                             f"download DTD into it); give a folder of texture images or None (Perlin noise)")
        width = sum(layer_channels(arch, layers))
        super().__init__(input_shape=transformed_size(settings.get("pre_processor")),
                         anomaly_source_path=None if anomaly_source_path is None else str(anomaly_source_path),
                         backbone=backbone, pre_trained=pre_trained, layers=list(layers),
                         pretrain_embed_dim=pretrain_embed_dim or width, target_embed_dim=target_embed_dim or width,
                         **settings)
        self.model.augmentor.anomaly_source_paths.sort()
        # frozen, whatever the weights: GLASS reads pre_trained as "do not train the backbone"
        self.pre_trained = self.model.pre_trained = True
        extractor = self.model.forward_modules["feature_aggregator"]
        extractor.requires_grad = False
        extractor.requires_grad_(False)
