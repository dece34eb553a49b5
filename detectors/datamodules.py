"""Datamodule glue: anomalib's own datamodules, patched only where they break in this environment."""

from __future__ import annotations

import warnings

import pandas as pd
from anomalib.data import MVTecLOCO as AnomalibMVTecLOCO


class MVTecLOCO(AnomalibMVTecLOCO):
    """anomalib 2.7's MVTec LOCO loader under pandas >= 3.

    ``make_dataset`` stores a *list* of mask paths per image (LOCO has several masks per image) in a
    column created as ``""``; pandas 3 infers that column as the Arrow ``str`` dtype and refuses the
    lists ("Invalid value for dtype 'str'"). Building the table with object-dtype strings, as pandas 2
    did, is all it needs. Remove when anomalib creates that column with ``dtype=object``.
    """

    def _setup(self, _stage: str | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the option is deprecated (pandas 4 drops it)
            with pd.option_context("future.infer_string", False):
                super()._setup(_stage)
