"""Where a number came from: the code that computed it and the files it was computed on.

``code_version()`` names the code: the package version plus the git commit of the checkout it runs
from that last changed the source files (``0.1.0+g<12 hex>``: a commit of docs or tests only does not
split the runs before and after it into two arms, nor retrain a cached backbone), with ``-dirty.<digest of the diff>`` when tracked source files have
uncommitted changes (the digest, not just "dirty", so two different uncommitted states are two
versions and a backbone cached by one is not reused by the other), or ``0.1.0+src<digest of the
source files>`` when the code is not a git checkout (a pip install, a CI copy). It tags every run,
is part of the report's arm and of the shared-backbone key.

``log_dataset_inputs`` records the files a detect run fitted and tested on as MLflow dataset inputs;
``log_backbone_model`` / ``backbone_model_id`` make a fractal export an MLflow LoggedModel (its
recipe and input statistics as params, its weights' digest as a tag) that the detect runs using it
log their metrics against; ``upstream_backbone`` resolves ``backbone.weights=runs:/...`` and
``models:/...`` back to that pretrain run and model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import subprocess
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow

from console.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fractal-ad"
# what decides the numbers: the packages and the configs (tests, docs and scripts do not)
SOURCES = ("fractal_pretrain", "detectors", "evaluation", "pipeline", "console", "hydra_plugins", "conf", "run.py")
SUFFIXES = {".py", ".yaml"}
MODEL_TYPE = "timm backbone"  # the LoggedModels of fractal exports
NOT_LOGGED = "not logged (pretrain.log_export=false)"


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return proc.stdout if proc.returncode == 0 else None


def source_digest() -> str:
    """sha256 of the source files' relative paths and bytes (12 hex digits)."""
    h = hashlib.sha256()
    for name in SOURCES:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()) if path.is_dir() else (
            [path] if path.is_file() else [])
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@functools.cache
def code_version() -> str:
    """``<package version>+g<commit>[-dirty.<diff digest>]``, or ``+src<digest>`` outside git. Once
    per process: a job runs the code it started with."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    top = _git("rev-parse", "--show-toplevel")
    # the checkout must be this code's own (a pip install inside someone's repository is not)
    if top and Path(top.strip()).resolve() == ROOT:
        commit = (_git("log", "-1", "--format=%H", "HEAD", "--", *SOURCES) or "").strip()
        diff = _git("diff", "HEAD", "--", *SOURCES)
        if commit and diff is not None:
            dirty = f"-dirty.{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
            return f"{version}+g{commit[:12]}{dirty}"
    return f"{version}+src{source_digest()}"


def files_digest(files: Iterable[str | Path], root: str | Path) -> tuple[str, int]:
    """sha256 (16 hex digits) of the sorted ``relative path <tab> size in bytes`` lines of ``files``
    (paths relative to ``root``, so moving the dataset keeps the digest; sizes, not bytes, so it
    costs one stat per file: a file rewritten at the same size is not seen), and the file count."""
    lines = sorted(f"{Path(os.path.relpath(f, root)).as_posix()}\t{os.stat(f).st_size}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16], len(lines)


def split_files(samples) -> list[str]:
    """The image and mask files of an anomalib dataset's ``samples`` table."""
    files = []
    for column in ("image_path", "mask_path"):
        if column in samples:
            files += [str(p) for p in samples[column] if isinstance(p, str | Path) and str(p)]
    return sorted(set(files))


def log_dataset_inputs(name: str, root: str | Path, splits: Mapping[str, Iterable[str | Path]]) -> dict[str, str]:
    """Log one MLflow dataset input per split (context ``train``, ``test``) to the active run:
    ``name`` (``<dataset>:<category>``), the digest of its files (``files_digest``) and their count
    (input tag ``files``). Returns the digests by context."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # mlflow registers its local-file source class twice ('... can be interpreted in multiple
        # ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource'): the same class, nothing to choose
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(str(Path(root).resolve()))
    digests = {}
    for context, files in splits.items():
        digest, count = files_digest(files, root)
        mlflow.log_input(MetaDataset(source, name=name, digest=digest), context=context, tags={"files": str(count)})
        digests[context] = digest
    return digests


def log_backbone_model(run_id: str, name: str, tags: Mapping[str, str], params: Mapping[str, str],
                       logged_export: bool, register_as: str | None = None) -> str:
    """The export as an MLflow LoggedModel ``name`` (listed in the Models view) whose source is its
    pretrain run ``run_id``: ``params`` its recipe and input statistics, ``tags`` what identifies it.
    The weights stay where the detect stage fetches them, the run's ``backbone`` artifact (``weights``
    tag): not stored twice (the study's WRN50 export is ~270 MB). ``register_as``: also a new version
    of that registered model (``models:/<name>/<version>``)."""
    model = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, model_type=MODEL_TYPE, params=dict(params),
        tags={**tags, "weights": f"runs:/{run_id}/backbone" if logged_export else NOT_LOGGED})
    mlflow.finalize_logged_model(model.model_id, "READY")
    if register_as:
        version = mlflow.register_model(f"models:/{model.model_id}", register_as)
        mlflow.set_tag("registered_model", f"models:/{version.name}/{version.version}")
    return model.model_id


def backbone_model_id(pretrain_run_id: str | None) -> str | None:
    """The LoggedModel a pretrain run logged (None for runs made before models were logged)."""
    if not pretrain_run_id:
        return None
    try:
        experiment_id = mlflow.get_run(pretrain_run_id).info.experiment_id
    except mlflow.exceptions.MlflowException:  # a run of another store
        return None
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{pretrain_run_id}'")
    return models[0].model_id if models else None


@dataclass(frozen=True)
class Upstream:
    """A fractal export logged by an earlier pretrain run, as ``backbone.weights`` names it."""
    run_id: str  # the pretrain run
    model_id: str | None  # its LoggedModel (None: a run logged before models were)
    digest: str | None  # the export's weights digest (fractal_pretrain.export.export_digest), if recorded
    weights_uri: str  # where MLflow holds the export: the pretrain run's ``backbone`` artifact folder


def upstream_backbone(weights) -> Upstream | None:
    """``runs:/<pretrain run id>[/...]``, ``models:/<model id>`` or ``models:/<registered name>/<version>``
    -> the pretrain run and LoggedModel behind it; None for other weights (a folder, hub weights).
    Resolved with MLflow's own API in the current tracking store; a models:/ URI that names no fractal
    export there raises ConfigError with the fix."""
    weights = str(weights or "")
    if weights.startswith("runs:/"):
        run_id = weights.removeprefix("runs:/").split("/")[0]
        model_id = backbone_model_id(run_id)
        model = mlflow.get_logged_model(model_id) if model_id else None
        return Upstream(run_id, model_id, model.tags.get("weights_digest") if model else None,
                        f"runs:/{run_id}/backbone")
    if not weights.startswith("models:/"):
        return None
    model = fractal_export_model(_logged_model_id(weights), weights)
    return Upstream(model.source_run_id, model.model_id, model.tags.get("weights_digest"), model.tags["weights"])


def _logged_model_id(uri: str) -> str:
    """The LoggedModel id a ``models:/`` URI names: ``models:/<id>`` itself, or the id behind a
    registered model version."""
    parts = uri.removeprefix("models:/").strip("/").split("/")
    uri_help = ("backbone.weights takes models:/<model id> (m-..., the Models view of the experiment) or "
                "models:/<registered name>/<version>")
    if len(parts) == 1 and parts[0].startswith("m-"):
        return parts[0]
    client = mlflow.MlflowClient()
    name = parts[0]
    if len(parts) == 1:
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        except mlflow.exceptions.MlflowException:
            versions = []
        if versions:
            raise ConfigError(f"backbone.weights={uri} names the registered model '{name}' without a version; "
                              f"add one: backbone.weights=models:/{name}/{versions[-1]} (its versions: "
                              f"{', '.join(map(str, versions))}).")
        raise ConfigError(f"backbone.weights={uri}: no logged model id or registered model '{name}' in the "
                          f"tracking store {mlflow.get_tracking_uri()}. {uri_help}; check mlflow.tracking_uri.")
    if len(parts) != 2:
        raise ConfigError(f"backbone.weights={uri} is not a model URI this pipeline reads; {uri_help}.")
    try:
        version = client.get_model_version(name, parts[1])
    except mlflow.exceptions.MlflowException as err:
        raise ConfigError(f"backbone.weights={uri}: the tracking store {mlflow.get_tracking_uri()} has no "
                          f"version {parts[1]} of a registered model '{name}' ({err.message}). {uri_help}; "
                          f"the registered models and their versions are in the MLflow UI's Models page.") from err
    source = version.model_id or (version.source.removeprefix("models:/")
                                  if str(version.source).startswith("models:/m-") else None)
    if not source:
        raise ConfigError(f"backbone.weights={uri}: registered version {parts[1]} of '{name}' is not a "
                          f"logged model (its source is {version.source}): not a fractal export of this "
                          f"pipeline. Register the LoggedModel a pretrain run logged "
                          f"(mlflow.register_backbone=<name>), or use backbone.weights=runs:/<pretrain run id>.")
    return source


def fractal_export_model(model_id: str, uri: str):
    """The LoggedModel ``model_id``, checked to be a fractal export whose weights were logged."""
    try:
        model = mlflow.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException as err:
        raise ConfigError(f"backbone.weights={uri}: no logged model '{model_id}' in the tracking store "
                          f"{mlflow.get_tracking_uri()}. Copy the id from the experiment's Models view "
                          f"(m-...), and check mlflow.tracking_uri points at the store the pretrain run "
                          f"logged to.") from err
    if model.model_type != MODEL_TYPE or not model.source_run_id:
        raise ConfigError(f"backbone.weights={uri}: logged model '{model.name}' ({model_id}, type "
                          f"{model.model_type!r}) is not a fractal backbone export of this pipeline. Use a "
                          f"model a pretrain run logged (named <source>-<arch>, type {MODEL_TYPE!r}), or a "
                          f"timm export folder: backbone.weights=/abs/path/to/export.")
    if not str(model.tags.get("weights", "")).startswith("runs:/"):
        raise ConfigError(f"backbone.weights={uri}: the pretrain run {model.source_run_id} of model "
                          f"{model_id} did not log its export (pretrain.log_export=false), so MLflow has "
                          f"no weights for it. Use the export folder it wrote (backbone.weights="
                          f"/abs/path/to/<job>/pretrain/backbone), or pre-train again with pretrain.log_export=true.")
    return model
