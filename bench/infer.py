"""Inference benchmark: greedy tokens/s of a batch where every row has its own generated adapter.

    p2p bench infer --preset cpu [--rows 16] [--new-tokens 128] [--repeats 1] [--random-weights]

Three ways to answer the same 16 prompts for 16 different users, same base model, same greedy decoding, every
row forced to generate exactly --new-tokens tokens:
- base: the bare base model, one batch (the ceiling);
- p2p batch: the hypernetwork makes 16 adapters in one call and the hooks apply them per row in one batch (the
  adapter-making time is included);
- peft swap: one PEFT LoRA model whose adapter weights are swapped in for each user, one user at a time (the usual
  way to serve many LoRAs without batching them).
The prompts are real LaMP-2M prompts (~220 tokens). On a CPU their prefill is compute-bound and costs the same
batched or not, so short answers narrow every gap; --new-tokens sets how decode-heavy the comparison is.
Prints each timing and, last, one JSON object with tokens_per_s_base, tokens_per_s_p2p_batch,
tokens_per_s_peft_swap, ratio_vs_base and speedup_vs_peft_swap (best of --repeats, all measured in this run).
"""

from __future__ import annotations

import time

import torch
from common import BENCH_TASK, device_name, parser, report, setup, synchronize, task_prompts

from p2p.lora.hooks import adapters_applied
from p2p.models.precision import autocast


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    cfg, model, tokenizer, layout, lora, hyper = setup(args)
    prompts = task_prompts(args.rows, cfg.seed)
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False) for q in prompts]
    batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    singles = [tokenizer(c, return_tensors="pt", add_special_tokens=False).to(model.device) for c in chats]
    profiles = torch.randn(args.rows, hyper.embed_dim, device=model.device)
    n = args.new_tokens
    gen = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "temperature": None, "top_p": None,
           "top_k": None, "pad_token_id": tokenizer.pad_token_id}
    warm = {**gen, "max_new_tokens": 2, "min_new_tokens": 2}  # a short warm-up run (one user for the swap path)

    def base(kw: dict) -> None:
        model.generate(**batch, **kw)

    def p2p_batch(kw: dict) -> None:
        with autocast(model):
            adapters = hyper(profiles, BENCH_TASK)
        with adapters_applied(model, layout, lora, adapters):
            model.generate(**batch, **kw)

    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets), use_rslora=True,
                        lora_dropout=0.0)
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    modules = dict(peft_model.named_modules())

    def peft_swap(kw: dict) -> None:
        adapters = hyper(profiles, BENCH_TASK)
        for user, single in enumerate(singles[:1] if kw is warm else singles):
            for kind, names in layout.names.items():
                for position, name in enumerate(names):
                    module = modules[f"base_model.model.{name}"]
                    module.lora_A["default"].weight.copy_(adapters.a[kind][user, position])
                    module.lora_B["default"].weight.copy_(adapters.b[kind][user, position])
            peft_model.generate(**single, **kw)

    timings = {}
    with torch.inference_mode():
        for label, fn in (("base", base), ("p2p_batch", p2p_batch), ("peft_swap", peft_swap)):
            fn(warm)
            best = float("inf")
            for _ in range(args.repeats):
                synchronize(model.device)
                start = time.perf_counter()
                fn(gen)
                synchronize(model.device)
                best = min(best, time.perf_counter() - start)
            timings[label] = best
            print(f"{label:10s} {best:7.2f} s  {args.rows * n / best:8.1f} tokens/s")
    tps = {label: args.rows * n / seconds for label, seconds in timings.items()}
    report({"preset": cfg.preset, "model": cfg.model.base_llm, "device": device_name(model.device),
            "random_weights": args.random_weights, "rows": args.rows,
            "new_tokens": n, "tokens_per_s_base": round(tps["base"], 2),
            "tokens_per_s_p2p_batch": round(tps["p2p_batch"], 2), "tokens_per_s_peft_swap": round(tps["peft_swap"], 2),
            "ratio_vs_base": round(tps["p2p_batch"] / tps["base"], 3),
            "speedup_vs_peft_swap": round(tps["p2p_batch"] / tps["peft_swap"], 2)})


if __name__ == "__main__":
    main()
