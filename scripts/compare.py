"""Comparison report from the MLflow store: fractal vs ImageNet vs random, per detector and dataset.

    python scripts/compare.py                          # every detect run in the experiment
    python scripts/compare.py --sweep <sweep run id>   # one multirun (its id is printed at the start)
    python scripts/compare.py --filter "tags.dataset = 'builtin'" --out outputs/report
    python scripts/compare.py --sweep <id> --attach    # and log it to that sweep's MLflow run (report/)

Writes runs.csv, summary.csv (per arm: mean, std and 95% CI over seeds; over categories as
description), paired.csv (fractal vs random, fractal vs ImageNet, ImageNet vs random, one unit per
seed: mean difference, paired t 95% CI over seeds, exact Wilcoxon p, Holm p, units and the reading,
"not resolved with N seeds" where the seeds cannot carry one), validation_split.csv (when the runs
logged its size), summary.md (the tables), comparison.png (grouped bars, 95% CI) and
per_category.png (heat map), budget.csv and budget.png where a recipe ran at several budgets
(+experiment=budget_builtin), and prints the tables. A multirun writes the same report into its
folder at the end. An arm is backbone x arch x pre-training recipe x detector x dataset x code
version; failed and missing category runs are listed, never averaged away, and a repeated
arm x category x seed run is counted once (the newest FINISHED; the dropped run ids are printed).
See pipeline/report.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow

from evaluation import report
from pipeline.report import collect

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT}/outputs/mlflow.db")
    parser.add_argument("--experiment", default="fractal-ad")
    parser.add_argument("--sweep", help="only the jobs of this sweep run id")
    parser.add_argument("--filter", default="", help="extra MLflow filter, e.g. \"tags.seed = '0'\"")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "report"))
    parser.add_argument("--attach", action="store_true",
                        help="log the report to the --sweep run's artifacts (report/), replacing the files of the same name")
    args = parser.parse_args(argv)
    if args.attach and not args.sweep:
        parser.error("--attach needs --sweep <sweep run id>: the run the report is logged to")

    filters = [f for f in (args.filter, args.sweep and f"tags.sweep_run_id = '{args.sweep}'") if f]
    rows = collect(args.tracking_uri, args.experiment, " and ".join(filters))
    try:
        paths = report.write_report(rows, args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    print(f"{len(rows)} detect runs")
    dropped = rows.attrs.get("dropped", [])
    if dropped:
        print(f"dropped {len(dropped)} repeated runs: {', '.join(dropped)} (the newest FINISHED run of each "
              f"arm x category x seed is kept)")
    if args.attach:
        client = mlflow.MlflowClient(args.tracking_uri)
        for path in paths.values():
            client.log_artifact(args.sweep, str(path), "report")
        print(f"logged to sweep run {args.sweep} (artifacts report/)")
    print(report.closing_lines(paths, args.tracking_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
