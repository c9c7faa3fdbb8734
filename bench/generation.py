"""Generation benchmark: profile summaries with and without the shared-prefix cache, same model, same users.

    .venv/bin/python bench/generation.py [--users 16] [--batch-size 8] [--model HuggingFaceTB/SmolLM2-135M-Instruct]

Builds the synthetic LaMP-2M users in a temporary directory, renders the paper's profile prompt for each, and
times greedy generation through TransformersBackend twice (prefix cache on, then off), printing seconds per user,
tokens/s and the ratio, all measured in this one run; it also checks that both runs produced the same text.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from p2p.config import load_config
from p2p.data import synth
from p2p.data.sources.lamp import load_lamp
from p2p.models.decoding import TransformersBackend
from p2p.models.generation import Sampling
from p2p.models.loading import load_causal_lm
from p2p.paths import Paths
from p2p.profiles.summaries import summary_prompt

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    args = parser.parse_args()
    cfg = load_config(ROOT / "params.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), seed=0, users=args.users, history_items=cfg.data.synth.history_items,
                       queries_per_user=1, tasks=("LaMP-2M",))
        records = load_lamp("LaMP-2M", Path(tmp) / "LaMP-2M")
    model, tokenizer = load_causal_lm(args.model, Paths(cfg, ROOT).model_cache)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    convs = [[{"role": "user", "content": summary_prompt(r, max_item_chars=cfg.summarize.max_item_chars,
                                                         token_budget=cfg.summarize.history_token_budget,
                                                         count_tokens=count)}] for r in records]
    backend = TransformersBackend(model, tokenizer, args.model, batch_size=args.batch_size, progress=False)
    sampling = Sampling(max_new_tokens=cfg.summarize.max_new_tokens)

    timings, texts = {}, {}
    for label, min_prefix in (("shared-prefix cache", TransformersBackend.MIN_SHARED_PREFIX), ("no cache", 10**9)):
        backend.MIN_SHARED_PREFIX = min_prefix
        start = time.perf_counter()
        out = backend.generate(convs, sampling)
        timings[label] = time.perf_counter() - start
        texts[label] = [g.text for g in out]
        prompt, completion = sum(g.prompt_tokens for g in out), sum(g.completion_tokens for g in out)
        print(f"{label:20s} {timings[label]:7.1f} s  {timings[label] / len(convs):5.2f} s/user  "
              f"{prompt / len(convs):.0f} prompt + {completion / len(convs):.0f} completion tokens/user  "
              f"{completion / timings[label]:.1f} completion tokens/s")
    same = sum(a == b for a, b in zip(texts["shared-prefix cache"], texts["no cache"]))
    print(f"time with cache / without = {timings['shared-prefix cache'] / timings['no cache']:.2f}; "
          f"identical greedy texts: {same} of {len(convs)}")


if __name__ == "__main__":
    main()
