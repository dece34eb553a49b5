"""The comparison report's statistics, checked against independent computations (scipy, numpy).

Rows are built with known values (the shape ``pipeline.report.collect`` returns) or logged as real runs
into a temporary MLflow SQLite store; the slow test runs the main experiment through run.py -m.
The seed is the unit of every interval and test; categories are averaged within a seed first.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import runs_of
from scipy import stats

from evaluation import report
from evaluation.metrics import HEADLINE, VALIDATION
from pipeline.report import collect
from run import ROOT

CATEGORIES = ["tiles", "washer", "weave"]


def arm_rows(backbone: str, values: dict[tuple[str, int], float], arch: str = "efficientnet_lite0",
             recipe: str = "h0", detector: str = "patchcore", status: dict | None = None,
             pixel: bool = True, val: dict[tuple[str, int], float] | None = None,
             val_pixel: float | None = None, code: str = "c0") -> pd.DataFrame:
    """Rows of one arm: ``values[(category, seed)]`` is the image AUROC; pixel metrics derived from
    it; ``val`` the validation image AUROC (absent: not logged)."""
    rows = []
    for (category, seed), v in values.items():
        row = {"run_id": f"{backbone}-{arch}-{recipe}-{category}-{seed}", "backbone": backbone,
               "detector": detector, "dataset": "builtin", "arch": arch, "pretrain_hash": recipe,
               "code_version": code, "start_time": pd.Timestamp(0),
               "category": category, "seed": str(seed), "image_AUROC": v,
               "status": (status or {}).get((category, seed), "FINISHED")}
        if pixel:
            row.update(pixel_AUROC=v - 0.1, pixel_AUPRO=v - 0.2)
        if val is not None:
            row.update(val_image_AUROC=val[(category, seed)], val_pixel_AUROC=val_pixel)
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["run_id", "status", "start_time", *report.ARM, "category", "seed",
                                               *HEADLINE, *VALIDATION])


def grid(rng: np.random.Generator, seeds=(0, 1, 2), categories=CATEGORIES, offset=0.0):
    return {(c, s): float(np.clip(0.7 + offset + 0.1 * rng.standard_normal(), 0, 1))
            for c, s in itertools.product(categories, seeds)}


def test_cell_mean_std_and_interval_match_scipy_t():
    values = grid(np.random.default_rng(0))
    (row,) = report.summarise(arm_rows("fractal", values)).to_dict("records")
    per_seed = [np.mean([values[(c, s)] for c in CATEGORIES]) for s in (0, 1, 2)]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert row["seeds"] == 3 and row["categories"] == 3 and row["status"] == "ok"
    assert row["image_AUROC_mean"] == pytest.approx(np.mean(per_seed))
    assert row["image_AUROC_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert (row["image_AUROC_ci_low"], row["image_AUROC_ci_high"]) == pytest.approx((low, high))
    per_cat = [np.mean([values[(c, s)] for s in (0, 1, 2)]) for c in CATEGORIES]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(per_cat), scale=stats.sem(per_cat))
    assert (row["image_AUROC_cat_ci_low"], row["image_AUROC_cat_ci_high"]) == pytest.approx((low, high))
    assert row["pixel_AUPRO_mean"] == pytest.approx(np.mean(per_seed) - 0.2)
    assert row["image_AUROC:washer"] == pytest.approx(per_cat[1])


def test_one_seed_has_a_mean_and_no_interval_and_says_so():
    values = grid(np.random.default_rng(1), seeds=(0,))
    table = report.summarise(arm_rows("random", values))
    row = table.iloc[0]
    assert row["image_AUROC_mean"] == pytest.approx(np.mean(list(values.values())))
    assert np.isnan(row["image_AUROC_ci_low"]) and np.isnan(row["image_AUROC_std"])
    assert np.isfinite(row["image_AUROC_cat_ci_low"])  # the spread over categories still exists
    text = report.markdown(table)
    assert f"| {row['image_AUROC_mean']:.3f} |" in text and "none with one seed" in text


def seed_means(values: dict[tuple[str, int], float], seeds) -> np.ndarray:
    return np.array([np.mean([v for (c, s), v in values.items() if s == seed]) for seed in seeds])


def exact_signed_rank_p(d: np.ndarray) -> float:
    """Two-sided p of the signed-rank statistic by enumerating every sign flip (numpy only; zero
    differences ranked and dropped, Pratt; ties get average ranks)."""
    ranks = stats.rankdata(np.abs(d))
    nonzero = d != 0
    observed = ranks[nonzero & (d > 0)].sum()
    flips = np.array(list(itertools.product([0, 1], repeat=d.size)), dtype=bool)
    null = (flips & nonzero) @ ranks
    centre = ranks[nonzero].sum() / 2
    return min(1.0, float(np.mean(np.abs(null - centre) >= abs(observed - centre) - 1e-9)))


def test_paired_comparison_has_one_unit_per_seed_and_matches_scipy_over_seeds():
    """3 seeds x 3 categories are 3 units: the seed's category mean, paired by seed; t interval and
    exact Wilcoxon over the 3 differences; the floor 0.25 makes it 'not resolved with 3 seeds'."""
    rng = np.random.default_rng(2)
    fractal, random = grid(rng, offset=0.08), grid(rng)
    rows = pd.concat([arm_rows("fractal", fractal), arm_rows("random", random, recipe="h1")])
    comparisons = report.paired(rows)
    (row,) = comparisons[(comparisons["metric"] == "image_AUROC")].to_dict("records")
    d = seed_means(fractal, (0, 1, 2)) - seed_means(random, (0, 1, 2))
    assert row["comparison"] == "fractal - random" and row["units"] == 3 and "pairs" not in comparisons
    assert row["mean_diff"] == pytest.approx(np.mean(d))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d)))
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue) == pytest.approx(0.25)
    assert row["holm_p"] == row["wilcoxon_p"]  # one comparison per family
    assert row["reading"] == "not resolved with 3 seeds"
    # per-category differences are description beside the units
    assert row["diff:washer"] == pytest.approx(np.mean([fractal[("washer", s)] - random[("washer", s)] for s in (0, 1, 2)]))
    text = report.markdown(report.summarise(rows), comparisons)
    assert f"| fractal - random | image_AUROC | 3 | {np.mean(d):+.3f} |" in text
    assert "| 0.250 | 0.250 | not resolved with 3 seeds |" in text


def test_seven_seeds_with_a_clear_difference_resolve_and_holm_adjusts_the_family():
    """Seven seeds, fractal above random on every one: exact p 2/2^7; three sources make three
    comparisons per metric, Holm-adjusted as an independent step-down loop computes (3 x 2/2^7 =
    0.047: seven seeds are the fewest that can resolve one of three comparisons)."""
    seeds = range(7)
    rng = np.random.default_rng(11)
    fractal, random = grid(rng, seeds=seeds, offset=0.15), grid(rng, seeds=seeds)
    imagenet = grid(rng, seeds=seeds, offset=0.05)
    # a clear margin on every seed, whatever the draws
    fractal = {k: v + 0.3 for k, v in fractal.items()}
    rows = pd.concat([arm_rows("fractal", fractal), arm_rows("random", random, recipe="h1"),
                      arm_rows("imagenet", imagenet, recipe="h2")])
    image = report.paired(rows).query("metric == 'image_AUROC'").set_index("comparison")
    assert list(image.index) == ["fractal - random", "fractal - imagenet", "imagenet - random"]
    assert (image["units"] == 7).all()
    assert image.loc["fractal - random", "wilcoxon_p"] == pytest.approx(2 / 2**7)
    raw = image["wilcoxon_p"].to_numpy()
    expected, running = np.empty(3), 0.0
    for k, i in enumerate(np.argsort(raw)):  # Holm: (m - k) * p_(k), non-decreasing, at most 1
        running = max(running, min(1.0, (3 - k) * raw[i]))
        expected[i] = running
    assert image["holm_p"].to_numpy() == pytest.approx(expected)
    assert image.loc["fractal - random", "reading"] == "fractal > random"
    assert image.loc["fractal - imagenet", "ci_low"] > 0
    # the same data on six seeds: raw p 2/2^6 = 0.031, but Holm over three comparisons 0.094
    six = rows[rows["seed"] != "6"]
    assert set(report.paired(six)["reading"]) == {"not resolved with 6 seeds"}


def test_the_legend_names_the_seeds_its_family_of_comparisons_needs():
    """The paired table's legend says how many seeds can resolve anything, for the family size at
    hand: the fewest n at which k clear seed-level wins (exact p 2/2^n each) survive Holm over k."""
    for k in (1, 3, 6, 15):
        n = report.seeds_to_resolve(k)
        wins = [report.seed_test(np.arange(m) + 1.0, np.zeros(m))[3] for m in (n - 1, n)]
        assert report.holm([wins[1]] * k).min() <= report.ALPHA < report.holm([wins[0]] * k).min()
    assert report.seeds_to_resolve(3) == 7


def test_zero_differences_and_float_ties_are_handled_exactly():
    """Float32 AUROCs that tie (ninths) and a seed where the arms are equal: the p equals an
    enumeration of every sign flip over the rounded differences (ties share ranks, the zero is
    ranked and dropped); without the rounding the float noise would break the ties."""
    ninth = lambda k: float(np.float32(k / 9))  # noqa: E731
    a = np.array([ninth(8), ninth(7), ninth(6), ninth(5), ninth(9)])
    b = np.array([ninth(7), ninth(6), ninth(5), ninth(5), ninth(7)])
    assert len(set(a - b)) > 2  # the raw differences are not exactly equal
    mean, low, high, p = report.seed_test(a, b)
    d = np.round(a - b, 6)
    assert p == pytest.approx(exact_signed_rank_p(d))
    assert mean == pytest.approx(np.mean(a - b)) and low < mean < high
    assert report.seed_test([0.5, 0.6], [0.5, 0.6])[3] == 1.0
    assert np.isnan(report.seed_test([0.7], [0.6])[3])
    assert report.reading("a", "b", 0.1, np.nan, np.nan, np.nan, 1) == "not resolved with 1 seed"


def test_categories_are_never_extra_units():
    """Two seeds of three categories: 2 units whatever the number of categories."""
    rng = np.random.default_rng(12)
    rows = pd.concat([arm_rows("fractal", grid(rng, seeds=(0, 1), offset=0.3)),
                      arm_rows("random", grid(rng, seeds=(0, 1)), recipe="h1")])
    comparisons = report.paired(rows)
    assert (comparisons["units"] == 2).all()
    assert set(comparisons["reading"]) == {"not resolved with 2 seeds"}


def test_different_architectures_and_recipes_are_never_pooled():
    rng = np.random.default_rng(3)
    fractal_a, fractal_b = grid(rng, offset=0.1), grid(rng, offset=-0.1)
    random_lite, random_r18 = grid(rng), grid(rng, offset=0.2)
    rows = pd.concat([arm_rows("fractal", fractal_a, recipe="aaa"), arm_rows("fractal", fractal_b, recipe="bbb"),
                      arm_rows("random", random_lite, recipe="rnd"),
                      arm_rows("random", random_r18, arch="resnet18", recipe="rnd18")])
    table = report.summarise(rows).set_index(["arch", "pretrain_hash"])
    assert len(table) == 4
    for key, values in {("efficientnet_lite0", "aaa"): fractal_a, ("efficientnet_lite0", "bbb"): fractal_b,
                        ("efficientnet_lite0", "rnd"): random_lite, ("resnet18", "rnd18"): random_r18}.items():
        assert table.loc[key, "image_AUROC_mean"] == pytest.approx(np.mean(list(values.values())))
        assert table.loc[key, "seeds"] == 3
    comparisons = report.paired(rows)
    image = comparisons[comparisons["metric"] == "image_AUROC"]
    # each fractal recipe against the random arm of ITS architecture only; resnet18 has no partner
    assert set(image["arch"]) == {"efficientnet_lite0"}
    assert sorted(image["pretrain_hash_a"]) == ["aaa", "bbb"] and set(image["pretrain_hash_b"]) == {"rnd"}
    assert (image["units"] == 3).all()
    assert image.set_index("pretrain_hash_a").loc["bbb", "mean_diff"] == pytest.approx(
        np.mean(seed_means(fractal_b, (0, 1, 2)) - seed_means(random_lite, (0, 1, 2))))


def test_recipe_selection_ranks_on_validation_never_on_test(tmp_path):
    """Three fractal recipes: the one with the best validation AUROC is picked although another has
    the best test AUROC; single-recipe sources (random) are not ranked."""
    rng = np.random.default_rng(7)
    test = {"aaa": grid(rng, offset=0.2), "bbb": grid(rng), "ccc": grid(rng, offset=-0.1)}
    val = {"aaa": grid(rng, offset=-0.2), "bbb": grid(rng, offset=0.2), "ccc": grid(rng)}
    rows = pd.concat([*(arm_rows("fractal", test[h], recipe=h, val=val[h]) for h in test),
                      arm_rows("random", grid(rng), recipe="rnd", val=grid(rng))])
    picks = report.selection(report.summarise(rows))
    assert list(picks["pretrain_hash"]) == sorted(val, key=lambda h: -np.mean(list(val[h].values())))
    assert list(picks["picked"]) == [True, False, False] and picks.loc[0, "pretrain_hash"] == "bbb"
    assert picks.loc[0, "val_image_AUROC_mean"] == pytest.approx(np.mean(list(val["bbb"].values())))
    paths = report.write_report(rows, tmp_path)
    assert pd.read_csv(paths["selection"])["pretrain_hash"].tolist() == list(picks["pretrain_hash"])
    assert "Recipe selection" in paths["markdown"].read_text()


def test_recipe_selection_breaks_a_validation_image_tie_on_validation_pixels():
    """A 3 + 3 image validation split quantises AUROC in ninths, so two recipes can tie exactly: the
    validation pixel AUROC decides, whatever the test figures or the order of the hashes."""
    rng = np.random.default_rng(8)
    ninths = {k: round(9 * v) / 9 for k, v in grid(rng).items()}
    # the same ninths one float32 rounding apart (metrics are logged as float32): a tie, not a win
    above = {k: v + 3e-8 for k, v in ninths.items()}
    rows = pd.concat([arm_rows("fractal", grid(rng, offset=0.2), recipe="aaa", val=above, val_pixel=0.55),
                      arm_rows("fractal", grid(rng, offset=-0.2), recipe="bbb", val=ninths, val_pixel=0.60)])
    picks = report.selection(report.summarise(rows))
    assert list(picks["pretrain_hash"]) == ["bbb", "aaa"] and list(picks["picked"]) == [True, False]


def test_missing_and_failed_categories_are_flagged_not_averaged_over():
    rng = np.random.default_rng(4)
    random = grid(rng)
    fractal = {k: v for k, v in grid(rng).items() if k != ("washer", 2)}  # seed 2 lacks washer
    imagenet = grid(rng, offset=0.2)
    rows = pd.concat([arm_rows("fractal", fractal), arm_rows("random", random),
                      arm_rows("imagenet", imagenet, status={("weave", 1): "FAILED"})])
    rows.loc[rows["status"] == "FAILED", list(HEADLINE)] = np.nan  # a failed run logs no metrics
    table = report.summarise(rows).set_index("backbone")
    assert table.loc["random", "status"] == "ok"
    assert table.loc["fractal", "status"] == "missing washer (seed 2)"
    assert table.loc["imagenet", "status"] == "FAILED weave (seed 1)"
    # statistics only over the seeds that have every category
    assert table.loc["fractal", "seeds"] == 2 and table.loc["imagenet", "seeds"] == 2
    complete = [np.mean([fractal[(c, s)] for c in CATEGORIES]) for s in (0, 1)]
    assert table.loc["fractal", "image_AUROC_mean"] == pytest.approx(np.mean(complete))
    assert table.loc["fractal", "image_AUROC_ci_high"] == pytest.approx(
        stats.t.interval(0.95, 1, loc=np.mean(complete), scale=stats.sem(complete))[1])
    text = report.markdown(table.reset_index())
    assert "missing washer (seed 2)" in text and "FAILED weave (seed 1)" in text
    fractal_line = next(x for x in text.splitlines() if x.startswith("| fractal |"))
    assert f"| {np.mean([fractal[('washer', s)] for s in (0, 1)]):.3f}* |" in fractal_line
    # an arm with no complete seed has no numbers, shown as '-', and the plots still draw
    only_two = arm_rows("fractal", {k: v for k, v in fractal.items() if k[0] != "washer"}, recipe="h9")
    table = report.summarise(pd.concat([rows, only_two])).set_index("pretrain_hash")
    assert table.loc["h9", "seeds"] == 0 and np.isnan(table.loc["h9", "image_AUROC_mean"])


def test_missing_metric_columns_are_dashes_never_zero(tmp_path):
    rng = np.random.default_rng(5)
    # image-only dataset: no pixel metrics at all; and one arm where one category lacks them
    rows = pd.concat([arm_rows("fractal", grid(rng), pixel=False), arm_rows("random", grid(rng), recipe="h1")])
    rows.loc[(rows["backbone"] == "random") & (rows["category"] == "weave"), "pixel_AUROC"] = np.nan
    table = report.summarise(rows).set_index("backbone")
    assert np.isnan(table.loc["fractal", "pixel_AUROC_mean"]) and np.isnan(table.loc["random", "pixel_AUROC_mean"])
    assert np.isfinite(table.loc["random", "pixel_AUPRO_mean"])
    comparisons = report.paired(rows)
    assert set(comparisons["metric"]) == {"image_AUROC"}  # no pairs for the pixel metrics
    paths = report.write_report(rows, tmp_path)
    line = next(x for x in paths["markdown"].read_text().splitlines() if x.startswith("| fractal |"))
    assert "| - | - |" in line and "0.000" not in line
    assert paths["bars"].stat().st_size > 10_000


def test_pretrain_hash_names_the_recipe_not_the_seed_or_the_bookkeeping(tmp_path):
    from conftest import compose_config

    from pipeline.config import pretrain_hash

    def h(*overrides):
        return pretrain_hash(compose_config(tmp_path, *overrides))

    fractal = h()
    assert fractal == h("seed=3", "detector=padim", "dataset.category=tiles", "pretrain.reuse=false")
    for change in ("fractal.num_classes=4", "pretrain.max_steps=5", "optim/schedule=cosine", "optim.optimizer.lr=0.05",
                   "backbone.arch=efficientnet_lite0",
                   "backbone.normalization=imagenet", "backbone=random", "backbone.weights=/some/export"):
        assert h(change) != fractal, change
    assert h("backbone=random") == h("backbone=random", "fractal.num_classes=4", "optim/schedule=cosine")  # no pre-training
    # a local export is named by what it holds: the same weights at two paths are one arm
    for folder, content in (("a", b"weights"), ("b", b"weights"), ("c", b"other weights")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.safetensors").write_bytes(content)
    a, b, c = (h("backbone=imagenet", f"backbone.weights={tmp_path / x}") for x in "abc")
    assert a == b != c


_clock = itertools.count(1_700_000_000_000, 1000)  # start times one second apart: "newest" is unambiguous


def log_run(client, experiment_id, tags, metrics, status="FINISHED") -> str:
    run = client.create_run(experiment_id, start_time=next(_clock), tags={"stage": "detect", **tags})
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_collect_and_compare_script_on_a_real_store(tmp_path):
    """Real runs in SQLite: old runs without arch/pretrain_hash/code_version tags, a FAILED run, no
    pixel metrics, a RUNNING run (in flight, ignored), and one arm x category x seed run three times
    (an older FINISHED, a newer FAILED, the newest FINISHED): the newest FINISHED is kept, the other
    two are named; compare.py rebuilds the report, says what it dropped and exits 0."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("fractal-ad")
    base = {"detector": "patchcore", "dataset": "images", "seed": "0"}
    older = log_run(client, experiment_id, {**base, "backbone": "fractal", "category": "a"}, {"image_AUROC": 0.1})
    for backbone, category, auroc in [("fractal", "a", 0.7), ("fractal", "b", 0.8),
                                      ("random", "a", 0.6), ("random", "b", 0.5)]:
        log_run(client, experiment_id, {**base, "backbone": backbone, "category": category}, {"image_AUROC": auroc})
    failed_rerun = log_run(client, experiment_id, {**base, "backbone": "random", "category": "b"}, {}, "FAILED")
    log_run(client, experiment_id, {**base, "backbone": "imagenet", "category": "a", "arch": "x",
                                    "pretrain_hash": "p"}, {}, status="FAILED")
    client.create_run(experiment_id, tags={"stage": "detect", **base, "backbone": "imagenet", "category": "b"})
    rows = collect(uri, "fractal-ad")
    assert rows.attrs["dropped"] == [older, failed_rerun]
    assert len(rows) == 5 and set(rows["status"]) == {"FINISHED", "FAILED"}
    assert set(rows.loc[rows["backbone"] == "fractal", "arch"]) == {report.UNKNOWN}
    assert set(rows["code_version"]) == {report.UNKNOWN}
    assert rows["pixel_AUROC"].isna().all()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/compare.py"), "--tracking-uri", uri,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "out/summary.csv").set_index("backbone")
    assert table.loc["fractal", "image_AUROC_mean"] == pytest.approx(0.75)
    assert table.loc["random", "image_AUROC_mean"] == pytest.approx(0.55)
    assert table.loc["imagenet", "status"] == "FAILED a (seed 0); missing b (seed 0)"
    assert "| - | - | - | FAILED | missing | FAILED a (seed 0)" in proc.stdout
    # one seed: one unit, whatever the two categories
    assert "| fractal - random | image_AUROC | 1 | +0.200 | - | - | - | not resolved with 1 seed |" in proc.stdout
    assert f"dropped 2 repeated runs: {older}, {failed_rerun}" in proc.stdout


@pytest.mark.parametrize("backbone", ["fractal", "imagenet_offline", "random"])
def test_main_experiment_is_three_sources_on_one_architecture(backbone, tmp_path):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=compare_builtin", f"backbone={backbone}",
                                           f"paths.outputs_dir={tmp_path}", f"paths.output_dir={tmp_path}/job"],
                      return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.backbone.split(",") == ["fractal", "imagenet_offline", "random"]
    assert params["dataset.category"].split(",") == ["weave", "tiles", "washer"]
    assert cfg.detector.name == "patchcore" and cfg.dataset.name == "builtin"
    assert cfg.backbone.arch == "tf_efficientnet_lite0"
    assert cfg.backbone.normalization == {"fractal": "trained", "imagenet_offline": "trained", "random": "imagenet"}[backbone]
    assert cfg.hydra.callbacks.sweep_tracking.report is True


@pytest.mark.slow
def test_main_experiment_compares_three_arms_on_one_architecture(tmp_path):
    """`python run.py -m +experiment=compare_builtin` shrunk (tiny pre-training, small built-in
    data, one category): three arms on one architecture in the report, and the closing lines."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "+experiment=compare_builtin", "+debug=tiny_pretrain",
           "dataset.category=tiles", f"paths.outputs_dir={tmp_path}", "mlflow.system_metrics=false",
           "detector.log_images=0", "dataset.builtin.n_train=12", "dataset.builtin.n_test_good=3",
           "dataset.builtin.n_test_defect=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_dir,) = tmp_path.glob("multirun/*/report")
    table = pd.read_csv(report_dir / "summary.csv")
    assert sorted(table["backbone"]) == ["fractal", "imagenet", "random"]
    assert table["arch"].nunique() == 1 and set(table["detector"]) == {"patchcore"}
    assert (table["status"] == "ok").all()
    comparisons = pd.read_csv(report_dir / "paired.csv")
    assert set(comparisons["comparison"]) == {"fractal - random", "fractal - imagenet", "imagenet - random"}
    assert str(report_dir / "comparison.png") in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert set(runs_of(f"sqlite:///{tmp_path}/mlflow.db")["status"]) == {"FINISHED"}


def test_validation_split_size_and_auroc_resolution_beside_the_recipe_selection(tmp_path):
    """Runs that log val_normals / val_anomalies: per category the counts (min-max where seeds
    differ) and 1 / (normals x anomalies) of the smallest split; older runs without them: no table."""
    rng = np.random.default_rng(13)
    rows = pd.concat([arm_rows("fractal", grid(rng), recipe=h, val=grid(rng), val_pixel=0.6) for h in ("aaa", "bbb")])
    assert report.validation_split(rows).empty
    counts = {"tiles": (8, 6), "washer": (10, 4), "weave": (8, 6)}
    rows["val_normals"] = [counts[c][0] - (s == "2" and c == "weave") for c, s in zip(rows["category"], rows["seed"])]
    rows["val_anomalies"] = [counts[c][1] for c in rows["category"]]
    split = report.validation_split(rows).set_index("category")
    assert split.loc["washer", "auroc_resolution"] == pytest.approx(1 / 40)
    assert split.loc["weave", "auroc_resolution"] == pytest.approx(1 / (7 * 6))  # the smaller split
    paths = report.write_report(rows, tmp_path)
    text = paths["markdown"].read_text()
    assert "| builtin | weave | 6 | 7-8 | 6 | 0.0238 |" in text and "| builtin | washer | 6 | 10 | 4 | 0.0250 |" in text
    assert text.index("Recipe selection") < text.index("Validation split per category")
    assert pd.read_csv(paths["validation_split"])["category"].tolist() == ["tiles", "washer", "weave"]


def test_budget_curve_from_a_real_store_picks_on_validation_and_times_each_budget(tmp_path):
    """Two recipes at two budgets, three seeds, two categories, random and ImageNet references, in a
    real SQLite store with the pretrain runs behind them: the budget table has one row per recipe x
    budget and per reference; minutes are the median of the pretrain runs' train_seconds; fractal -
    random is the mean over seeds of the paired category means; the pick is the recipe with the
    better validation AUROC at the largest budget although its test AUROC is worse; budget.png is
    written."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("budget")
    rng = np.random.default_rng(11)
    base = {"detector": "padim", "dataset": "builtin", "arch": "lite0", "code_version": "c0"}
    seconds, test, val = {}, {}, {}
    for recipe, steps, seed in itertools.product(("crop", "plain"), (60, 200), (0, 1, 2)):
        seconds[(recipe, steps, seed)] = steps * (1.0 if recipe == "plain" else 1.5) + seed
        pretrain = log_run(client, experiment_id, {"stage": "pretrain"}, {"train_seconds": seconds[(recipe, steps, seed)]})
        for category in ("a", "b"):
            # crop: better on validation, worse on test at 200 steps
            test[(recipe, steps, seed, category)] = 0.6 + (0.1 if recipe == "plain" else 0.05) + 0.02 * rng.standard_normal()
            val[(recipe, steps, seed, category)] = 0.7 + (0.1 if recipe == "crop" else 0.0) + 0.02 * rng.standard_normal()
            log_run(client, experiment_id,
                    {**base, "backbone": "fractal", "category": category, "seed": str(seed), "recipe": recipe,
                     "pretrain_steps": str(steps), "pretrain_run_id": pretrain, "pretrain_hash": f"{recipe}{steps}"},
                    {"image_AUROC": test[(recipe, steps, seed, category)],
                     "val_image_AUROC": val[(recipe, steps, seed, category)], "val_pixel_AUROC": 0.5})
    random_auroc = {}
    for source, seed, category in itertools.product(("random", "imagenet"), (0, 1, 2), ("a", "b")):
        random_auroc[(source, seed, category)] = 0.55 + (0.3 if source == "imagenet" else 0) + 0.01 * seed
        log_run(client, experiment_id, {**base, "backbone": source, "category": category, "seed": str(seed),
                                        "pretrain_hash": source},
                {"image_AUROC": random_auroc[(source, seed, category)], "val_image_AUROC": 0.6, "val_pixel_AUROC": 0.5})
    paths = report.write_report(collect(uri, "budget"), tmp_path / "out")
    curve = pd.read_csv(paths["budget"])
    assert paths["budget_plot"].is_file()
    fractal = curve[curve["backbone"] == "fractal"].set_index(["recipe", "steps"])
    assert sorted(fractal.index) == [("crop", 60), ("crop", 200), ("plain", 60), ("plain", 200)]
    assert set(curve.loc[curve["backbone"] != "fractal", "recipe"]) == {"random", "imagenet"}
    assert fractal.loc[("crop", 200), "pretrain_minutes"] == pytest.approx(np.median([seconds[("crop", 200, s)] for s in range(3)]) / 60)
    assert fractal["picked"].tolist().count(True) == 1 and fractal.loc[("crop", 200), "picked"]
    assert fractal.loc[("crop", 200), "image_AUROC_mean"] < fractal.loc[("plain", 200), "image_AUROC_mean"]
    per_seed = [np.mean([test[("plain", 60, s, c)] - random_auroc[("random", s, c)] for c in "ab"]) for s in range(3)]
    assert fractal.loc[("plain", 60), "vs_random_mean"] == pytest.approx(np.mean(per_seed))
    low, high = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert (fractal.loc[("plain", 60), "vs_random_ci_low"], fractal.loc[("plain", 60), "vs_random_ci_high"]) == \
        (pytest.approx(low), pytest.approx(high))
    assert "Budget curve" in paths["markdown"].read_text()
