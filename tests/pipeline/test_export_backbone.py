"""scripts/export_backbone.py: a fractal export (a folder, runs:/, models:/<id>, models:/<name>/<version>)
as a plain timm folder that timm alone loads with the export's weights; bad input exits 2 and leaves
no folder. The export here is a small timm model written and logged as the pretrain stage does
(write_export, the run's ``backbone`` artifact, provenance.log_backbone_model): no pre-training needed."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import timm

from fractal_pretrain.export import export_digest, write_export
from pipeline import provenance, tracking

ROOT = Path(__file__).resolve().parents[2]
script = SimpleNamespace(**runpy.run_path(str(ROOT / "scripts/export_backbone.py")))
ARCH = "test_resnet"  # timm's smallest ResNet: the same code path as resnet18, a fraction of the bytes


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """An export on disk (in a job folder's pretrain/backbone), logged by a run as its LoggedModel and
    registered as ``fractal-test`` version 1."""
    base = tmp_path_factory.mktemp("export_backbone")
    export = write_export(timm.create_model(ARCH, num_classes=3), base / "job" / "pretrain" / "backbone",
                          [0.2] * 3, [0.5] * 3, {"fractal.json": {"seed": 0}})
    uri = f"sqlite:///{base}/mlflow.db"
    tracking.setup(uri, "fractal-ad")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(export), "backbone")
        model_id = provenance.log_backbone_model(run.info.run_id, ARCH, {"weights_digest": export_digest(export)},
                                                 {"input_mean": "(0.2, 0.2, 0.2)"}, logged_export=True,
                                                 register_as="fractal-test")
    return SimpleNamespace(base=base, export=export, uri=uri, run_id=run.info.run_id, model_id=model_id)


@pytest.mark.parametrize("source", ["models:/{model_id}", "models:/fractal-test/1", "runs:/{run_id}", "{base}/job"])
def test_the_plain_folder_loads_in_timm_alone_with_the_exports_weights(logged, tmp_path, capsys, source):
    out = tmp_path / "plain"
    source = source.format(**vars(logged))
    assert script.main([source, str(out), "--tracking-uri", logged.uri]) == 0
    printed = capsys.readouterr().out
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in printed
    assert "mean [0.2, 0.2, 0.2], std [0.5, 0.5, 0.5]" in printed
    # nothing of this project's in it: timm's config and weights, and a note for people
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["mean"] == [0.2] * 3
    assert export_digest(out) == export_digest(logged.export)


def test_a_fresh_python_without_the_project_loads_it(logged, tmp_path):
    """``python -I`` (no PYTHONPATH, no user site), started outside the checkout: timm and torch only."""
    out = tmp_path / "plain"
    assert script.main([str(logged.export), str(out)]) == 0
    check = ("import sys, timm, torch; from safetensors.torch import load_file; "
             f"m = timm.create_model('local-dir:{out}', pretrained=True); "
             f"w = load_file('{logged.export}/model.safetensors'); s = m.state_dict(); "
             "assert set(w) == set(s) and all(torch.equal(s[k], w[k]) for k in w); "
             "assert not [n for n in sys.modules if n.split('.')[0] in "
             "('console', 'fractal_pretrain', 'detectors', 'evaluation', 'pipeline')]; print('ok')")
    proc = subprocess.run([sys.executable, "-I", "-c", check], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("source,message", [
    ("{base}/nowhere", "is neither a folder nor runs:/"),
    ("{base}", "holds no timm export"),
    ("models:/m-0123456789abcdef0123456789abcdef", "no logged model 'm-0123"),
    ("models:/fractal-test", "without a version; add one: backbone.weights=models:/fractal-test/1"),
    ("runs:/0123456789abcdef0123456789abcdef", "could not fetch runs:/0123456789abcdef0123456789abcdef/backbone"),
])
def test_bad_input_exits_2_with_the_fix_and_writes_nothing(logged, tmp_path, capsys, source, message):
    out = tmp_path / "plain"
    assert script.main([source.format(**vars(logged)), str(out), "--tracking-uri", logged.uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and __import__("re").search(message, err), err
    assert not list(tmp_path.iterdir())  # no folder, no .partial


def test_a_cut_short_export_or_an_existing_folder_is_refused(logged, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((logged.export / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes((logged.export / "model.safetensors").read_bytes()[:-100])
    assert script.main([str(broken), str(tmp_path / "plain")]) == 2
    assert "cut short" in capsys.readouterr().err and not (tmp_path / "plain").exists()
    assert not (tmp_path / "plain.partial").exists()
    (tmp_path / "taken").mkdir()
    assert script.main([str(logged.export), str(tmp_path / "taken")]) == 2
    assert "exists; choose a new folder or pass --force" in capsys.readouterr().err
    assert script.main([str(logged.export), str(tmp_path / "taken"), "--force"]) == 0
    assert export_digest(tmp_path / "taken") == export_digest(logged.export)


def test_no_store_at_the_tracking_uri_is_said_so(tmp_path, capsys):
    assert script.main(["models:/m-0123", str(tmp_path / "plain"), "--tracking-uri", f"sqlite:///{tmp_path}/no.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "no.db").exists()
