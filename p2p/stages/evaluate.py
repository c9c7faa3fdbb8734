"""Stages `evaluate_<method>` and `evaluate`: every method x task x split on the same test queries, scored alike.

Each configured method is its own DVC stage (`answer`), depending only on what that method reads, so
a change to P2P's training reruns P2P's evaluations and leaves the baselines' cached. It loads the base model plus
what the method needs (the hypernetwork, the MT-LoRA adapter, OPPU's per task) and writes, per task and split,
`evaluate.dir/<method>/<split>/<dataset>/<task>.json` (official LaMP format) and `.run.json` beside it (seconds and
choice-scored labels). The cheap `evaluate` stage (`run`, no model) adds the golds and the synthetic
benchmark's reference rules under `evaluate.dir/reference/`, scores every method on the same user resamples and
writes reports/eval: metrics.json (split -> task -> method -> metric, each with its 95% user-cluster bootstrap
interval), comparisons.json (P2P minus every other method, paired intervals), unseen.json (on the synthetic
benchmark: P2P and the adapter baselines on the test users whose planted preference no training user has),
summary.md and history_buckets.csv (Fig. 5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2p.config import Config
from p2p.data import synth
from p2p.evaluation.answers import EvalSettings, Models, TaskInputs, run_method, split_queries, write_predictions
from p2p.evaluation.scores import (
    CI,
    MethodRun,
    SplitScorer,
    bucket_scores,
    flat_scores,
    history_buckets,
    user_history_lengths,
)
from p2p.hyper.checkpoint import load_hypernetwork
from p2p.hyper.personalize import Personalizer
from p2p.io import read_json, write_dir, write_json, write_text
from p2p.lora.peft import load_adapter
from p2p.lora.targets import target_layout
from p2p.methods import CONFIGURABLE, HYPERNETWORK_METHODS, PROPOSED, REFERENCE_METHODS
from p2p.models.loading import resolve_device, resolve_model
from p2p.paths import Paths, load_task_data, read_summaries
from p2p.profiles.noise import EmbeddingNoise
from p2p.report.stage_reports import eval_summary
from p2p.stages.common import base_model, lora_shape, openai_backend
from p2p.stages.recorder import Recorder
from p2p.tasks import get_task, headline_key
from p2p.tasks.scoring import read_outputs
from p2p.tracking import result_metrics, result_params
from p2p.vllm_client import VLLMLoraClient

log = logging.getLogger(__name__)

OnResult = Callable[[str, str, str, dict[str, Any]], None]  # (split, task, method, scores with intervals)
RunMethod = Callable[..., MethodRun]
#: The methods reported on the test users whose planted preference no training user has (unseen.json): there a
#: method can only be right by reading the profile, not by recalling a training user like this one.
UNSEEN_METHODS = ("p2p", "p2p_shuffled", "mt_lora", "query_only", "oracle")
METHOD_INFO = "method.json"


def load_models(cfg: Config, root: Path, methods: list[str] | tuple[str, ...]) -> Models:
    """The base model once, plus the trained hypernetwork and MT-LoRA when `methods` need them.

    With `generation.backend: openai` the server holds the base model: here only its tokenizer and the layout of
    its LoRA targets (read from the architecture on the meta device, no weights), and a client of the server.
    """
    paths = Paths(cfg, root)
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
    if set(HYPERNETWORK_METHODS) & set(methods):
        hyper, meta = load_hypernetwork(paths.hypernetwork, layout, device=device)
        if served:
            models.hypernetwork = hyper
        else:
            models.personalizer = Personalizer(model, tokenizer, hyper, meta, batch_size=cfg.generation.batch_size)
    if "mt_lora" in methods:
        models.mt_lora = load_adapter(paths.mt_lora, layout)
    if served:
        oa = cfg.generation.openai
        models.served = VLLMLoraClient(openai_backend(cfg, progress=False), paths.cache(oa.adapter_dir),
                                       oa.lora_dir_on_server)
    return models


def eval_settings(cfg: Config) -> EvalSettings:
    ec = cfg.evaluate
    return EvalSettings(answer_tokens=ec.answer_tokens.model_dump(), retrieval_k=ec.retrieval_k,
                        context_tokens=ec.context_tokens, seed=cfg.seed, base_llm=cfg.model.base_llm,
                        noise=EmbeddingNoise(cfg.privacy.noise.scale, cfg.privacy.noise.clip))


def task_inputs(cfg: Config, root: Path, dataset: str, task: str, summaries: bool = False,
                embeddings: bool = False) -> TaskInputs:
    """One task's data; the summaries and the profile embeddings only when asked (PAG reads the summaries, P2P the
    embeddings; no other method's stage depends on them)."""
    paths = Paths(cfg, root)
    return TaskInputs(load_task_data(paths, dataset, task, embeddings=embeddings),
                      read_summaries(paths.summaries(dataset, task)) if summaries else {},
                      paths.oppu_adapters(dataset, task), paths.synth_task(task))


def methods_for(cfg: Config, dataset: str) -> list[str]:
    """The configured methods, plus the reference rules on the synthetic benchmark."""
    return list(cfg.evaluate.methods) + (list(REFERENCE_METHODS) if dataset == "synth" else [])


# --- one method: its own stage ------------------------------------------------------------------------------------


def answer(cfg: Config, root: Path, rec: Recorder, method: str, run: RunMethod = run_method) -> None:
    """Stage `evaluate_<method>`: answer every test query of every task and split with `method`; writes its folder
    (`Paths.method_eval`) as a whole. A method that `evaluate.methods` does not name writes only its `method.json`
    (`configured: false`), so its DVC stage has an output and costs nothing. Each (split, task) is one step of
    `rec`; `run` is `p2p.evaluation.answers.run_method` (a test may give a stand-in)."""
    if method not in CONFIGURABLE:
        raise ValueError(f"unknown method {method!r}; the evaluated methods are {list(CONFIGURABLE)}")
    paths = Paths(cfg, root)
    ec = cfg.evaluate
    configured = method in ec.methods
    out = paths.method_eval(method)

    def fill(tmp: Path) -> None:
        write_json(tmp / METHOD_INFO, {"method": method, "configured": configured})
        if not configured:
            log.info("%s is not in evaluate.methods: nothing to evaluate", method)
            return
        models = load_models(cfg, root, [method])
        settings = eval_settings(cfg)
        for dataset, task in cfg.data.tasks():
            inputs = task_inputs(cfg, root, dataset, task, summaries=method == "pag",
                                 embeddings=method in HYPERNETWORK_METHODS)
            for split in ec.splits:
                if not split_queries(inputs.data.records, inputs.data.split[split]):
                    log.warning("%s/%s: no %s users; skipped", dataset, task, split)
                    continue
                result = rec.step(run, "evaluate-method", f"{method} {split} {task}", method, models, inputs, split,
                                  settings)
                write_predictions(tmp / paths.predictions(split, dataset, task, method).relative_to(out), task,
                                  result.predictions)
                write_json(tmp / paths.method_run(split, dataset, task, method).relative_to(out),
                           {"seconds": result.seconds, "choices": result.choices})
                log.info("%s %s %s: %d answers in %.1f s", split, task, method, len(result.predictions),
                         result.seconds or 0.0)

    write_dir(out, fill, ours=lambda entry: entry.name == METHOD_INFO or entry.name in ec.splits)
    rec.log_artifact(out, "predictions")


def read_method_run(paths: Paths, split: str, dataset: str, task: str, method: str) -> MethodRun:
    """A method's answers as its stage wrote them (reference rules are not read: the aggregate computes them)."""
    info = paths.method_eval(method) / METHOD_INFO
    if not info.is_file() or not read_json(info).get("configured"):
        raise ValueError(f"{method} has no evaluation: run its stage (`dvc repro evaluate_{method}`)")
    predictions = read_outputs(paths.predictions(split, dataset, task, method), get_task(task))
    extra = read_json(paths.method_run(split, dataset, task, method))
    return MethodRun(method, predictions, extra["seconds"], extra["choices"])


# --- every method: the aggregating stage ------------------------------------------------------------------------


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    """Stage `evaluate`: score every method (`aggregate_stage`), write reports/eval, and report one result per
    method x task x split with the same keys, the task's headline and P2P's paired difference first (each interval
    as `<metric>_ci95_lo` and `_hi`), so MLflow's compare view lines them up."""
    metrics, comparisons, buckets, unseen = aggregate_stage(cfg, root)
    for split, by_task in metrics.items():
        for task, by_method in by_task.items():
            for method, scores in by_method.items():
                found = result_metrics(task, method, flat_scores(scores), comparisons[split].get(task))
                rec.log_result(split, f"{method}/{task}", found,
                               {"method": method, "task": task, "split": split, **result_params(cfg)})
    out = Paths(cfg, root).report("eval")
    write_reports(metrics, comparisons, buckets, unseen, cfg.preset, out)
    rec.log_artifact(out, "reports")
    rec.publish(out / "summary.md", "evaluate-summary")


def aggregate_stage(cfg: Config, root: Path, on_result: OnResult | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Score every configured method x task x split from the method stages' outputs, on the same user resamples.
    Writes the golds and the reference rules' predictions under `evaluate.dir/reference/`. Returns (metrics: split
    -> task -> method -> scores, each metric with its `_ci95` interval over test users, plus `n_queries` and
    `n_users`; comparisons: split -> task -> `p2p-METHOD` -> metric -> {diff, ci95}; history-bucket rows; unseen:
    split -> task -> the scores of `UNSEEN_METHODS` on the test users whose planted preference is new)."""
    paths = Paths(cfg, root)
    settings = eval_settings(cfg)
    ec = cfg.evaluate
    metrics: dict[str, Any] = {split: {} for split in ec.splits}
    comparisons: dict[str, Any] = {split: {} for split in ec.splits}
    unseen: dict[str, Any] = {split: {} for split in ec.splits}
    buckets: list[dict[str, Any]] = []
    reference: dict[tuple[str, str, str, str], dict[str, str]] = {}  # (split, dataset, task, name) -> outputs
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
            reference[(split, dataset, task, "golds")] = golds
            runs: dict[str, MethodRun] = {}
            for method in methods_for(cfg, dataset):
                if method in REFERENCE_METHODS:
                    result = run_method(method, None, inputs, split, settings)  # a rule: no model
                    reference[(split, dataset, task, method)] = result.predictions
                else:
                    result = read_method_run(paths, split, dataset, task, method)
                    if set(result.predictions) != set(golds):
                        raise ValueError(f"{method} answered other {split} queries of {task} than the split holds: "
                                         f"rerun its stage (`dvc repro evaluate_{method}`)")
                runs[method] = result
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
            if dataset == "synth":
                unseen[split][task] = unseen_scores(task, inputs, split, runs, golds, owner, ec.bootstrap_resamples,
                                                    ec.bootstrap_seed)

    def fill(tmp: Path) -> None:
        for (split, dataset, task, name), outputs in reference.items():
            write_predictions(tmp / paths.predictions(split, dataset, task, name).relative_to(reference_dir), task,
                              outputs)

    reference_dir = paths.method_eval("golds").parent
    write_dir(reference_dir, fill,
              ours=lambda entry: entry.name in ("golds", *REFERENCE_METHODS))
    return metrics, comparisons, buckets, {s: v for s, v in unseen.items() if v}


def unseen_scores(task: str, inputs: TaskInputs, split: str, runs: dict[str, MethodRun], golds: dict[str, str],
                  owner: dict[str, str], resamples: int, seed: int) -> dict[str, Any]:
    """`UNSEEN_METHODS` scored on the test users of `split` whose planted preference no training user has, with
    intervals and P2P's paired differences: {users, share, scores: method -> scores, comparisons}."""
    data = inputs.data
    test_users = data.split[split]
    new = synth.unseen_preference_users(inputs.synth_dir, data.split["train"], test_users)
    out: dict[str, Any] = {"users": len(new), "test_users": len(set(test_users)),
                           "share": len(new) / max(1, len(set(test_users))), "scores": {}, "comparisons": {}}
    ids = [i for i in golds if owner[i] in new]
    if not ids:
        return out
    scorer = SplitScorer(task, {i: golds[i] for i in ids}, {i: owner[i] for i in ids}, resamples, seed)
    for method in UNSEEN_METHODS:
        run = runs.get(method)
        if run is None:
            continue
        choices = None if run.choices is None else {i: run.choices[i] for i in ids}
        out["scores"][method] = scorer.add(MethodRun(method, {i: run.predictions[i] for i in ids}, run.seconds,
                                                     choices))
    out["comparisons"] = scorer.comparisons(PROPOSED)
    return out


def write_reports(metrics: dict[str, Any], comparisons: dict[str, Any], buckets: list[dict[str, Any]],
                  unseen: dict[str, Any], preset: str, out_dir: Path) -> list[Path]:
    """`Paths.report("eval")`: metrics.json (split -> task -> method -> metric, `<metric>_ci95`, `n_queries`,
    `n_users`), headline.json (DVC's metrics file: `headline_metrics`), comparisons.json (split -> task ->
    `p2p-METHOD` -> metric -> {diff, ci95}),
    unseen.json (`aggregate_stage`), summary.md, and history_buckets.csv (Fig. 5: split, task, method, bucket, n,
    value)."""
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "headline.json", headline_metrics(metrics))
    write_json(out_dir / "comparisons.json", comparisons)
    write_json(out_dir / "unseen.json", unseen)
    write_text(out_dir / "summary.md", eval_summary(metrics, comparisons, preset, unseen))
    rows = ["split,task,method,bucket,n,value"] + [
        f"{b['split']},{b['task']},{b['method']},{b['bucket']},{int(b['n'])},"
        + ("" if b["value"] is None else f"{b['value']:.6f}") for b in buckets]
    write_text(out_dir / "history_buckets.csv", "\n".join(rows) + "\n")
    return [out_dir / name for name in ("metrics.json", "headline.json", "comparisons.json", "unseen.json",
                                        "summary.md", "history_buckets.csv")]


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The narrow file `dvc metrics show` and `dvc metrics diff` read (headline.json): per split and task, P2P's
    headline metric (`headline_key`: choice-scored accuracy or MAE, else the official metric) and its 95% interval;
    metrics.json has every method and metric."""
    out: dict[str, Any] = {}
    for split, tasks in metrics.items():
        for task, methods in tasks.items():
            scores, key = methods.get(PROPOSED, {}), headline_key(task.rsplit("/", 1)[-1])
            if scores.get(key) is None:
                continue
            lo, hi = scores.get(f"{key}_ci95") or (None, None)
            out.setdefault(split, {})[task] = {f"p2p {key}": scores[key], "ci95_lo": lo, "ci95_hi": hi}
    return out

