"""Datamodule glue: anomalib's own datamodules, patched only where they break in this environment, and
the built-in dataset as one of them."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager

import pandas as pd
from anomalib.data import MVTecAD
from anomalib.data import MVTecAD2 as AnomalibMVTecAD2
from anomalib.data import MVTecLOCO as AnomalibMVTecLOCO
from anomalib.data import RealIAD as AnomalibRealIAD
from anomalib.data.utils import TestSplitMode, ValSplitMode

from evaluation.datasets.builtin import make_builtin_dataset


class Builtin(MVTecAD):
    """The built-in dataset: anomalib's MVTec AD loader (the data is written in that layout), whose
    ``prepare_data`` builds the data (``make_builtin_dataset(root, **generation)``: locked, reused
    when it matches) where MVTec AD's would download it. Lightning calls it before fitting."""

    def __init__(self, *args, generation: Mapping | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generation = dict(generation or {})

    def prepare_data(self) -> None:
        make_builtin_dataset(self.root, **self.generation)


class MVTecLOCO(AnomalibMVTecLOCO):
    """anomalib 2.7's MVTec LOCO loader under pandas >= 3.

    ``make_dataset`` stores a *list* of mask paths per image (LOCO has several masks per image) in a
    column created as ``""``; pandas 3 infers that column as the Arrow ``str`` dtype and refuses the
    lists ("Invalid value for dtype 'str'"). Building the table with object-dtype strings, as pandas 2
    did, is all it needs. Remove when anomalib creates that column with ``dtype=object``.
    """

    def setup(self, stage: str | None = None) -> None:
        with _object_strings():
            super().setup(stage)


@contextmanager
def _object_strings():
    """Let pandas build string columns with object dtype, as pandas 2 did (None and lists survive)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the option is deprecated (pandas 4 drops it)
        with pd.option_context("future.infer_string", False):
            yield



class _StudySplits:
    """Accept the split modes every dataset here uses, for anomalib datamodules that fix or omit them.

    ``from_dir``: the test set is the dataset's own test images, normals included. ``synthetic``:
    validation (checkpoints, F1 threshold) is training normals + synthetic anomalies, never the test set.
    """

    def __init__(self, *args, test_split_mode: str = "from_dir", val_split_mode: str = "synthetic",
                 val_split_ratio: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.test_split_mode = TestSplitMode(test_split_mode)
        self.val_split_mode = ValSplitMode(val_split_mode)
        self.val_split_ratio = val_split_ratio


class MVTecAD2(_StudySplits, AnomalibMVTecAD2):
    """anomalib 2.7's MVTec AD 2 datamodule, which passes no split modes to its base class.

    Its base then runs with ``test_split_mode=none``: ``_create_test_split`` takes the normal images out
    of ``test_public`` and never puts them back, leaving anomalies only (image AUROC undefined). Its own
    ``validation/`` folder holds normals only, which cannot place a threshold. And under pandas >= 3 its
    ``mask_path`` column turns the ``None`` of normal images into NaN, which anomalib's item validation
    rejects ("Path must be None, a string, or Path object, got float"); built as pandas 2 did, it works.
    """

    def setup(self, stage: str | None = None) -> None:
        with _object_strings():
            super().setup(stage)


class RealIAD(_StudySplits, AnomalibRealIAD):
    """anomalib 2.7's Real-IAD datamodule, whose defaults (``test_split_mode=none``, which drops the normal
    test images, and ``val_split_mode=same_as_test``) fit no study here and which takes no split ratio."""
