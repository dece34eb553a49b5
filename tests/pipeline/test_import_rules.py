"""Who may import what: the domain packages (fractal_pretrain, detectors, evaluation) and the console
take plain arguments and import no Hydra, OmegaConf or MLflow; only the glue (pipeline/), run.py,
the sweeper plugin and scripts/ do. Packages import each other without a cycle, in this order from
the ground up: console -> fractal_pretrain -> evaluation -> detectors -> pipeline -> run.py/scripts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ("console", "fractal_pretrain", "evaluation", "detectors")
GLUE = ("pipeline", "hydra_plugins", "scripts", "run.py")
CONFIG_AND_TRACKING = ("hydra", "omegaconf", "mlflow")
# each package may import the ones before it (and itself), never one after it
LAYERS = ("console", "fractal_pretrain", "evaluation", "detectors", "pipeline")


def sources(place: str) -> list[Path]:
    path = ROOT / place
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_code_folder_is_governed_by_a_rule():
    code = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.rglob("*.py"))} - {"tests", ".venv", "build"}
    code = {c for c in code if not c.startswith(".") and not c.endswith(".egg-info")}
    assert code == set(DOMAIN) | {g for g in GLUE if not g.endswith(".py")}


@pytest.mark.parametrize("package", DOMAIN)
def test_domain_code_imports_no_config_or_tracking_library(package):
    offenders = {str(p.relative_to(ROOT)): sorted(imported(p) & set(CONFIG_AND_TRACKING)) for p in sources(package)}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_the_layers_below_them(package):
    above = set(LAYERS[LAYERS.index(package) + 1:]) | {"run", "scripts", "hydra_plugins"}
    offenders = {str(p.relative_to(ROOT)): sorted(imported(p) & above) for p in sources(package)}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_module_imports_itself_back_through_others():
    """No cycle among the project's modules (imports inside functions count too)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for place in LAYERS for p in sources(place)}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            found = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                     if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            targets |= {f for f in found if f in modules and f != name}
        graph[name] = targets
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert len(graph) > 40  # the walk saw the project, not an empty tree
