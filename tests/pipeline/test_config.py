"""Every experiment and config option composes and points at real objects."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
from pathlib import Path

import hydra
import pytest
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))
# debug/ is composed by every test (conftest.TINY); experiment/ and base/ are tested on their own.
GROUP_OPTIONS = [(g.name, p.stem) for g in sorted(Path(CONF_DIR).iterdir()) if g.is_dir()
                 and g.name not in ("experiment", "hydra", "base", "debug") for p in sorted(g.glob("*.yaml"))]


def readme_commands() -> list[list[str]]:
    """Every `python run.py ...` command the README and the docs/ pages show, as its arguments."""
    root = Path(CONF_DIR).parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = re.sub(r"\\\n\s*", " ", "\n".join(p.read_text() for p in pages))  # joined continuations
    commands = [shlex.split(m.group(1), comments=True) for m in re.finditer(r"python run\.py([^`\n]*)", text)]
    return [args for args in commands if "..." not in args and not any("<" in a for a in args)]


@pytest.mark.parametrize("args", readme_commands(), ids=" ".join)
def test_every_command_in_the_readme_composes(args, tmp_path):
    """The README and docs stay true: each command they show composes (a sweep: with each swept key's first value)."""
    overrides = [o for o in args if o != "-m"]
    if "-m" in args:  # a sweep's comma lists (not a list value like stages=[a,b]): the first value
        overrides = [o if "=[" in o else o.split(",")[0] for o in overrides]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.outputs_dir={tmp_path}", "~local"],
                      return_hydra_config=True)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if "." in key and not key.startswith(("hydra", "paths.outputs_dir")):  # arrives as written (but the test's own outputs)
            composed = OmegaConf.select(cfg, key)
            written = value.strip("[]").replace(",", ", ")
            assert (str(composed).lower() if isinstance(composed, bool) else str(composed)) == written \
                or value.startswith("["), override


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_resolves(name, tmp_path):
    cfg = compose_config(tmp_path, f"+experiment={name}")
    assert cfg.backbone.source in name or name.startswith(("study", "compare", "recipe", "budget"))  # grids name no one source
    # everything resolves, and paths are absolute whatever the working directory
    for key in ("paths.root_dir", "paths.data_dir", "dataset.root"):
        assert Path(cfg[key.split(".")[0]][key.split(".")[1]]).is_absolute(), key


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose_config(tmp_path, f"{group}={option}")
    if group == "recipe":  # a recipe is global: it names itself in pretrain.recipe
        assert cfg.pretrain.recipe == option
    else:
        assert cfg[group] is not None


@pytest.mark.parametrize("option", sorted(p.stem for p in Path(CONF_DIR, "detector").glob("*.yaml")))
def test_detector_targets_name_the_anomalib_model_actually_built(option, tmp_path):
    """An anomalib model class, or our adapter subclass of one where anomalib's cannot take our
    backbone: then the config names the adapter, and anomalib's own class is refused."""
    from anomalib.models.components import AnomalibModule

    from detectors.adapters import ADAPTED
    from detectors.models import build_detector

    cfg = compose_config(tmp_path, f"detector={option}")
    cls = hydra.utils.get_class(cfg.detector.model._target_)
    assert issubclass(cls, AnomalibModule)
    adapted = cls.__name__ in ADAPTED
    assert (cls.__module__ == f"detectors.adapters.{ADAPTED[cls.__name__]}" if adapted
            else cls.__module__.startswith("anomalib.models"))
    if adapted:
        anomalibs = getattr(__import__("anomalib.models", fromlist=[cls.__name__]), cls.__name__)
        assert issubclass(cls, anomalibs)
        with pytest.raises(ValueError, match=f"_target_: {cls.__module__}.{cls.__name__}"):
            build_detector(anomalibs, {}, None)


def test_tracking_uri_is_an_absolute_sqlite_path(tmp_path):
    cfg = compose_config(tmp_path)
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize("name,categories", [("study_mvtec", 15), ("study_visa", 12)])
def test_study_grids_sweep_three_backbones_over_every_category(name, categories, tmp_path):
    from evaluation.datasets.layouts import DATASETS

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}", "backbone=random", f"paths.output_dir={tmp_path}"],
                      return_hydra_config=True)
    grid = cfg.hydra.sweeper.params
    assert grid.backbone.split(",") == ["fractal", "imagenet", "random"]
    assert sorted(grid["dataset.category"].split(",")) == sorted(DATASETS[cfg.dataset.name])
    assert len(DATASETS[cfg.dataset.name]) == categories
    assert cfg.backbone.arch == "wide_resnet50_2.tv_in1k"  # kept whatever backbone source the sweep picks


def test_shared_settings_are_written_once_and_reach_every_detector_and_dataset(tmp_path):
    """conf/base/: one home for what every detector and dataset file shares; each file's own value
    (the built-in data's smaller batches) still wins."""
    for option in sorted(p.stem for p in Path(CONF_DIR, "detector").glob("*.yaml")):
        d = compose_config(tmp_path, f"detector={option}").detector
        assert d.aupro_fpr_limit == 0.3 and d.log_images == 2, option  # 2: conf/debug/tiny.yaml
        assert "aupro_fpr_limit" not in Path(CONF_DIR, "detector", f"{option}.yaml").read_text()
    for option in sorted(p.stem for p in Path(CONF_DIR, "dataset").glob("*.yaml")):
        d = compose_config(tmp_path, f"dataset={option}").dataset
        assert d.datamodule.val_split_mode == "synthetic" and d.datamodule.root == d.root, option
    builtin = compose_config(tmp_path).dataset
    assert (builtin.builtin.image_size, builtin.datamodule.train_batch_size, builtin.datamodule.num_workers) == (128, 16, 0)


def test_local_settings_reach_every_run_and_the_command_line_still_wins(tmp_path):
    """conf/local/default.yaml (the shipped example, copied as a user would): dataset folders and the
    GPU trainer for every run of this machine; absent, the defaults; `~local` leaves it out."""
    conf = shutil.copytree(CONF_DIR, tmp_path / "conf")
    shutil.copy(conf / "local/default.yaml.example", conf / "local/default.yaml")
    with initialize_config_dir(str(conf), version_base="1.3"):
        local = compose("config", overrides=["dataset=visa"])
        assert (local.dataset.root, local.trainer.accelerator) == ("/data/anomaly/VisA", "gpu")
        assert local.paths.data_dir != "/data/anomaly"  # the built-in data is still generated in outputs/
        assert compose("config", overrides=["dataset=visa", "dataset.root=/x"]).dataset.root == "/x"
        assert compose("config", overrides=["~local"]).trainer.accelerator == "cpu"
    (conf / "local/default.yaml").unlink()
    with initialize_config_dir(str(conf), version_base="1.3"):
        assert compose("config", overrides=["dataset=visa"]).dataset.root.endswith("outputs/data/VisA")


@pytest.mark.parametrize("override", ["fractal.render.size=big", "fractal.render.blur_p=often",
                                      "fractal=multi_formula fractal.multi_formula.max_fractals=many"])
def test_a_wrongly_typed_render_setting_fails_at_composition_naming_its_key(override, tmp_path):
    """The renderer's dataclasses are structured configs: the type error surfaces before anything runs."""
    from hydra.errors import ConfigCompositionException

    *group, value = override.split()
    with pytest.raises(ConfigCompositionException, match=value.split("=")[0].replace(".", r"\.")):
        compose_config(tmp_path, *group, value)


def test_budget_sweep_runs_each_grid_once_and_the_command_line_wins(tmp_path):
    """hydra/sweeper=grids through Hydra's own sweep runner (real composition, a task that only
    records): the fractal grid is recipes x budgets x seeds x detectors, the references run once per
    seed and detector (not once per budget), seed=0,1 (and one category) on the command line replace
    the experiment's values in both grids, and every job has its own number."""
    from hydra.test_utils.test_utils import SweepTaskFunction

    import run  # noqa: F401  (the project_root resolver and the renderer's schemas)

    seen = []
    sweep = SweepTaskFunction()
    sweep.calling_file, sweep.calling_module = str(Path(CONF_DIR).parent / "run.py"), None
    sweep.config_path, sweep.config_name = "conf", "config"
    sweep.temp_dir = str(tmp_path / "sweep")
    sweep.task_function = lambda cfg: seen.append(
        (cfg.backbone.source, cfg.pretrain.recipe, cfg.pretrain.max_steps, cfg.seed, cfg.detector.name))
    sweep.overrides = ["+experiment=budget_builtin", "seed=0,1", "dataset.category=weave", "~hydra.callbacks.sweep_tracking",
                       "~hydra.callbacks.imagenet_weights", f"paths.outputs_dir={tmp_path}"]
    with sweep:
        numbers = [r.hydra_cfg.hydra.job.num for batch in sweep.returns for r in batch]
    fractal = [s for s in seen if s[0] == "fractal"]
    references = [(s[0], s[3], s[4]) for s in seen if s[0] != "fractal"]
    assert sorted(fractal) == sorted(itertools.product(
        ["fractal"], ["crop_mix", "heavy_aug", "plain"], [60, 200, 600], [0, 1], ["padim", "patchcore"]))
    assert sorted(references) == sorted(itertools.product(["imagenet", "random"], [0, 1], ["padim", "patchcore"]))
    assert sorted(numbers) == list(range(len(seen))) == list(range(36 + 8))
