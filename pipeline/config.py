"""What the config says beyond its values: content hashes, the arm's recipe, the one "does this call
train fractal weights?" decision, and the checks made before anything starts."""

from __future__ import annotations

import hashlib
import json

import lightning as L
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from console.errors import ConfigError
from fractal_pretrain.export import export_digest
from fractal_pretrain.fractals.families import MultiFormulaConfig
from fractal_pretrain.fractals.render import RenderConfig
from pipeline import provenance

STAGES = ("generate", "pretrain", "detect")

# settings that change neither the weights nor how the detector sees them
BOOKKEEPING = {"reuse", "resume", "log_export", "checkpoint_every_n_steps", "num_workers", "val_every_n_epochs",
               "val_renders_per_system", "allow_download", "offline_import"}


def register_schemas() -> None:
    """The renderer's dataclasses as structured configs (``conf/fractal/*.yaml`` list them first as
    ``/schema/render`` and ``/schema/multi_formula``): a value of the wrong type, or a key the
    dataclass does not have, fails at composition and names the key."""
    store = ConfigStore.instance()
    for name, cls in (("render", RenderConfig), ("multi_formula", MultiFormulaConfig)):
        node = OmegaConf.structured(cls)
        OmegaConf.set_readonly(node, False)  # the dataclasses are frozen; their configs stay overridable
        store.store(group="schema", name=name, node=node)


def config_hash(cfg: DictConfig, keys: tuple[str, ...] | None = None) -> str:
    """Short content hash of the resolved config (or of some of its keys), paths excluded."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    picked = {k: resolved.get(k) for k in (keys or sorted(set(resolved) - {"paths"}))}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trains_backbone(cfg: DictConfig) -> bool:
    """Does this call make its source (fractals by default) and pre-train, or take its weights from
    elsewhere? ``backbone=fractal`` without ``backbone.weights`` trains here, on
    ``pretrain.source``; imagenet/random backbones go straight to detect."""
    return cfg.backbone.source == "fractal" and not cfg.backbone.weights


def source_label(cfg: DictConfig) -> str:
    """The backbone source as runs are tagged and reports compare it: ``fractal``, ``imagenet``,
    ``random``; weights trained here on another source name it (``dead_leaves``, ``image_folder``),
    and by another objective than the study's classification name that too (``fractal-simclr``), so
    each source and objective is its own arm in the report."""
    if not trains_backbone(cfg):
        return cfg.backbone.source
    objective = cfg.pretrain.objective.name
    source = cfg.pretrain.source.name
    return source if objective == "classification" else f"{source}-{objective}"


def recipe_groups(cfg: DictConfig) -> tuple[str, ...]:
    """The config groups that define the weights trained here: the ``fractal`` group only when the
    source is fractals (other sources read what they take from it through interpolation)."""
    return ("fractal", "pretrain", "optim") if cfg.pretrain.source.name == "fractal" else ("pretrain", "optim")


def pretrain_hash(cfg: DictConfig) -> str:
    """The recipe of the backbone's weights, which (with detector and dataset) defines a report arm:
    the backbone settings (source, arch, weights, normalisation), plus the source, pretrain and optim
    settings when this call trains the weights. Seeds vary within an arm, so they are left out. Given
    weights count by their content digest, so the same export found at two paths, or named by
    ``runs:/``, ``models:/<id>`` and ``models:/<name>/<version>``, is one arm. The default source
    (fractals) is left out of the pretrain group, so fractal arms keep the hashes they had before
    sources existed."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    groups = ("backbone", *recipe_groups(cfg)) if trains_backbone(cfg) else ("backbone",)
    picked = {g: {k: v for k, v in resolved[g].items() if k not in BOOKKEEPING} for g in groups}
    if picked.get("pretrain", {}).get("source") == {"name": "fractal"}:
        del picked["pretrain"]["source"]
    weights = picked["backbone"].get("weights")
    if weights:  # an export: what it holds, not where (a folder, runs:/ or models:/ naming it)
        picked["backbone"]["weights"] = weights_identity(str(weights))
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:12]


def weights_identity(weights: str) -> str:
    """What ``backbone.weights`` holds, for the arm: an export's weights digest (a folder on disk, or
    the digest its LoggedModel records for MLflow URIs); else the pretrain run (``runs:/<id>``) of
    runs logged before models carried a digest, or the value as written (hub weights, a missing folder)."""
    upstream = provenance.upstream_backbone(weights)  # None unless runs:/ or models:/
    if upstream is not None:
        return upstream.digest or f"runs:/{upstream.run_id}"
    return export_digest(weights) or weights


def seed_stage(seed: int) -> None:
    """The one way a stage seeds: torch, numpy and python RNGs (and the DataLoader workers' seeds)
    reset to ``seed`` right before the stage's first random draw. ``seed_everything`` resets the
    state whatever it was, so a stage draws the same whether it runs alone, after other stages, as
    the n-th job of an in-process sweep or on a DDP rank."""
    L.seed_everything(seed, workers=True)


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def stages_to_run(cfg: DictConfig) -> list[str]:
    """The configured stages this call runs: generate and pretrain only where it trains the weights
    (imagenet/random backbones and given weights go straight to detect)."""
    return [s for s in cfg.stages if trains_backbone(cfg) or s == "detect"]


def check_sweep_metric(metric: str | None) -> None:
    """Sweepers get a validation quantity or nothing: optimising a test metric tunes on the test set."""
    if metric is not None and not str(metric).startswith("val_"):
        raise ConfigError(
            f"sweep_metric={metric} is not a validation metric; a sweeper optimising it would tune on the "
            f"test set. Use a validation quantity (val_image_AUROC or val_pixel_AUROC: training normals + "
            f"synthetic anomalies) or sweep_metric=null.")


def check_job(cfg: DictConfig) -> None:
    """The top-level settings of one pipeline call, checked before any stage starts."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    stages = stages_to_run(cfg)
    if not stages:
        raise ConfigError(
            f"stages={list(cfg.stages)} runs nothing with backbone={cfg.backbone.source}"
            f"{' and backbone.weights set' if cfg.backbone.weights else ''}: generate and pretrain make fractal "
            f"weights only (backbone=fractal without backbone.weights). Add detect (stages=[detect]), or "
            f"use backbone=fractal to pre-train.")
    if "pretrain" in stages and "generate" not in cfg.stages:
        raise ConfigError("the pretrain stage needs the generate stage in the same call: "
                          "stages=[generate,pretrain,...]")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    check_sweep_metric(cfg.sweep_metric)
    if cfg.pretrain.reuse not in (True, False, "auto"):
        raise ConfigError(f"pretrain.reuse must be true, false or auto, got {cfg.pretrain.reuse}")
