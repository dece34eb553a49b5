"""The comparison report: detect runs read back from MLflow -> tables, grouped bars, heat map.

An *arm* is everything that defines what is compared: backbone source, architecture, pre-training
recipe (tag ``pretrain_hash``: the fractal + pretrain + backbone settings for fractal weights, the
weights' identity and input normalisation for the others), detector and dataset. Runs of different
arms are never pooled. Within an arm the runs differ only by category and seed.

Per arm (one row of ``summary``): for each seed the mean over categories, then over seeds their
mean, standard deviation and a 95% t-interval (no interval with one seed); and the spread over
categories (each category's mean over seeds; std and 95% t-interval over categories). The
expected categories of an arm are all categories any arm of the same detector and dataset ran; a
seed whose category mean would miss one of them (absent, or its run FAILED) is left out of the
statistics and the arm is marked in ``status``, never averaged over fewer categories.

``paired``: for each detector, dataset and architecture, every two arms of different backbone
sources, matched on (category, seed): mean difference, a 95% paired-bootstrap interval of it and
the two-sided Wilcoxon signed-rank p (scipy), per metric.

``selection``: where one backbone source has several recipes (a sweep over pre-training settings),
its arms ranked by the validation image AUROC, ties broken by the validation pixel AUROC (training
normals + synthetic anomalies, never the test set), and the best one marked: the recipe to carry forward is picked there, not on test AUROC.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from detection.metrics import HEADLINE, VALIDATION  # noqa: E402

# order matters: backbone, detector, dataset first (the table reads as "fractal | patchcore | builtin")
ARM = ["backbone", "detector", "dataset", "arch", "pretrain_hash"]
UNKNOWN = "-"  # runs logged before a tag existed
BACKBONE_ORDER = ["imagenet", "fractal", "fractal-multilabel", "fractal-simclr", "random"]
COLOURS = {"imagenet": "#4c72b0", "fractal": "#dd8452", "fractal-multilabel": "#c44e52",
           "fractal-simclr": "#55a868", "random": "#8c8c8c"}  # same in every report
PAIRS = [("fractal", "random"), ("fractal", "imagenet"), ("imagenet", "random")]  # a - b
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000


def collect(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """One row per ended detect run (FINISHED, or FAILED/KILLED: shown as failed): its tags, status
    and headline metrics (NaN where a run logged none, e.g. pixel metrics without masks)."""
    mlflow.set_tracking_uri(tracking_uri)
    query = " and ".join(f for f in ("tags.stage = 'detect'", filter_string) if f)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query)
    columns = ["run_id", "status", *ARM, "category", "seed", *HEADLINE, *VALIDATION]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = runs[runs["status"] != "RUNNING"]  # still in flight: neither a result nor a failure
    rows = pd.DataFrame({"run_id": runs["run_id"], "status": runs["status"]})
    for tag in (*ARM, "category", "seed"):
        rows[tag] = runs[f"tags.{tag}"].fillna(UNKNOWN) if f"tags.{tag}" in runs else UNKNOWN
    for metric in (*HEADLINE, *VALIDATION):
        rows[metric] = runs[f"metrics.{metric}"] if f"metrics.{metric}" in runs else np.nan
    return rows[columns].sort_values([*ARM, "category", "seed"]).reset_index(drop=True)


def t_interval(values) -> tuple[float, float, float, float]:
    """Mean, sample std and the 95% Student-t interval of the mean; NaN interval for one value
    (no spread to estimate) and everything NaN when a value is missing."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.isfinite(x).all():
        return (np.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, x.size - 1) * std / np.sqrt(x.size)
    return mean, std, mean - half, mean + half


def _finished(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "FINISHED"]


def _expected_categories(rows: pd.DataFrame) -> dict[tuple, list[str]]:
    return {key: sorted(set(g["category"])) for key, g in rows.groupby(["detector", "dataset"])}


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: seeds, categories, status and, per metric, the statistics above; then the
    per-category image AUROC (mean over seeds; NaN where absent or failed)."""
    expected = _expected_categories(rows)
    records = []
    for arm, runs in rows.groupby(ARM, sort=True):
        wanted = expected[(arm[1], arm[2])]
        done = _finished(runs)
        seeds = sorted(set(runs["seed"]), key=lambda s: (len(s), s))
        problems, complete = [], []
        for seed in seeds:
            have = set(done.loc[done["seed"] == seed, "category"])
            failed = sorted(set(runs.loc[(runs["seed"] == seed) & (runs["status"] != "FINISHED"), "category"]) - have)
            missing = sorted(set(wanted) - have - set(failed))
            problems += [f"FAILED {c} (seed {seed})" for c in failed] + [f"missing {c} (seed {seed})" for c in missing]
            if not failed and not missing:
                complete.append(seed)
        record = dict(zip(ARM, arm))
        record.update(seeds=len(complete), categories=len(wanted),
                      status="ok" if not problems else "; ".join(problems))
        done = done[done["seed"].isin(complete)]
        for metric in (*HEADLINE, *(m for m in VALIDATION if m in runs)):
            # skipna=False: a category without the metric makes the seed's mean missing, not smaller
            per_seed = done.groupby("seed")[metric].apply(lambda v: v.mean(skipna=False)).reindex(complete)
            per_cat = done.groupby("category")[metric].mean().reindex(wanted) if complete else pd.Series(dtype=float)
            mean, std, low, high = t_interval(per_seed)
            _, cat_std, cat_low, cat_high = t_interval(per_cat)
            record.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci_low": low,
                           f"{metric}_ci_high": high, f"{metric}_cat_std": cat_std,
                           f"{metric}_cat_ci_low": cat_low, f"{metric}_cat_ci_high": cat_high})
        per_category = _finished(runs).groupby("category")["image_AUROC"].mean()
        record.update({f"image_AUROC:{c}": per_category.get(c, np.nan) for c in wanted})
        records.append(record)
    return pd.DataFrame.from_records(records)


def selection(table: pd.DataFrame, metrics: tuple[str, ...] = VALIDATION) -> pd.DataFrame:
    """Per backbone source, detector, dataset and architecture with more than one recipe: the arms
    ranked by the validation ``metrics`` (mean over seeds of the category mean; the second breaks
    ties of the first, which a small validation split quantises coarsely), the first one
    ``picked``. Test metrics ride along for the record; they choose nothing."""
    if f"{metrics[0]}_mean" not in table:
        return pd.DataFrame()
    key = ["backbone", "detector", "dataset", "arch"]
    ranks = [f"{m}_mean" for m in metrics if f"{m}_mean" in table]
    several = table.groupby(key)["pretrain_hash"].transform("nunique") > 1
    # rounded: metrics arrive as float32 (torchmetrics), so values that tie exactly (ninths) differ
    # around the 8th digit
    candidates = table[several & table[ranks[0]].notna()]
    order = candidates[ranks].round(6).set_axis([f"_rank{i}" for i in range(len(ranks))], axis=1)
    ranked = pd.concat([candidates, order], axis=1).sort_values(
        [*key, *order.columns], ascending=[True] * len(key) + [False] * len(ranks), na_position="last")
    ranked = ranked.assign(picked=~ranked.duplicated(key))
    columns = [*key, "pretrain_hash", "seeds", "picked", *(f"{m}_{s}" for m in metrics for s in ("mean", "ci_low", "ci_high")),
               *(f"{m}_mean" for m in HEADLINE)]
    return ranked.reindex(columns=columns).reset_index(drop=True)


def paired(rows: pd.DataFrame, metrics: tuple[str, ...] = HEADLINE) -> pd.DataFrame:
    """Backbone sources compared per detector, dataset and architecture on matched (category, seed)
    pairs of FINISHED runs: mean of a - b, its 95% paired-bootstrap interval, Wilcoxon p."""
    done = _finished(rows)
    out = []
    for (detector, dataset, arch), group in done.groupby(["detector", "dataset", "arch"], sort=True):
        arms = {key: g for key, g in group.groupby(["backbone", "pretrain_hash"])}
        for (src_a, src_b) in _pairs(sorted({k[0] for k in arms})):
            for (a, ha), (b, hb) in ((ka, kb) for ka in arms if ka[0] == src_a for kb in arms if kb[0] == src_b):
                merged = arms[(a, ha)].merge(arms[(b, hb)], on=["category", "seed"], suffixes=("_a", "_b"))
                for metric in metrics:
                    pairs = merged[[f"{metric}_a", f"{metric}_b"]].dropna()
                    if pairs.empty:
                        continue
                    diff, low, high, p = paired_test(pairs[f"{metric}_a"], pairs[f"{metric}_b"])
                    out.append({"detector": detector, "dataset": dataset, "arch": arch,
                                "comparison": f"{a} - {b}", "pretrain_hash_a": ha, "pretrain_hash_b": hb,
                                "metric": metric, "pairs": len(pairs), "mean_diff": diff,
                                "ci_low": low, "ci_high": high, "wilcoxon_p": p})
    columns = ["detector", "dataset", "arch", "comparison", "pretrain_hash_a", "pretrain_hash_b", "metric",
               "pairs", "mean_diff", "ci_low", "ci_high", "wilcoxon_p"]
    return pd.DataFrame(out, columns=columns)


def _pairs(sources: list[str]) -> list[tuple[str, str]]:
    """The study's three comparisons first, then any other two sources present."""
    known = [(a, b) for a, b in PAIRS if a in sources and b in sources]
    return known + [p for p in combinations(sources, 2) if p not in known and p[::-1] not in known]


def paired_test(a, b, seed: int = 0) -> tuple[float, float, float, float]:
    """Mean of a - b, its 95% percentile bootstrap interval (pairs resampled; seeded, so the report is
    reproducible; NaN for one pair) and the two-sided Wilcoxon signed-rank p (exact for small n;
    1.0 when every difference is zero)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean())
    if d.size < 2:
        return mean, np.nan, np.nan, np.nan
    if not np.any(d):
        return mean, 0.0, 0.0, 1.0
    boot = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                           method="percentile", rng=np.random.default_rng(seed))
    p = float(stats.wilcoxon(a, b).pvalue)
    return mean, float(boot.confidence_interval.low), float(boot.confidence_interval.high), p


def _num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) and np.isfinite(v) else "-"


def _interval(low, high) -> str:
    return f"[{_num(low)}, {_num(high)}]" if np.isfinite(low) else "-"


def _cell(mean, low, high) -> str:
    """``mean [low, high]``, the parts that exist, or '-'."""
    return " ".join(x for x in (_num(mean), _interval(low, high)) if x != "-") or "-"


def _section(legend: str, header: list[str], body: list[list[str]]) -> list[str]:
    return ["", legend, "", *_table(header, body)]


def _category_cell(value, category: str, status: str) -> str:
    """The value, starred when some seed of this category failed or is missing; else why it is absent."""
    troubled = f" {category} (seed" in f" {status}"
    if np.isfinite(value):
        return _num(value) + ("*" if troubled else "")
    return "FAILED" if f"FAILED {category} (" in status else "missing"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in body)]


def markdown(table: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> str:
    """The summary (mean [95% CI over seeds] per metric, per-category image AUROC, status), the
    recipe selection on validation (when a source has several recipes) and the paired comparisons,
    as Markdown with a legend."""
    categories = [c for c in table.columns if c.startswith("image_AUROC:")]
    header = ["backbone", "detector", "dataset", "arch", "pretrain", "seeds", "categories",
              *(f"{m} mean [95% CI]" for m in HEADLINE), *categories, "status"]
    body = []
    for _, r in table.iterrows():
        metric_cells = [_cell(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in HEADLINE]
        body.append([str(r[k]) for k in ARM] + [str(r["seeds"]), str(r["categories"]), *metric_cells,
                    *(_category_cell(r[c], c.split(":", 1)[1], r["status"]) for c in categories), str(r["status"])])
    lines = _table(header, body)
    lines += ["", "Mean over categories, then mean over seeds; [95% CI]: Student-t interval over seeds of "
              "the category mean (none with one seed). Per-category columns: image AUROC, mean over "
              "seeds (*: some seed of it failed or is missing). '-': no value (metric not logged). "
              "status lists failed and missing category/seed runs; seeds with one are left out of the "
              "statistics, never averaged over fewer categories. summary.csv also has the std and 95% CI "
              "over categories (`_cat_` columns)."]
    picks = selection(table)
    if not picks.empty:
        lines += _section(
            "Recipe selection: where one backbone source ran several pre-training recipes, its arms ranked "
            "by val_image_AUROC, ties broken by val_pixel_AUROC (training normals + synthetic anomalies; the "
            "test set chooses nothing), mean over seeds [95% CI]; the first of each group is the pick. Test "
            "image AUROC for the record.",
            ["backbone", "detector", "dataset", "arch", "pretrain", "seeds", "val_image_AUROC", "val_pixel_AUROC",
             "picked", "image_AUROC (test)"],
            [[r.backbone, r.detector, r.dataset, r.arch, r.pretrain_hash, str(r.seeds),
              _cell(r.val_image_AUROC_mean, r.val_image_AUROC_ci_low, r.val_image_AUROC_ci_high),
              _cell(r.val_pixel_AUROC_mean, r.val_pixel_AUROC_ci_low, r.val_pixel_AUROC_ci_high),
              "yes" if r.picked else "", _num(r.image_AUROC_mean)] for r in picks.itertuples()])
    if comparisons is not None and not comparisons.empty:
        lines += _section(
            "Paired comparison (matched category x seed runs of the same detector, dataset and architecture): "
            "mean difference a - b, 95% paired-bootstrap CI, two-sided Wilcoxon signed-rank p (exact; with n "
            "pairs p cannot go below 2/2^n, 0.25 for 3). With under about 10 pairs the percentile bootstrap "
            "interval is too narrow: read it with the p and n, and add seeds (seed=0,1,2) for a real interval.",
            ["detector", "dataset", "arch", "a - b", "metric", "n pairs", "mean diff", "95% CI", "Wilcoxon p"],
            [[r.detector, r.dataset, r.arch, r.comparison, r.metric, str(r.pairs), f"{r.mean_diff:+.3f}",
              _interval(r.ci_low, r.ci_high), _num(r.wilcoxon_p)] for r in comparisons.itertuples()])
    return "\n".join(lines)


def _labels(table: pd.DataFrame) -> list[str]:
    """Bar labels: the backbone source, plus arch and recipe when one source has several arms."""
    several = table.groupby("backbone")[["arch", "pretrain_hash"]].nunique().max(axis=1) > 1
    return [f"{r.backbone} {r.arch} {r.pretrain_hash}" if several[r.backbone] else r.backbone
            for r in table.itertuples()]


def bar_plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per headline metric: detector / dataset on the x axis, one bar per arm, 95% CI bars
    (over seeds; over categories for arms with one seed)."""
    table = table.assign(label=_labels(table))
    order = {b: i for i, b in enumerate(BACKBONE_ORDER)}
    arms = sorted(set(zip(table["backbone"], table["label"])), key=lambda x: (order.get(x[0], 99), x[1]))
    groups = list(dict.fromkeys(table["detector"] + " / " + table["dataset"]))
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4.5 * len(HEADLINE), 3.8), squeeze=False)
    width = 0.8 / max(len(arms), 1)
    over_categories, over_seeds = False, False
    for ax, metric in zip(axes[0], HEADLINE):
        for i, (backbone, label) in enumerate(arms):
            sub = table[table["label"] == label]
            x = [groups.index(g) + (i - (len(arms) - 1) / 2) * width for g in sub["detector"] + " / " + sub["dataset"]]
            by_seed = sub[f"{metric}_ci_low"].notna()
            over_categories |= bool((~by_seed & sub[f"{metric}_mean"].notna()).any())
            over_seeds |= bool(by_seed.any())
            low = sub[f"{metric}_ci_low"].where(by_seed, sub[f"{metric}_cat_ci_low"])
            high = sub[f"{metric}_ci_high"].where(by_seed, sub[f"{metric}_cat_ci_high"])
            mean = sub[f"{metric}_mean"]
            yerr = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)
            ax.bar(x, mean.fillna(0.0), width, yerr=yerr, label=label, capsize=3, color=COLOURS.get(backbone))
        ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
        ax.set_ylim(0.0, 1.0)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(metric)
    # beside the panels: inside one, five arms' legend hides its bars
    fig.legend(*axes[0][0].get_legend_handles_labels(), title="backbone", loc="center left",
               bbox_to_anchor=(1.0, 0.5))
    bars = {(True, False): "over seeds", (False, True): "over categories (one seed)",
            (True, True): "over seeds (over categories where one seed)"}.get((over_seeds, over_categories), "")
    fig.suptitle(f"mean; error bars: 95% t-interval {bars}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def heat_map(rows: pd.DataFrame, path: Path, metric: str = "image_AUROC") -> Path:
    """Rows: arms; columns: categories; cells: mean over seeds, 'FAILED' or 'missing'."""
    done = _finished(rows)
    arms = sorted(set(map(tuple, rows[ARM].to_numpy())))
    categories = sorted(set(rows["category"]))
    grid = done.pivot_table(index=ARM, columns="category", values=metric, aggfunc="mean")
    grid = grid.reindex(index=pd.MultiIndex.from_tuples(arms, names=ARM), columns=categories)
    failed = set(map(tuple, rows.loc[rows["status"] != "FINISHED", [*ARM, "category"]].to_numpy()))
    values = grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(categories), 1.0 + 0.45 * len(arms)))
    im = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_yticks(range(len(arms)), [" / ".join(a[:4]) for a in arms])
    for (r, c), v in np.ndenumerate(values):
        text = f"{v:.2f}" if np.isfinite(v) else ("FAILED" if (*arms[r], categories[c]) in failed else "missing")
        ax.text(c, r, text, ha="center", va="center", fontsize=8,
                color="white" if not np.isfinite(v) or v < 0.8 else "black")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"{metric} per category (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """runs.csv, summary.csv, paired.csv, summary.md and two PNGs in ``out_dir``; returns their paths."""
    if rows.empty:
        raise ValueError("no detect runs match; check the experiment name and the filter "
                         "(e.g. --sweep <sweep run id>); runs still RUNNING are left out.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, comparisons = summarise(rows), paired(rows)
    paths = {"runs": out_dir / "runs.csv", "summary": out_dir / "summary.csv",
             "paired": out_dir / "paired.csv", "markdown": out_dir / "summary.md"}
    rows.to_csv(paths["runs"], index=False)
    table.to_csv(paths["summary"], index=False)
    comparisons.to_csv(paths["paired"], index=False)
    picks = selection(table)
    if not picks.empty:
        paths["selection"] = out_dir / "selection.csv"
        picks.to_csv(paths["selection"], index=False)
    paths["markdown"].write_text(markdown(table, comparisons) + "\n")
    paths["bars"] = bar_plot(table, out_dir / "comparison.png")
    paths["heat_map"] = heat_map(rows, out_dir / "per_category.png")
    return paths


def closing_lines(paths: dict[str, Path], tracking_uri: str) -> str:
    """Where the report is and how to browse the runs: the last thing a sweep prints."""
    return (f"report:  {paths['markdown'].parent.resolve()} (summary.md, summary.csv, paired.csv)\n"
            f"picture: {paths['bars'].resolve()}\n"
            f"runs:    mlflow ui --backend-store-uri {tracking_uri}   (then http://127.0.0.1:5000)")
