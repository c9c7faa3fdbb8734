"""One rank of a data-parallel training run for tests/test_distributed.py: `torchrun --nproc_per_node 2 ddp_worker.py`.

Trains the test hypernetwork on the planted samples of test_hyper_train with dropout and NEFTune off (their random
streams are per rank), and rank 0 writes the final weights to OUT (safetensors).
"""

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from test_hyper_train import DIM, planted_samples, settings

from p2p.hyper.checkpoint import HyperMeta
from p2p.hyper.distributed import from_environment, shutdown
from p2p.hyper.hypernet import HyperNetwork, HyperShape
from p2p.hyper.train import train_hypernetwork
from p2p.lora.hooks import LoraShape, find_targets, freeze
from p2p.models.loading import load_causal_lm

LORA = LoraShape(rank=4, alpha=8.0, dropout=0.0)
SHAPE = HyperShape(latent=32, head_in=32, dropout=0.0)


def run(model_cache: Path, checkpoints: Path, steps: int, dist=None, on_step=None):
    """Train from scratch (or resume from `checkpoints`); the same call in the test's own process and in each rank.

    Global batch: 2 micro-batches of 1 task x 3 samples, so two ranks get 2 and 1 rows: uneven shards.
    """
    model, tokenizer = load_causal_lm("tiny-random-qwen2", model_cache)
    freeze(model)
    layout = find_targets(model, LORA.targets)
    torch.manual_seed(0)
    hyper = HyperNetwork(DIM, layout, LORA, SHAPE, ("A", "B"))
    meta = HyperMeta(base_llm="tiny-random-qwen2", embedder="none", embedder_kind="sentence", embed_instruction=False,
                     embed_dim=DIM, lora=LORA, shape=SHAPE, layers=layout.layers, shapes=layout.shapes,
                     tasks=("A", "B"), seed=0)
    tc = settings(steps=steps, neftune_alpha=0.0, checkpoint_every=2, tasks_per_batch=1, samples_per_task=3)
    result = train_hypernetwork(model, tokenizer, hyper, meta, planted_samples(), tc, checkpoints, seed=0,
                                progress=False, dist=dist, on_step=on_step)
    return hyper, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_cache", type=Path)
    parser.add_argument("checkpoints", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    dist = from_environment()
    assert dist.world_size == int(os.environ["WORLD_SIZE"]) > 1
    hyper, result = run(args.model_cache, args.checkpoints, args.steps, dist)
    if dist.is_main:
        save_file({k: v.contiguous() for k, v in hyper.state_dict().items()}, args.out)
        args.out.with_suffix(".json").write_text(json.dumps(result.history))
    shutdown(dist)


if __name__ == "__main__":
    main()
