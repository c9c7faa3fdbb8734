"""Generation benchmark: profile summaries with and without the shared-prefix cache, and against transformers'
own `generate`, same model, same users.

    .venv/bin/python bench/generation.py [--users 16] [--batch-size 8] [--model HuggingFaceTB/SmolLM2-135M-Instruct]
                                         [--device cpu|cuda]

Builds the synthetic LaMP-2M users in a temporary directory, renders the paper's profile prompt for each, and
times greedy generation three times: through TransformersBackend (our decoding loop, p2p.models.decoding.decode)
with the prefix cache on, then off, then the same batches through `model.generate` (the loop TransformersBackend
used before; on a GPU it compiles its decoding step into the preallocated cache by itself). Prints seconds per
user, tokens/s and the ratios, all measured in this one run, and checks that all three produced the same text.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from p2p.config import load_config
from p2p.data import synth
from p2p.data.sources.lamp import load_lamp
from p2p.models.decoding import TransformersBackend, answer_text, stop_ids
from p2p.models.generation import Conversation, Sampling, chat_ids
from p2p.models.loading import load_causal_lm
from p2p.paths import Paths
from p2p.profiles.summaries import summary_prompt

ROOT = Path(__file__).resolve().parents[1]


def transformers_generate(model, tokenizer, convs: list[Conversation], sampling: Sampling,
                          batch_size: int) -> list[str]:
    """Greedy texts of `convs` through `model.generate`, batched as TransformersBackend batches (by prompt length,
    left padding, its preallocated cache), answers cut at the same stop tokens."""
    import torch

    prompts = [chat_ids(tokenizer, c) for c in convs]
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    stop, pad, texts = stop_ids(tokenizer, model), tokenizer.pad_token_id, [""] * len(prompts)
    backend = TransformersBackend(model, tokenizer, "reference", progress=False)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch],
                            device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                 past_key_values=backend._static_cache(None, len(batch),
                                                                       width + sampling.max_new_tokens))
        for row, i in enumerate(batch):
            texts[i] = answer_text(tokenizer, out[row, width:].tolist(), stop)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg = load_config(ROOT / "params.yaml")

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), seed=0, users=args.users, history_items=cfg.data.synth.history_items,
                       queries_per_user=1, tasks=("LaMP-2M",))
        records = load_lamp("LaMP-2M", Path(tmp) / "LaMP-2M")
    model, tokenizer = load_causal_lm(args.model, Paths(cfg, ROOT).model_cache, device=args.device)
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
    start = time.perf_counter()
    texts["transformers.generate"] = transformers_generate(model, tokenizer, convs, sampling, args.batch_size)
    timings["transformers.generate"] = time.perf_counter() - start
    print(f"{'transformers.generate':20s} {timings['transformers.generate']:7.1f} s  "
          f"{timings['transformers.generate'] / len(convs):5.2f} s/user")
    same = sum(a == b for a, b in zip(texts["shared-prefix cache"], texts["no cache"]))
    reference = sum(a == b for a, b in zip(texts["no cache"], texts["transformers.generate"]))
    print(f"time with cache / without = {timings['shared-prefix cache'] / timings['no cache']:.2f}; "
          f"identical greedy texts: {same} of {len(convs)}")
    print(f"time of our loop (no cache) / transformers.generate = "
          f"{timings['no cache'] / timings['transformers.generate']:.2f}; identical greedy texts: {reference} of "
          f"{len(convs)}")


if __name__ == "__main__":
    main()
