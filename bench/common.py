"""Shared set-up of the P2P benchmarks: a preset's base model, a hypernetwork of its size and real task prompts.

Speed does not depend on weight values, so the hypernetwork is randomly initialised with its head weights
perturbed (a fresh one makes B = 0, which would be a best case for nothing but is not what a trained one does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p.config import Config, load_config  # noqa: E402
from p2p.hyper.hypernet import HyperNetwork, HyperShape  # noqa: E402
from p2p.lora.hooks import LoraShape, TargetLayout  # noqa: E402
from p2p.lora.targets import frozen_base  # noqa: E402
from p2p.models.presets import EMBEDDING_DIMS  # noqa: E402
from p2p.paths import Paths  # noqa: E402
from p2p.stages.common import lora_shape  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default=None, help="params.yaml preset (default: its `preset`)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--random-weights", action="store_true",
                   help="build the preset's base model from its architecture config with random weights (speed and "
                        "memory do not depend on weight values; for gpu-small and paper where no checkpoint can be "
                        "downloaded)")
    return p


def setup(args: argparse.Namespace) -> tuple[Config, object, object, TargetLayout, LoraShape, HyperNetwork]:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "params.yaml", args.preset)
    lora = lora_shape(cfg)
    model, tokenizer, layout = frozen_base(cfg.model.base_llm, Paths(cfg, ROOT).model_cache, lora.targets,
                                           seed=cfg.seed, device=args.device, random_weights=args.random_weights,
                                           precision=cfg.model.precision)
    return cfg, model, tokenizer, layout, lora, random_hypernetwork(cfg, layout).to(model.device)


#: The task every benchmark makes its profiles and adapters for.
BENCH_TASK = "LaMP-2M"


def random_hypernetwork(cfg: Config, layout: TargetLayout, tasks: tuple[str, ...] = (BENCH_TASK,)) -> HyperNetwork:
    """A hypernetwork of the preset's size for the preset's embedder and `tasks`, random weights, head weights
    perturbed."""
    if cfg.model.embedder not in EMBEDDING_DIMS:
        raise SystemExit(f"bench: the output size of embedder {cfg.model.embedder!r} is unknown; add it to "
                         f"EMBEDDING_DIMS in p2p/models/presets.py")
    torch.manual_seed(cfg.seed)
    hc = cfg.hyper
    hyper = HyperNetwork(EMBEDDING_DIMS[cfg.model.embedder], layout, lora_shape(cfg),
                         HyperShape(hc.latent, hc.head_in, hc.blocks, hc.dropout), tasks)
    with torch.no_grad():
        for head in hyper.heads.values():
            head.weight.normal_(0, 0.02)
    return hyper


def device_name(device: torch.device) -> str:
    """What the figures were measured on, for RESULTS.md: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer around it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def task_prompts(n: int, seed: int = 0) -> list[str]:
    """n real LaMP-2M prompts (App. J) from the synthetic benchmark, one per user."""
    from p2p.data import synth
    from p2p.data.sources.lamp import load_lamp
    from p2p.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), seed=seed, users=n, history_items=2, queries_per_user=1, tasks=("LaMP-2M",))
        records = load_lamp("LaMP-2M", Path(tmp) / "LaMP-2M")
    spec = get_task("LaMP-2M")
    return [spec.build_prompt(r.queries[0].input) for r in records[:n]]


def report(result: dict) -> None:
    """Print the result as one JSON object on the last line (what `p2p bench` promises)."""
    print(json.dumps(result))
