"""Stage `judge`: the LLM judge's 1-5 scores of every judged method's answers on the open-ended tasks.

Reads the evaluate stages' predictions (data/eval/<method>/<split>/<dataset>/<task>.json) and, per query, gives
the judge the task prompt, the answer, the gold as the reference answer and the user's profile (the source's own
profile text, e.g. a Personal Reddit persona, else the LLM summary). Writes each item's score and feedback to
`judge.dir/<split>/<dataset>/<task>/<method>.jsonl` and the means (Table 3) to reports/judge, where the judge's
label always says which model judged and whether it was the local fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from p2p.cache import Cache
from p2p.config import Config
from p2p.io import write_json, write_jsonl, write_text
from p2p.judge.judge import Judge, JudgeItem, JudgeSettings, make_judge, summarize_scores
from p2p.paths import Paths, read_prepared, read_summaries
from p2p.report.stage_reports import judge_summary
from p2p.stages.recorder import Recorder
from p2p.tasks import get_task
from p2p.tasks.scoring import read_outputs
from p2p.tracking import result_params

log = logging.getLogger(__name__)


def run(cfg: Config, root: Path, rec: Recorder) -> None:
    """Judge, write reports/judge, and report each method x task x split's mean scores as a result beside the
    evaluate stage's (the same runs' compare view), labelled with the judge."""
    metrics, label = judge_stage(cfg, root)
    local = cfg.judge.base_url is None and any(metrics.values())  # a local model judged something
    reports = Paths(cfg, root).report("judge")
    write_reports(metrics, label, local, reports)
    for split, by_task in metrics.items():
        for task, by_method in by_task.items():
            for method, summary in by_method.items():
                scores = {k: v for k, v in summary.items() if v is not None}
                rec.log_metrics(scores, prefix=f"{split}/{task}/{method}/")
                rec.log_result(split, f"{method}/{task}", {f"judge/{k}": v for k, v in scores.items()},
                               {"method": method, "task": task, "split": split, "judge": label, **result_params(cfg)})
    rec.run_tag("judge", label)
    rec.log_artifact(reports, "reports")
    rec.publish(reports / "summary.md", "judge-summary")


def judged_tasks(cfg: Config) -> list[tuple[str, str]]:
    return [(dataset, task) for dataset, task in cfg.data.tasks() if get_task(task).kind == "open_ended"]


def settings(cfg: Config) -> JudgeSettings:
    jc = cfg.judge
    return JudgeSettings(base_url=jc.base_url, model=jc.model, api_key_env=jc.api_key_env,
                         temperature=jc.temperature, max_new_tokens=jc.max_new_tokens, concurrency=jc.concurrency,
                         timeout=jc.timeout, retries=jc.retries, unparsable_retries=jc.unparsable_retries,
                         forced_choice=jc.forced_choice)


def judge_items(cfg: Config, root: Path, split: str, dataset: str, task: str, method: str) -> tuple[list[str],
                                                                                                   list[JudgeItem]]:
    """(query ids, judge items) of one method's predictions on one task and split."""
    paths = Paths(cfg, root)
    spec = get_task(task)
    predictions = read_outputs(paths.predictions(split, dataset, task, method), spec)
    summaries = read_summaries(paths.summaries(dataset, task))
    ids, items = [], []
    for record in read_prepared(paths.prepared(dataset, task)):
        profile = record.profile_text or summaries.get(record.user_id, "")
        for query in record.queries:
            if query.id in predictions:
                ids.append(query.id)
                items.append(JudgeItem(spec.build_prompt(query.input), predictions[query.id], query.output or "",
                                       profile))
    return ids, items


def judge_stage(cfg: Config, root: Path) -> tuple[dict[str, Any], str]:
    """Score every judged method x open-ended task x split; returns (split -> task -> method -> summary, label)."""
    paths = Paths(cfg, root)
    tasks = judged_tasks(cfg)
    methods = [m for m in cfg.judge.methods if m in cfg.evaluate.methods]
    metrics: dict[str, Any] = {split: {} for split in cfg.evaluate.splits}
    written: list[str] = []
    if not tasks or not methods:
        log.info("no open-ended task or no judged method configured: nothing to judge")
        write_json(paths.judge / "index.json", written)
        return metrics, "none (nothing to judge)"
    with Cache(paths.cache(cfg.judge.cache), "judge") as cache:
        judge: Judge = make_judge(settings(cfg), cache, local_model=cfg.judge.local_model or cfg.model.base_llm,
                                  cache_dir=paths.model_cache, device=cfg.model.device, seed=cfg.seed,
                                  batch_size=cfg.generation.batch_size)
        for split in cfg.evaluate.splits:
            for dataset, task in tasks:
                for method in methods:
                    ids, items = judge_items(cfg, root, split, dataset, task, method)
                    results = judge.score(items)
                    path = paths.judge_scores(split, dataset, task, method)
                    write_jsonl(path, ({"id": i, "score": r.score, "attempts": r.attempts, "forced": r.forced,
                                        "feedback": r.feedback}
                                       for i, r in zip(ids, results)))
                    written.append(str(path.relative_to(paths.judge)))
                    metrics[split].setdefault(task, {})[method] = summarize_scores(results)
                    log.info("%s %s %s: %s", split, task, method, metrics[split][task][method])
    write_json(paths.judge / "index.json", written)
    return metrics, judge.label


def write_reports(metrics: dict[str, Any], label: str, local: bool, out_dir: Path) -> list[Path]:
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "summary.md", judge_summary(metrics, label, local))
    return [out_dir / "metrics.json", out_dir / "summary.md"]
