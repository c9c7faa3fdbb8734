"""Stage `evaluate`: every method x task x split on the same test queries, scored alike (p2p.evaluation).

Loads the base model once, plus what the configured methods need (the hypernetwork, the MT-LoRA adapter; OPPU's
per task), then per task and split writes every method's answers in the official LaMP format under
`evaluate.dir/<split>/<dataset>/<task>/<method>.json` (with golds.json beside them) and reports/eval: metrics.json
(split -> task -> method -> metric, each with its 95% user-cluster bootstrap interval), comparisons.json (P2P minus
every other method, with paired intervals), summary.md and history_buckets.csv (Fig. 5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2p.config import Config
from p2p.evaluation import (
    CI,
    EvalSettings,
    MethodRun,
    Models,
    SplitScorer,
    TaskInputs,
    bucket_scores,
    history_buckets,
    run_method,
    split_queries,
    user_history_lengths,
    write_predictions,
)
from p2p.hyper.checkpoint import load_hypernetwork
from p2p.hyper.personalize import Personalizer
from p2p.io import write_json, write_text
from p2p.layout import Layout, load_task_data, read_summaries
from p2p.lora.peft import load_adapter
from p2p.lora.targets import target_layout
from p2p.methods import HYPERNETWORK_METHODS, REFERENCE_METHODS
from p2p.models.loading import resolve_device, resolve_model
from p2p.report.summaries import eval_summary
from p2p.serving.vllm import VLLMLoraClient
from p2p.stages.common import base_model, lora_shape, openai_backend

log = logging.getLogger(__name__)

OnResult = Callable[[str, str, str, dict[str, Any]], None]  # (split, task, method, scores with intervals)
RunMethod = Callable[..., MethodRun]


def load_models(cfg: Config, root: Path) -> Models:
    """The base model once, plus the trained hypernetwork and MT-LoRA when the configured methods need them.

    With `generation.backend: openai` the server holds the base model: here only its tokenizer and the layout of
    its LoRA targets (read from the architecture on the meta device, no weights), and a client of the server.
    """
    paths = Layout(cfg, root)
    served = cfg.generation.backend == "openai"
    if served:
        from transformers import AutoTokenizer

        model, device = None, resolve_device(cfg.model.device)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.base_llm, paths.model_cache, seed=cfg.seed))
        layout = target_layout(cfg.model.base_llm, paths.model_cache, tuple(cfg.lora.targets))
    else:
        model, tokenizer, layout = base_model(cfg, root)
        device = str(model.device)
    models = Models(model, tokenizer, layout, lora_shape(cfg), cfg.generation.batch_size)
    if set(HYPERNETWORK_METHODS) & set(cfg.evaluate.methods):
        hyper, meta = load_hypernetwork(paths.hypernetwork, layout, device=device)
        if served:
            models.hypernetwork = hyper
        else:
            models.personalizer = Personalizer(model, tokenizer, hyper, meta, batch_size=cfg.generation.batch_size)
    if "mt_lora" in cfg.evaluate.methods:
        models.mt_lora = load_adapter(paths.mt_lora, layout)
    if served:
        oa = cfg.generation.openai
        models.served = VLLMLoraClient(openai_backend(cfg, progress=False), paths.cache(oa.adapter_dir),
                                       oa.lora_dir_on_server)
    return models


def eval_settings(cfg: Config) -> EvalSettings:
    ec = cfg.evaluate
    return EvalSettings(answer_tokens=ec.answer_tokens.model_dump(), retrieval_k=ec.retrieval_k,
                        context_tokens=ec.context_tokens, seed=cfg.seed, base_llm=cfg.model.base_llm)


def task_inputs(cfg: Config, root: Path, dataset: str, task: str) -> TaskInputs:
    paths = Layout(cfg, root)
    return TaskInputs(load_task_data(paths, dataset, task), read_summaries(paths.summaries(dataset, task)),
                      paths.oppu_adapters(dataset, task), paths.synth_task(task))


def methods_for(cfg: Config, dataset: str) -> list[str]:
    """The configured methods, plus the reference rules on the synthetic benchmark."""
    return list(cfg.evaluate.methods) + (list(REFERENCE_METHODS) if dataset == "synth" else [])


def evaluate_stage(cfg: Config, root: Path, on_result: OnResult | None = None, run: RunMethod = run_method
                   ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run and score every configured method x task x split; writes the predictions and golds under
    `evaluate.dir`. Returns (metrics: split -> task -> method -> scores, each metric with its `_ci95` interval over
    test users, plus `n_queries` and `n_users`; comparisons: split -> task -> `p2p-METHOD` -> metric -> {diff,
    ci95}; history-bucket rows). `run` is `p2p.evaluation.run_method` or a wrapper of it (the flow makes each call
    a Prefect task)."""
    paths = Layout(cfg, root)
    models = load_models(cfg, root)
    settings = eval_settings(cfg)
    ec = cfg.evaluate
    metrics: dict[str, Any] = {split: {} for split in ec.splits}
    comparisons: dict[str, Any] = {split: {} for split in ec.splits}
    buckets: list[dict[str, Any]] = []
    for dataset, task in cfg.data.tasks():
        inputs = task_inputs(cfg, root, dataset, task)
        data = inputs.data
        for split in ec.splits:
            pairs = split_queries(data.records, data.split[split])
            if not pairs:
                log.warning("%s/%s: no %s users; skipped", dataset, task, split)
                continue
            golds = {q.id: q.output for _, q in pairs}
            owner = {q.id: r.user_id for r, q in pairs}
            scorer = SplitScorer(task, golds, owner, ec.bootstrap_resamples, ec.bootstrap_seed)
            bucket_of = history_buckets(user_history_lengths(data.records, data.split[split]), ec.history_buckets)
            write_predictions(paths.predictions(split, dataset, task, "golds"), task, golds)
            for method in methods_for(cfg, dataset):
                result = run(method, models, inputs, split, settings)
                write_predictions(paths.predictions(split, dataset, task, method), task, result.predictions)
                scores = scorer.add(result)
                metrics[split].setdefault(task, {})[method] = scores
                buckets += [{"split": split, "task": task, "method": method, "bucket": b, **v}
                            for b, v in bucket_scores(task, result, golds, owner, bucket_of).items()]
                log.info("%s %s %s: %s", split, task, method, ", ".join(
                    f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in scores.items() if not k.endswith(CI)))
                if on_result is not None:
                    on_result(split, task, method, scores)
            found = scorer.comparisons()
            if found:
                comparisons[split][task] = found
    return metrics, comparisons, buckets


def write_reports(metrics: dict[str, Any], comparisons: dict[str, Any], buckets: list[dict[str, Any]], preset: str,
                  out_dir: Path) -> list[Path]:
    """`Layout.report("eval")`: metrics.json (DVC metrics: split -> task -> method -> metric, `<metric>_ci95`,
    `n_queries`, `n_users`), comparisons.json (split -> task -> `p2p-METHOD` -> metric -> {diff, ci95}), summary.md,
    and history_buckets.csv (Fig. 5: split, task, method, bucket, n, value)."""
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "comparisons.json", comparisons)
    write_text(out_dir / "summary.md", eval_summary(metrics, comparisons, preset))
    rows = ["split,task,method,bucket,n,value"] + [
        f"{b['split']},{b['task']},{b['method']},{b['bucket']},{int(b['n'])},"
        + ("" if b["value"] is None else f"{b['value']:.6f}") for b in buckets]
    write_text(out_dir / "history_buckets.csv", "\n".join(rows) + "\n")
    return [out_dir / name for name in ("metrics.json", "comparisons.json", "summary.md", "history_buckets.csv")]
