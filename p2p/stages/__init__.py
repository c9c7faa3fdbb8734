"""The pipeline's stages: the list, in DVC's order, and one recipe module per stage.

A stage module (`p2p/stages/<module>.py`) is the recipe a reader opens to see what the stage does: which inputs it
reads (p2p.paths), which library functions it calls with which params, what it writes and reports. Its entry,
`run(cfg, root, rec, **args)`, does all of the stage's work; `rec` (p2p.stages.recorder) receives what it reports.
The Prefect shell (`python -m flows.stage NAME`, dvc.yaml's command of every stage), the CLI (`p2p stage NAME`) and
a notebook (`run_stage(NAME, cfg, root)`) all call it (docs/architecture.md §2). dvc.yaml's stages are these, in this
order (tests/test_dvc_deps.py checks).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from p2p.methods import CONFIGURABLE

if TYPE_CHECKING:
    from p2p.config import Config
    from p2p.stages.recorder import Recorder


@dataclass(frozen=True)
class Stage:
    """A DVC stage: its name and the recipe, `p2p.stages.<module>.<entry>(cfg, root, rec, **args)`."""

    name: str
    module: str
    entry: str = "run"
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The stage's dvc.yaml `cmd`."""
        return f"python -m flows.stage {self.name}"


STAGES: tuple[Stage, ...] = (
    Stage("fetch", "fetch"), Stage("prepare", "prepare"), Stage("summarize", "summarize"), Stage("embed", "embed"),
    Stage("split", "split"), Stage("train", "train"), Stage("mt_lora", "mt_lora"), Stage("oppu", "oppu"),
    *(Stage(f"evaluate_{method}", "evaluate", "answer", {"method": method}) for method in CONFIGURABLE),
    Stage("evaluate", "evaluate"), Stage("privacy", "privacy"), Stage("judge", "judge"), Stage("report", "report"),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def get_stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(BY_NAME)}")
    return BY_NAME[name]


def recipe(name: str) -> tuple[Callable[..., None], dict[str, Any], ModuleType]:
    """Stage `name`'s recipe function, the arguments the stage list gives it, and its module (imported now)."""
    stage = get_stage(name)
    module = importlib.import_module(f"p2p.stages.{stage.module}")
    return getattr(module, stage.entry), stage.args, module


def run_stage(name: str, cfg: Config, root: Path, rec: Recorder | None = None) -> None:
    """Run stage `name`'s recipe in this process (no Prefect, no MLflow unless `rec` logs there)."""
    from p2p.stages.recorder import Recorder

    run, args, _ = recipe(name)
    run(cfg, root, rec or Recorder(), **args)
