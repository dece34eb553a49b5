"""Hydra sweeper plugin ``hydra/sweeper=grids``: the basic sweeper over a union of grids.

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace package, and finds this one
(and its config) by scanning it: nothing to register by hand. (No ``from __future__ import annotations``: Hydra loads this module
without entering it in ``sys.modules``, and dataclasses then cannot resolve string annotations.)
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser


class GridsSweeper(BasicSweeper):
    """Hydra's basic sweeper over a union of grids: ``grids`` is a list of ``{key: "a,b"}`` maps, each
    swept as its cartesian product (with ``params`` and the command line's overrides, which win), and
    the jobs of all grids run in one sweep, numbered on. A budget curve needs it: the fractal recipes x
    budgets in one grid, the random-init and ImageNet references once per seed in another, instead of
    once per budget. ``hydra/sweeper=grids``. Only the job list differs from the basic sweeper: its
    ``sweep`` (launching, batches, multirun.yaml) runs as it is."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 grids: Optional[List[Any]] = None):
        super().__init__(max_batch_size, params)
        self.grids = [dict(g) for g in grids] if grids else [{}]

    def _parse_config(self) -> List[str]:
        return []  # ``params`` join each grid in split_arguments

    def split_arguments(self, overrides: List[Any], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        """BasicSweeper.sweep's job list, grid by grid: each grid's product with ``params`` and the
        command line's ``overrides`` (which come last, so they win), concatenated and then batched."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = []
        for grid in self.grids:
            own = parser.parse_overrides([f"{k}={v}" for k, v in {**self.params, **grid}.items()])
            jobs += BasicSweeper.split_arguments(own + list(overrides), None)[0]
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.fractal_ad_sweeper.GridsSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grids: Optional[List[Any]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="fractal-ad")
