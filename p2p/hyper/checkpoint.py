"""Hypernetwork checkpoints: safetensors + JSON, never pickled code (docs/architecture.md §14).

A checkpoint directory holds
- `hypernetwork.safetensors`: the weights;
- `p2p.json`: everything needed to rebuild it and use it (base model, embedder, LoRA shape, sizes, tasks);
- for training checkpoints also `train_state.pt`: optimizer, scheduler, RNG states and the step, loaded with
  `torch.load(weights_only=True)` (tensors, numbers and lists only), so a shared checkpoint cannot run code.

Directories are written to a temporary sibling and renamed, so a run killed while saving leaves the previous
checkpoint intact; `latest_checkpoint` picks the newest complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from p2p.hyper.hypernet import HyperNetwork, HyperShape
from p2p.io import InputError, not_a_file, read_json, write_dir
from p2p.lora.hooks import LoraShape, TargetLayout

WEIGHTS = "hypernetwork.safetensors"
META = "p2p.json"
STATE = "train_state.pt"
HISTORY = "train_history.json"
#: Bumped whenever the hypernetwork's weights change layout (2: input standardisation buffers; 3: one row of them
#: per task), so training never resumes from a checkpoint of another layout. `hyper.architecture` and
#: `hyper.standardize_inputs` live in HyperShape (in p2p.json and the train fingerprint), so they need no bump: a
#: p2p.json without them loads as `ours`, standardised (one that names the architecture `layout`, its name before
#: the rename, loads as written). A layout-2 checkpoint (one mean and std pooled over its
#: tasks) still loads: every task gets the pooled statistics it was trained with (`build_hypernetwork`).
FORMAT_VERSION = 3
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class HyperMeta:
    """What a hypernetwork was made for: enough to rebuild it on any machine and feed it the same embeddings."""

    base_llm: str
    embedder: str
    embedder_kind: str
    embed_instruction: bool
    embed_dim: int
    lora: LoraShape
    shape: HyperShape
    layers: tuple[int, ...]
    shapes: dict[str, tuple[int, int]]
    tasks: tuple[str, ...]
    seed: int
    retrieval_k: int = 2
    embed_pooling: str = "text"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, path: Path) -> HyperMeta:
        try:
            return cls(**{**data, "lora": LoraShape(**{**data["lora"], "targets": tuple(data["lora"]["targets"])}),
                          "shape": HyperShape(**_renamed(data["shape"])), "layers": tuple(data["layers"]),
                          "shapes": {k: tuple(v) for k, v in data["shapes"].items()}, "tasks": tuple(data["tasks"])})
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise InputError(path, f"not a P2P hypernetwork description ({type(err).__name__}: {err})") from None


def _renamed(shape: dict[str, Any]) -> dict[str, Any]:
    """A p2p.json `shape` with `layout` (the name of `architecture` before the rename) read as `architecture`."""
    if "layout" not in shape:
        return shape
    return {("architecture" if key == "layout" else key): value for key, value in shape.items()}


def check_layout(meta: HyperMeta, layout: TargetLayout, where: Path) -> None:
    """The base model found now must have the layers and shapes the hypernetwork was trained for."""
    if layout.layers != meta.layers or layout.shapes != meta.shapes:
        raise ValueError(f"{where}: the hypernetwork was trained for {meta.base_llm} with layers {meta.layers} and "
                         f"shapes {meta.shapes}; the loaded base model has {layout.layers} and {layout.shapes}")


def _ours(entry: Path) -> bool:
    """What a checkpoint directory of ours holds: it may be replaced (or pruned) only when it holds nothing else."""
    return entry.name in (WEIGHTS, META, STATE, HISTORY) and entry.is_file()


def save_hypernetwork(out: Path, hyper: HyperNetwork, meta: HyperMeta, state: dict[str, Any] | None = None,
                      history: list[dict[str, float]] | None = None) -> Path:
    """Write a checkpoint directory atomically, replacing an earlier one whole.

    It holds the weights and the description, and the training state and the loss history when given.
    """
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in hyper.state_dict().items()}, tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2) + "\n", encoding="utf-8")
        if state is not None:
            torch.save(state, tmp / STATE)
        if history is not None:
            (tmp / HISTORY).write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")

    return write_dir(out, write, ours=_ours)


def read_meta(path: Path) -> HyperMeta:
    meta_path = Path(path) / META
    if not os.path.lexists(meta_path):  # anything else there (a directory, a broken link): read_json says what
        raise FileNotFoundError(f"{path}: not a P2P checkpoint (no {META}); train one with `dvc repro train` or "
                                f"`p2p stage train`")
    return HyperMeta.from_json(read_json(meta_path), meta_path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's hypernetwork weights; a missing, truncated or corrupt file is an InputError naming it (read
    before the base model loads, so a bad copy fails in a second, not after minutes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(path) / WEIGHTS
    problem = not_a_file(weights)
    if problem:
        raise InputError(weights, problem)
    try:
        return load_file(weights)
    except SafetensorError as err:
        raise InputError(weights, f"not a readable safetensors file, truncated or damaged? ({err})") from None


def build_hypernetwork(path: Path, meta: HyperMeta, weights: dict[str, torch.Tensor], layout: TargetLayout,
                       device: str = "cpu") -> HyperNetwork:
    """The hypernetwork of checkpoint `path` for the base model whose targets are `layout`."""
    check_layout(meta, layout, path)
    hyper = HyperNetwork(meta.embed_dim, layout, meta.lora, meta.shape, meta.tasks)
    pooled = {name: weights[name] for name in ("input_mean", "input_std") if name in weights
              and weights[name].dim() == 1}  # layout 2: the same statistics for every task, as it was trained
    weights = {**weights, **{name: row.expand(len(meta.tasks), -1).clone() for name, row in pooled.items()}}
    try:
        hyper.load_state_dict(weights)
    except RuntimeError as err:  # missing, unexpected or misshapen tensors: the message lists them, one per line
        raise InputError(Path(path) / WEIGHTS, f"the weights do not fit {META} ({err})") from None
    return hyper.to(device).eval()


def load_hypernetwork(path: Path, layout: TargetLayout, device: str = "cpu") -> tuple[HyperNetwork, HyperMeta]:
    """Rebuild a hypernetwork from a checkpoint directory, for the base model whose targets are `layout`."""
    meta = read_meta(Path(path))
    return build_hypernetwork(Path(path), meta, read_weights(path), layout, device), meta


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def _complete(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir()
                  if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file() and (p / WEIGHTS).is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete training checkpoint under `root` (temporary half-written ones are ignored)."""
    done = _complete(root)
    return done[-1][1] if done else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (each holds optimizer state: twice the weights).

    A checkpoint directory that holds anything else (someone's file) is left alone.
    """
    for _, path in _complete(root)[:-keep]:
        if all(_ours(entry) for entry in path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)
