"""The paper's published numbers, read from the CSV copies shipped in `p2p/report/paper/` (see its README.md).

Each reader returns plain dicts keyed the way the report tables look values up, and raises an InputError naming
the file and line when a copy is malformed (a missing column, a value that is not a number), so a bad edit to a
copy fails the report stage at once instead of printing a wrong paper column.
"""

from __future__ import annotations

import csv
import io
import os
from importlib.resources import files
from pathlib import Path

from p2p.io import InputError, read_text

#: Our split names -> the paper's.
PAPER_SPLIT = {"random_test": "random", "ood_test": "ood"}
#: The paper's main tables with the 7B base model (Tables 1 and 2); 6 and 7 are the 3B replication.
MAIN_TABLE = {"random_test": "table1", "ood_test": "table2"}
#: The per-kind average columns of Tables 4 and 5.
KIND_COLUMNS = ("class_acc", "class_f1", "gen_r1", "gen_rl", "rating_mae", "rating_rmse")

_COLUMNS = {
    "main_results.csv": ("table", "base_model", "split", "task", "metric", "method", "value"),
    "judge_scores.csv": ("table", "dataset", "split", "method", "score"),
    "embedding_models.csv": ("table", "split", "variant", *KIND_COLUMNS),
    "ablations.csv": ("table", "split", "variant", *KIND_COLUMNS),
    "deployment_efficiency.csv": ("source", "method", "seconds_per_user", "note"),
    "split_statistics.csv": ("table", "task", "split", "users", "queries", "avg_input_chars", "avg_output_chars"),
}
FILES = tuple(_COLUMNS)


def paper_dir() -> Path:
    """The directory of the shipped copies (inside the installed package)."""
    return Path(str(files("p2p.report") / "paper"))


def read_rows(name: str, directory: str | os.PathLike | None = None) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of one copy, after checking it has the columns its readers use."""
    if name not in _COLUMNS:
        raise ValueError(f"unknown paper table {name!r}; known: {', '.join(FILES)}")
    path = Path(directory or paper_dir()) / name
    reader = csv.DictReader(io.StringIO(read_text(path)))
    missing = [c for c in _COLUMNS[name] if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(path, f"missing column(s) {missing}; expected {list(_COLUMNS[name])}", record="line 1")
    return [(i, row) for i, row in enumerate(reader, start=2)]


def _number(row: dict[str, str], field: str, path: Path, line: int) -> float:
    try:
        return float(row[field])
    except (TypeError, ValueError):
        raise InputError(path, f"{row[field]!r} is not a number", record=f"line {line}", field=field) from None


def main_results(split: str, directory: str | os.PathLike | None = None) -> dict[tuple[str, str, str], float]:
    """(task, metric, method) -> value of Table 1 (`random_test`) or Table 2 (`ood_test`), in the paper's order."""
    path = Path(directory or paper_dir()) / "main_results.csv"
    table = MAIN_TABLE[split]
    return {(row["task"], row["metric"], row["method"]): _number(row, "value", path, line)
            for line, row in read_rows("main_results.csv", directory) if row["table"] == table}


def judge_scores(directory: str | os.PathLike | None = None) -> dict[tuple[str, str, str], float]:
    """(dataset, paper split, method) -> mean GPT-4o judge score (Table 3)."""
    path = Path(directory or paper_dir()) / "judge_scores.csv"
    return {(row["dataset"], row["split"], row["method"]): _number(row, "score", path, line)
            for line, row in read_rows("judge_scores.csv", directory)}


def kind_table(name: str, directory: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """variant -> {class_acc, ..., rating_rmse} of Table 4 (`embedding_models.csv`) or 5 (`ablations.csv`)."""
    path = Path(directory or paper_dir()) / name
    return {row["variant"]: {c: _number(row, c, path, line) for c in KIND_COLUMNS}
            for line, row in read_rows(name, directory)}


def deployment(directory: str | os.PathLike | None = None) -> dict[str, float]:
    """method -> seconds per user to obtain an adapter at deployment (Section 6, Fig. 4)."""
    path = Path(directory or paper_dir()) / "deployment_efficiency.csv"
    return {row["method"]: _number(row, "seconds_per_user", path, line)
            for line, row in read_rows("deployment_efficiency.csv", directory)}


def split_statistics(directory: str | os.PathLike | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """(task, our split name or `train`) -> users, queries, avg_input_chars, avg_output_chars (Table 8)."""
    path = Path(directory or paper_dir()) / "split_statistics.csv"
    fields = ("users", "queries", "avg_input_chars", "avg_output_chars")
    return {(row["task"], row["split"]): {f: _number(row, f, path, line) for f in fields}
            for line, row in read_rows("split_statistics.csv", directory)}
