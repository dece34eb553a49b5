"""The one entry point: fractals -> pre-trained backbone -> anomaly detection, tracked in MLflow.

    python run.py                                  # small CPU job on the built-in dataset
    python run.py +experiment=imagenet_patchcore   # swap whole config groups
    python run.py -m backbone=fractal,random detector=patchcore,padim   # sweep

The domain packages (fractal_pretrain, detectors, evaluation) take plain arguments; the
pipeline package turns the config into them, one module per stage, and records everything in
MLflow. This file is the Hydra entry point only: it composes the config and hands it over.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# libraries' tqdm bars (anomalib's, e.g. its own coreset sampler) write carriage-return soup into log files;
# tqdm reads TQDM_* once, when it is imported
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_DISABLE", "1")

from pipeline.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # before the first large tensor: freed activations are reused, not re-faulted

import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from console.errors import EXIT_USER_ERROR, UserError, format_user_error  # noqa: E402
from console.logs import log  # noqa: E402
from console.logs import setup as setup_logging  # noqa: E402
from pipeline.config import register_schemas, stages_to_run  # noqa: E402
from pipeline.job import run_pipeline, where_it_went  # noqa: E402
from pipeline.launch import check_launch, is_secondary_rank, join_pretraining, select_gpu_for_job  # noqa: E402

OmegaConf.register_new_resolver("project_root", lambda: str(ROOT), replace=True)
register_schemas()


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
        log.info(f"fractal-ad: stages {', '.join(stages_to_run(cfg))}; backbone {cfg.backbone.source} {cfg.backbone.arch}, "
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
    return metrics.get(cfg.sweep_metric) if cfg.sweep_metric else None


if __name__ == "__main__":
    main()
