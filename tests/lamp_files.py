"""Official-format LaMP-4 / LaMP-5 files at the real data's shape, built here (never read from ../shared).

`write_lamp_split(task_dir, task, split, users=150, seed=0)` writes `<split>_questions.json` (`[{"id", "input",
"profile": [{"id", ...}]}]`) and, except for `test` (LaMP withholds the test golds), `<split>_outputs.json`
(`{"task": "LaMP_4", "golds": [{"id", "output"}]}`), shaped like a researcher's dev subsample: most users ask one
question, about one in eight asks two (the same profile, so the loader groups them into one user), and each
profile holds one or two items. Each user has a topic and a signature word that run through their profile items
and their gold, so there is something to personalise on. The same arguments always write the same bytes.

Run as a script to write a raw-data folder: `python tests/lamp_files.py data/raw/lamp --split dev --users 150`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TASKS = {
    # task: (official name, the question's prefix, the profile item's source-text field)
    "LaMP-4": ("LaMP_4", "Generate a headline for the following article: ", "text"),
    "LaMP-5": ("LaMP_5", "Generate a title for the following abstract of a paper: ", "abstract"),
}
TOPICS = ("climate", "elections", "football", "markets", "vaccines", "housing", "robots", "oceans", "music",
          "schools", "rail", "space")
WORDS = ("new", "study", "report", "city", "people", "plan", "data", "model", "change", "local", "global", "record",
         "early", "public", "policy", "growth", "network", "risk", "impact", "future", "system", "survey")
SIGNATURES = ("finally", "quietly", "boldly", "really", "again", "today", "now", "still")


def _text(rng: random.Random, topic: str, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    for i in range(0, n, 7):
        words[i] = topic
    return " ".join(words).capitalize() + "."


def _title(rng: random.Random, topic: str, signature: str) -> str:
    return f"{topic.capitalize()} {rng.choice(WORDS)} {rng.choice(WORDS)} {signature}"


def lamp_split(task: str, split: str, users: int = 150, seed: int = 0) -> tuple[list[dict], dict | None]:
    """(questions, outputs or None for test) of one split; ids are unique per (task, split, seed)."""
    official, prefix, field = TASKS[task]
    rng = random.Random(f"{task}/{split}/{seed}")
    tag = {"train": "1", "dev": "2", "test": "3"}[split] + task[-1]
    questions, golds = [], []
    for u in range(users):
        topic, signature = rng.choice(TOPICS), rng.choice(SIGNATURES)
        profile = [{"id": f"{tag}{u:05d}{i}", "title": _title(rng, topic, signature),
                    field: _text(rng, topic, rng.randint(20, 40))} for i in range(rng.choice((1, 1, 2)))]
        for q in range(2 if rng.random() < 0.125 else 1):
            qid = f"{tag}{u:05d}{q}"
            questions.append({"id": qid, "input": prefix + _text(rng, topic, rng.randint(25, 45)),
                              "profile": profile})
            golds.append({"id": qid, "output": _title(rng, topic, signature)})
    return questions, (None if split == "test" else {"task": official, "golds": golds})


def write_lamp_split(task_dir: Path, task: str, split: str, users: int = 150, seed: int = 0) -> list[Path]:
    """Write one split's official files into `task_dir`; returns the paths written."""
    questions, outputs = lamp_split(task, split, users, seed)
    task_dir.mkdir(parents=True, exist_ok=True)
    written = [task_dir / f"{split}_questions.json"]
    written[0].write_text(json.dumps(questions))
    if outputs is not None:
        written.append(task_dir / f"{split}_outputs.json")
        written[1].write_text(json.dumps(outputs))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lamp_dir", type=Path, help="the raw LaMP folder, e.g. data/raw/lamp")
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="default: both")
    parser.add_argument("--split", action="append", choices=("train", "dev", "test"), help="default: dev")
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for task in args.task or sorted(TASKS):
        for split in args.split or ["dev"]:
            for path in write_lamp_split(args.lamp_dir / task, task, split, args.users, args.seed):
                print(path)


if __name__ == "__main__":
    main()
