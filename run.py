"""The one entry point: fractals -> pre-trained backbone -> anomaly detection, tracked in MLflow.

    python run.py                                  # small CPU job on the built-in dataset
    python run.py +experiment=imagenet_patchcore   # swap whole config groups
    python run.py -m backbone=fractal,random detector=patchcore,padim   # sweep

Each stage is a plain function (config in, record out) in its own package; this file only
composes the config, seeds, opens the MLflow runs and calls the stages in order.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# glibc returns large freed blocks to the OS only above this threshold; without it anomalib's
# coreset selection fragments the heap and can grow by ~20 MB per iteration (HOUSE_STYLE.md).
# glibc reads it at start-up, so set it and re-execute once, before anything heavy is imported.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}

if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
# libraries' tqdm bars (anomalib's coreset selection) write carriage-return soup into log files;
# tqdm reads TQDM_* once, when it is imported
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_DISABLE", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import mlflow  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from console.errors import EXIT_USER_ERROR, ConfigError, UserError, format_user_error  # noqa: E402
from console.logs import log  # noqa: E402
from console.logs import setup as setup_logging  # noqa: E402
from detectors.backbone import resolve_backbone  # noqa: E402
from detectors.detect import detect  # noqa: E402
from evaluation import tracking  # noqa: E402
from evaluation.metrics import HEADLINE, format_table  # noqa: E402
from evaluation.sweep import SWEEP_RUN_ENV  # noqa: E402
from fractal_pretrain.export import file_lock  # noqa: E402
from fractal_pretrain.generate import generate  # noqa: E402
from fractal_pretrain.pretrain import pretrain  # noqa: E402

OmegaConf.register_new_resolver("project_root", lambda: str(ROOT), replace=True)
STAGES = ("generate", "pretrain", "detect")


def config_hash(cfg: DictConfig, keys: tuple[str, ...] | None = None) -> str:
    """Short content hash of the resolved config (or of some of its keys), paths excluded."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    picked = {k: resolved.get(k) for k in (keys or sorted(set(resolved) - {"paths"}))}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:12]


# settings that change neither the weights nor how the detector sees them
BOOKKEEPING = {"reuse", "resume", "log_export", "checkpoint_every_n_steps", "num_workers", "val_every_n_epochs",
               "val_renders_per_system", "allow_download", "offline_import"}


def makes_fractal_weights(cfg: DictConfig) -> bool:
    """Does this call generate fractals and pre-train, or take its weights from elsewhere? Fractal
    backbones without ``backbone.weights`` are made here; imagenet/random backbones go straight to detect."""
    return cfg.backbone.source == "fractal" and not cfg.backbone.weights


def pretrain_hash(cfg: DictConfig) -> str:
    """The recipe of the backbone's weights, which (with detector and dataset) defines a report arm:
    the backbone settings (source, arch, weights, normalisation), plus the fractal and pretrain
    settings when this call trains the weights. Seeds vary within an arm, so they are left out."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    groups = ("backbone", "fractal", "pretrain") if makes_fractal_weights(cfg) else ("backbone",)
    picked = {g: {k: v for k, v in resolved[g].items() if k not in BOOKKEEPING} for g in groups}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:12]


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train_fractal_backbone(cfg: DictConfig, out_dir: Path, tags: dict) -> tuple[Path | None, str | None]:
    """The generate and pretrain stages; returns the export folder and the pretrain run id."""
    bank_path = export_dir = run_id = None
    if "generate" in cfg.stages:
        L.seed_everything(cfg.seed, workers=True)
        with tracking.stage_run("generate", cfg, groups=("fractal",), tags=tags):
            bank_path = generate(cfg, out_dir / "fractals").bank_path
    if "pretrain" in cfg.stages:
        if bank_path is None:
            raise ConfigError("the pretrain stage needs the generate stage in the same call: "
                              "stages=[generate,pretrain,...]")
        L.seed_everything(cfg.seed, workers=True)
        with tracking.stage_run("pretrain", cfg, groups=("fractal", "pretrain", "backbone", "trainer"),
                                tags=tags, system_metrics=cfg.mlflow.system_metrics) as run:
            export_dir = pretrain(cfg, bank_path, out_dir / "pretrain").export_dir
            run_id = run.info.run_id
    return export_dir, run_id


def shared_fractal_backbone(cfg: DictConfig, out_dir: Path, tags: dict) -> tuple[Path | None, str | None]:
    """Pretrain once, detect many: jobs whose weights would be identical share one export.

    The export is kept under ``outputs/backbones/<hash of fractal, pretrain, arch, trainer, seed>``;
    the first job trains it while parallel jobs with the same hash wait on a lock, then reuse it.
    """
    key = config_hash(cfg, ("fractal", "pretrain", "trainer", "seed")) + f"-{cfg.backbone.arch}"
    shared = Path(cfg.paths.outputs_dir) / "backbones" / key
    with file_lock(shared.with_name(key + ".lock")):
        if (shared / "run.json").is_file():
            run_id = json.loads((shared / "run.json").read_text())["pretrain_run_id"]
            log.info(f"reusing backbone {shared} from pretrain run {run_id} (pretrain.reuse=false to retrain)")
            return shared / "backbone", run_id
        export_dir, run_id = train_fractal_backbone(cfg, out_dir, tags)
        if export_dir is not None:
            tmp = shared.with_name(key + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(export_dir, tmp / "backbone")
            (tmp / "run.json").write_text(json.dumps({"pretrain_run_id": run_id}))
            tmp.rename(shared)
        return export_dir, run_id


def check_objective(objective: str | None) -> None:
    """Sweepers get a validation quantity or nothing: optimising a test metric tunes on the test set."""
    if objective is not None and not str(objective).startswith("val_"):
        raise ConfigError(
            f"objective={objective} is not a validation metric; a sweeper optimising it would tune on the "
            f"test set. Use a validation quantity (val_image_AUROC or val_pixel_AUROC: training normals + "
            f"synthetic anomalies) or objective=null.")


def run_pipeline(cfg: DictConfig) -> dict[str, float]:
    """Run the configured stages under one parent MLflow run; return the detect metrics."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    check_objective(cfg.objective)
    if cfg.pretrain.reuse not in (True, False, "auto"):
        raise ConfigError(f"pretrain.reuse must be true, false or auto, got {cfg.pretrain.reuse}")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (out_dir / "config.yaml").write_text(resolved)
    tracking.setup(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    sweep_run_id = os.environ.get(SWEEP_RUN_ENV)
    tags = {"backbone": cfg.backbone.source, "arch": cfg.backbone.arch, "detector": cfg.detector.name,
            "dataset": cfg.dataset.name, "category": cfg.dataset.category, "seed": str(cfg.seed),
            "config_hash": config_hash(cfg), "pretrain_hash": pretrain_hash(cfg),
            **({"sweep_run_id": sweep_run_id} if sweep_run_id else {})}

    export_dir = pretrain_run_id = None
    metrics: dict[str, float] = {}
    with mlflow.start_run(run_name=tracking.run_name(cfg),
                          parent_run_id=sweep_run_id, tags={**tags, "stage": "pipeline"}):
        mlflow.log_text(resolved, "config.yaml")
        # fractal weights are made here unless an export was given; other backbones skip to detect
        if makes_fractal_weights(cfg):
            reuse = is_multirun() if cfg.pretrain.reuse == "auto" else cfg.pretrain.reuse
            make = shared_fractal_backbone if reuse else train_fractal_backbone
            export_dir, pretrain_run_id = make(cfg, out_dir, tags)
        if "detect" in cfg.stages:
            # re-seed so detection draws (random init, coreset) do not depend on earlier stages
            L.seed_everything(cfg.seed, workers=True)
            upstream = {"pretrain_run_id": pretrain_run_id} if pretrain_run_id else {}
            with tracking.stage_run("detect", cfg, groups=("backbone", "detector", "dataset", "trainer"),
                                    tags={**tags, **upstream}):
                backbone = resolve_backbone(cfg.backbone, export_dir, out_dir)
                mlflow.set_tags({"weights": backbone.weights, "normalization": cfg.backbone.normalization})
                mlflow.log_params({"input_mean": str(backbone.mean), "input_std": str(backbone.std),
                                   "weights_origin": backbone.weights})  # e.g. timm hub timm/<arch>.<tag>
                metrics = detect(cfg, backbone, out_dir / "detect").metrics
            mlflow.log_metrics({k: metrics[k] for k in HEADLINE if k in metrics})
            log.info("\n" + format_table([{**tags, **metrics}]) + "\n")
    return metrics


def is_secondary_rank() -> bool:
    """True in DDP processes other than global rank 0 (Lightning's re-executed children, torchrun,
    SLURM tasks): they run this script too, but only to join the training."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) > 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) > 0
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def join_pretraining(cfg: DictConfig, timeout_s: float = 900.0) -> None:
    """A secondary rank: wait for rank 0's fractal bank, then train alongside it. Rank 0 alone
    samples fractals, talks to MLflow, exports and runs detection."""
    out_dir = Path(cfg.paths.output_dir)
    bank = out_dir / "fractals" / "systems.npz"
    deadline = time.monotonic() + timeout_s
    while not bank.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 wrote no fractal bank at {bank} within {timeout_s:.0f} s")
        time.sleep(1.0)
    # ranks started by torchrun/SLURM are not seeded by Lightning (only its own launcher passes
    # PL_GLOBAL_SEED on); seed as rank 0 does right before its pretrain stage
    L.seed_everything(cfg.seed, workers=True)
    pretrain(cfg, bank, out_dir / "pretrain")


def check_launch(cfg: DictConfig) -> None:
    """Hydra -m and Lightning's ddp do not mix: ddp re-executes sys.argv, -m included, so every
    rank would start the whole sweep again. Fail before anything starts."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    trains = makes_fractal_weights(cfg) and "pretrain" in cfg.stages
    if is_multirun() and trains and strategy.startswith("ddp") and "spawn" not in strategy:
        raise ConfigError(
            f"trainer.strategy={strategy} cannot pre-train inside a -m sweep (DDP re-executes the "
            f"command line, -m included). Pre-train as a single run: python run.py trainer=ddp "
            f"stages=[generate,pretrain], then sweep the detectors with backbone.weights=runs:/<pretrain "
            f"run id>; or use trainer.strategy=ddp_spawn.")


def select_gpu_for_job() -> None:
    """On a multi-GPU box, spread sweep jobs one per GPU (before anything touches CUDA)."""
    if not is_multirun() or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    import torch

    count = torch.cuda.device_count()
    if count > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(HydraConfig.get().job.num % count)


def where_it_went(cfg: DictConfig, log_file: str | None) -> None:
    """The last lines of a run: its folder, its MLflow run and how to look at it."""
    run = mlflow.last_active_run()  # the pipeline's parent run: the last one to end
    uri = cfg.mlflow.tracking_uri
    log.info(f"run folder  {cfg.paths.output_dir}" + (f"  (log: {Path(log_file).name})" if log_file else ""))
    if run is not None:
        log.info(f"MLflow run  {run.info.run_id} in experiment '{cfg.mlflow.experiment}' ({uri})")
        log.info(f"browse it   mlflow ui --backend-store-uri {uri}   then open "
                 f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}?workflowType=machine_learning")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # a plain `kill` ends the runs as FAILED too, instead of leaving them RUNNING
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log_file = setup_logging(verbose=bool(cfg.get("verbose", False)))
    try:
        check_launch(cfg)
        if is_secondary_rank():
            join_pretraining(cfg)
            return None
        select_gpu_for_job()
        stages = [s for s in cfg.stages if makes_fractal_weights(cfg) or s == "detect"]
        log.info(f"fractal-ad: stages {', '.join(stages)}; backbone {cfg.backbone.source} {cfg.backbone.arch}, "
                 f"detector {cfg.detector.name}, dataset {cfg.dataset.name}:{cfg.dataset.category}, seed {cfg.seed}")
        metrics = run_pipeline(cfg)
    except UserError as err:
        # the user's input is wrong, not the code: what, where and the fix, without a traceback (the
        # MLflow runs have already ended FAILED on their way out); HYDRA_FULL_ERROR=1 shows it as usual
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        logging.getLogger("user_error").warning("the run stopped on this user error", exc_info=err)  # log file only
        print(format_user_error(err, log_file), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    where_it_went(cfg, log_file)
    return metrics.get(cfg.objective) if cfg.objective else None


if __name__ == "__main__":
    main()
