"""The train stage's pure pieces: shuffled-profile control, training samples (leak check, history padding),
history items as queries, the checkpoint fingerprint, and sample building. No model is loaded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from p2p.config import Config, load_config
from p2p.data.records import Query, UserRecord
from p2p.data.synth import QUERY_PREFIXES
from p2p.hyper.data import build_samples
from p2p.paths import TaskData
from p2p.profiles.build import item_profile
from p2p.profiles.embeddings import ablate
from p2p.stages.train import fingerprint, item_embeddings, task_samples
from p2p.tasks import get_task
from p2p.tasks.registry import history_query
from p2p.training import Sample

ROOT = Path(__file__).resolve().parents[1]
LEAKED = "LEAKED GOLD DESCRIPTION"


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(ROOT / "params.yaml", "smoke")


def with_train(cfg: Config, **update) -> Config:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def samples_of(counts: dict[str, int]) -> list[Sample]:
    """Samples whose embedding encodes (user index, query index), so each row can be traced to its user."""
    out = []
    for u, (user, n) in enumerate(counts.items()):
        for k in range(n):
            out.append(Sample("LaMP-2M", user, f"{user}-q{k}", f"prompt {user} {k}", "comedy",
                              np.array([u, k], dtype=np.float32)))
    return out


def shuffled_embeddings(samples: list[Sample], seed: int) -> np.ndarray:
    """The `p2p_shuffled` control's profiles for `samples` (p2p.profiles.embeddings.ablate, as evaluated)."""
    return ablate(np.stack([s.embedding for s in samples]), [s.user_id for s in samples], "shuffled", seed)


def test_shuffled_embeddings_come_from_another_user_and_are_deterministic():
    samples = samples_of({"a": 3, "b": 1, "c": 2, "d": 2, "e": 4})
    owner = {float(s.embedding[0]): s.user_id for s in samples}
    assert len(set(owner.values())) == 5
    seen = set()
    for seed in range(8):
        shuffled = shuffled_embeddings(samples, seed)
        assert shuffled.shape == (len(samples), 2) and shuffled.dtype == np.float32
        for sample, row in zip(samples, shuffled):
            assert owner[float(row[0])] != sample.user_id  # no fixed point: never the user's own profile
            assert any(np.array_equal(row, s.embedding) for s in samples)  # a real profile of someone else
        np.testing.assert_array_equal(shuffled, shuffled_embeddings(samples, seed))
        seen.add(shuffled.tobytes())
    assert len(seen) > 1  # the seed matters


def test_shuffling_needs_two_users():
    with pytest.raises(ValueError, match="at least two users"):
        shuffled_embeddings(samples_of({"a": 3}), 0)


def lamp2m_record(user: str, n_history: int, n_queries: int, *, gold_item: bool = False) -> UserRecord:
    history = [{"id": f"{user}-h{i}", "description": f"Film {i} liked by {user}.", "tag": "comedy"}
               for i in range(n_history)]
    if gold_item:  # an item that is another query's gold answer: must never become a training sample
        history.append({"id": f"{user}-gold", "description": LEAKED, "tag": "violence", "query_id": f"{user}-q0"})
    queries = [Query(f"{user}-q{k}", QUERY_PREFIXES["LaMP-2M"] + f"Movie {k} for {user}.", "sci-fi")
               for k in range(n_queries)]
    return UserRecord(user, "LaMP-2M", history, queries)


def task_data(split: dict[str, list[str]], users: list[str]) -> TaskData:
    records = [lamp2m_record(u, n_history=4, n_queries=2, gold_item=True) for u in users]
    queries = {q.id: np.full(3, i, dtype=np.float32) for i, q in enumerate(q for r in records for q in r.queries)}
    profiles = {u: np.full(3, 100 + i, dtype=np.float32) for i, u in enumerate(users)}
    return TaskData("synth", "LaMP-2M", records, queries, profiles, split)


class ItemProfiles:
    """`embed_items` for tests: builds each padding row's profile text as the stage does (`item_profile`), keeps
    it, and returns row i as the vector (1000 + i, ...) so each sample can be traced to its text."""

    def __init__(self):
        self.texts: dict[str, str] = {}

    def __call__(self, asked):
        rows = []
        for record, item, query in asked:
            self.texts[item["id"]] = item_profile(record, "SUMMARY", item, query, k=2)
            rows.append(np.full(3, 1000 + len(rows), dtype=np.float32))
        return np.stack(rows)


def train_samples(data: TaskData, cfg: Config, embed_items=None) -> list[Sample]:
    return task_samples(data, cfg, embed_items or ItemProfiles())


def test_train_samples_refuse_a_test_user_in_train(cfg):
    for test_split in ("random_test", "ood_test"):
        split = {"train": ["u0", "u1"], "random_test": [], "ood_test": [], test_split: ["u1", "u2"]}
        with pytest.raises(ValueError, match="test users in the train split.*u1"):
            train_samples(task_data(split, ["u0", "u1", "u2"]), cfg)


def test_train_samples_are_the_train_users_queries_padded_from_history(cfg):
    data = task_data({"train": ["u0", "u1"], "random_test": ["u2"], "ood_test": ["u3"]}, ["u0", "u1", "u2", "u3"])
    plain = train_samples(data, with_train(cfg, min_samples_per_task=0))
    assert [s.query_id for s in plain] == ["u0-q0", "u0-q1", "u1-q0", "u1-q1"]
    assert train_samples(data, with_train(cfg, min_samples_per_task=3)) == plain  # enough already

    profiles = ItemProfiles()
    padded = train_samples(data, with_train(cfg, min_samples_per_task=9), profiles)
    assert len(padded) == 9 and padded[:4] == plain
    extra = padded[4:]
    items = {item["id"]: item for r in data.records for item in r.history}
    assert len({s.query_id for s in extra}) == 5 and all(s.query_id.endswith("#history") for s in extra)
    for row, s in enumerate(extra):
        assert s.user_id in {"u0", "u1"} and s.target == "comedy"
        assert LEAKED not in s.prompt and "gold" not in s.query_id  # items carrying a query_id are never used
        item = items[s.query_id.removesuffix("#history")]
        assert s.prompt == get_task("LaMP-2M").build_prompt(history_query("LaMP-2M", item)[0])
        np.testing.assert_array_equal(s.embedding, np.full(3, 1000 + row))  # the profile made for this item ...
        text = profiles.texts[item["id"]]
        assert item["description"] not in text and "Film" in text  # ... shows the user's other items, not it
        assert "total=3 | comedy=3 (100%)" in text  # the histogram counts the 3 other visible items, not 4

    everything = train_samples(data, with_train(cfg, min_samples_per_task=100))
    assert len(everything) == 4 + 2 * 4  # all usable history items of train users, no more
    assert not any(LEAKED in s.prompt or s.user_id in {"u2", "u3"} for s in everything)
    again = train_samples(data, with_train(cfg, min_samples_per_task=9))  # deterministic
    assert [(s.query_id, s.prompt, s.embedding.tolist()) for s in again] == \
        [(s.query_id, s.prompt, s.embedding.tolist()) for s in padded]


def test_history_query_makes_official_queries_from_labelled_items():
    review = "Sturdy blender, a bit loud, does the job."
    query, answer = history_query("LaMP-3", {"id": "r1", "text": review, "score": "4"})
    assert answer == "4"
    assert get_task("LaMP-3").extract_fields(query) == {"review_text": review}
    assert review in get_task("LaMP-3").build_prompt(query)
    assert history_query("LaMP_3", {"text": review, "score": 4}) == (query, "4")  # official name, numeric score

    query, answer = history_query("LaMP-2M", {"description": "A heist goes wrong.", "tag": "twist ending"})
    assert answer == "twist ending"
    assert get_task("LaMP-2M").extract_fields(query) == {"description": "A heist goes wrong."}

    assert history_query("LaMP-7", {"text": "just landed in paris!!"}) is None  # no label to learn
    assert history_query("LaMP-2M", {"description": "A heist goes wrong."}) is None  # no tag
    assert history_query("LaMP-3", {"text": review, "score": ""}) is None  # empty label


def test_fingerprint_follows_samples_and_training_settings_but_not_checkpoint_cadence(cfg):
    samples = {"LaMP-2M": samples_of({"a": 2, "b": 2})}
    base = fingerprint(cfg, samples)
    assert fingerprint(cfg, {"LaMP-2M": list(samples["LaMP-2M"])}) == base

    def changed(index: int, **update) -> dict[str, list[Sample]]:
        rows = list(samples["LaMP-2M"])
        rows[index] = replace(rows[index], **update)
        return {"LaMP-2M": rows}

    moved = samples["LaMP-2M"][1].embedding.copy()
    moved[1] += 1e-3
    assert fingerprint(cfg, changed(1, target="drama")) != base
    assert fingerprint(cfg, changed(1, embedding=moved)) != base
    assert fingerprint(cfg, changed(2, prompt="another prompt")) != base
    assert fingerprint(with_train(cfg, lr=cfg.train.lr * 2), samples) != base
    assert fingerprint(with_train(cfg, steps=cfg.train.steps + 1), samples) != base
    assert fingerprint(with_train(cfg, min_samples_per_task=7), samples) != base
    assert fingerprint(with_train(cfg, checkpoint_every=cfg.train.checkpoint_every + 5), samples) == base
    assert fingerprint(with_train(cfg, dir=Path("elsewhere")), samples) == base


def test_build_samples_names_a_query_without_embedding():
    record = lamp2m_record("u7", n_history=1, n_queries=2)
    embeddings = {"u7-q0": np.zeros(3, dtype=np.float32)}
    with pytest.raises(ValueError, match="u7-q1"):
        build_samples([record], embeddings)
    built = build_samples([record], {**embeddings, "u7-q1": np.ones(3, dtype=np.float32)})
    assert [s.query_id for s in built] == ["u7-q0", "u7-q1"] and built[1].target == "sci-fi"
    assert built[0].prompt == get_task("LaMP-2M").build_prompt(record.queries[0].input)


def test_the_stage_embeds_a_padding_rows_profile_without_its_item(cfg, tmp_path, model_cache):
    """The real embedder (the smoke preset's MiniLM, section pooling): the padding row's vector is its item-less
    profile's, not the user's whole profile (whose history section shows the newest items, this one included)."""
    from p2p.io import write_jsonl
    from p2p.paths import Paths
    from p2p.profiles.build import build_profiles
    from p2p.stages.common import corpus_embedder
    from p2p.stages.embed import profile_vectors

    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"cache_dir": model_cache})})
    data = task_data({"train": ["u0"], "random_test": [], "ood_test": []}, ["u0"])
    write_jsonl(Paths(cfg, tmp_path).summaries("synth", "LaMP-2M"), [{"user_id": "u0", "summary": "Likes films."}])
    record = data.records[0]
    newest = record.history[3]  # in the whole profile's history section (the newest retrieval_k items)
    query = history_query("LaMP-2M", newest)[0]
    whole = build_profiles(record, "Likes films.", cfg.profile.retrieval_k).user_text
    assert newest["description"] in whole
    (vector,) = item_embeddings(data, cfg, tmp_path)([(record, newest, query)])
    text = item_profile(record, "Likes films.", newest, query, cfg.profile.retrieval_k)
    assert newest["description"] not in text
    embedder = corpus_embedder(cfg, tmp_path)
    np.testing.assert_allclose(vector, profile_vectors([text], "LaMP-2M", cfg, tmp_path, embedder)[0], atol=1e-6)
    assert not np.allclose(vector, profile_vectors([whole], "LaMP-2M", cfg, tmp_path, embedder)[0], atol=1e-3)
    shuffled = cfg.model_copy(update={"profile": cfg.profile.model_copy(update={"variant": "shuffled"})})
    (kept,) = item_embeddings(data, shuffled, tmp_path)([(record, newest, query)])
    np.testing.assert_array_equal(kept, data.users["u0"])  # vector ablations: the embed stage's (another's) vector
