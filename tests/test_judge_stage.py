"""The judge stage over the evaluate stage's files: every judged method scored, per-item scores kept, the report
names the judge (a scripted OpenAI-compatible server on 127.0.0.1 stands in for GPT-4o, which is out of reach)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from misbehaving_server import ChatServer, completion

from p2p.config import load_config
from p2p.data.records import Query, UserRecord, write_records
from p2p.evaluation.answers import write_predictions
from p2p.io import write_jsonl
from p2p.paths import Paths
from p2p.report.stage_reports import judge_summary
from p2p.stages import judge as stage

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["base", "pag", "mt_lora", "p2p"]


def make_config(tmp_path: Path, url: str | None):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["sources"] = [{"dataset": "personal_reddit", "tasks": ["PersonalReddit"]}]
    params["presets"]["smoke"]["data"].pop("sources")  # the smoke preset names its own synthetic tasks
    params["judge"].update(base_url=url, model="judge-m", cache=str(tmp_path / "judge.sqlite"))
    params["evaluate"]["splits"] = ["ood_test"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return load_config(tmp_path / "params.yaml", "smoke")


def test_judge_stage_scores_every_method_and_names_its_judge(tmp_path):
    with ChatServer(lambda n, body: completion(
            "Tailored. [RESULT] 5" if "GOOD" in body["messages"][-1]["content"] else "Generic. [RESULT] 2")) as server:
        cfg = make_config(tmp_path, server.url)
        users = [UserRecord(f"u{i}", "PersonalReddit", [{"id": f"u{i}-h", "text": "I love hiking."}],
                            [Query(f"u{i}-q", f"What should I do this weekend? ({i})", f"Go hiking, u{i}!")],
                            profile_text=f"persona of u{i}: outdoorsy") for i in range(2)]
        paths = Paths(cfg, tmp_path)
        write_records(paths.prepared("personal_reddit", "PersonalReddit"), users)
        write_jsonl(paths.summaries("personal_reddit", "PersonalReddit"),
                    [{"user_id": u.user_id, "summary": "unused: the persona is the profile"} for u in users])
        for method in METHODS:
            answers = {f"u{i}-q": ("GOOD answer" if method == "p2p" else f"{method} answer") for i in range(2)}
            write_predictions(paths.predictions("ood_test", "personal_reddit", "PersonalReddit", method),
                              "PersonalReddit", answers)
        metrics, label = stage.judge_stage(cfg, tmp_path)
        requests = len(server.requests)
        prompt = server.requests[0].body["messages"][-1]["content"]
    assert metrics["ood_test"]["PersonalReddit"]["p2p"] == {"mean": 5.0, "n": 2, "scored": 2, "missing": 0,
                                                                 "forced": 0}
    assert metrics["ood_test"]["PersonalReddit"]["base"]["mean"] == 2.0
    assert requests == 2 * len(METHODS)
    assert "persona of u" in prompt and "Go hiking, u" in prompt  # the profile and the reference reach the judge
    rows = [json.loads(line) for line in (tmp_path / "data/judge/ood_test/personal_reddit/PersonalReddit/p2p.jsonl")
            .read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in rows] == [("u0-q", 5), ("u1-q", 5)]
    assert "judge-m" in label and server.url in label
    stage.write_reports(metrics, label, local=False, out_dir=tmp_path / "reports")
    summary = (tmp_path / "reports/summary.md").read_text()
    assert "| PersonalReddit | 2.00 (0 missing) | 2.00 (0 missing) | 2.00 (0 missing) | 5.00 (0 missing) |" in summary
    assert "local model" not in summary

    # a rerun is served from the cache: the endpoint is gone and nothing is asked of it
    cfg = make_config(tmp_path, "http://127.0.0.1:9/v1")
    again, _ = stage.judge_stage(cfg, tmp_path)
    assert again == metrics


def test_the_report_says_when_a_local_model_judged(tmp_path):
    text = judge_summary({"ood_test": {"EmpatheticConv": {"p2p": {"mean": 3.0, "n": 2, "scored": 2,
                                                                   "missing": 0, "forced": 2}}}},
                         "local:x", local=True)
    assert "A local model judged" in text and "not comparable" in text
    assert "| EmpatheticConv | 3.00 (0 missing, 2 forced) |" in text
    assert "nothing judged" in judge_summary({"ood_test": {}}, "none", local=False)
