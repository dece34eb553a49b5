"""One MLflow parent run per Hydra multirun, and the comparison report when it ends.

Runs in the launching process, before any job starts: the SQLite schema and the experiment are
created once (parallel jobs then never race on creating them), and the sweep run's id reaches every
job through the environment (inherited by joblib workers and submitit jobs alike).
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

import mlflow
import pandas as pd
from hydra.experimental.callback import Callback
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from console import logs
from evaluation import report
from pipeline import tracking
from evaluation.metrics import HEADLINE
from pipeline.report import collect

SWEEP_RUN_ENV = "FRACTAL_AD_SWEEP_RUN_ID"


class SweepTracking(Callback):
    def __init__(self, report: bool = True):
        self.make_report = report
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        logs.setup(verbose=bool(config.get("verbose", False)))  # MLflow's INFO lines: the log, not the console
        tracking.setup(config.mlflow.tracking_uri, config.mlflow.experiment)
        sweep_dir = config.hydra.sweep.dir
        run = mlflow.MlflowClient().create_run(
            mlflow.get_experiment_by_name(config.mlflow.experiment).experiment_id,
            run_name=f"sweep {Path(sweep_dir).name}",
            tags={"stage": "sweep", "sweep_dir": sweep_dir,
                  "overrides": " ".join(OmegaConf.to_container(config.hydra.overrides.task))})
        self.run_id = run.info.run_id
        os.environ[SWEEP_RUN_ENV] = self.run_id
        atexit.register(self._end, "FAILED")  # a sweep that crashes is never left RUNNING
        print(f"MLflow sweep run {self.run_id} ({config.mlflow.tracking_uri})")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id is None:
            return
        status = "FINISHED"
        if self.make_report:
            try:
                rows = collect(config.mlflow.tracking_uri, config.mlflow.experiment,
                                      f"tags.sweep_run_id = '{self.run_id}'")
                paths = report.write_report(rows, Path(config.hydra.sweep.dir) / "report")
                client = mlflow.MlflowClient()
                for path in paths.values():
                    client.log_artifact(self.run_id, str(path), "report")
                log_arm_figures(client, self.run_id, pd.read_csv(paths["summary"]))
                print("\n" + paths["markdown"].read_text())
                print(report.closing_lines(paths, config.mlflow.tracking_uri))
            except Exception as err:  # the jobs' own runs are complete; say why the report is not
                print(f"comparison report failed: {err}")
                status = "FAILED"
        self._end(status)

    def _end(self, status: str) -> None:
        if self.run_id is not None:
            mlflow.MlflowClient().set_terminated(self.run_id, status)
            self.run_id = None
            os.environ.pop(SWEEP_RUN_ENV, None)


def log_arm_figures(client: mlflow.MlflowClient, run_id: str, table: pd.DataFrame) -> None:
    """Each arm's headline figures (mean over seeds) on the sweep's parent run, named
    ``<metric>/<backbone>/<detector>`` (then the dataset, architecture and recipe hash, as far as
    needed to tell the sweep's arms apart): the collapsed sweep row in the MLflow UI then answers
    the question."""
    keys = ["backbone", "detector"]
    for extra in ("dataset", "arch", "pretrain_hash"):  # only as far as needed to tell arms apart
        if not table.duplicated(keys).any():
            break
        keys.append(extra)
    now, figures = int(time.time() * 1000), {}
    for _, arm in table.iterrows():
        name = "/".join(str(arm[k]) for k in keys)
        figures.update({f"{metric}/{name}": arm[f"{metric}_mean"] for metric in HEADLINE
                        if pd.notna(arm.get(f"{metric}_mean"))})
        figures[f"seeds/{name}"] = arm["seeds"]
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in figures.items()])
