"""Before the jobs: what kind of process this is (DDP rank, sweep job), launch checks, GPU pinning,
and the Hydra callbacks that run before any job folder exists: the outputs folder can be written,
the offline ImageNet weights are converted once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.fabric.utilities.rank_zero import _get_rank
from omegaconf import DictConfig

from console.errors import EXIT_USER_ERROR, ConfigError, format_user_error
from detectors.imagenet_offline import ensure_imagenet_export
from pipeline.config import is_multirun, trains_backbone
from pipeline.generate import generate_spec, make_source
from pipeline.pretrain import pretrain, pretrain_spec


def is_secondary_rank() -> bool:
    """True in DDP processes other than global rank 0 (Lightning's re-executed children, torchrun,
    SLURM tasks): they run this script too, but only to join the training. Lightning's own reading
    of the environment (RANK, LOCAL_RANK, SLURM_PROCID, ...), read now rather than at its import,
    plus NODE_RANK: the first process of node n > 0 in a manual multi-node start has LOCAL_RANK 0."""
    return (_get_rank() or 0) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def join_pretraining(cfg: DictConfig) -> None:
    """A secondary rank: make the same source as rank 0 (fractals: sample the same bank; a pure
    function of seed and config), then train alongside it. Rank 0 alone writes files, talks to MLflow,
    exports and runs detection."""
    # the stage seeds itself, as on rank 0 (ranks started by torchrun/SLURM are not seeded by Lightning)
    pretrain(pretrain_spec(cfg), make_source(generate_spec(cfg)), Path(cfg.paths.output_dir) / "pretrain")


def check_launch(cfg: DictConfig) -> None:
    """Hydra -m and Lightning's ddp do not mix: ddp re-executes sys.argv, -m included, so every
    rank would start the whole sweep again. Fail before anything starts."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    trains = trains_backbone(cfg) and "pretrain" in cfg.stages
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


class ImportImagenetWeights(Callback):
    """``hydra.callbacks``: make sure the offline ImageNet export exists before jobs start.

    Runs once in the launching process (single run or sweep), so parallel jobs find it complete.
    """

    def __init__(self, export_dir: str):
        self.export_dir = export_dir

    def on_run_start(self, config, **kwargs) -> None:
        ensure_imagenet_export(self.export_dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        ensure_imagenet_export(self.export_dir)


class CheckOutputs(Callback):
    """``hydra.callbacks``, first: the outputs folder (``paths.outputs_dir``, where Hydra makes the job
    folders and MLflow its store) must be a folder this user can write, checked before Hydra makes
    anything; otherwise the one-block message and exit 2, instead of Hydra's traceback."""

    def __init__(self, outputs_dir: str):
        self.outputs_dir = Path(outputs_dir)

    def check(self) -> None:
        try:
            self.outputs_dir.mkdir(parents=True, exist_ok=True)
            problem = None if os.access(self.outputs_dir, os.W_OK | os.X_OK) else "is not writable by this user"
        except OSError as err:
            problem = f"cannot be made ({err.strerror})"
        if problem:
            error = ConfigError(f"paths.outputs_dir={self.outputs_dir} {problem}: job folders, the MLflow store and "
                                f"the built-in data go there. Point it at a folder you can write: "
                                f"paths.outputs_dir=/abs/path/to/outputs (or set it once in conf/local/default.yaml).")
            print(format_user_error(error), file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    def on_run_start(self, config, **kwargs) -> None:
        self.check()

    def on_multirun_start(self, config, **kwargs) -> None:
        self.check()
