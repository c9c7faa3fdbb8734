"""The upstream files of every downloadable dataset, as data: URL, local path under the raw-data dir, sha256.

Local paths follow the raw layout the loaders read: `lamp/<TASK>/{split}_questions.json` (canonical task ids),
`personal_reddit/synthetic_dataset.jsonl`, `empathetic_conversations/<file>`. GitHub files are pinned to a commit
and their sha256 (computed from the copies the tests use); the LaMP server publishes no checksums, so its files
are checked for content only. LongLaMP and the authors' processed data live on Hugging Face only, so their entries
carry instructions instead of URLs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RemoteFile:
    url: str
    path: str  # relative to the raw-data dir
    sha256: str | None = None
    task: str | None = None  # the canonical task the file belongs to, for datasets fetched per task
    split: str | None = None  # train, dev or test, for datasets whose splits are separate files (LaMP)


@dataclass(frozen=True)
class DatasetEntry:
    description: str
    files: tuple[RemoteFile, ...] = ()
    instructions: str | None = None  # for datasets without plain URLs; `{raw_dir}` is filled in


LAMP_SERVER = "https://ciir.cs.umass.edu/downloads/LaMP"
#: Canonical task id -> its directory on the LaMP server (movie tagging is the `new` LaMP-2, plain LaMP_2 is news).
LAMP_REMOTE_DIRS = {"LaMP-1": "LaMP_1", "LaMP-2N": "LaMP_2", "LaMP-2M": "LaMP_2/new", "LaMP-3": "LaMP_3",
                    "LaMP-4": "LaMP_4", "LaMP-5": "LaMP_5", "LaMP-7": "LaMP_7"}


def _lamp_files() -> tuple[RemoteFile, ...]:
    files = []
    for task, remote in LAMP_REMOTE_DIRS.items():
        names = ["train_questions", "train_outputs", "dev_questions", "dev_outputs", "test_questions"]
        for name in names:
            split = name.split("_")[0]
            files.append(RemoteFile(f"{LAMP_SERVER}/{remote}/{split}/{name}.json", f"lamp/{task}/{name}.json",
                                    task=task, split=split))
    return tuple(files)


def _github(repo: str, commit: str, path: str, local: str, sha256: str) -> RemoteFile:
    return RemoteFile(f"https://raw.githubusercontent.com/{repo}/{commit}/{path}", local, sha256)


_WASSA = ("HLT-Ghisolfi-Leuzzi-Testa/WASSA-2023", "03efe94fda8a70e569047464a9886cfdc513a243")

_LONGLAMP_STEPS = """\
LongLaMP is a Hugging Face dataset (LongLaMP/LongLaMP) without plain download URLs, so `fetch` cannot get it.
Online: `pip install datasets`; the loader p2p.data.sources.longlamp.load_longlamp_hf reads it directly.
Offline: on a machine with network run
python - <<'EOF'
import os
from datasets import load_dataset
for task, config in [("LongLaMP-1", "abstract_generation_user"), ("LongLaMP-2", "topic_writing_user"),
                     ("LongLaMP-3", "product_review_user")]:
    os.makedirs(task, exist_ok=True)
    for split in ("train", "val", "test"):
        load_dataset("LongLaMP/LongLaMP", config, split=split).to_json(f"{{task}}/{{split}}.jsonl")
EOF
then copy the three folders into {raw_dir}/longlamp/ \
(p2p.data.sources.longlamp.load_longlamp reads such a folder)."""

_P2P_DATA_STEPS = """\
The P2P authors' processed data is a Hugging Face dataset (Zhaoxuan/P2P_data) without plain download URLs, so \
`fetch` cannot get it. On a machine with network run
  huggingface-cli download Zhaoxuan/P2P_data --repo-type dataset --local-dir P2P_data
then copy each task's split folders (datasets.save_to_disk folders: data-00000-of-00001.arrow, dataset_info.json, \
state.json) into {raw_dir}/p2p_data/<TASK>/, which p2p.data.sources.p2p_data.load_p2p_data reads, e.g. \
P2P_data/LaMP/news_headline_train, ..._random_test and ..._ood_test -> p2p_data/LaMP-4/ (citation -> LaMP-1, \
news_cat -> LaMP-2N, movie -> LaMP-2M, product -> LaMP-3, news_headline -> LaMP-4, scholarly_title -> LaMP-5, \
tweet -> LaMP-7; LongLaMP/abstract_generation -> LongLaMP-1, topic_writing -> LongLaMP-2, product_review -> \
LongLaMP-3). The release's own splits are not kept: the split stage draws its own."""

CATALOG: dict[str, DatasetEntry] = {
    "lamp": DatasetEntry("LaMP benchmark (Salemi et al.), user-based splits, official server", _lamp_files()),
    "personal_reddit": DatasetEntry(
        "Personal Reddit, synthetic release (Staab et al., eth-sri/llmprivacy, MIT)",
        (_github("eth-sri/llmprivacy", "d9cd9191ef927c66c41cbd5debe749e44292e3d1",
                 "data/synthetic/synthetic_dataset.jsonl", "personal_reddit/synthetic_dataset.jsonl",
                 "3c3b34f979afa73e6dec6b56ac84edd9eb8f0d93c24ed7b34bbbab005c476861"),)),
    "empathetic_conversations": DatasetEntry(
        "Empathetic Conversations, essay level (WASSA 2023 shared task) + the articles (CC BY-NC 4.0)",
        (_github(*_WASSA, "datasets/WASSA23_essay_level_train_original.tsv",
                 "empathetic_conversations/WASSA23_essay_level_train_original.tsv",
                 "945ac6c39c2384fce2883670d614fffa26b9c2c8bec06f861bc7553531ab4ca2"),
         _github(*_WASSA, "datasets/WASSA23_essay_level_dev.tsv",
                 "empathetic_conversations/WASSA23_essay_level_dev.tsv",
                 "b5bdbc3964959f4d59f2754b6af5f9d3e0324741650df171bd098a3f2d460979"),
         _github(*_WASSA, "datasets/WASSA23_essay_level_test.tsv",
                 "empathetic_conversations/WASSA23_essay_level_test.tsv",
                 "f0d17f3fc6e6fb9681b59d19ed324a16b00c25b62084c9cf645cf605f77a2065"),
         _github("myrazma/2022_Masterthesis_Code", "585cea31189cf98fa659d5ae1782a881baf5072c",
                 "data/buechel_empathy/articles_adobe_AMT.csv", "empathetic_conversations/articles_adobe_AMT.csv",
                 "71fd8b6d3495d7f94b1fe70eaf1be32ba40afd0a8c3748010a6179d0182cec4e"))),
    "longlamp": DatasetEntry("LongLaMP (Kumar et al.), Hugging Face LongLaMP/LongLaMP", instructions=_LONGLAMP_STEPS),
    "p2p_data": DatasetEntry("The P2P authors' processed data, Hugging Face Zhaoxuan/P2P_data",
                             instructions=_P2P_DATA_STEPS),
}


def dataset_files(name: str, tasks: Sequence[str] | None = None,
                  splits: Sequence[str] | None = None) -> list[RemoteFile]:
    """The files of dataset `name`, limited to `tasks` where its files are per task and to `splits` where its
    splits are separate files (LaMP)."""
    if name not in CATALOG:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(CATALOG)}")
    files = list(CATALOG[name].files)
    for attribute, wanted in (("task", tasks), ("split", splits)):
        known = {getattr(f, attribute) for f in files if getattr(f, attribute) is not None}
        if wanted is None or not known:
            continue
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ValueError(f"dataset {name!r} has no {attribute}(s) {unknown}; it has {', '.join(sorted(known))}")
        files = [f for f in files if getattr(f, attribute) is None or getattr(f, attribute) in wanted]
    return files


def keeping_steps(name: str, raw_dir: Path) -> str:
    """What to do once a dataset's files are in place (docs/data.md#real-data-dvc-tracked-inputs).

    `data/raw/<dataset>` is an input, not a stage's output: `dvc add` makes DVC track it, and no stage ever deletes
    or re-downloads it. Where the splits are separate files, the note says which of them a run needs.
    """
    folder = raw_dir / name
    if folder.is_absolute() and folder.is_relative_to(Path.cwd()):  # the project root, where `dvc` runs
        folder = folder.relative_to(Path.cwd())
    steps = (f"Then run `dvc add {folder}` (DVC tracks the folder as an input: no stage deletes or downloads it "
             f"again) and `dvc repro`.")
    if any(f.split is not None for f in CATALOG[name].files):
        steps += (" A task needs only the splits you have: prepare uses every split whose questions come with their "
                  "*_outputs.json (dev alone is enough); the test golds are withheld, so test_questions.json alone "
                  "is not.")
    return steps
