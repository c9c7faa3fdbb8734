"""The paper's experiment grid as data: every row of Tables 4-5, every point of Figs. 3 and 6, and the seeds of
Tables 1-2, each one DVC experiment (docs/grid.md).

params.yaml's `grid` section defines it: `default`, deep-merged with the entry of the preset when it has one. No
stage reads it, so editing the grid reruns nothing but the report. Each point sets a few params over the preset
(`dvc exp run -S key=value`) and reproduces the `evaluate` stage: DVC reruns only the stages those params reach and
reuses every other output (a Table 5 row reruns embed, train and P2P's evaluations; never the summaries, the splits
or the baselines' evaluations). A point is done when an experiment of its name exists on the current commit, so a
killed `make paper` runs only what is missing, and a finished one runs nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from p2p.config import Config, _read_params, deep_merge, default_params_path

#: What every point reproduces: the evaluate aggregate (it logs each method's results to MLflow, which the report
#: stage reads), and through it whatever the point's params reach.
TARGET = "evaluate"

#: The figure or table each kind of point fills, in the order the grid runs them: the cheap P2P-only points first,
#: the seeds (three training stages each) and the embedders (a new embedding of every profile) last.
FIGURES = ("table5", "fig3-diversity", "fig3-quantity", "fig6-p2p", "fig6-rag", "seeds", "table4")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Embedder(_Strict):
    """A Table 4 row: a sentence embedder by name, or the base LLM's last layer (kind `last_layer`, no name)."""

    kind: Literal["sentence", "last_layer"]
    name: str = ""
    hub: bool = False  # weights only from the Hugging Face hub: run only when they are in the local HF cache


class GridConfig(_Strict):
    seeds: list[int]  # train.seed of the extra runs of Tables 1-2 (the base run trains with `seed`)
    embedders: list[Embedder]  # Table 4, beside the preset's own model.embedder
    variants: list[Literal["summary_only", "retrieved_only", "full_history_only", "random", "shuffled"]]  # Table 5
    clusters: list[float] = Field(min_length=1)  # Fig. 3 diversity: train.cluster_fraction ...
    matched_users: int = Field(gt=0)  # ... each with train.max_users at this count
    users: list[float]  # Fig. 3 quantity: train.user_fraction (1.0 is the base run)
    retrieval_k: list[int]  # Fig. 6: profile.retrieval_k (P2P) and evaluate.retrieval_k (RAG) beside the preset's
    workers: int = Field(default=1, gt=0)  # experiments at once (`dvc exp run --run-all --jobs`)


@dataclass(frozen=True)
class Point:
    """One experiment of the grid."""

    figure: str  # one of FIGURES
    changes: tuple[tuple[str, str], ...]  # (param, value) set over the preset, as `-S param=value`
    label: str  # what the point is in its figure or table, e.g. "random" or "0.25"

    def exp_name(self, preset: str) -> str:
        """The DVC experiment's name: unique within the grid, a valid git ref (no spaces, no `..`)."""
        return f"{preset}-{self.figure}-{self.label}".replace("/", "_").replace(" ", "_")

    def set_args(self) -> list[str]:
        return [arg for key, value in self.changes for arg in ("-S", f"{key}={value}")]

    @property
    def varied(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.changes)


def load_grid(preset: str, path: str | os.PathLike | None = None) -> GridConfig:
    """The grid of `preset` from params.yaml's `grid` section (`default` deep-merged with the preset's entry)."""
    path = Path(path) if path is not None else default_params_path()
    raw = _read_params(path).get("grid") or {}
    if "default" not in raw:
        raise ValueError(f"{path}: no grid.default section; `make paper` needs one (docs/grid.md)")
    merged = deep_merge(raw["default"], raw.get(preset) or {})
    try:
        return GridConfig.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: grid for preset '{preset}': {where}: {first['msg']}") from None


def _number(value: float) -> str:
    """1.0 -> "1.0", 0.25 -> "0.25": how a float reads back from params.yaml and MLflow."""
    return repr(float(value))


def hub_cached(name: str) -> bool:
    """Whether a hub model's weights are in the local Hugging Face cache (nothing is downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(name, f), str) for f in ("model.safetensors", "pytorch_model.bin",
                                                                          "model.safetensors.index.json"))


def points(cfg: Config, grid: GridConfig, cached: Any = hub_cached) -> tuple[list[Point], list[str]]:
    """The grid's experiments for this config, and the hub embedders left out because their weights are absent.

    Settings equal to the config's own are the base run, not a point (the base run of Tables 1-2 is `make run`)."""
    out: list[Point] = []
    absent: list[str] = []
    for variant in grid.variants:
        if variant != cfg.profile.variant:
            out.append(Point("table5", (("profile.variant", variant),), variant))
    for share in grid.clusters:
        out.append(Point("fig3-diversity", (("train.cluster_fraction", _number(share)),
                                            ("train.max_users", str(grid.matched_users))), _number(share)))
    for share in grid.users:
        if not math.isclose(share, cfg.train.user_fraction):
            out.append(Point("fig3-quantity", (("train.user_fraction", _number(share)),), _number(share)))
    for k in grid.retrieval_k:
        if k != cfg.profile.retrieval_k:
            out.append(Point("fig6-p2p", (("profile.retrieval_k", str(k)),), f"k{k}"))
        if k != cfg.evaluate.retrieval_k:
            out.append(Point("fig6-rag", (("evaluate.retrieval_k", str(k)),), f"k{k}"))
    for seed in grid.seeds:
        if seed != cfg.train_seed:
            out.append(Point("seeds", (("train.seed", str(seed)),), f"seed{seed}"))
    for embedder in grid.embedders:
        if embedder.kind == "last_layer":
            if cfg.model.embedder_kind != "last_layer":
                out.append(Point("table4", (("model.embedder_kind", "last_layer"),), "last_layer"))
            continue
        if embedder.name == cfg.model.embedder and cfg.model.embedder_kind == "sentence":
            continue
        if embedder.hub and not cached(embedder.name):
            absent.append(embedder.name)
            continue
        out.append(Point("table4", (("model.embedder", embedder.name), ("model.embedder_kind", "sentence")),
                         embedder.name.split("/")[-1]))
    names = [p.exp_name(cfg.preset) for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"grid for preset '{cfg.preset}': two points share a name: {sorted(names)}")
    return out, absent
