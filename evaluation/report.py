"""The comparison report: detect runs (one row each, read back from MLflow by pipeline.report) ->
tables, grouped bars, heat map, budget curve.

An *arm* is everything that defines what is compared: backbone source, architecture, pre-training
recipe (tag ``pretrain_hash``: the fractal + pretrain + backbone settings for fractal weights, the
weights' identity and input normalisation for the others), detector, dataset and the code that ran
it (tag ``code_version``: package version + git commit, see pipeline/provenance.py). Runs of
different arms are never pooled. Within an arm the runs differ only by category and seed; a repeated
arm x category x seed run is de-duplicated by ``deduplicate`` (the newest FINISHED one is kept, the
others are named), never counted as another seed.

The unit of every interval and test is the seed. A seed is one pre-training (fractal) or one init
(random), shared by every category tested on it; with a fixed backbone (ImageNet) the seed still
drives the detector's own draws (coreset, channel subset, validation anomalies). Categories are
therefore description, never replication: per seed the categories are averaged first.

Per arm (one row of ``summary``): for each seed the mean over categories, then over seeds their
mean, standard deviation and a 95% t-interval (no interval with one seed); and, as description, the
spread over categories (each category's mean over seeds; std and 95% t-interval over categories,
the ``_cat_`` columns). The expected categories of an arm are all categories any arm of the same
detector and dataset ran; a seed whose category mean would miss one of them (absent, or its run
FAILED) is left out of the statistics and the arm is marked in ``status``, never averaged over
fewer categories.

``paired``: for each detector, dataset, architecture and code version, every two arms of different
backbone sources, matched on seed (the seed's category mean, complete seeds only): the mean
difference a - b, its paired Student-t 95% interval over seeds, the exact two-sided Wilcoxon
signed-rank p over seeds, the Holm-adjusted p (over the comparisons of one detector x dataset x arch
x code version x metric: the family that answers "which source is best for this metric here") and
the number of ``units`` (seeds). ``reading`` says "a > b" / "a < b" only where the units carry it:
the interval excludes 0 and the Holm p is at most 0.05 (which needs n units with 2/2^n <= 0.05: 6
seeds for one comparison, 7 for the study's three, 3 x 2/2^7 = 0.047); otherwise "not resolved with
N seeds". The per-category differences (``diff:<c>``)
are description.

``selection``: where one backbone source has several recipes (a sweep over pre-training settings),
its arms ranked by the validation image AUROC, ties broken by the validation pixel AUROC (never the
test set), and the best one marked: the recipe to carry forward is picked there, not on test AUROC.
Its ``seeds`` are its units. ``validation_split``: the validation split's size per category (metrics
``val_normals`` / ``val_anomalies`` where the detect runs logged them) and the resolution of its
AUROC, 1 / (normals x anomalies): differences between recipes below it are ties.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from evaluation.metrics import HEADLINE, VALIDATION  # noqa: E402

# order matters: backbone, detector, dataset first (the table reads as "fractal | patchcore | builtin")
ARM = ["backbone", "detector", "dataset", "arch", "pretrain_hash", "code_version"]
UNKNOWN = "-"  # runs logged before a tag existed
BACKBONE_ORDER = ["imagenet", "fractal", "fractal-multilabel", "fractal-simclr", "dead_leaves", "spectral_noise",
                  "image_folder", "random"]
COLOURS = {"imagenet": "#4c72b0", "fractal": "#dd8452", "fractal-multilabel": "#c44e52",
           "fractal-simclr": "#55a868", "dead_leaves": "#937860", "spectral_noise": "#da8bc3",
           "image_folder": "#ccb974", "random": "#8c8c8c"}  # same in every report
PAIRS = [("fractal", "random"), ("fractal", "imagenet"), ("imagenet", "random")]  # a - b
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# a fractal arm's recipe by name and its budget in optimiser steps (tags; "-" for other sources and
# older runs), and the pretrain run behind its weights
BUDGET = ("recipe", "pretrain_steps", "pretrain_run_id")
# the validation split's size, logged by the detect stage (image counts); absent in older runs
SPLIT_SIZE = ("val_normals", "val_anomalies")
# metrics arrive as float32 (torchmetrics): differences that tie exactly (AUROCs in ninths) differ
# around the 8th digit, so they are compared at this many decimals
DECIMALS = 6


def deduplicate(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One run per arm x category x seed: the newest FINISHED one, else the newest one; returns the
    kept rows and the run ids left out (oldest first)."""
    key = [*ARM, "category", "seed"]
    order = rows.assign(_finished=rows["status"] == "FINISHED").sort_values(["_finished", "start_time"])
    repeated = order.duplicated(key, keep="last")  # the last of each key: finished before not, newest
    dropped = order.loc[repeated].sort_values("start_time")["run_id"].tolist()
    return rows[~rows["run_id"].isin(dropped)], dropped


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


def _seed_order(seeds) -> list[str]:
    return sorted(set(seeds), key=lambda s: (len(s), s))  # numeric order of the seed tags


def _complete_seeds(runs: pd.DataFrame, wanted: list[str]) -> tuple[list[str], list[str]]:
    """The seeds of one arm whose every expected category FINISHED, and what is wrong with the others."""
    done = _finished(runs)
    problems, complete = [], []
    for seed in _seed_order(runs["seed"]):
        have = set(done.loc[done["seed"] == seed, "category"])
        failed = sorted(set(runs.loc[(runs["seed"] == seed) & (runs["status"] != "FINISHED"), "category"]) - have)
        missing = sorted(set(wanted) - have - set(failed))
        problems += [f"FAILED {c} (seed {seed})" for c in failed] + [f"missing {c} (seed {seed})" for c in missing]
        if not failed and not missing:
            complete.append(seed)
    return complete, problems


def _per_seed(runs: pd.DataFrame, complete: list[str], metric: str) -> pd.Series:
    """The category mean of ``metric`` per complete seed (the unit). skipna=False: a category
    without the metric makes the seed's mean missing, not smaller."""
    done = _finished(runs)
    done = done[done["seed"].isin(complete)]
    return done.groupby("seed")[metric].apply(lambda v: v.mean(skipna=False)).reindex(complete)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: seeds, categories, status and, per metric, the statistics above; then the
    per-category image AUROC (mean over seeds; NaN where absent or failed)."""
    expected = _expected_categories(rows)
    records = []
    for arm, runs in rows.groupby(ARM, sort=True):
        wanted = expected[(arm[1], arm[2])]
        complete, problems = _complete_seeds(runs, wanted)
        record = dict(zip(ARM, arm))
        record.update(seeds=len(complete), categories=len(wanted),
                      status="ok" if not problems else "; ".join(problems))
        record.update(_budget(runs))
        done = _finished(runs)
        done = done[done["seed"].isin(complete)]
        for metric in (*HEADLINE, *(m for m in VALIDATION if m in runs)):
            per_seed = _per_seed(runs, complete, metric)
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


def _budget(runs: pd.DataFrame) -> dict:
    """An arm's recipe name, budget in steps and pre-training wall minutes (median over its
    pre-trainings, one per seed), where its runs were tagged with them."""
    def one(column):
        values = set(runs[column]) - {UNKNOWN} if column in runs else set()
        return values.pop() if len(values) == 1 else UNKNOWN
    seconds = (runs.drop_duplicates("pretrain_run_id")["pretrain_seconds"].dropna()
               if "pretrain_seconds" in runs else pd.Series(dtype=float))
    return {"recipe": one("recipe"), "pretrain_steps": one("pretrain_steps"),
            "pretrain_minutes": float(seconds.median() / 60) if len(seconds) else np.nan}


def budget_curve(table: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> pd.DataFrame:
    """The budget curve's table: per detector, dataset, architecture and code version where some
    recipe ran at two or more budgets, one row per fractal recipe x budget (steps, measured
    pre-training minutes, seeds, validation and test AUROCs with their 95% intervals over seeds, and
    the paired fractal - random image AUROC from ``comparisons``), then the reference arms (random
    init, ImageNet; no budget). ``picked``: at the largest budget every recipe ran, the recipe with
    the highest validation image AUROC averaged over the detectors (ties: validation pixel AUROC);
    test figures choose nothing."""
    if "recipe" not in table or "val_image_AUROC_mean" not in table:
        return pd.DataFrame()
    fractal = table[(table["recipe"] != UNKNOWN) & (table["pretrain_steps"] != UNKNOWN)]
    fractal = fractal.assign(steps=pd.to_numeric(fractal["pretrain_steps"], errors="coerce"))
    if fractal.empty or fractal.groupby("recipe")["steps"].nunique().max() < 2:
        return pd.DataFrame()
    key = ["detector", "dataset", "arch", "code_version"]
    references = table[table["backbone"].isin(["random", "imagenet"]) & table.set_index(key).index.isin(
        fractal.set_index(key).index)]
    out = pd.concat([fractal, references.assign(steps=np.nan)], ignore_index=True)
    out["recipe"] = out["recipe"].where(out["recipe"] != UNKNOWN, out["backbone"])
    vs_random = (pd.DataFrame(columns=["comparison", "metric", *key, "pretrain_hash_a", "mean_diff", "ci_low", "ci_high"])
                 if comparisons is None or comparisons.empty else comparisons)
    vs_random = (vs_random[(vs_random["comparison"] == "fractal - random") & (vs_random["metric"] == "image_AUROC")]
                 .drop_duplicates([*key, "pretrain_hash_a"])  # one random-init arm per detector x dataset x arch
                 .rename(columns={"pretrain_hash_a": "pretrain_hash", "mean_diff": "vs_random_mean",
                                  "ci_low": "vs_random_ci_low", "ci_high": "vs_random_ci_high"}))
    out = out.merge(vs_random[[*key, "pretrain_hash", "vs_random_mean", "vs_random_ci_low", "vs_random_ci_high"]],
                    on=[*key, "pretrain_hash"], how="left")
    # the pick: at the largest budget every recipe ran, validation image AUROC over detectors
    common = fractal.groupby("recipe")["steps"].apply(set)
    shared = set.intersection(*common) if len(common) else set()
    out["picked"] = False
    if shared:
        top = max(shared)
        at_top = fractal[fractal["steps"] == top].groupby("recipe")[["val_image_AUROC_mean", "val_pixel_AUROC_mean"]].mean()
        at_top = at_top.round(DECIMALS).sort_values(["val_image_AUROC_mean", "val_pixel_AUROC_mean"], ascending=False)
        if at_top["val_image_AUROC_mean"].notna().any():
            out.loc[(out["recipe"] == at_top.index[0]) & (out["steps"] == top), "picked"] = True
    columns = [*key, "backbone", "recipe", "steps", "pretrain_minutes", "seeds", "picked",
               *(f"{m}_{s}" for m in (*VALIDATION, *HEADLINE) for s in ("mean", "ci_low", "ci_high") if f"{m}_mean" in out),
               "vs_random_mean", "vs_random_ci_low", "vs_random_ci_high"]
    return out.sort_values([*key, "backbone", "recipe", "steps"]).reindex(columns=columns).reset_index(drop=True)


def budget_plot(curve: pd.DataFrame, path: Path) -> Path:
    """budget.png: one row of panels per detector (validation image AUROC, test image AUROC, test
    pixel AUROC), pre-training wall minutes on a log x axis, one line per recipe with 95% intervals
    over seeds, random init and ImageNet as horizontal bands (mean and 95% interval)."""
    detectors = list(dict.fromkeys(curve["detector"]))
    metrics = [m for m in ("val_image_AUROC", "image_AUROC", "pixel_AUROC") if f"{m}_mean" in curve]
    fig, axes = plt.subplots(len(detectors), len(metrics), figsize=(4.2 * len(metrics), 3.3 * len(detectors)),
                             squeeze=False, sharex=True)
    recipes = sorted(set(curve.loc[curve["backbone"] == "fractal", "recipe"]))
    palette = dict(zip(recipes, ["#dd8452", "#c44e52", "#55a868", "#8172b3", "#937860", "#da8bc3"] * 3))
    for row, detector in zip(axes, detectors):
        sub = curve[curve["detector"] == detector]
        for ax, metric in zip(row, metrics):
            for name in ("random", "imagenet"):
                ref = sub[sub["backbone"] == name]
                for r in ref.itertuples():
                    mean, low, high = (getattr(r, f"{metric}_{s}") for s in ("mean", "ci_low", "ci_high"))
                    if np.isfinite(mean):
                        ax.axhline(mean, color=COLOURS[name], ls="--", lw=1, label=name)
                        if np.isfinite(low):
                            ax.axhspan(low, high, color=COLOURS[name], alpha=0.12, lw=0)
            for recipe in recipes:
                line = sub[(sub["backbone"] == "fractal") & (sub["recipe"] == recipe)].sort_values("steps")
                x = line["pretrain_minutes"].where(line["pretrain_minutes"].notna(), line["steps"])
                mean = line[f"{metric}_mean"]
                yerr = np.nan_to_num(np.vstack([mean - line[f"{metric}_ci_low"], line[f"{metric}_ci_high"] - mean]))
                ax.errorbar(x, mean, yerr=yerr, marker="o", ms=4, capsize=3, color=palette[recipe], label=recipe)
                picked = line[line["picked"]]
                ax.scatter(picked["pretrain_minutes"], picked[f"{metric}_mean"], s=140, facecolors="none",
                           edgecolors="black", zorder=5, label="picked (on validation)" if len(picked) else None)
                if ax is row[0]:  # each point's budget in steps, once per row
                    for xi, yi, steps in zip(x, mean, line["steps"]):
                        ax.annotate(f"{steps:.0f}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                                    fontsize=7, color=palette[recipe])
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.tick_params(axis="x", which="minor", labelsize=7)
            ax.set_title(f"{detector}: {metric}", fontsize=10)
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        row[0].set_ylabel("AUROC")
    for ax in axes[-1]:
        ax.set_xlabel("pre-training wall minutes (log)")
    handles = dict(zip(*reversed(axes[0][0].get_legend_handles_labels())))
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5))
    steps = sorted(set(curve["steps"].dropna().astype(int)))
    fig.suptitle(f"fractal pre-training budget ({'/'.join(map(str, steps))} steps, labelled in the first panel); "
                 "mean over seeds, bars and bands: 95% t-interval over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def selection(table: pd.DataFrame, metrics: tuple[str, ...] = VALIDATION) -> pd.DataFrame:
    """Per backbone source, detector, dataset, architecture and code version with more than one recipe: the arms
    ranked by the validation ``metrics`` (mean over seeds of the category mean; the second breaks
    ties of the first, which a small validation split quantises coarsely), the first one
    ``picked``; ``seeds`` is the number of units each value rests on. Test metrics ride along for the
    record; they choose nothing."""
    if f"{metrics[0]}_mean" not in table:
        return pd.DataFrame()
    key = ["backbone", "detector", "dataset", "arch", "code_version"]
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
    """Backbone sources compared per detector, dataset, architecture and code version, paired by
    seed (the unit: each arm's category mean of a complete seed): mean of a - b, its paired t 95%
    interval over seeds, exact Wilcoxon p, Holm-adjusted p, units and the reading; the per-category
    mean differences over the same seeds as description (``diff:<category>``)."""
    expected = _expected_categories(rows)
    group_key = ["detector", "dataset", "arch", "code_version"]
    out = []
    for (detector, dataset, arch, code), group in rows.groupby(group_key, sort=True):
        wanted = expected[(detector, dataset)]
        arms = {key: g for key, g in group.groupby(["backbone", "pretrain_hash"])}
        complete = {key: _complete_seeds(g, wanted)[0] for key, g in arms.items()}
        for (src_a, src_b) in _pairs(sorted({k[0] for k in arms})):
            for (a, ha), (b, hb) in ((ka, kb) for ka in arms if ka[0] == src_a for kb in arms if kb[0] == src_b):
                seeds = [s for s in complete[(a, ha)] if s in complete[(b, hb)]]
                for metric in metrics:
                    x = _per_seed(arms[(a, ha)], seeds, metric)
                    y = _per_seed(arms[(b, hb)], seeds, metric)
                    both = x.notna() & y.notna()
                    if not both.any():
                        continue
                    used = list(x.index[both])
                    mean, low, high, p = seed_test(x[both], y[both])
                    by_category = {}
                    for label, runs in (("a", arms[(a, ha)]), ("b", arms[(b, hb)])):
                        done = _finished(runs)
                        by_category[label] = done[done["seed"].isin(used)].groupby("category")[metric].mean()
                    out.append({"detector": detector, "dataset": dataset, "arch": arch, "code_version": code,
                                "comparison": f"{a} - {b}", "a": a, "b": b, "pretrain_hash_a": ha,
                                "pretrain_hash_b": hb, "metric": metric, "units": len(used),
                                "seeds": " ".join(used), "mean_diff": mean, "ci_low": low, "ci_high": high,
                                "wilcoxon_p": p,
                                **{f"diff:{c}": by_category["a"].get(c, np.nan) - by_category["b"].get(c, np.nan)
                                   for c in wanted}})
    columns = ["detector", "dataset", "arch", "code_version", "comparison", "pretrain_hash_a", "pretrain_hash_b",
               "metric", "units", "seeds", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "holm_p", "reading"]
    table = pd.DataFrame(out)
    if table.empty:
        return pd.DataFrame(columns=columns)
    # Holm over one family: the comparisons of one detector x dataset x arch x code version x metric
    table["holm_p"] = table.groupby([*group_key, "metric"])["wilcoxon_p"].transform(holm)
    table["reading"] = [reading(r.a, r.b, r.mean_diff, r.ci_low, r.ci_high, r.holm_p, r.units)
                        for r in table.itertuples()]
    descriptive = sorted(c for c in table.columns if c.startswith("diff:"))
    return table[columns + descriptive]


def _pairs(sources: list[str]) -> list[tuple[str, str]]:
    """The study's three comparisons first, then any other two sources present."""
    known = [(a, b) for a, b in PAIRS if a in sources and b in sources]
    return known + [p for p in combinations(sources, 2) if p not in known and p[::-1] not in known]


def seed_test(a, b) -> tuple[float, float, float, float]:
    """Per-seed values of two arms, paired: the mean of a - b, its paired Student-t 95% interval
    (NaN with one unit) and the exact two-sided Wilcoxon signed-rank p (NaN with one unit).

    The differences are rounded to ``DECIMALS`` for the ranks, so float32 noise neither breaks a tie nor
    turns a zero difference into a sign. Zeros and ties as scipy documents them:
    ``zero_method="pratt"`` keeps zero differences in the ranking (a seed where the arms tie is
    evidence of no difference, not missing data; scipy calls it the more conservative choice), and
    the p-value comes from ``PermutationMethod`` with every one of the 2^n sign flips enumerated
    (``n_resamples=inf``), which stays exact with ties and zeros where ``method="exact"`` does not.
    The smallest two-sided p n units can give is 2/2^n (0.25 for 3 seeds, 0.0625 for 5, 0.031 for 6)."""
    raw = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, _, low, high = t_interval(raw)
    d = np.round(raw, DECIMALS)  # for the ranks only
    if d.size < 2:
        return mean, np.nan, np.nan, np.nan
    if not np.any(d):
        return mean, low, high, 1.0  # no difference at all: nothing to rank
    method = stats.PermutationMethod(n_resamples=np.inf) if d.size <= 20 else "auto"  # 2^20 flips at most
    p = float(stats.wilcoxon(d, zero_method="pratt", method=method).pvalue)
    return mean, low, high, min(p, 1.0)


def holm(p) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not in the family): the
    k-th smallest p times (m - k + 1), made non-decreasing, capped at 1."""
    p = np.asarray(p, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


def resolvable(units: int) -> bool:
    """Can n units give an exact two-sided p of at most ALPHA at all (2/2^n <= 0.05: 6 seeds)?"""
    return units >= 1 and 2.0 / 2 ** units <= ALPHA


def seeds_to_resolve(comparisons: int) -> int:
    """The fewest seeds with which the smallest of ``comparisons`` Holm-adjusted exact p values can
    reach ALPHA (comparisons x 2/2^n <= ALPHA): 7 for the study's three comparisons."""
    n = 1
    while comparisons * 2.0 / 2**n > ALPHA:
        n += 1
    return n


def reading(a: str, b: str, mean: float, low: float, high: float, p_holm: float, units: int) -> str:
    """``a > b`` / ``a < b`` where the units carry it (interval clear of 0 and Holm p <= ALPHA),
    otherwise ``not resolved with N seeds``."""
    clear = np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0)
    if resolvable(units) and clear and np.isfinite(p_holm) and p_holm <= ALPHA:
        return f"{a} > {b}" if mean > 0 else f"{a} < {b}"
    return f"not resolved with {units} seed{'s' if units != 1 else ''}"


def validation_split(rows: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and category: the validation split's normals and anomalies (image counts the
    detect runs logged, ``val_normals``/``val_anomalies``; min-max where runs differ) and the
    resolution of its AUROC, 1 / (normals x anomalies) for the smallest split: one swapped pair of
    images moves the AUROC by that much. Empty when no run logged the counts."""
    if not all(m in rows for m in SPLIT_SIZE) or rows[list(SPLIT_SIZE)].isna().all().all():
        return pd.DataFrame()
    done = _finished(rows).dropna(subset=list(SPLIT_SIZE))
    records = []
    for (dataset, category), g in done.groupby(["dataset", "category"], sort=True):
        normals, anomalies = g["val_normals"], g["val_anomalies"]
        records.append({"dataset": dataset, "category": category, "runs": len(g),
                        "val_normals_min": normals.min(), "val_normals_max": normals.max(),
                        "val_anomalies_min": anomalies.min(), "val_anomalies_max": anomalies.max(),
                        "auroc_resolution": 1.0 / (g["val_normals"] * g["val_anomalies"]).min()})
    return pd.DataFrame(records)


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


def markdown(table: pd.DataFrame, comparisons: pd.DataFrame | None = None,
             split: pd.DataFrame | None = None, curve: pd.DataFrame | None = None) -> str:
    """The summary (mean [95% CI over seeds] per metric, per-category image AUROC, status), the
    recipe selection on validation (when a source has several recipes) with the validation split's
    size (``split``, from ``validation_split``), the budget curve (``curve``, from ``budget_curve``) and
    the paired comparisons, as Markdown with legends."""
    categories = [c for c in table.columns if c.startswith("image_AUROC:")]
    header = ["backbone", "detector", "dataset", "arch", "pretrain", "code", "seeds", "categories",
              *(f"{m} mean [95% CI]" for m in HEADLINE), *categories, "status"]
    body = []
    for _, r in table.iterrows():
        metric_cells = [_cell(r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in HEADLINE]
        body.append([str(r[k]) for k in ARM] + [str(r["seeds"]), str(r["categories"]), *metric_cells,
                    *(_category_cell(r[c], c.split(":", 1)[1], r["status"]) for c in categories), str(r["status"])])
    lines = _table(header, body)
    lines += ["", "Mean over categories, then mean over seeds; [95% CI]: Student-t interval over seeds of "
              "the category mean (the seed is the unit: one pre-training or init shared by every category; "
              "none with one seed). Per-category columns: image AUROC, mean over seeds (*: some seed of it "
              "failed or is missing), description, not units. '-': no value (metric not logged). code: the "
              "code version (package + git commit). status lists failed and missing category/seed runs; "
              "seeds with one are left out of the statistics, never averaged over fewer categories. "
              "summary.csv also has the std and 95% CI over categories (`_cat_` columns, description)."]
    picks = selection(table)
    if not picks.empty:
        lines += _section(
            "Recipe selection: where one backbone source ran several pre-training recipes, its arms ranked "
            "by val_image_AUROC, ties broken by val_pixel_AUROC (the validation split: normals + synthetic "
            "anomalies; the test set chooses nothing), mean over seeds [95% CI over seeds]; the first of each "
            "group is the pick. units: the seeds each value rests on (with 1 there is no interval, and a pick "
            "on one seed is a guess). Test image AUROC for the record.",
            ["backbone", "detector", "dataset", "arch", "pretrain", "units (seeds)", "val_image_AUROC",
             "val_pixel_AUROC", "picked", "image_AUROC (test)"],
            [[r.backbone, r.detector, r.dataset, r.arch, r.pretrain_hash, str(r.seeds),
              _cell(r.val_image_AUROC_mean, r.val_image_AUROC_ci_low, r.val_image_AUROC_ci_high),
              _cell(r.val_pixel_AUROC_mean, r.val_pixel_AUROC_ci_low, r.val_pixel_AUROC_ci_high),
              "yes" if r.picked else "", _num(r.image_AUROC_mean)] for r in picks.itertuples()])
    if curve is not None and not curve.empty:
        metrics = [m for m in ("val_image_AUROC", "image_AUROC", "pixel_AUROC") if f"{m}_mean" in curve]
        lines += _section(
            "Budget curve (budget.png): each fractal recipe at each pre-training budget (optimiser steps; wall "
            "minutes of the pre-training, median over its seeds) beside random init and ImageNet, mean over seeds "
            "[95% CI over seeds] (budget.csv has every metric); fractal - random: paired over seeds, image AUROC. picked: at the largest budget "
            "every recipe ran, the highest validation image AUROC averaged over the detectors; test columns "
            "choose nothing.",
            ["detector", "recipe", "steps", "minutes", "seeds", *metrics, "fractal - random (image)", "picked"],
            [[r.detector, r.recipe, "-" if not np.isfinite(r.steps) else f"{r.steps:.0f}", _num(r.pretrain_minutes, 1),
              str(r.seeds), *(_cell(getattr(r, f"{m}_mean"), getattr(r, f"{m}_ci_low"), getattr(r, f"{m}_ci_high"))
                              for m in metrics),
              _diff_cell(r.vs_random_mean, r.vs_random_ci_low, r.vs_random_ci_high), "yes" if r.picked else ""]
             for r in curve.itertuples()])
    if split is not None and not split.empty:
        lines += _section(
            "Validation split per category (image counts the detect runs logged; min-max over runs where they "
            "differ): its image AUROC moves in steps of 1 / (normals x anomalies), so recipes closer than that "
            "on validation are tied.",
            ["dataset", "category", "runs", "val normals", "val anomalies", "AUROC resolution"],
            [[r.dataset, r.category, str(r.runs), _range(r.val_normals_min, r.val_normals_max),
              _range(r.val_anomalies_min, r.val_anomalies_max), _num(r.auroc_resolution, 4)]
             for r in split.itertuples()])
    if comparisons is not None and not comparisons.empty:
        versions = comparisons["code_version"].nunique() > 1
        family = int(comparisons.groupby(["detector", "dataset", "arch", "code_version", "metric"]).size().max())
        lines += _section(
            "Paired comparison, one unit per seed (a seed is one pre-training or init, shared by every category; "
            "an ImageNet arm is paired by seed too, its seed drives the detector's draws): each arm's category "
            "mean per complete seed, matched on seed within one detector, dataset, architecture and code "
            "version. mean diff a - b; 95% CI: paired Student-t interval over seeds; Wilcoxon p: exact two-sided "
            "signed-rank p over seeds (all 2^n sign flips; zero differences ranked, Pratt); it cannot go below "
            "2/2^n (0.25 with 3 seeds, 0.0625 with 5, 0.031 with 6). Holm p: Holm-adjusted over the comparisons "
            f"of one detector x dataset x arch x metric (here up to {family}, so {seeds_to_resolve(family)} seeds "
            "before anything can resolve). reading: a > b or a < b only where the interval excludes 0 "
            "and the Holm p is at most 0.05, else 'not resolved with N seeds'. Per-category differences "
            "(paired.csv `diff:` columns) are description, never units.",
            ["detector", "dataset", "arch", *(["code"] if versions else []), "a - b", "metric", "units (seeds)",
             "mean diff", "95% CI", "Wilcoxon p", "Holm p", "reading"],
            [[r.detector, r.dataset, r.arch, *([r.code_version] if versions else []), r.comparison, r.metric,
              str(r.units), f"{r.mean_diff:+.3f}", _interval(r.ci_low, r.ci_high), _num(r.wilcoxon_p),
              _num(r.holm_p), r.reading] for r in comparisons.itertuples()])
    return "\n".join(lines)


def _diff_cell(mean, low, high) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if np.isfinite(low) else "")


def _range(low, high) -> str:
    return "-" if not np.isfinite(low) else f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"


def _labels(table: pd.DataFrame) -> list[str]:
    """Bar labels: the backbone source, plus arch and recipe when one source has several arms."""
    several = table.groupby("backbone")[["arch", "pretrain_hash", "code_version"]].nunique().max(axis=1) > 1
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
    table, comparisons, split = summarise(rows), paired(rows), validation_split(rows)
    paths = {"runs": out_dir / "runs.csv", "summary": out_dir / "summary.csv",
             "paired": out_dir / "paired.csv", "markdown": out_dir / "summary.md"}
    rows.to_csv(paths["runs"], index=False)
    table.to_csv(paths["summary"], index=False)
    comparisons.to_csv(paths["paired"], index=False)
    picks = selection(table)
    if not picks.empty:
        paths["selection"] = out_dir / "selection.csv"
        picks.to_csv(paths["selection"], index=False)
    if not split.empty:
        paths["validation_split"] = out_dir / "validation_split.csv"
        split.to_csv(paths["validation_split"], index=False)
    curve = budget_curve(table, comparisons)
    paths["markdown"].write_text(markdown(table, comparisons, split, curve) + "\n")
    if not curve.empty:
        paths["budget"] = out_dir / "budget.csv"
        curve.to_csv(paths["budget"], index=False)
        paths["budget_plot"] = budget_plot(curve, out_dir / "budget.png")
    paths["bars"] = bar_plot(table, out_dir / "comparison.png")
    paths["heat_map"] = heat_map(rows, out_dir / "per_category.png")
    return paths


def closing_lines(paths: dict[str, Path], tracking_uri: str) -> str:
    """Where the report is and how to browse the runs: the last thing a sweep prints."""
    return (f"report:  {paths['markdown'].parent.resolve()} (summary.md, summary.csv, paired.csv)\n"
            f"picture: {paths['bars'].resolve()}\n"
            f"runs:    mlflow ui --backend-store-uri {tracking_uri}   (then http://127.0.0.1:5000)")
