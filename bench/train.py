"""Training benchmark: one hypernetwork optimizer step vs one single-LoRA (PEFT) step on the same batch.

    p2p bench train --preset cpu [--batch 8] [--steps 3] [--random-weights] [--[no-]gradient-checkpointing]

Same base model, same real task prompts with their answers, same loss (per-sample mean cross-entropy on the
answer tokens, p2p.training.lm_loss), AdamW on the trainable part only:
- hyper: the hypernetwork makes one adapter per row, the hooks apply them, backward reaches the hypernetwork;
- lora: one PEFT LoRA of the same rank on the same modules (what MT-LoRA trains), shared by all rows.
Each variant runs in its own process so its peak memory can be read (CUDA: max allocated; CPU: peak RSS). On a GPU
both run as training does there: bf16 base model, bf16 autocast (`model.precision`; on a CPU too where it has native
bf16), SDPA attention, and activation checkpointing when
the preset's train.gradient_checkpointing says so (paper, gpu-small).
Last line: one JSON object with step_s_hyper, step_s_lora, ratio, peak_mb_hyper, peak_mb_lora.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import torch
from common import BENCH_TASK, device_name, parser, report, setup, synchronize, task_prompts


def _batch(tokenizer, rows: int, seed: int, max_length: int, device):
    from p2p.training import Sample, encode, left_pad

    prompts = task_prompts(rows, seed)
    samples = [Sample("LaMP-2M", str(i), str(i), prompt, "dark comedy", None) for i, prompt in enumerate(prompts)]
    return left_pad([encode(tokenizer, s, max_length=max_length, completion_only=True) for s in samples],
                    tokenizer.pad_token_id, device)


def run_variant(variant: str, argv: list[str], queue) -> None:
    sys.argv = ["train.py", *argv]
    args = _args()
    from p2p.hyper.train import micro_step
    from p2p.models.precision import autocast
    from p2p.training import activation_checkpointing, lm_loss

    cfg, model, tokenizer, layout, lora, hyper = setup(args)
    tc = cfg.train
    if args.gradient_checkpointing is not None:
        tc = tc.model_copy(update={"gradient_checkpointing": args.gradient_checkpointing})
    batch = _batch(tokenizer, args.batch, cfg.seed, tc.max_length, model.device)
    profiles = torch.randn(args.batch, hyper.embed_dim, device=model.device)
    model.train()
    if variant == "hyper":
        hyper.train()
        params = list(hyper.parameters())

        def forward_backward() -> None:  # exactly the training loop's micro-step
            micro_step(model, hyper, hyper, [(list(range(args.batch)), batch)], profiles, [BENCH_TASK] * args.batch,
                       tc, 1.0)
    else:
        from peft import LoraConfig, get_peft_model

        del hyper
        frozen = model  # carries the compute precision
        model = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.targets), use_rslora=True))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]

        def forward_backward() -> None:
            with autocast(frozen):
                loss = lm_loss(model, batch, tc.label_smoothing)
            loss.backward()

    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        forward_backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    base = model.get_base_model() if variant == "lora" else model
    with activation_checkpointing(base, tc.gradient_checkpointing):
        step()  # warm-up
        synchronize(model.device)
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            synchronize(model.device)
            times.append(time.perf_counter() - start)
    if model.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    queue.put({"variant": variant, "step_s": min(times), "peak_mb": peak, "preset": cfg.preset,
               "model": cfg.model.base_llm, "device": device_name(model.device),
               "trainable": sum(p.numel() for p in params), "tokens": int(batch["attention_mask"].sum()),
               "gradient_checkpointing": tc.gradient_checkpointing})


def _args():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute the decoder layers in backward (default: the preset's train.gradient_checkpointing)")
    return p.parse_args()


def main() -> None:
    args = _args()
    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("hyper", "lora"):
        queue = ctx.Queue()
        proc = ctx.Process(target=run_variant, args=(variant, sys.argv[1:], queue))
        proc.start()
        results[variant] = queue.get()
        proc.join()
        r = results[variant]
        print(f"{variant:6s} step {r['step_s']:.3f} s  peak {r['peak_mb']:.0f} MB  trainable {r['trainable']:,}  "
              f"batch {args.batch} rows, {r['tokens']} tokens")
    h, lo = results["hyper"], results["lora"]
    report({"preset": h["preset"], "model": h["model"], "device": h["device"], "random_weights": args.random_weights,
            "gradient_checkpointing": h["gradient_checkpointing"], "batch": args.batch,
            "step_s_hyper": round(h["step_s"], 4), "step_s_lora": round(lo["step_s"], 4),
            "ratio": round(h["step_s"] / lo["step_s"], 3), "peak_mb_hyper": round(h["peak_mb"], 1),
            "peak_mb_lora": round(lo["peak_mb"], 1), "trainable_hyper": h["trainable"],
            "trainable_lora": lo["trainable"]})


if __name__ == "__main__":
    main()
