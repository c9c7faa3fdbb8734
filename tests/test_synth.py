import json
import os
import random
import statistics
import time
from collections import Counter, defaultdict

import pytest
from rouge_score.rouge_scorer import RougeScorer
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import adjusted_rand_score

from p2p.data import synth
from p2p.io import InputError

CPU = {"users": 300, "history_items": 8, "queries_per_user": 4}
SMOKE = {"users": 40, "history_items": 6, "queries_per_user": 2}
PROFILE_FIELDS = {"LaMP-2M": {"id", "description", "tag"}, "LaMP-3": {"id", "text", "score"}, "LaMP-7": {"id", "text"}}


@pytest.fixture(scope="module")
def cpu_dirs(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("cpu"), seed=0, **CPU)


def load(task_dir):
    """Parse with plain json, as any consumer of the official format would."""
    questions = json.loads((task_dir / "train_questions.json").read_text(encoding="utf-8"))
    outputs = json.loads((task_dir / "train_outputs.json").read_text(encoding="utf-8"))
    preferences = json.loads((task_dir / "preferences.json").read_text(encoding="utf-8"))
    return questions, outputs, preferences


def golds_of(task_dir):
    return {g["id"]: g["output"] for g in load(task_dir)[1]["golds"]}


def score(task, predictions, golds):
    """Accuracy (LaMP-2M), MAE (LaMP-3) or mean ROUGE-1 F (LaMP-7) over all golds."""
    assert predictions.keys() == golds.keys()
    if task == "LaMP-2M":
        return sum(predictions[i] == g for i, g in golds.items()) / len(golds)
    if task == "LaMP-3":
        return sum(abs(float(predictions[i]) - float(g)) for i, g in golds.items()) / len(golds)
    scorer = RougeScorer(["rouge1"], use_stemmer=False)
    return statistics.mean(scorer.score(g, predictions[i])["rouge1"].fmeasure for i, g in golds.items())


def query_text(task, question):
    assert question["input"].startswith(synth.QUERY_PREFIXES[task])
    return question["input"][len(synth.QUERY_PREFIXES[task]):]


# --- determinism ---------------------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    sizes = {"users": 20, "history_items": 3, "queries_per_user": 2}
    first = synth.generate(tmp_path / "a", seed=7, **sizes)
    again = synth.generate(tmp_path / "b", seed=7, **sizes)
    other = synth.generate(tmp_path / "c", seed=8, **sizes)
    assert set(first) == set(synth.TASKS)
    for task, task_dir in first.items():
        names = sorted(p.name for p in task_dir.iterdir())
        assert names == ["manifest.json", "preferences.json", "train_outputs.json", "train_questions.json"]  # no temps
        for name in names:
            data = (task_dir / name).read_bytes()
            assert data == (again[task] / name).read_bytes()
            assert data != (other[task] / name).read_bytes()


def test_generation_leaves_the_global_random_state_alone(tmp_path):
    random.seed(123)
    state = random.getstate()
    synth.generate(tmp_path, seed=0, users=5, history_items=2, queries_per_user=1, tasks=("LaMP-3",))
    assert random.getstate() == state


def test_bad_sizes_and_unknown_tasks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="users must be at least 1"):
        synth.generate(tmp_path, seed=0, users=0, history_items=2, queries_per_user=1)
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synth.generate(tmp_path, seed=0, users=2, history_items=2, queries_per_user=1, tasks=("LaMP-4",))
    assert not any(tmp_path.iterdir())


def test_a_rerun_replaces_its_tasks_keeps_the_others_and_refuses_someone_elses_directory(tmp_path):
    tiny = {"users": 2, "history_items": 2, "queries_per_user": 1}
    synth.generate(tmp_path / "out", seed=0, **tiny, tasks=("LaMP-3",))
    kept = (tmp_path / "out/LaMP-3/train_outputs.json").read_bytes()
    synth.generate(tmp_path / "out", seed=1, **tiny, tasks=("LaMP-2M",))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["LaMP-2M", "LaMP-3"]
    assert (tmp_path / "out/LaMP-3/train_outputs.json").read_bytes() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries beside

    (tmp_path / "out/thesis.txt").write_text("mine")
    with pytest.raises(InputError, match=r"out: holds files this command did not write \(thesis.txt\)"):
        synth.generate(tmp_path / "out", seed=2, **tiny, tasks=("LaMP-3",))
    assert (tmp_path / "out/LaMP-3/train_outputs.json").read_bytes() == kept
    synth.generate(tmp_path / "out", seed=2, **tiny, tasks=("LaMP-3",), force=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["LaMP-2M", "LaMP-3"]


def test_files_and_folders_get_the_modes_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        synth.generate(tmp_path / "out", seed=0, users=2, history_items=2, queries_per_user=1)
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {0o644}
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*") if p.is_dir()} | \
        {(tmp_path / "out").stat().st_mode & 0o777} == {0o755}


def test_cpu_sized_generation_is_fast(tmp_path):
    start = time.perf_counter()
    synth.generate(tmp_path, seed=1, **CPU)
    assert time.perf_counter() - start < 5.0  # measured ~0.3 s for all three tasks


# --- format --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", synth.TASKS)
def test_files_follow_the_official_lamp_formats(cpu_dirs, task):
    questions, outputs, preferences = load(cpu_dirs[task])
    assert outputs["task"] == {"LaMP-2M": "LaMP_2", "LaMP-3": "LaMP_3", "LaMP-7": "LaMP_7"}[task]
    assert [g["id"] for g in outputs["golds"]] == [q["id"] for q in questions]
    assert all(set(g) == {"id", "output"} and isinstance(g["output"], str) for g in outputs["golds"])
    assert preferences["task"] == task and preferences["seed"] == 0

    question_ids = [q["id"] for q in questions]
    assert all(isinstance(i, str) for i in question_ids) and len(set(question_ids)) == len(question_ids)
    by_user = defaultdict(list)
    for q in questions:
        assert set(q) == {"id", "input", "profile", "user_id"}
        query_text(task, q)
        by_user[q["user_id"]].append(q)
    assert len(by_user) == CPU["users"] and set(by_user) == set(preferences["users"])
    profile_ids = []
    for user_questions in by_user.values():
        assert len(user_questions) == CPU["queries_per_user"]
        profile = user_questions[0]["profile"]
        assert all(q["profile"] == profile for q in user_questions)  # one history per user
        assert len(profile) == CPU["history_items"]
        assert all(set(item) == PROFILE_FIELDS[task] and all(isinstance(v, str) for v in item.values())
                   for item in profile)
        profile_ids += [item["id"] for item in profile]
    assert len(set(profile_ids)) == len(profile_ids)  # item ids unique across users too


def test_the_official_query_phrasing_is_exact():
    assert synth.QUERY_PREFIXES["LaMP-2M"] == (
        "Which tag does this movie relate to among the following tags? Just answer with the tag name without further "
        "explanation. tags: [sci-fi, based on a book, comedy, action, twist ending, dystopia, dark comedy, classic, "
        "psychology, fantasy, romance, thought-provoking, social commentary, violence, true story] description: ")
    assert synth.QUERY_PREFIXES["LaMP-3"] == (
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 without "
        "further explanation. review: ")
    assert synth.QUERY_PREFIXES["LaMP-7"] == (
        "Paraphrase the following tweet without any explanation before or after it: ")


def test_label_values_and_all_tags_occur_even_at_smoke_size(cpu_dirs, tmp_path):
    smoke = synth.generate(tmp_path, seed=0, **SMOKE)
    for dirs in (cpu_dirs, smoke):
        assert set(golds_of(dirs["LaMP-2M"]).values()) == set(synth.MOVIE_TAGS)
        ratings = golds_of(dirs["LaMP-3"]).values()
        assert set(ratings) == {"1", "2", "3", "4", "5"}
        questions, _, _ = load(dirs["LaMP-3"])
        assert {item["score"] for q in questions for item in q["profile"]} == {"1", "2", "3", "4", "5"}


def test_movie_descriptions_read_like_blurbs_naming_three_themes_one_of_them_preferred(cpu_dirs):
    questions, _, preferences = load(cpu_dirs["LaMP-2M"])
    golds = golds_of(cpu_dirs["LaMP-2M"])
    for q in questions:
        preferred = preferences["users"][q["user_id"]]["tags"]
        texts = [(query_text("LaMP-2M", q), golds[q["id"]])] + [(i["description"], i["tag"]) for i in q["profile"]]
        for text, tag in texts:
            assert 250 <= len(text) <= 600
            named = synth.named_tags(text)
            assert len(named) == len(set(named)) == 3
            assert [t for t in named if t in preferred] == [tag]


def test_tastes_are_independent_of_the_scene_clusters(cpu_dirs):
    """An OOD split leaves out whole scenes; every tag must stay preferred by users of the other scenes."""
    _, _, preferences = load(cpu_dirs["LaMP-2M"])
    users = preferences["users"].values()
    for scene in synth.FILM_SCENES:
        elsewhere = Counter(tag for u in users if u["group"] != scene for tag in u["tags"])
        assert set(elsewhere) == set(synth.MOVIE_TAGS)
        assert min(elsewhere.values()) >= 4
    assert len({tuple(sorted(u["tags"])) for u in users}) >= 50  # pairs spread over the 105 possible


# --- the planted signal ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", synth.TASKS)
def test_oracle_is_perfect_history_recovers_it_and_query_only_falls_clearly_short(cpu_dirs, task):
    task_dir = cpu_dirs[task]
    golds = golds_of(task_dir)
    oracle = score(task, synth.oracle_predictions(task_dir), golds)
    history = score(task, synth.history_predictions(task_dir), golds)
    blind = score(task, synth.query_only_predictions(task_dir), golds)
    print(f"{task}: oracle {oracle:.4f} history {history:.4f} query-only {blind:.4f}")
    if task == "LaMP-2M":
        assert oracle == 1.0 and history >= 0.9
        assert abs(blind - 1 / 3) < 0.05
    elif task == "LaMP-3":
        assert oracle == 0.0 and history <= 0.2
        assert blind >= 0.5
    else:
        assert oracle == 1.0 and history >= 0.95
        assert blind <= history - 0.1


def test_oracle_does_not_read_the_golds(cpu_dirs, tmp_path):
    task_dir = tmp_path / "LaMP-3"
    task_dir.mkdir()
    for name in ("train_questions.json", "preferences.json"):
        (task_dir / name).write_bytes((cpu_dirs["LaMP-3"] / name).read_bytes())
    assert synth.oracle_predictions(task_dir) == golds_of(cpu_dirs["LaMP-3"])


def test_movie_gold_cannot_be_read_from_the_query(cpu_dirs):
    questions, _, _ = load(cpu_dirs["LaMP-2M"])
    golds = golds_of(cpu_dirs["LaMP-2M"])
    named = {q["id"]: synth.named_tags(query_text("LaMP-2M", q)) for q in questions}
    positions = Counter(named[i].index(g) for i, g in golds.items())
    assert all(abs(positions[p] / len(golds) - 1 / 3) < 0.05 for p in range(3))
    # A user-blind learner: how often each tag is gold when named, fitted on half the users, tested on the rest.
    users = sorted({q["user_id"] for q in questions})
    fit_users = set(users[::2])
    named_count, gold_count = Counter(), Counter()
    for q in questions:
        if q["user_id"] in fit_users:
            named_count.update(named[q["id"]])
            gold_count[golds[q["id"]]] += 1
    held_out = [q["id"] for q in questions if q["user_id"] not in fit_users]
    hits = sum(max(named[i], key=lambda t: gold_count[t] / named_count[t]) == golds[i] for i in held_out)
    assert hits / len(held_out) < 0.40


def test_review_text_carries_no_bias_signal(cpu_dirs):
    questions, _, preferences = load(cpu_dirs["LaMP-3"])
    golds = golds_of(cpu_dirs["LaMP-3"])
    # A user-blind learner: the median gold per (domain of the product, base score), fitted on half the users.
    def cell(q):
        text = query_text("LaMP-3", q)
        domain = next(d for d, (products, _) in synth.PRODUCT_DOMAINS.items() if any(p in text for p in products))
        return domain, synth.review_base_score(text)

    users = sorted(preferences["users"])
    fit_users = set(users[::2])
    fitted = defaultdict(list)
    for q in questions:
        if q["user_id"] in fit_users:
            fitted[cell(q)].append(int(golds[q["id"]]))
    held_out = [q for q in questions if q["user_id"] not in fit_users]
    learned = statistics.mean(abs(statistics.median_low(fitted[cell(q)]) - int(golds[q["id"]])) for q in held_out)
    base = statistics.mean(abs(cell(q)[1] - int(golds[q["id"]])) for q in held_out)
    assert learned >= base - 0.05
    # and base scores are spread the same way whatever the user's bias
    mean_base = defaultdict(list)
    for q in questions:
        mean_base[preferences["users"][q["user_id"]]["bias"]].append(cell(q)[1])
    assert all(abs(statistics.mean(v) - 3) < 0.3 for v in mean_base.values())


def test_tweet_inputs_carry_no_signature(cpu_dirs):
    questions, _, _ = load(cpu_dirs["LaMP-7"])
    styled_words = set(synth.SLANG.values()) | {"ngl", "lol", "tbh", "omg", "xoxo", "ttyl", "yo"}
    for q in questions:
        text = query_text("LaMP-7", q)
        assert text.isascii() and "#" not in text and text[0].isupper()
        assert not styled_words & set(text.lower().replace(",", " ").replace(".", " ").replace("?", " ").split())


@pytest.mark.parametrize("task", synth.TASKS)
def test_users_form_clusters_a_profile_embedding_can_find(cpu_dirs, task):
    questions, _, preferences = load(cpu_dirs[task])
    history = {q["user_id"]: " ".join(v for item in q["profile"] for k, v in item.items() if k != "id")
               for q in questions}
    users = sorted(history)
    groups = [preferences["users"][u]["group"] for u in users]
    vectors = TfidfVectorizer().fit_transform([history[u] for u in users])
    found = KMeans(len(set(groups)), n_init=10, random_state=0).fit_predict(vectors)
    assert adjusted_rand_score(groups, found) > 0.6


# --- the readers and writers the oracle is built from (golden values by hand) --------------------------------------


def test_named_tags_prefers_the_longest_tag_name():
    text = "Some call it dark comedy, pointing to x. The comedy label fits. It earns its sci-fi tag with y."
    assert synth.named_tags(text) == ["dark comedy", "comedy", "sci-fi"]


def test_review_base_score_reads_the_sentiment_strength():
    assert synth.review_base_score("Got this kite on a whim. Honestly, just so-so. Maybe worth it on sale.") == 3
    assert synth.review_base_score("Ordered the tent. The frame is built to last. Cannot recommend it enough.") == 5
    with pytest.raises(ValueError, match="levels found: \\[1, 5\\]"):
        synth.review_base_score("Awful? No: terrible and excellent.")


def test_apply_signature_writes_slang_opener_closing_and_casing():
    signature = {"casing": "lower", "opener": "tbh", "slang": {"you": "u", "tonight": "2nite"},
                 "closing": ["#vibes", "peace", "out"]}
    assert synth.apply_signature("See You tonight, Sam.", signature) == "tbh see u 2nite, sam. #vibes peace out"
    assert synth.neutral_paraphrase("Stuck in traffic because of the concert downtown, see you all later.") == (
        "Caught in traffic because of the concert downtown, catch you all later.")


def test_recover_signature_from_tweets():
    tweets = ["YO SO EXCITED 4 THE FAIR 2NITE #HYPE BET 🔥", "YO CAUGHT IN TRAFFIC, CATCH U ALL LATER. #HYPE BET 🔥"]
    assert synth.recover_signature(tweets) == {"casing": "upper", "opener": "YO",
                                               "slang": {"you": "u", "for": "4", "tonight": "2nite"},
                                               "closing": ["#HYPE", "BET", "🔥"]}
    assert synth.recover_signature(tweets[:1])["closing"] == []  # one tweet cannot show what every tweet shares


def test_predictions_name_the_question_whose_user_has_no_planted_preference(tmp_path):
    task_dir = synth.generate(tmp_path, seed=0, users=2, history_items=2, queries_per_user=1,
                              tasks=("LaMP-2M",))["LaMP-2M"]
    preferences = json.loads((task_dir / "preferences.json").read_text())
    del preferences["users"]["LaMP-2M-u0001"]
    (task_dir / "preferences.json").write_text(json.dumps(preferences))
    with pytest.raises(InputError, match="record id LaMP-2M-u0001-q0.*no planted preference"):
        synth.oracle_predictions(task_dir)


# --- what a split holds out ----------------------------------------------------------------------------------------


def planted(tmp_path, task, users):
    """A hand-made task directory holding only `preferences.json`."""
    task_dir = tmp_path / task
    task_dir.mkdir()
    (task_dir / "preferences.json").write_text(json.dumps({"task": task, "seed": 0, "rule": "", "users": users}))
    return task_dir


def test_unseen_scene_and_tag_pair_users_on_a_hand_made_lamp2m_file(tmp_path):
    task_dir = planted(tmp_path, "LaMP-2M", {
        "a": {"group": "anime", "tags": ["comedy", "romance"]},
        "b": {"group": "nordic", "tags": ["action", "classic"]},
        "t1": {"group": "anime", "tags": ["romance", "comedy"]},  # the pair of a, in the other order: seen
        "t2": {"group": "bollywood", "tags": ["comedy", "action"]},  # both tags seen, never together: unseen pair
        "t3": {"group": "nordic", "tags": ["classic", "action"]},  # b's pair and scene
        "t4": {"group": "arthouse", "tags": ["action", "classic"]},  # a new scene with b's pair
    })
    test = ["t1", "t2", "t3", "t4"]
    assert synth.unseen_scene_users(task_dir, ["a", "b"], test) == {"t2", "t4"}
    assert synth.unseen_preference_users(task_dir, ["a", "b"], test) == {"t2"}
    assert synth.unseen_preference_users(task_dir, [], test) == set(test)  # no training user: nothing is seen
    assert synth.unseen_scene_users(task_dir, ["a", "b", "t2", "t4"], test) == set()


def test_unseen_bias_and_signature_users_on_hand_made_files(tmp_path):
    reviews = planted(tmp_path, "LaMP-3", {"a": {"group": "toys", "bias": -1}, "b": {"group": "books", "bias": 0},
                                           "t1": {"group": "toys", "bias": 2}, "t2": {"group": "beauty", "bias": 0}})
    assert synth.unseen_preference_users(reviews, ["a", "b"], ["t1", "t2"]) == {"t1"}
    assert synth.unseen_scene_users(reviews, ["a", "b"], ["t1", "t2"]) == {"t2"}
    signature = {"casing": "lower", "opener": "ngl", "slang": {"you": "u"}, "closing": ["ttyl"]}
    tweets = planted(tmp_path, "LaMP-7", {"a": {"group": "texter", **signature},
                                          "t1": {"group": "hype", **signature},  # the same signature: seen
                                          "t2": {"group": "texter", **signature, "closing": ["cya"]}})
    assert synth.unseen_preference_users(tweets, ["a"], ["t1", "t2"]) == {"t2"}
    assert synth.unseen_scene_users(tweets, ["a"], ["t1", "t2"]) == {"t1"}


def test_unseen_users_refuse_a_user_without_a_planted_preference(tmp_path):
    task_dir = planted(tmp_path, "LaMP-3", {"a": {"group": "toys", "bias": -1}})
    with pytest.raises(InputError, match="no planted preference for 1 users.*'ghost'"):
        synth.unseen_preference_users(task_dir, ["a"], ["ghost"])
    (task_dir / "preferences.json").write_text("[]")
    with pytest.raises(InputError, match="not a planted-preferences file"):
        synth.unseen_scene_users(task_dir, ["a"], ["a"])


def test_history_lengths_drawn_from_a_range_keep_the_planted_rule(tmp_path):
    """A range gives users from a handful of items to many (Fig. 5); the oracle stays perfect, the user-blind answer
    stays at chance, and a fixed count draws nothing, so its files are those a count always gave."""
    dirs = synth.generate(tmp_path / "range", seed=0, users=120, history_items=[2, 12], queries_per_user=2,
                          tasks=["LaMP-2M"])
    questions, _, _ = load(dirs["LaMP-2M"])
    lengths = {q["user_id"]: len(q["profile"]) for q in questions}
    assert min(lengths.values()) == 2 and max(lengths.values()) == 12 and len(set(lengths.values())) >= 8
    golds = golds_of(dirs["LaMP-2M"])
    assert score("LaMP-2M", synth.oracle_predictions(dirs["LaMP-2M"]), golds) == 1.0
    assert abs(score("LaMP-2M", synth.query_only_predictions(dirs["LaMP-2M"]), golds) - 1 / 3) < 0.1
    fixed = synth.generate(tmp_path / "fixed", seed=0, users=40, history_items=6, queries_per_user=2,
                           tasks=["LaMP-2M"])
    same = synth.generate(tmp_path / "same", seed=0, users=40, history_items=[6, 6], queries_per_user=2,
                          tasks=["LaMP-2M"])
    assert (fixed["LaMP-2M"] / "train_questions.json").read_bytes() == \
        (same["LaMP-2M"] / "train_questions.json").read_bytes()
    with pytest.raises(ValueError, match="fewest <= most"):
        synth.generate(tmp_path / "bad", seed=0, users=4, history_items=[5, 2], queries_per_user=1)
