"""The report's rows, read back from MLflow: one per ended detect run (evaluation.report makes the
tables and figures from them)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from console.logs import log
from evaluation.metrics import HEADLINE, VALIDATION
from evaluation.report import ARM, BUDGET, SPLIT_SIZE, UNKNOWN, deduplicate


def collect(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """One row per ended detect run (FINISHED, or FAILED/KILLED: shown as failed): its tags, status
    and headline metrics (NaN where a run logged none, e.g. pixel metrics without masks).

    A repeated arm x category x seed (a job re-run, a sweep resumed) keeps one run, the newest
    FINISHED one (the newest run if none finished): the others are listed in a warning and in
    ``rows.attrs["dropped"]`` (run ids), never counted as extra seeds."""
    mlflow.set_tracking_uri(tracking_uri)
    query = " and ".join(f for f in ("tags.stage = 'detect'", filter_string) if f)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query)
    columns = ["run_id", "status", "start_time", *ARM, "category", "seed", *BUDGET, "pretrain_seconds",
               *HEADLINE, *VALIDATION, *SPLIT_SIZE]
    if runs.empty:
        rows = pd.DataFrame(columns=columns)
        rows.attrs["dropped"] = []
        return rows
    runs = runs[runs["status"] != "RUNNING"]  # still in flight: neither a result nor a failure
    rows = pd.DataFrame({"run_id": runs["run_id"], "status": runs["status"], "start_time": runs["start_time"]})
    for tag in (*ARM, "category", "seed", *BUDGET):
        rows[tag] = runs[f"tags.{tag}"].fillna(UNKNOWN) if f"tags.{tag}" in runs else UNKNOWN
    for metric in (*HEADLINE, *VALIDATION, *SPLIT_SIZE):
        rows[metric] = runs[f"metrics.{metric}"] if f"metrics.{metric}" in runs else np.nan
    rows["pretrain_seconds"] = rows["pretrain_run_id"].map(_pretrain_seconds(experiment, rows["pretrain_run_id"]))
    rows, dropped = deduplicate(rows[columns])
    if dropped:
        log.warning(f"{len(dropped)} repeated arm x category x seed run(s) left out (the newest FINISHED "
                    f"run of each is kept): {', '.join(dropped)}")
    rows = rows.sort_values([*ARM, "category", "seed"]).reset_index(drop=True)
    rows.attrs["dropped"] = dropped
    return rows


def _pretrain_seconds(experiment: str, run_ids: pd.Series) -> dict[str, float]:
    """Wall seconds of each pre-training (metric ``train_seconds`` of the pretrain runs named)."""
    wanted = sorted(set(run_ids) - {UNKNOWN})
    if not wanted:
        return {}
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.stage = 'pretrain'")
    if runs.empty or "metrics.train_seconds" not in runs:
        return {}
    runs = runs[runs["run_id"].isin(wanted)]
    return dict(zip(runs["run_id"], runs["metrics.train_seconds"]))
