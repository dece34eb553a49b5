"""Pretrain once, detect many: the shared fractal-backbone cache under ``outputs/backbones/``."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig

from console.logs import log
from pipeline import provenance
from pipeline.config import config_hash, recipe_groups


def shared_trained_backbone(cfg: DictConfig, train: Callable[[], tuple[Path | None, str | None]]
                            ) -> tuple[Path | None, str | None]:
    """Jobs whose weights would be identical share one export (``train()`` returns the export folder
    and the pretrain run id).

    The export is kept under ``outputs/backbones/<hash of [fractal,] pretrain, optim, arch, trainer, seed>-
    <arch>-<hash of the code version>``; the first job trains it while parallel jobs with the same key
    wait on a lock, then reuse it. The code version is in the key: a backbone trained by other code
    (another commit, other uncommitted changes) is never reused.
    """
    code = provenance.code_version()
    key = (config_hash(cfg, (*recipe_groups(cfg), "trainer", "seed")) + f"-{cfg.backbone.arch}-"
           + hashlib.sha256(code.encode()).hexdigest()[:8])
    shared = Path(cfg.paths.outputs_dir) / "backbones" / key
    with FileLock(shared.with_name(key + ".lock")):
        if (shared / "run.json").is_file():
            run_id = json.loads((shared / "run.json").read_text())["pretrain_run_id"]
            log.info(f"reusing backbone {shared} from pretrain run {run_id} (pretrain.reuse=false to retrain)")
            return shared / "backbone", run_id
        export_dir, run_id = train()
        if export_dir is not None:
            tmp = shared.with_name(key + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(export_dir, tmp / "backbone")
            (tmp / "run.json").write_text(json.dumps({"pretrain_run_id": run_id, "code_version": code}))
            tmp.rename(shared)
        return export_dir, run_id
