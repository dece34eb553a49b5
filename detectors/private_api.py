"""Every use of anomalib's, Lightning's and Hydra's private API in this project, in one place.

The hooks below change how an anomalib datamodule makes its validation split (through its private
``_create_val_split`` and the module globals of ``anomalib.data.utils.synthetic``). ``PRIVATE`` lists
every private or internal name the project touches anywhere (these hooks, the adapters in
``detectors/adapters/``, the Hydra sweeper plugin), and ``BYPASSED_INITS`` each upstream ``__init__``
that an adapter replaces instead of calling; tests/test_private_api.py checks both against the
installed versions, so an upgrade that moves one fails in that test, not at forward time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# "module:attribute.path" must resolve by import + getattr; "module:Class#name": an attribute that
# Class.__init__ sets on the instance (read or replaced by our code)
PRIVATE = (
    # the validation-split hooks below
    "anomalib.data.datamodules.base.image:AnomalibDataModule._create_val_split",
    "anomalib.data.utils.synthetic:make_synthetic_dataset",
    "anomalib.data.utils.synthetic:PerlinAnomalyGenerator",
    "anomalib.data.utils.synthetic:PerlinAnomalyGenerator#anomaly_source_paths",
    # detectors/adapters/patchcore.py: the memory bank it fills in after its own coreset selection
    "anomalib.models.image.patchcore.torch_model:PatchcoreModel#embedding_store",
    "anomalib.models.image.patchcore.torch_model:PatchcoreModel#memory_bank",
    "anomalib.models.image.patchcore.lightning_model:Patchcore#coreset_sampling_ratio",
    # the adapters' building blocks, imported from anomalib's internal modules
    "anomalib.models.image.fastflow.torch_model:FastflowModel",
    "anomalib.models.image.fastflow.torch_model:create_fast_flow_block",
    "anomalib.models.image.fastflow.anomaly_map:AnomalyMapGenerator",
    "anomalib.models.image.fastflow.loss:FastflowLoss",
    "anomalib.models.image.stfpm.torch_model:STFPMModel",
    "anomalib.models.image.stfpm.anomaly_map:AnomalyMapGenerator",
    "anomalib.models.image.stfpm.loss:STFPMLoss",
    "anomalib.models.image.cfa.torch_model:CfaModel",
    "anomalib.models.image.cfa.torch_model:CoordConv2d",
    "anomalib.models.image.cfa.torch_model:Descriptor",
    "anomalib.models.image.cfa.anomaly_map:AnomalyMapGenerator",
    "anomalib.models.image.cfa.loss:CfaLoss",
    "anomalib.models.components:DynamicBufferMixin",
    # detectors/adapters/glass.py: the texture list it sorts, and the flags and extractor it freezes
    "anomalib.models.image.glass.torch_model:GlassModel#augmentor",
    "anomalib.models.image.glass.torch_model:GlassModel#pre_trained",
    "anomalib.models.image.glass.torch_model:GlassModel#forward_modules",
    "anomalib.models.image.glass.lightning_model:Glass#pre_trained",
    "anomalib.data.utils.generators.perlin:PerlinAnomalyGenerator#anomaly_source_paths",
    "anomalib.models.components.feature_extractors.timm:TimmFeatureExtractor#requires_grad",
    # detectors/adapters/supersimplenet.py
    "anomalib.models.image.supersimplenet.torch_model:SupersimplenetModel",
    "anomalib.models.image.supersimplenet.torch_model:UpscalingFeatureExtractor",
    "anomalib.models.image.supersimplenet.torch_model:FeatureAdapter",
    "anomalib.models.image.supersimplenet.torch_model:SegmentationDetectionModule",
    "anomalib.models.image.supersimplenet.torch_model:AnomalyMapGenerator",
    "anomalib.models.image.supersimplenet.anomaly_generator:AnomalyGenerator",
    "anomalib.models.image.supersimplenet.loss:SSNLoss",
    # pipeline/launch.py: Lightning's own reading of the process's rank from the environment
    "lightning.fabric.utilities.rank_zero:_get_rank",
    # hydra_plugins/fractal_ad_sweeper: the basic sweeper it extends, and the two methods it overrides
    "hydra._internal.core_plugins.basic_sweeper:BasicSweeper._parse_config",
    "hydra._internal.core_plugins.basic_sweeper:BasicSweeper.split_arguments",
)

# adapter class -> the upstream class whose __init__ it replaces: ours must set every attribute that
# one sets (anomalib's methods read them)
BYPASSED_INITS = {
    "detectors.adapters.fastflow:TimmFastflowModel": "anomalib.models.image.fastflow.torch_model:FastflowModel",
    "detectors.adapters.fastflow:Fastflow": "anomalib.models.image.fastflow.lightning_model:Fastflow",
    "detectors.adapters.stfpm:TimmStfpmModel": "anomalib.models.image.stfpm.torch_model:STFPMModel",
    "detectors.adapters.stfpm:Stfpm": "anomalib.models.image.stfpm.lightning_model:Stfpm",
    "detectors.adapters.cfa:TimmDescriptor": "anomalib.models.image.cfa.torch_model:Descriptor",
    "detectors.adapters.cfa:TimmCfaModel": "anomalib.models.image.cfa.torch_model:CfaModel",
    "detectors.adapters.cfa:Cfa": "anomalib.models.image.cfa.lightning_model:Cfa",
    "detectors.adapters.supersimplenet:TimmUpscalingFeatureExtractor":
        "anomalib.models.image.supersimplenet.torch_model:UpscalingFeatureExtractor",
    "detectors.adapters.supersimplenet:TimmSupersimplenetModel":
        "anomalib.models.image.supersimplenet.torch_model:SupersimplenetModel",
    "detectors.adapters.supersimplenet:Supersimplenet":
        "anomalib.models.image.supersimplenet.lightning_model:Supersimplenet",
}


def around_val_split(datamodule, context: Callable[[], AbstractContextManager]) -> None:
    """Make ``datamodule`` create its validation split inside ``context()`` (entered anew each time
    the split is made). The one place that wraps anomalib's private ``_create_val_split``: the
    adapters below each add one context, the last added outermost."""
    create_val_split = datamodule._create_val_split

    def create_val_split_within() -> None:
        with context():
            create_val_split()

    datamodule._create_val_split = create_val_split_within


@contextmanager
def _replaced(owner, name: str, value) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block, its own value again after it, whatever happens."""
    default = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, default)


def keep_all_normals(datamodule) -> None:
    """Keep the whole training set as ``datamodule.all_normals`` when the validation split is carved
    out of it, for the fit on every training normal (training-free detectors; see ``fit_and_test``).
    The split itself is anomalib's: ``datamodule.train_data`` is the training normals minus the
    validation normals."""

    @contextmanager
    def keeping_all() -> Iterator[None]:
        datamodule.all_normals = datamodule.train_data
        yield

    around_val_split(datamodule, keeping_all)


def paired_validation(datamodule) -> None:
    """Every validation normal stays in the validation split AND gets its synthetic anomalous copy.

    anomalib's synthetic split turns half of the validation normals into anomalies and drops their
    normal originals (``make_synthetic_dataset(..., anomalous_ratio=0.5)``): n validation normals give
    n/2 x n/2 pairs for the validation AUROC. Converting all of them (ratio 1) and putting the normals
    back gives n x n, with every anomaly next to its own normal image (the score difference is the
    anomaly's, not the image's)."""
    from anomalib.data.utils import synthetic

    default = synthetic.make_synthetic_dataset

    def paired(source_samples, image_dir, mask_dir, anomalous_ratio=0.5):
        normals = source_samples.filter(["image_path", "label", "label_index", "mask_path", "split"])
        anomalies = default(source_samples, image_dir, mask_dir, 1.0)
        return pd.concat([normals, anomalies], ignore_index=True)

    around_val_split(datamodule, lambda: _replaced(synthetic, "make_synthetic_dataset", paired))


@contextmanager
def _own_streams(seed: int | None) -> Iterator[None]:
    """Inside the block the python, numpy and torch (CPU) streams start from ``seed`` (as they are,
    if None); after it they are what they were before it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def validation_draws_apart(datamodule) -> None:
    """The validation split draws from its own random streams (torch, numpy, python), seeded with
    the datamodule's ``seed`` (``split_seed`` of the run seed) and put back afterwards. So the split,
    its synthetic anomalies included, is a function of the seed, the data and the textures alone,
    the same whatever was drawn before (building a random-init backbone, PaDiM's channel subset);
    and the detector's own draws after it (PatchCore's coreset, loader order) are the same however
    the validation anomalies are drawn: a validation-only setting cannot move test figures on fixed
    weights. (Without this, choosing other anomaly textures moved a seed's PatchCore image AUROC
    by up to 0.03.) anomalib seeds only the choice of validation normals; which of them become
    anomalies (pandas ``sample``) and the anomalies (Perlin masks, textures) draw from the global
    streams."""
    around_val_split(datamodule, lambda: _own_streams(datamodule.seed))


def synthetic_anomalies_from(datamodule, textures: Path) -> None:
    """Draw the synthetic validation anomalies' textures from ``textures`` (e.g. the fractal textures
    of ``evaluation.datasets.textures``).

    anomalib builds its synthetic split with ``PerlinAnomalyGenerator(anomaly_source_path=
    "./datasets/dtd")``, hard-coded and relative to the working directory, falling back to plain
    Perlin noise without it; and it lists the textures in ``rglob`` order, which is the file
    system's. While this datamodule creates its validation split, the generator reads ``textures``
    instead, in sorted order, so the split is the same from any directory on any machine.
    """
    from anomalib.data.utils import synthetic

    class FromTextures(synthetic.PerlinAnomalyGenerator):
        def __init__(self, *args, anomaly_source_path=None, **kwargs):
            super().__init__(*args, anomaly_source_path=textures, **kwargs)
            self.anomaly_source_paths.sort()

    around_val_split(datamodule, lambda: _replaced(synthetic, "PerlinAnomalyGenerator", FromTextures))
