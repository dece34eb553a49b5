"""A fractal backbone as a plain timm folder, for use outside this project.

    python scripts/export_backbone.py models:/<model id> outputs/fractal-resnet18
    python scripts/export_backbone.py models:/<registered name>/<version> /abs/out
    python scripts/export_backbone.py runs:/<pretrain run id> /abs/out
    python scripts/export_backbone.py outputs/runs/<time> /abs/out   # a job folder, or its pretrain/backbone

Writes ``config.json`` (architecture, input mean/std), ``model.safetensors`` and a short
``README.md`` into the output folder, which ``timm.create_model("local-dir:<folder>",
pretrained=True)`` loads with timm alone (no code of this project), and prints that line and the
mean/std to normalise inputs with. The folder is written under a temporary name, checked to load in
timm with the same weights, and renamed only then: an error (exit status 2, one line saying what is
wrong and the fix) leaves no folder behind. MLflow URIs are resolved in ``--tracking-uri`` (default:
this checkout's ``outputs/mlflow.db``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow

from console.errors import EXIT_USER_ERROR, UserError
from fractal_pretrain.export import WEIGHTS, export_digest, read_export

ROOT = Path(__file__).resolve().parent.parent


class ExportScriptError(UserError):
    """The input or output of the script cannot work; the message says why and the fix."""


def find_export(folder: Path) -> Path:
    """The export in ``folder``: the folder itself, or a job folder's ``pretrain/backbone``, or a
    shared backbone's ``backbone`` (``outputs/backbones/<key>``)."""
    for candidate in (folder, folder / "pretrain" / "backbone", folder / "backbone"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ExportScriptError(f"{folder} holds no timm export (no config.json in it, in pretrain/backbone/ "
                            f"or in backbone/); give an export folder, a job folder (outputs/runs/<time>), "
                            f"runs:/<pretrain run id> or models:/<model id>.")


def fetch(uri: str, tracking_uri: str, dst: Path) -> tuple[Path, str]:
    """Download the export behind a ``runs:/`` or ``models:/`` URI; returns it and where it came from."""
    from pipeline.provenance import upstream_backbone

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ExportScriptError(f"no MLflow store at {tracking_uri} to resolve {uri}; pass "
                                f"--tracking-uri (the mlflow.tracking_uri the pretrain run logged to).")
    mlflow.set_tracking_uri(tracking_uri)
    upstream = upstream_backbone(uri)  # ConfigError for a model URI that names no usable export
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=upstream.weights_uri, dst_path=str(dst)))
    except Exception as err:  # mlflow raises several types for a missing run or artifact
        raise ExportScriptError(f"could not fetch {upstream.weights_uri} for {uri} from {tracking_uri}: {err}. "
                                f"Check the id in the MLflow UI, and that the pretrain run logged its export "
                                f"(pretrain.log_export=true).") from err
    origin = f"{uri} (pretrain run {upstream.run_id}" + (f", model {upstream.model_id})" if upstream.model_id else ")")
    return path, origin


def write_plain(export: Path, out: Path, origin: str) -> dict:
    """Copy the export's config and weights into ``out`` (complete or not at all); return its config."""
    config = json.loads((export / "config.json").read_text())
    arch = config.get("architecture")
    if not arch:
        raise ExportScriptError(f"{export}/config.json names no architecture; not a timm export.")
    read_export(export, arch)  # complete, weights not cut short
    weights = next(export / w for w in WEIGHTS if (export / w).is_file())
    stats = config.get("pretrained_cfg", {})
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy2(export / "config.json", tmp / "config.json")
        shutil.copy2(weights, tmp / weights.name)
        (tmp / "README.md").write_text(
            f"# {arch} pre-trained on fractal images\n\nFrom {origin}.\n\n```python\nimport timm\n"
            f"model = timm.create_model(\"local-dir:<this folder>\", pretrained=True)\n```\n\nNormalise inputs "
            f"(RGB in [0, 1]) with mean {stats.get('mean')}, std {stats.get('std')}.\n")
        check_loads(tmp, weights)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def check_loads(folder: Path, weights: Path) -> None:
    """timm loads the folder, with exactly the export's weights."""
    import timm
    import torch
    from safetensors.torch import load_file

    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    if weights.suffix != ".safetensors":
        return
    expected = load_file(str(weights))
    state = model.state_dict()
    if set(expected) != set(state) or not all(torch.equal(state[k], expected[k]) for k in expected):
        raise ExportScriptError(f"timm loads {folder} with other weights than {weights}; nothing written.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="runs:/<pretrain run id>, models:/<model id>, models:/<name>/<version>, "
                                       "or an export or job folder")
    parser.add_argument("out", help="the folder to write (must not exist, unless --force)")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT}/outputs/mlflow.db")
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        if out.exists() and not args.force:
            raise ExportScriptError(f"{out} exists; choose a new folder or pass --force to replace it.")
        with tempfile.TemporaryDirectory(prefix="export-backbone-") as download:
            if args.source.startswith(("runs:/", "models:/")):
                export, origin = fetch(args.source, args.tracking_uri, Path(download))
            elif Path(args.source).is_dir():
                export = find_export(Path(args.source).resolve())
                origin = str(export)
            else:
                raise ExportScriptError(f"{args.source} is neither a folder nor runs:/<pretrain run id> or "
                                        f"models:/<model id> (or models:/<name>/<version>).")
            config = write_plain(export, out, origin)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    stats = config.get("pretrained_cfg", {})
    print(f"wrote {out} ({config['architecture']}, weights sha256 {export_digest(out)}, from {origin})")
    print(f"load it:   timm.create_model(\"local-dir:{out}\", pretrained=True)")
    print(f"normalise: mean {stats.get('mean', 'not recorded')}, std {stats.get('std', 'not recorded')} "
          f"(RGB in [0, 1])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
