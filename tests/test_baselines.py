"""The baselines' building blocks: prompt baselines, OPPU's per-user independence, MT-LoRA, adapters on disk,
the Table 5 profile variants, Fig. 3 user selection and Fig. 5 buckets (real tiny model, no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2p.baselines import oppu
from p2p.baselines.lora_training import (
    LoraJob,
    LoraRecipe,
    epoch_steps,
    stack_adapters,
    train_lora,
    train_loras,
)
from p2p.baselines.mt_lora import mixed_steps, recipe
from p2p.baselines.prompting import PromptSettings, build_prompt, newest_that_fit
from p2p.config import load_config
from p2p.data.records import Query, UserRecord
from p2p.evaluation.scores import history_buckets
from p2p.hyper.data import select_train_users
from p2p.lora.hooks import LoraShape, find_targets, freeze
from p2p.lora.peft import export_adapter, load_adapter
from p2p.lora.stacked import load_adapters, save_adapters
from p2p.models.loading import load_causal_lm
from p2p.profiles.build import build_profiles
from p2p.profiles.embeddings import ablate, partner_map
from p2p.stages.oppu import checkpoint_path, load_finished, save_finished
from p2p.training import draw_batch

LORA = LoraShape(("q_proj", "v_proj"), 4, 8, 0.0)
MOVIE = ("Which tag does this movie relate to among the following tags? Just answer with the tag name without "
         "further explanation. tags: [sci-fi, based on a book, comedy, action, twist ending, dystopia, dark comedy, "
         "classic, psychology, fantasy, romance, thought-provoking, social commentary, violence, true story] "
         "description: {}")


def movie_user(user: str, tags: list[str], query: str = "a robot learns to love") -> UserRecord:
    history = [{"id": f"{user}-h{i}", "description": f"film {i} about {tag} things", "tag": tag}
               for i, tag in enumerate(tags)]
    history.append({"id": f"{user}-gold", "description": "another query's film", "tag": "romance", "query_id": "x"})
    return UserRecord(user, "LaMP-2M", history, [Query(f"{user}-q", MOVIE.format(query), "sci-fi")])


@pytest.fixture(scope="module")
def tiny(model_cache):
    model, tokenizer = load_causal_lm("tiny-random-qwen2", model_cache)
    freeze(model)
    return model, tokenizer, find_targets(model, LORA.targets)


def test_prompt_baselines_show_the_right_history():
    user = movie_user("u1", ["sci-fi", "comedy", "sci-fi"])
    count = lambda text: len(text.split())  # noqa: E731
    settings = PromptSettings(retrieval_k=1, context_tokens=20)
    base = build_prompt("base", user, user.queries[0], "likes robots", settings, count)
    assert base.startswith("# Instruction:") and "User History" not in base
    rag = build_prompt("rag", user, user.queries[0], "likes robots", settings, count)
    assert rag.endswith(base) and rag.count("description:") == 1  # one retrieved item
    assert "another query's film" not in rag  # the leakage rule
    pag = build_prompt("pag", user, user.queries[0], "likes robots", settings, count)
    assert pag.startswith("## User Profile: likes robots\ntotal=3 | sci-fi=2 (67%), comedy=1 (33%)")
    assert pag.endswith(rag)
    full = build_prompt("full_history", user, user.queries[0], None, settings, count)
    history = full.split("# User History:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert history == ["description: film 2 about sci-fi things | tag: sci-fi",
                       "description: film 1 about comedy things | tag: comedy"]  # newest first, 20-token budget
    with pytest.raises(ValueError, match="summarize"):
        build_prompt("pag", user, user.queries[0], None, settings, count)


def test_newest_that_fit_stops_at_the_first_item_over_budget():
    assert newest_that_fit(["a b", "c", "d e f"], 6, lambda t: len(t.split())) == ["d e f", "c"]
    assert newest_that_fit(["a"], 1, lambda t: 1) == []  # an item costs its tokens plus a newline


def test_an_oppu_adapter_depends_on_its_own_user_only(tiny):
    """Alone, after other users, or in one batch beside others (each row its own LoRA), a user gets the same
    adapter: exactly when trained alone, up to float rounding in a shared batch (its padded width differs)."""
    model, tokenizer, layout = tiny
    cfg = load_config("params.yaml", "smoke")
    oc = cfg.oppu.model_copy(update={"epochs": 2, "batch_size": 1})  # several steps, so dropout and Adam matter
    shape = LoraShape(("q_proj", "v_proj"), 4, 8, 0.1)
    a, b = movie_user("a", ["sci-fi", "comedy"]), movie_user("b", ["action", "romance", "dystopia"])
    b_other = movie_user("b", ["classic", "fantasy", "violence", "true story"], query="a much longer query " * 6)

    def adapters(*records):
        runs = oppu.train_users(model, tokenizer, layout, shape, list(records), oc, seed=cfg.seed)
        return [{k: v.detach().clone() for k, v in run.lora.state_dict().items()} for run in runs]

    (alone,) = adapters(a)
    adapters(b)
    (after_b,) = adapters(a)
    assert all(torch.equal(alone[k], after_b[k]) for k in alone)  # nothing carries over from the user before
    a_beside_b, b_beside_a = adapters(a, b)
    b_first, a_beside_other = adapters(b_other, a)
    for key in alone:
        assert torch.allclose(alone[key], a_beside_b[key], atol=1e-6)
        assert torch.allclose(alone[key], a_beside_other[key], atol=1e-6)
    assert any(not torch.allclose(alone[k], v, atol=1e-4) for k, v in b_beside_a.items())  # another user's adapter
    assert any(not torch.allclose(b_beside_a[k], v, atol=1e-4) for k, v in b_first.items())  # other data, other one
    assert all(float(v.abs().sum()) > 0 for k, v in alone.items() if k.startswith("b."))  # it trained


def test_loras_trained_together_each_follow_their_own_schedule_and_clipping(tiny):
    """Two LoRAs of different lengths in one batch: each ends as it would alone (its own lr schedule, clipping and
    Adam state); the shorter one stops while the longer one trains on."""
    model, tokenizer, layout = tiny
    shape = LoraShape(("q_proj", "v_proj"), 4, 8, 0.1)
    long = oppu.user_examples(movie_user("a", ["sci-fi", "comedy", "action"]), tokenizer, 128)
    short = oppu.user_examples(movie_user("b", ["romance"]), tokenizer, 128)
    jobs = [LoraJob(long, epoch_steps(len(long), 2, 1, 1, 1), 1),
            LoraJob(short, epoch_steps(len(short), 1, 1, 1, 2), 2)]
    recipe_ = LoraRecipe(lr=1e-2, weight_decay=0.01, warmup=0.3, grad_clip=0.05)
    together = train_loras(model, tokenizer, layout, shape, jobs, recipe_)
    assert [run.steps for run in together] == [6, 1]
    assert [len(run.history) for run in together] == [6, 1]
    for job, run in zip(jobs, together):
        (alone,) = train_loras(model, tokenizer, layout, shape, [job], recipe_)
        assert [h["loss"] for h in alone.history] == pytest.approx([h["loss"] for h in run.history], abs=1e-5)
        for key, value in alone.lora.state_dict().items():  # Adam turns float rounding near g = 0 into ~1e-5
            assert torch.allclose(value, run.lora.state_dict()[key], atol=1e-4)
    assert not torch.allclose(together[0].lora.a["q_proj"], together[1].lora.a["q_proj"], atol=1e-2)
    with pytest.raises(ValueError, match="NEFTune"):
        train_loras(model, tokenizer, layout, shape, jobs, LoraRecipe(lr=1e-2, neftune_alpha=5.0))


def test_a_user_without_visible_history_gets_the_untrained_oppu_adapter(tiny):
    """A one-row EC speaker: its only item is its query's gold, so OPPU has nothing to learn from (base model)."""
    model, tokenizer, layout = tiny
    record = UserRecord("s", "EmpatheticConv", [{"article": "news", "essay": "so sad", "query_id": "q"}],
                        [Query("q", "news", "so sad")])
    assert oppu.user_examples(record, tokenizer, 128) == []
    (run,) = oppu.train_users(model, tokenizer, layout, LORA, [record], load_config("params.yaml", "smoke").oppu,
                              seed=0)
    assert (run.steps, run.history) == (0, [])
    state = run.lora.state_dict()
    assert all(float(v.abs().sum()) == 0 for k, v in state.items() if k.startswith("b."))  # B = 0: no change
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if k.startswith("a."))


def test_oppu_examples_use_labels_where_the_task_has_them_and_text_otherwise(tiny):
    _, tokenizer, _ = tiny
    labelled = oppu.user_examples(movie_user("a", ["sci-fi"]), tokenizer, 256)
    assert len(labelled) == 1 and -100 in labelled[0].labels  # completion loss: the prompt is masked
    (whole,) = oppu.user_examples(movie_user("a", ["sci-fi"]), tokenizer, 256, completion_only=False)
    assert whole.labels == whole.input_ids == labelled[0].input_ids  # causal_lm (the authors'): prompt and answer
    tweets = UserRecord("t", "LaMP-7", [{"id": "t-h0", "text": "hello world -- rs"}],
                        [Query("t-q", "Paraphrase the following tweet without any explanation before or after it: "
                                      "hi", "hi -- rs")])
    (example,) = oppu.user_examples(tweets, tokenizer, 256)
    assert example.labels == example.input_ids  # language modelling on the user's own text


def test_oppu_steps_accumulate_batches_within_each_epoch():
    steps = epoch_steps(5, 2, 2, 2, seed=0)  # 3 batches per epoch: steps of 2 and 1 batches, twice
    assert [len(step) for step in steps] == [2, 1, 2, 1]
    for epoch in (steps[:2], steps[2:]):
        assert sorted(i for step in epoch for batch in step for i in batch) == [0, 1, 2, 3, 4]
    assert steps == epoch_steps(5, 2, 2, 2, seed=0) and steps != epoch_steps(5, 2, 2, 2, seed=1)


def test_mt_lora_trains_on_p2ps_batches_with_p2ps_regularisers(tiny):
    """The matched baseline: every step's micro-batches are the very (task, sample) draws of P2P's training, and
    the recipe is `train`'s but for the learning rate; the regularisers reach the weights."""
    cfg = load_config("params.yaml", "cpu")
    tc = cfg.train.model_copy(update={"steps": 5, "grad_accum": 2, "label_smoothing": 0.1})
    samples = {"LaMP-2M": [f"m{i}" for i in range(7)], "LaMP-3": [f"r{i}" for i in range(4)]}
    flat, steps = mixed_steps(samples, tc, seed=3)  # type: ignore[arg-type]
    assert len(steps) == tc.steps and all(len(step) == tc.grad_accum for step in steps)
    sizes = {t: len(v) for t, v in samples.items()}
    for s, step in enumerate(steps):
        for m, micro in enumerate(step):
            drawn = draw_batch(sizes, 3, s, m, tc.tasks_per_batch, tc.samples_per_task)
            assert [flat[i] for i in micro] == [samples[t][i] for t, i in drawn]
    r = recipe(cfg.mt_lora, tc)
    assert (r.lr, r.weight_decay, r.warmup, r.schedule, r.grad_clip, r.label_smoothing, r.l2, r.neftune_alpha) == (
        cfg.mt_lora.lr, tc.weight_decay, tc.warmup, tc.schedule, tc.grad_clip, 0.1, tc.l2_adapters, tc.neftune_alpha)

    model, tokenizer, layout = tiny
    examples = oppu.user_examples(movie_user("a", ["sci-fi", "comedy", "action"]), tokenizer, 128)
    plain = LoraRecipe(lr=1e-2)

    def weights(r: LoraRecipe) -> torch.Tensor:
        run = train_lora(model, tokenizer, layout, LORA, examples, epoch_steps(len(examples), 2, 1, 1, 0), r, seed=0)
        return torch.cat([v.detach().flatten() for v in run.lora.state_dict().values()])

    base = weights(plain)
    for changed in ({"l2": 10.0}, {"label_smoothing": 0.3}, {"neftune_alpha": 5.0}):
        assert not torch.allclose(base, weights(LoraRecipe(lr=1e-2, **changed))), changed
    assert torch.equal(base, weights(plain))  # seeded


class Killed(Exception):
    pass


def test_a_killed_lora_run_resumes_to_the_same_weights(tiny, tmp_path):
    model, tokenizer, layout = tiny
    shape = LoraShape(("q_proj", "v_proj"), 4, 8, 0.1)  # dropout: the generators must be restored too
    examples = oppu.user_examples(movie_user("a", ["sci-fi", "comedy", "action"]), tokenizer, 128)
    other = oppu.user_examples(movie_user("b", ["romance", "fantasy"]), tokenizer, 128)
    jobs = [LoraJob(examples, epoch_steps(len(examples), 2, 1, 1, 3), 3),  # 6 steps
            LoraJob(other, epoch_steps(len(other), 2, 1, 1, 4), 4)]  # 4 steps, beside it
    recipe_ = LoraRecipe(lr=1e-2, warmup=0.2)

    def run(**kwargs):
        return train_loras(model, tokenizer, layout, shape, jobs, recipe_, **kwargs)

    def kill_at_5(step):
        if step == 5:
            raise Killed

    whole = run()
    with pytest.raises(Killed):
        run(checkpoint=tmp_path / "c.pt", checkpoint_every=2, on_step=kill_at_5)  # step 5 is lost, 4 was saved
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 4
    resumed = run(checkpoint=tmp_path / "c.pt", checkpoint_every=2)
    for w, r in zip(whole, resumed):
        assert [h["loss"] for h in r.history] == [h["loss"] for h in w.history]
        for key, value in w.lora.state_dict().items():
            assert torch.equal(value, r.lora.state_dict()[key])
    finished = run(checkpoint=tmp_path / "c.pt", on_step=kill_at_5)  # done: nothing runs again
    assert all(torch.equal(v, finished[0].lora.state_dict()[k]) for k, v in whole[0].lora.state_dict().items())
    with pytest.raises(ValueError, match=r"a run of \[6, 4\] steps, this run has \[3\]"):
        train_lora(model, tokenizer, layout, shape, examples, jobs[0].steps[:3], recipe_, seed=3,
                   checkpoint=tmp_path / "c.pt")


def test_oppu_keeps_finished_users_under_a_key_of_what_shaped_them(tiny, tmp_path):
    model, tokenizer, layout = tiny
    cfg = load_config("params.yaml", "smoke")
    user = movie_user("a", ["sci-fi", "comedy"])
    path = checkpoint_path(cfg, tmp_path, user)
    (first,) = oppu.train_users(model, tokenizer, layout, LORA, [user], cfg.oppu, seed=cfg.seed)
    save_finished(path, first)
    again = load_finished(path, layout, LORA)
    assert (again.steps, again.seconds, again.history) == (first.steps, first.seconds, first.history)
    assert all(torch.equal(v, again.lora.state_dict()[k]) for k, v in first.lora.state_dict().items())
    assert checkpoint_path(cfg, tmp_path, movie_user("a", ["sci-fi", "action"])) != path  # other history
    other = cfg.model_copy(update={"oppu": cfg.oppu.model_copy(update={"lr": 1e-3})})
    assert checkpoint_path(other, tmp_path, user) != path  # other settings
    wider = cfg.model_copy(update={"oppu": cfg.oppu.model_copy(update={"parallel_users": 99})})
    assert checkpoint_path(wider, tmp_path, user) == path  # who trains beside a user does not change its adapter


def test_trained_loras_round_trip_through_disk_and_peft_format(tiny, tmp_path):
    model, tokenizer, layout = tiny
    examples = oppu.user_examples(movie_user("a", ["sci-fi", "comedy"]), tokenizer, 128)
    runs = [train_lora(model, tokenizer, layout, LORA, examples, epoch_steps(len(examples), 1, 2, 1, seed),
                       LoraRecipe(lr=1e-2), seed=seed) for seed in (1, 2)]
    assert runs[0].history[-1]["loss"] > 0
    stacked = stack_adapters([r.lora for r in runs])
    save_adapters(tmp_path / "t.safetensors", stacked, ["u1", "u2"], {"seconds": [1.0, 2.0]})
    loaded, rows, info = load_adapters(tmp_path / "t.safetensors")
    assert rows == ["u1", "u2"] and info == {"seconds": [1.0, 2.0]}
    for kind in stacked.a:
        assert torch.equal(loaded.a[kind], stacked.a[kind]) and torch.equal(loaded.b[kind], stacked.b[kind])
    export_adapter(tmp_path / "peft", layout, LORA, stacked, "tiny-random-qwen2", row=1)
    one = load_adapter(tmp_path / "peft", layout)
    for kind in stacked.a:
        assert torch.equal(one.a[kind][0], stacked.a[kind][1]) and torch.equal(one.b[kind][0], stacked.b[kind][1])


def test_profile_variants_build_the_table5_texts():
    user = movie_user("u", ["sci-fi", "comedy"])
    full = build_profiles(user, "S", 1).query_texts["u-q"]
    assert full.startswith("## User Profile: S\ntotal=2") and "## User History: " in full
    assert build_profiles(user, "S", 1, "summary_only").query_texts["u-q"] == "## User Profile: S\ntotal=2 | " \
                                                                               "comedy=1 (50%), sci-fi=1 (50%)"
    retrieved = build_profiles(user, "S", 1, "retrieved_only").query_texts["u-q"]
    assert retrieved.startswith("## User History: ") and retrieved.count("description:") == 1 and "S" not in \
        retrieved.split(": ", 1)[0]
    whole = build_profiles(user, "S", 1, "full_history_only").query_texts["u-q"]
    assert whole.index("comedy things") < whole.index("sci-fi things")  # newest first
    assert "another query's film" not in whole


def test_shuffled_and_random_profiles():
    owners = ["a", "a", "b", "c", "c"]
    vectors = np.arange(15, dtype=np.float32).reshape(5, 3)
    partner = partner_map(owners, 0)
    assert sorted(partner) == sorted(partner.values()) == ["a", "b", "c"] and all(u != v for u, v in partner.items())
    shuffled = ablate(vectors, owners, "shuffled", 0)
    rows = {"a": [0, 1], "b": [2], "c": [3, 4]}
    for user, own in rows.items():
        other = rows[partner[user]]
        for k, row in enumerate(own):
            assert np.array_equal(shuffled[row], vectors[other[k % len(other)]])
    random = ablate(vectors, owners, "random", 0)
    assert np.allclose(np.linalg.norm(random, axis=1), np.sqrt(3), atol=1e-5)
    assert np.array_equal(random[0], random[1]) and not np.array_equal(random[0], random[2])
    assert ablate(vectors, owners, "summary_only", 0) is vectors


def test_training_populations_keep_clusters_or_users():
    users = [f"u{i}" for i in range(20)]
    clusters = {u: i % 4 for i, u in enumerate(users)}
    assert select_train_users(users, clusters, 1.0, 1.0, 0) == users
    half_clusters = select_train_users(users, clusters, 1.0, 0.5, 0)
    assert len({clusters[u] for u in half_clusters}) == 2 and len(half_clusters) == 10
    half_users = select_train_users(users, clusters, 0.5, 1.0, 0)
    assert len(half_users) == 10 and half_users == [u for u in users if u in set(half_users)]
    assert select_train_users(users, clusters, 0.5, 1.0, 0) == half_users  # seeded
    matched = select_train_users(users, clusters, 1.0, 0.5, 0, max_users=4)  # diversity at a matched count
    assert len(matched) == 4 and set(matched) <= set(half_clusters)
    assert len(select_train_users(users, clusters, 1.0, 1.0, 0, max_users=4)) == 4
    assert select_train_users(users, clusters, 1.0, 0.25, 0, max_users=99) == \
        select_train_users(users, clusters, 1.0, 0.25, 0)  # fewer users than asked: all of them


def test_history_buckets_split_users_by_quantiles():
    lengths = {f"u{i}": n for i, n in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9])}
    buckets = history_buckets(lengths, 3)
    assert buckets["u0"] == buckets["u2"] == "1-4" and buckets["u4"] == "4-6" and buckets["u8"] == "6-9"
    assert set(history_buckets({"a": 8, "b": 8}, 3).values()) == {"8-8"}
