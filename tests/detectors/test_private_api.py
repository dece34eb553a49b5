"""Every private or internal name of anomalib, Lightning and Hydra that the project touches
(detectors.private_api lists them) still exists in the installed versions, and every upstream
``__init__`` an adapter replaces sets no attribute that ours leaves unset: an upgrade that moves
one fails here, by name, not at forward time."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap

import pytest

from detectors.private_api import BYPASSED_INITS, PRIVATE


def resolve(name: str):
    module, _, path = name.partition(":")
    path, _, instance_attribute = path.partition("#")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj, instance_attribute


def set_in_init(cls: type) -> set[str]:
    """The attributes ``cls.__init__`` sets on ``self`` (assignments and registered buffers)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"):
            names.add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "register_buffer" and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("name", PRIVATE)
def test_private_name_exists_in_the_pinned_version(name):
    obj, instance_attribute = resolve(name)
    if instance_attribute:
        assert instance_attribute in set_in_init(obj), f"{name}: {obj.__name__}.__init__ no longer sets it"


@pytest.mark.parametrize("ours", sorted(BYPASSED_INITS))
def test_adapter_sets_every_attribute_of_the_init_it_replaces(ours):
    (cls, _), (upstream, _) = resolve(ours), resolve(BYPASSED_INITS[ours])
    assert issubclass(cls, upstream)
    assert set_in_init(upstream) <= set_in_init(cls), f"{ours} misses {set_in_init(upstream) - set_in_init(cls)}"


def test_every_private_touch_in_the_code_is_listed():
    """A private import or attribute of anomalib, Lightning or Hydra in our code names something PRIVATE lists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = {n.partition(":")[0] for n in PRIVATE} | {n.split("#")[0].replace(":", ".") for n in PRIVATE}
    found = set()
    for path in [*root.glob("[a-z]*/**/*.py"), root / "run.py"]:
        if path.parts[len(root.parts)] in ("tests", "scripts"):
            continue
        text = path.read_text()
        found |= set(re.findall(r"from (anomalib\.models\.image\.\w+\.\w+|hydra\._internal[\w.]*) import", text))
        found |= {f"{module}.{name}" for module, names in re.findall(r"from ((?:lightning|anomalib|hydra)[\w.]*) import ([^\n]+)", text)
                  for name in re.findall(r"\b_\w+", names)}  # a private name imported from a public module
        found |= {f"anomalib.data.datamodules.base.image.AnomalibDataModule.{m}"
                  for m in re.findall(r"datamodule\.(_\w+)", text)}
    assert found and found <= listed, f"not in detectors.private_api.PRIVATE: {sorted(found - listed)}"
