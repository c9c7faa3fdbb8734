"""Per-pass speed: each change that makes a model pass cheaper, before against after, in one process.

    p2p bench passes --preset cpu [--repeats 3] [--prompts 16] [--random-weights]

On the preset's base model, each pair of variants runs as A B A B ... (`--repeats` rounds after one untimed warm-up
of each), and the median seconds are reported, so both sides of a ratio saw the same machine:
- bf16 autocast (`model.precision`) against fp32, on three passes: a training step (hypernetwork forward, LoRA
  hooks, backward: `micro_step`) on a micro-batch of `train.samples_per_task` synthetic prompts of LaMP-2M and of
  LaMP-3 with their gold answers; choice scoring with greedy answers (`score_and_answer`) of `--prompts` LaMP-2M
  prompts; summary generation (the summarize stage's prompts, greedy, `summarize.max_new_tokens` new tokens);
- prompts rendered with the chat template's default system turn (`apply_chat_template`, as before) against
  without it (`chat_ids`), on the same training step (in training's precision) and scoring (in evaluation's);
- summaries as the summarize stage samples them, in bf16: autocast over fp32 weights against bf16 weights
  (`stages.common.generation_backend`), and bf16 weights decoding into transformers' growing cache against the
  preallocated one (`TransformersBackend`);
- full-history choice scoring (`--prompts` queries, `data.synth.queries_per_user` per user, in evaluation's
  precision): every prompt encoded whole after the common instruction against each user's history encoded once
  (`choice.prefix_groups`);
- the training step's micro-batch as one padded batch against one part per task (`hyper.train.task_parts`);
- choice scoring (in evaluation's precision) and sampled summaries (bf16 weights) of twice `--prompts` prompts and
  users, in batches of 16 against 32 (`generation.batch_size`);
- the training step as autocast casts it over fp32 weights with SDPA attention against `training_kernels` (bf16
  copies of the frozen weights, eager attention on a CPU), which every other training variant here runs with.
bf16 is measured even where the CPU has no native bf16 (the output says so; `auto` computes in fp32 there).
Last line: one JSON object with `<pass>_<variant>_s` and `<pass>_<change>_speedup` (before / after).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from common import device_name, parser, random_hypernetwork, report, setup, synchronize

from p2p.baselines.prompting import PromptSettings, build_prompt
from p2p.data import synth
from p2p.data.sources.lamp import load_lamp
from p2p.hyper.train import micro_step, task_parts
from p2p.models import choice
from p2p.models.decoding import TransformersBackend, repeated_cache
from p2p.models.generation import Sampling, prompt_ids
from p2p.models.precision import compute_dtype, cpu_has_native_bf16, set_compute_dtype, training_kernels
from p2p.profiles.summaries import summary_prompt
from p2p.tasks.registry import choice_labels, get_task
from p2p.training import IGNORE, Encoded, Sample, encode, left_pad

TASKS = ("LaMP-2M", "LaMP-3")  # the training micro-batch's tasks; scoring and summaries use the first


def template_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """The chat template's own rendering, its default system turn included (how prompts were rendered before
    `chat_ids`)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                         return_dict=True)["input_ids"]


def train_rows(tokenizer, samples: list[Sample], max_length: int, system_turn: bool) -> list[Encoded]:
    """The training rows of `samples` as `p2p.training.encode` makes them, or (`system_turn`) the same with the
    template's default system turn: prompt then answer, loss on the answer, left-truncated."""
    if not system_turn:
        return [encode(tokenizer, s, max_length=max_length, completion_only=True) for s in samples]
    encoded = []
    for s in samples:
        user = [{"role": "user", "content": s.prompt}]
        head = template_ids(tokenizer, user, True)
        full = template_ids(tokenizer, user + [{"role": "assistant", "content": s.target}], False)
        labels = [IGNORE] * len(head) + full[len(head):]
        encoded.append(Encoded(full[-max_length:], labels[-max_length:]))
    return encoded


@contextlib.contextmanager
def patched(owner, name: str, replacement, enabled: bool) -> Iterator[None]:
    """`owner.name` is `replacement` while inside (when `enabled`): how each "before" variant brings back the old
    behaviour in the same process as the "after"."""
    saved = getattr(owner, name)
    if enabled:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def default_system_turn(enabled: bool) -> contextlib.AbstractContextManager:
    """Choice scoring renders its prompts with the template's default system turn (when `enabled`)."""
    return patched(choice, "prompt_ids", lambda tokenizer, prompt: template_ids(
        tokenizer, [{"role": "user", "content": prompt}], True), enabled)


def _growing(self, prefix, rows: int, length: int):
    return None if prefix is None else repeated_cache(prefix, rows)


def growing_cache(enabled: bool) -> contextlib.AbstractContextManager:
    """TransformersBackend decodes into transformers' default cache, which grows by concatenation (as before the
    preallocated one), when `enabled`."""
    return patched(TransformersBackend, "_static_cache", _growing, enabled)


def ungrouped(enabled: bool) -> contextlib.AbstractContextManager:
    """Choice scoring encodes no prefix a group of prompts shares (each prompt whole after the common instruction, as
    before `prefix_groups`) when `enabled`."""
    return patched(choice, "prefix_groups", lambda sequences, min_shared: [[i] for i in range(len(sequences))],
                   enabled)


def interleaved(variants: dict[str, Callable[[], None]], repeats: int, device) -> dict[str, float]:
    """Median seconds of each variant over `repeats` rounds of A B A B ..., after one untimed call of each."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of A B (medians are reported)")
    p.add_argument("--prompts", type=int, default=16, help="LaMP-2M prompts scored and users summarised")
    args = p.parse_args()
    if args.repeats < 1 or args.prompts < 1:
        raise SystemExit("bench passes: --repeats and --prompts must be at least 1")
    cfg, model, tokenizer, layout, _, _ = setup(args)
    device = model.device
    hyper = random_hypernetwork(cfg, layout, TASKS).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(Path(tmp), seed=cfg.seed, users=2 * args.prompts, history_items=cfg.data.synth.history_items,
                       queries_per_user=cfg.data.synth.queries_per_user, tasks=TASKS)
        records = {task: load_lamp(task, Path(tmp) / task) for task in TASKS}

    fp32, bf16 = torch.float32, torch.bfloat16
    native = device.type == "cuda" or cpu_has_native_bf16()
    train_dtype = compute_dtype(cfg.model.precision, device)  # what training computes in here
    eval_dtype = bf16 if device.type == "cuda" else fp32  # evaluation: fp32 on a CPU (stages.common.base_model)

    rows = records[TASKS[0]][:cfg.train.samples_per_task] + records[TASKS[1]][:cfg.train.samples_per_task]
    samples = [Sample(r.task, r.user_id, r.queries[0].id, get_task(r.task).build_prompt(r.queries[0].input),
                      r.queries[0].output, None) for r in rows]
    encoded = {turn: train_rows(tokenizer, samples, cfg.train.max_length, turn) for turn in (True, False)}
    profiles = torch.randn(len(samples), hyper.embed_dim, device=device)

    def train_step(dtype: torch.dtype, system_turn: bool = False, split: bool = True, kernels: bool = True) -> None:
        tasks = [s.task for s in samples]
        rows = encoded[system_turn]
        parts = task_parts(rows, tasks, tokenizer.pad_token_id, device) if split else \
            [(list(range(len(rows))), left_pad(rows, tokenizer.pad_token_id, device))]
        set_compute_dtype(model, dtype)
        model.train()
        hyper.train()
        with training_kernels(model) if kernels else contextlib.nullcontext():
            micro_step(model, hyper, hyper, parts, profiles, [s.task for s in samples], cfg.train, 1.0)
        hyper.zero_grad(set_to_none=True)

    users = records[TASKS[0]][:args.prompts]
    prompts = [get_task(TASKS[0]).build_prompt(r.queries[0].input) for r in users]

    def score(dtype: torch.dtype, system_turn: bool = False) -> None:
        set_compute_dtype(model, dtype)
        model.eval()
        with default_system_turn(system_turn):
            choice.score_and_answer(model, tokenizer, prompts, choice_labels(TASKS[0]),
                                    max_new_tokens=cfg.evaluate.answer_tokens.classification,
                                    batch_size=cfg.generation.batch_size)

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    def summary_conversations(records_: list) -> list[list[dict[str, str]]]:
        """The summarize stage's prompt of each user, as one-turn conversations."""
        return [[{"role": "user", "content": summary_prompt(r, max_item_chars=cfg.summarize.max_item_chars,
                                                            token_budget=cfg.summarize.history_token_budget,
                                                            count_tokens=count)}] for r in records_]

    conversations = summary_conversations(users)
    backend = TransformersBackend(model, tokenizer, "bench", batch_size=cfg.generation.batch_size, progress=False)
    generated: dict[torch.dtype, int] = {}

    def summarize(dtype: torch.dtype, runner: TransformersBackend = backend) -> None:
        set_compute_dtype(model, dtype)
        model.eval()
        out = runner.generate(conversations, Sampling(max_new_tokens=cfg.summarize.max_new_tokens))
        generated[dtype] = sum(g.completion_tokens for g in out)

    # The summarize stage's model: bf16 weights where it computes in bf16 (stages.common.generation_backend).
    bf16_model = copy.deepcopy(model).to(bf16)
    set_compute_dtype(bf16_model, bf16)
    bf16_backend = TransformersBackend(bf16_model, tokenizer, "bench", batch_size=cfg.generation.batch_size,
                                       progress=False)
    sampled = Sampling(max_new_tokens=cfg.summarize.max_new_tokens, temperature=cfg.summarize.temperature,
                       top_p=cfg.summarize.top_p, seed=cfg.seed)

    def summarize_bf16(weights: bool, static: bool = True) -> None:
        runner = bf16_backend if weights else backend
        set_compute_dtype(model, bf16)
        with growing_cache(not static):
            runner.generate(conversations, sampled)

    # Full-history prompts of every query of the first users: each user's history is the start of all their prompts.
    history_rows = [(r, q) for r in users for q in r.queries][:args.prompts]
    prompt_settings = PromptSettings(cfg.evaluate.retrieval_k, cfg.evaluate.context_tokens)
    history_prompts = [build_prompt("full_history", r, q, None, prompt_settings, count) for r, q in history_rows]

    def score_history(grouped: bool) -> None:
        set_compute_dtype(model, eval_dtype)
        model.eval()
        with ungrouped(not grouped):
            choice.score_and_answer(model, tokenizer, history_prompts, choice_labels(TASKS[0]),
                                    max_new_tokens=cfg.evaluate.answer_tokens.classification,
                                    batch_size=cfg.generation.batch_size)

    # Batch size (`generation.batch_size`): twice the prompts and users, in batches of 16 against 32.
    pairs = [get_task(TASKS[0]).build_prompt(q.input) for r in records[TASKS[0]] for q in r.queries][:2 * args.prompts]
    doubled = summary_conversations(records[TASKS[0]])

    def score_batch(size: int) -> None:
        set_compute_dtype(model, eval_dtype)
        model.eval()
        choice.score_and_answer(model, tokenizer, pairs, choice_labels(TASKS[0]),
                                max_new_tokens=cfg.evaluate.answer_tokens.classification, batch_size=size)

    def summarize_batch(size: int) -> None:
        runner = TransformersBackend(bf16_model, tokenizer, "bench", batch_size=size, progress=False)
        runner.generate(doubled, sampled)

    # (pass, change, before's name, before, after's name, after)
    comparisons = [
        ("train", "bf16", "fp32", lambda: train_step(fp32), "bf16", lambda: train_step(bf16)),
        ("score", "bf16", "fp32", lambda: score(fp32), "bf16", lambda: score(bf16)),
        ("summary", "bf16", "fp32", lambda: summarize(fp32), "bf16", lambda: summarize(bf16)),
        ("summary", "bf16_weights", "autocast", lambda: summarize_bf16(False), "bf16_weights",
         lambda: summarize_bf16(True)),
        ("summary", "static_cache", "growing", lambda: summarize_bf16(True, static=False), "static",
         lambda: summarize_bf16(True)),
        ("score", "user_prefix", "whole_prompts", lambda: score_history(False), "user_prefix",
         lambda: score_history(True)),
        ("train", "kernels", "autocast_sdpa", lambda: train_step(train_dtype, kernels=False), "kernels",
         lambda: train_step(train_dtype)),
        ("score", "batch_32", "batch_16", lambda: score_batch(16), "batch_32", lambda: score_batch(32)),
        ("summary", "batch_32", "batch_16", lambda: summarize_batch(16), "batch_32", lambda: summarize_batch(32)),
        ("train", "task_parts", "one_batch", lambda: train_step(train_dtype, split=False), "task_parts",
         lambda: train_step(train_dtype)),
        ("train", "no_system_turn", "system_turn", lambda: train_step(train_dtype, True),
         "no_system_turn", lambda: train_step(train_dtype)),
        ("score", "no_system_turn", "system_turn", lambda: score(eval_dtype, True),
         "no_system_turn", lambda: score(eval_dtype)),
    ]
    print(f"{cfg.model.base_llm} on {device_name(device)}; bf16 "
          + ("native" if native else "NOT native on this CPU (emulated: `model.precision: auto` computes in fp32 "
                                     "here; the bf16 figures show what it would cost)")
          + f"; medians of {args.repeats} interleaved rounds")
    result = {"preset": cfg.preset, "model": cfg.model.base_llm, "device": device_name(device),
              "random_weights": args.random_weights, "bf16_native": native, "repeats": args.repeats,
              "train_rows": len(samples), "prompts": len(prompts), "train_dtype": str(train_dtype),
              "eval_dtype": str(eval_dtype)}
    print(f"{'pass':8s} {'change':15s} {'before s':>9s} {'after s':>9s} {'speedup':>8s}")
    for name, change, before, run_before, after, run_after in comparisons:
        seconds = interleaved({before: run_before, after: run_after}, args.repeats, device)
        result[f"{name}_{before}_s"], result[f"{name}_{after}_s"] = round(seconds[before], 4), round(seconds[after], 4)
        result[f"{name}_{change}_speedup"] = round(seconds[before] / seconds[after], 3)
        print(f"{name:8s} {change:15s} {seconds[before]:9.3f} {seconds[after]:9.3f} "
              f"{result[f'{name}_{change}_speedup']:7.2f}x")

    rendered = {"system_turn": [template_ids(tokenizer, [{"role": "user", "content": p}], True) for p in prompts],
                "no_system_turn": [prompt_ids(tokenizer, p) for p in prompts]}
    for turn, system_turn in (("system_turn", True), ("no_system_turn", False)):
        result[f"train_tokens_per_row_{turn}"] = round(statistics.mean(len(e.input_ids)
                                                                       for e in encoded[system_turn]), 1)
        result[f"score_tokens_per_row_{turn}"] = round(statistics.mean(len(ids) for ids in rendered[turn]), 1)
        print(f"tokens per row, {turn:15s} training {result[f'train_tokens_per_row_{turn}']:6.1f}  "
              f"scoring {result[f'score_tokens_per_row_{turn}']:6.1f}")
    result["summary_tokens_fp32"], result["summary_tokens_bf16"] = generated[fp32], generated[bf16]
    print(f"summary tokens generated: fp32 {generated[fp32]}, bf16 {generated[bf16]}")
    report(result)


if __name__ == "__main__":
    main()
