"""End to end on real data's shape: official-format LaMP-4 and LaMP-5 dev files built here (tests/lamp_files.py; never
../shared), `dvc add`-ed as a user would, through `dvc repro` on the smoke preset to the report. They run in the
session's shared smoke build, beside the synthetic benchmark (tests/smoke.py).

The shape of a researcher's LaMP subset: dev only, most users with a single query and one or two profile items.
Every stage must cope: splits where most users have one query, OPPU on one history item, P2P training without
padding, retrieval asking for more items than a history holds, and ROUGE-1 / ROUGE-L in Table 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from smoke import EVALUATED as METHODS
from smoke import LAMP_TASKS as TASKS
from smoke import LAMP_USERS as USERS

pytestmark = pytest.mark.slow


def _json(path: Path):
    return json.loads(path.read_text())


def test_the_raw_files_stay_as_the_user_placed_them(smoke_build):
    assert sorted(p.name for p in (smoke_build.repo / "data/raw/lamp/LaMP-4").iterdir()) == ["dev_outputs.json",
                                                                                              "dev_questions.json"]


def test_the_stages_cope_with_one_query_users_and_one_item_histories(smoke_build):
    repo, said = smoke_build.repo, smoke_build.output  # the library's INFO records reach the stage's console
    for task in TASKS:
        assert f"{task}: {USERS} users," in said and f"| p2p.stages.train - {task}: " in said, said[-3000:]
    for task in TASKS:
        rows = [json.loads(line) for line in (repo / f"data/prepared/lamp/{task}.jsonl").open()]
        assert len(rows) == USERS and {len(r["history"]) for r in rows} == {1, 2}
        one_query = {r["user_id"] for r in rows if len(r["queries"]) == 1}
        assert len(one_query) > USERS / 2
        split = _json(repo / f"data/splits/lamp/{task}.json")
        tested = split["random_test"] + split["ood_test"]
        assert tested and set(tested) & one_query and not set(split["train"]) & set(tested)
        single_item = {r["user_id"] for r in rows if len(r["history"]) == 1}
        oppu = _json(repo / f"data/oppu/lamp/{task}.json")
        assert oppu["rows"] == list(dict.fromkeys(tested)) and set(oppu["rows"]) & single_item


def test_evaluation_and_table_1_report_rouge_on_both_tasks(smoke_build):
    repo = smoke_build.repo
    metrics = _json(repo / "reports/eval/metrics.json")
    for split in ("random_test", "ood_test"):
        for task in TASKS:
            for method in METHODS:
                scores = metrics[split][task][method]
                assert 0 <= scores["official/rouge1"] <= 1 and 0 <= scores["official/rougeL"] <= 1, (task, method)
                predictions = _json(repo / f"data/eval/{method}/{split}/lamp/{task}.json")
                golds = _json(repo / f"data/eval/reference/golds/{split}/lamp/{task}.json")
                assert [p["id"] for p in predictions["golds"]] == [g["id"] for g in golds["golds"]]
    table = (repo / "reports/tables/table1.md").read_text()
    for task in TASKS:
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith(f"| {task} |")]
        assert [row[2] for row in rows] == ["R-1 ↑", "R-L ↑"], table  # ROUGE-1, ROUGE-L
        assert all(row[1].startswith(f"lamp/{task} (") for row in rows)
        # every method has a value; the synthetic benchmark's references (oracle, user-blind best: the last two
        # columns) have none on real data
        assert all(cell[0].isdigit() for row in rows for cell in row[3:3 + len(METHODS)]), table
        assert all(cell.strip(" |") == "—" for row in rows for cell in row[3 + len(METHODS):]), table
