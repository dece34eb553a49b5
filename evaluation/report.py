"""The comparison report: detect runs read back from MLflow -> table, grouped bars, heat map.

The question is comparative (fractal vs ImageNet vs random, per detector), so the report aggregates
over seeds the way papers do: per (backbone, detector, dataset, seed) the mean over categories,
then mean and standard deviation of that over seeds; per-category columns are means over seeds.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from evaluation.metrics import HEADLINE  # noqa: E402

KEYS = ["backbone", "detector", "dataset"]
BACKBONE_ORDER = ["imagenet", "fractal", "random"]
COLOURS = {"imagenet": "#4c72b0", "fractal": "#dd8452", "random": "#8c8c8c"}  # same in every report


def collect(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """One row per FINISHED detect run: its config tags and headline metrics."""
    mlflow.set_tracking_uri(tracking_uri)
    query = " and ".join(f for f in ("tags.stage = 'detect'", "attributes.status = 'FINISHED'",
                                      filter_string) if f)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query)
    if runs.empty:
        return pd.DataFrame(columns=["run_id", *KEYS, "category", "seed", *HEADLINE])
    rows = pd.DataFrame({"run_id": runs["run_id"]})
    for tag in (*KEYS, "category", "seed"):
        rows[tag] = runs.get(f"tags.{tag}")
    for metric in HEADLINE:
        rows[metric] = runs.get(f"metrics.{metric}", np.nan)
    return rows.sort_values([*KEYS, "category", "seed"]).reset_index(drop=True)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the category-mean, plus per-category image AUROC columns."""
    per_seed = rows.groupby([*KEYS, "seed"])[list(HEADLINE)].mean()
    grouped = per_seed.groupby(KEYS)
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    table.insert(0, "seeds", grouped.size())
    table.insert(1, "categories", rows.groupby(KEYS)["category"].nunique())
    per_category = rows.pivot_table(index=KEYS, columns="category", values="image_AUROC", aggfunc="mean")
    table = table.join(per_category.add_prefix("image_AUROC:"))
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def bar_plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per headline metric: detectors on the x axis, one bar per backbone, std as error."""
    backbones = [b for b in BACKBONE_ORDER if b in set(table["backbone"])] + sorted(
        set(table["backbone"]) - set(BACKBONE_ORDER))
    groups = table[["detector", "dataset"]].drop_duplicates().apply(" / ".join, axis=1).tolist()
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4.5 * len(HEADLINE), 3.8), squeeze=False)
    width = 0.8 / max(len(backbones), 1)
    for ax, metric in zip(axes[0], HEADLINE):
        for i, backbone in enumerate(backbones):
            sub = table[table["backbone"] == backbone]
            labels = (sub["detector"] + " / " + sub["dataset"]).tolist()
            x = [groups.index(label) + (i - (len(backbones) - 1) / 2) * width for label in labels]
            ax.bar(x, sub[f"{metric}_mean"], width, yerr=sub[f"{metric}_std"], label=backbone, capsize=3,
                   color=COLOURS.get(backbone))
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_ylim(0.0, 1.0)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(metric)
    axes[0][0].legend(title="backbone")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heat_map(rows: pd.DataFrame, path: Path, metric: str = "image_AUROC") -> Path:
    """Rows: backbone / detector / dataset; columns: categories; cells: mean over seeds."""
    grid = rows.pivot_table(index=KEYS, columns="category", values=metric, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]))
    im = ax.imshow(grid.to_numpy(dtype=float), vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), [" / ".join(i) for i in grid.index])
    for (r, c), v in np.ndenumerate(grid.to_numpy(dtype=float)):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.8 else "black")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"{metric} per category")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """CSV (runs and summary), Markdown and two PNGs in ``out_dir``; returns their paths."""
    if rows.empty:
        raise ValueError("no FINISHED detect runs match; check the experiment name and the filter "
                         "(e.g. --sweep <sweep run id>), and that the runs ended FINISHED.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summarise(rows)
    paths = {"runs": out_dir / "runs.csv", "summary": out_dir / "summary.csv", "markdown": out_dir / "summary.md"}
    rows.to_csv(paths["runs"], index=False)
    table.to_csv(paths["summary"], index=False)
    paths["markdown"].write_text(markdown(table) + "\n")
    paths["bars"] = bar_plot(table, out_dir / "comparison.png")
    paths["heat_map"] = heat_map(rows, out_dir / "per_category.png")
    return paths
