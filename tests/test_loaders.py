"""Source-format loaders: the real shared files, small official-format files written here, and one test per kind
of bad input asserting the file, record and field named in the message."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from p2p.data.records import MAX_FIELD_CHARS, Query
from p2p.data.sources.empathetic import load_empathetic
from p2p.data.sources.lamp import load_lamp
from p2p.data.sources.longlamp import load_longlamp, load_longlamp_hf
from p2p.data.sources.p2p_data import load_p2p_data
from p2p.data.sources.personal_reddit import load_personal_reddit
from p2p.io import InputError


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _hash_id(prefix: str, obj) -> str:
    return prefix + hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------- LaMP

def _movie(item_id: str, tag: str = "comedy") -> dict:
    return {"id": item_id, "description": f"movie {item_id}", "tag": tag}


def _question(qid: str, profile: list, **extra) -> dict:
    return {"id": qid, "input": f"Which tag ... description: plot of {qid}", "profile": profile, **extra}


def _golds(*pairs) -> dict:
    return {"task": "LaMP_2", "golds": [{"id": qid, "output": out} for qid, out in pairs]}


def test_lamp_groups_questions_into_users(tmp_path):
    _write_json(tmp_path / "train_questions.json", [
        _question("q1", [_movie("a"), _movie("b")]),
        _question("q2", [_movie("b"), _movie("a")]),  # the same profile in another order: the same user
        _question("q3", [_movie("c")], user_id="u7"),
        _question("q4", [_movie("c"), _movie("d")], user_id="u7"),  # user_id wins over the profile
    ])
    _write_json(tmp_path / "train_outputs.json", _golds(("q1", "comedy"), ("q2", "sci-fi"), ("q3", "action"),
                                                        ("q4", "comedy")))
    _write_json(tmp_path / "dev_questions.json", [_question("q5", [_movie("a"), _movie("b")])])
    _write_json(tmp_path / "dev_outputs.json", _golds(("q5", "classic")))
    _write_json(tmp_path / "test_questions.json", [_question("q6", [_movie("e")])])
    records = load_lamp("LaMP-2M", tmp_path)
    assert [r.user_id for r in records] == [_hash_id("lamp-", ["a", "b"]), "u7", _hash_id("lamp-", ["e"])]
    first, second, third = records
    assert [item["id"] for item in first.history] == ["a", "b"]
    assert [item["id"] for item in second.history] == ["c", "d"]
    assert first.queries == [Query("q1", _question("q1", [])["input"], "comedy"),
                             Query("q2", _question("q2", [])["input"], "sci-fi"),
                             Query("q5", _question("q5", [])["input"], "classic")]
    assert third.queries[0].output is None  # test golds are withheld
    assert first.meta == {"source": "lamp", "query_splits": {"q1": "train", "q2": "train", "q5": "dev"}}
    assert {r.task for r in records} == {"LaMP-2M"}


def test_lamp_keeps_extra_item_keys_and_numeric_scores(tmp_path):
    _write_json(tmp_path / "train_questions.json",
                [{"id": 1, "input": "What is the score ... review: ok", "profile": [{"id": 9, "text": "meh", "score": 3,
                                                                                   "date": "2015"}]}])
    _write_json(tmp_path / "train_outputs.json", {"task": "LaMP_3", "golds": [{"id": 1, "output": "4"}]})
    (record,) = load_lamp("LaMP-3", tmp_path)
    assert record.history == [{"id": 9, "text": "meh", "score": 3, "date": "2015"}]
    assert record.queries == [Query("1", "What is the score ... review: ok", "4")]


def _lamp_error(tmp_path, questions, golds=None, task="LaMP-2M") -> str:
    qpath = tmp_path / "train_questions.json"
    if isinstance(questions, bytes):
        qpath.write_bytes(questions)
    else:
        _write_json(qpath, questions)
    if golds is not None:
        _write_json(tmp_path / "train_outputs.json", golds)
    with pytest.raises(InputError) as err:
        load_lamp(task, tmp_path)
    return str(err.value)


def test_lamp_question_without_profile(tmp_path):
    message = _lamp_error(tmp_path, [{"id": "q1", "input": "x"}])
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record id q1: field 'profile': missing")


def test_lamp_question_with_empty_profile(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [])])
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record id q1: field 'profile': empty")


def test_lamp_profile_item_without_a_required_field(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [_movie("a"), {"id": "b", "description": "no tag"}])])
    assert message == f"{tmp_path / 'train_questions.json'}: record id q1: field 'profile[1].tag': missing"


def test_lamp_profile_item_without_id(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [{"description": "d", "tag": "t"}])])
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record id q1: field 'profile[0].id'")


def test_lamp_wrong_type(tmp_path):
    message = _lamp_error(tmp_path, [{"id": "q1", "input": 42, "profile": [_movie("a")]}])
    assert message == f"{tmp_path / 'train_questions.json'}: record id q1: field 'input': expected a string, got int"


def test_lamp_question_that_is_not_an_object(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [_movie("a")]), ["not", "an", "object"]])
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record item 1: expected an object")


def test_lamp_gold_without_question(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [_movie("a")])], _golds(("q1", "comedy"), ("q9", "action")))
    assert message.startswith(f"{tmp_path / 'train_outputs.json'}: record id q9: field 'id': gold without a question")


def test_lamp_question_missing_from_the_outputs_file(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [_movie("a")]), _question("q2", [_movie("b")])],
                          _golds(("q1", "comedy")))
    assert message.startswith(f"{tmp_path / 'train_outputs.json'}: record id q2: no gold")


def test_lamp_truncated_json(tmp_path):
    text = json.dumps([_question("q1", [_movie("a")])], indent=1)
    message = _lamp_error(tmp_path, text[: len(text) // 2].encode())
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record line ")
    assert "malformed JSON" in message


def test_lamp_non_utf8(tmp_path):
    message = _lamp_error(tmp_path, b'[{"id": "q1", "input": "caf\xe9"}]')
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record line 1: not UTF-8")


def test_lamp_oversized_field(tmp_path):
    huge = {"id": "a", "description": "x" * (MAX_FIELD_CHARS + 1), "tag": "comedy"}
    message = _lamp_error(tmp_path, [_question("q1", [huge])])
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record id q1: field 'profile[0].description': "
                              f"{MAX_FIELD_CHARS + 1:,} characters, over the limit")


def test_lamp_item_id_reused_for_another_item(tmp_path):
    message = _lamp_error(tmp_path, [_question("q1", [_movie("a")], user_id="u1"),
                                     _question("q2", [_movie("a", tag="action")], user_id="u1")])
    assert message.startswith(f"{tmp_path / 'train_questions.json'}: record id q2: field 'profile[0]': profile item "
                              "id a differs from the item with that id in train_questions.json, question id q1")


def test_lamp_question_id_repeated_across_splits(tmp_path):
    _write_json(tmp_path / "dev_questions.json", [_question("q1", [_movie("a")])])
    message = _lamp_error(tmp_path, [_question("q1", [_movie("b")])])
    assert message.startswith(f"{tmp_path / 'dev_questions.json'}: record id q1: field 'id': question id also used "
                              "in train_questions.json")


def test_lamp_outputs_without_questions_and_empty_directory(tmp_path):
    _write_json(tmp_path / "dev_outputs.json", _golds(("q1", "comedy")))
    with pytest.raises(InputError, match="dev_outputs.json: golds without questions"):
        load_lamp("LaMP-2M", tmp_path)
    (tmp_path / "dev_outputs.json").unlink()
    with pytest.raises(InputError, match="no LaMP questions file"):
        load_lamp("LaMP-2M", tmp_path)
    with pytest.raises(ValueError, match="unknown LaMP task 'LaMP_2'"):
        load_lamp("LaMP_2", tmp_path)


# ------------------------------------------------------------------------------------------------------ LongLaMP

def _review(text: str, summary: str = "ok") -> dict:
    return {"overall": 5.0, "summary": summary, "description": "a blender", "reviewText": text}


def test_longlamp_groups_rows_by_user_and_marks_items_that_are_queries(tmp_path):
    directory = tmp_path / "LongLaMP-3"
    _write_jsonl(directory / "train.jsonl", [
        {"reviewerId": "R1", "input": "Generate the review ... blender", "output": "It blends well.",
         "profile": [_review("Sharp knives.")]},
        {"reviewerId": "R2", "input": "Generate the review ... kettle", "output": "Boils fast.",
         "profile": [_review("Nice mug.")]},
    ])
    # temporal-style: a later row of R1 whose profile holds the earlier row's gold
    _write_json(directory / "test.json", [
        {"reviewerId": "R1", "input": "Generate the review ... toaster", "output": "Burns toast.",
         "profile": [_review("Sharp knives."), _review("It blends well.")]},
    ])
    records = load_longlamp("LongLaMP-3", directory)
    assert [r.user_id for r in records] == ["R1", "R2"]
    r1 = records[0]
    assert [q.id for q in r1.queries] == ["test-0", "train-0"]  # files are read in name order
    assert [item["reviewText"] for item in r1.history] == ["Sharp knives.", "It blends well."]
    assert "query_id" not in r1.history[0]
    assert r1.history[1]["query_id"] == "train-0"
    assert r1.meta == {"source": "longlamp", "query_splits": {"test-0": "test", "train-0": "train"}}


def test_longlamp_user_keys_per_task_and_profile_fallback(tmp_path):
    abstract = {"title": "On things", "abstract": "We study things.", "id": "p1", "year": 2020}
    path = _write_jsonl(tmp_path / "val.jsonl", [
        {"name": "Ada", "input": "Generate an abstract ... items: a, b", "output": "We show.", "profile": [abstract]},
        {"input": "Generate an abstract ... items: c", "output": "We find.", "profile": [abstract]},
    ])
    records = load_longlamp("LongLaMP-1", path)
    assert [r.user_id for r in records] == ["Ada", _hash_id("longlamp-", ["id:p1"])]
    topic = _write_json(tmp_path / "topic.json", [{"author": "bob", "input": "Write a post", "output": "Post.",
                                                   "profile": [{"summary": "s", "content": "c"}]}])
    assert [r.user_id for r in load_longlamp("LongLaMP-2", topic)] == ["bob"]


def _longlamp_error(tmp_path, rows, task="LongLaMP-3") -> tuple[Path, str]:
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(InputError) as err:
        load_longlamp(task, path)
    return path, str(err.value)


def test_longlamp_missing_profile(tmp_path):
    good = {"reviewerId": "R1", "input": "i", "output": "o", "profile": [_review("t")]}
    path, message = _longlamp_error(tmp_path, [good, {"reviewerId": "R2", "input": "i", "output": "o"}])
    assert message == f"{path}: record line 2: field 'profile': missing"


def test_longlamp_empty_profile(tmp_path):
    path, message = _longlamp_error(tmp_path, [{"reviewerId": "R1", "input": "i", "output": "o", "profile": []}])
    assert message.startswith(f"{path}: record line 1: field 'profile': empty")


def test_longlamp_wrong_type_and_missing_field_in_an_item(tmp_path):
    bad_type = {**_review("t"), "overall": [5]}
    path, message = _longlamp_error(tmp_path, [{"reviewerId": "R1", "input": "i", "profile": [bad_type]}])
    assert message == f"{path}: record line 1: field 'profile[0].overall': expected str or int or float, got list"
    no_text = {"overall": 4, "summary": "s", "description": "d"}
    path, message = _longlamp_error(tmp_path, [{"reviewerId": "R1", "input": "i", "profile": [no_text]}])
    assert message == f"{path}: record line 1: field 'profile[0].reviewText': missing"


def test_longlamp_json_file_must_be_an_array(tmp_path):
    path = _write_json(tmp_path / "train.json", {"rows": []})
    with pytest.raises(InputError, match="expected a JSON array of records, got dict"):
        load_longlamp("LongLaMP-3", path)


def test_longlamp_hf_checks_the_config_and_explains_a_missing_datasets_package():
    with pytest.raises(ValueError, match="not LongLaMP-1"):
        load_longlamp_hf("LongLaMP-1", "product_review_user")
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("`datasets` is installed here, so the missing-package message cannot be shown")
    with pytest.raises(ImportError, match=r"pip install datasets.*export the rows as JSONL"):
        load_longlamp_hf("LongLaMP-3", split="train")


# ----------------------------------------------------------------------------------------------------- P2P_data

def test_p2p_data_groups_lines_by_user_and_merges_histories(tmp_path):
    tag = {"description": "space", "tag": "sci-fi"}
    path = _write_jsonl(tmp_path / "LaMP_processed_movie_data.jsonl", [
        {"user_id": "u1", "history": [{"id": "m1", **tag}], "input": "Which tag ... A", "output": "sci-fi",
         "question_id": "x1", "profile_text": "likes space", "extra": [1, 2]},
        {"user_id": "u1", "history": [{"id": "m1", **tag}, {"id": "m2", "description": "jokes", "tag": "comedy"}],
         "input": "Which tag ... B", "output": "comedy"},
        {"user_id": 7, "history": [tag], "query": [{"input": "Which tag ... C", "gold": "sci-fi"},
                                                   {"input": "Which tag ... D", "gold": "action"}]},
    ])
    u1, u7 = load_p2p_data("LaMP-2M", path)
    assert [item.get("id") for item in u1.history] == ["m1", "m2"]
    assert u1.queries == [Query("x1", "Which tag ... A", "sci-fi"), Query("u1-1", "Which tag ... B", "comedy")]
    assert u1.profile_text == "likes space"
    assert (u7.user_id, u7.history) == ("7", [tag])
    assert u7.queries == [Query("7-0", "Which tag ... C", "sci-fi"), Query("7-1", "Which tag ... D", "action")]
    assert u7.profile_text is None and u7.task == "LaMP-2M"


def _p2p_error(tmp_path, rows) -> tuple[Path, str]:
    path = _write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(InputError) as err:
        load_p2p_data("LaMP-7", path)
    return path, str(err.value)


def test_p2p_data_missing_user_id(tmp_path):
    good = {"user_id": "u1", "history": [{"text": "t"}], "input": "i", "output": "o"}
    path, message = _p2p_error(tmp_path, [good, {"history": [{"text": "t"}], "input": "i"}])
    assert message == f"{path}: record line 2: field 'user_id': missing"


def test_p2p_data_history_of_wrong_type(tmp_path):
    path, message = _p2p_error(tmp_path, [{"user_id": "u1", "history": "t", "input": "i"}])
    assert message == f"{path}: record line 1: field 'history': expected a list, got str"


def test_p2p_data_line_without_a_query(tmp_path):
    path, message = _p2p_error(tmp_path, [{"user_id": "u1", "history": [{"text": "t"}]}])
    assert message.startswith(f"{path}: record line 1: field 'input': missing")


def test_p2p_data_query_gold_of_wrong_type(tmp_path):
    path, message = _p2p_error(tmp_path, [{"user_id": "u1", "history": [{"text": "t"}],
                                           "query": [{"input": "i", "gold": "g"}, {"input": "i", "gold": 3}]}])
    assert message == f"{path}: record line 1: field 'query[1].gold': expected a string, got int"


def test_p2p_data_user_without_history(tmp_path):
    path, message = _p2p_error(tmp_path, [{"user_id": "u1", "history": [{"text": "t"}], "input": "i"},
                                          {"user_id": "u2", "input": "i", "output": "o"}])
    assert message.startswith(f"{path}: record line 2: field 'history': user u2 has no history items")


def _save_to_disk(folder: Path, rows: list[dict]) -> Path:
    """A `datasets.Dataset.from_list(rows).save_to_disk(folder)` as the authors' release holds it: the rows as one
    Arrow IPC stream, beside dataset_info.json and state.json (written here with pyarrow, without `datasets`)."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    features = {name: {"dtype": "string", "_type": "Value"} for name in table.column_names}
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_split": None}))
    return folder


def _release_row(user: str, qid: str, history: str, output: str, profile_text: str = "") -> dict:
    return {"user_id": user, "question_id": qid, "profile_text": profile_text,
            "profile_all_history": f"Recent User Activity:\n{history}", "input": f"Generate a headline for the "
            f"following article: {qid} text", "output": output, "profile_retrieval_k1": history.split(" || ")[0],
            "profile_retrieval_k2": history, "profile_retrieval_k4": history}


def test_p2p_data_reads_the_released_save_to_disk_folders(tmp_path):
    """Zhaoxuan/P2P_data as published: LaMP/news_headline_{train,random_test}/ save_to_disk folders whose rows
    carry the history rendered as text; the authors' rows made from history items are skipped."""
    history = ("Article: Rates rise | again, as expected | Headline: Rates up || "
               "Article: Snow in May | Headline: Late snow")
    task_dir = tmp_path / "p2p_data" / "LaMP-4"
    _save_to_disk(task_dir / "news_headline_train", [
        _release_row("u1", "q1", history, "Rates climb", profile_text="writes about money"),
        _release_row("u1", "lamp_news_headline_u1_history_1", "Article: Rates rise | Headline: Rates up",
                     "Late snow"),
        _release_row("u2", "q2", "Article: Cats nap | Headline: Nap time", "Cats rest")])
    _save_to_disk(task_dir / "news_headline_random_test", [_release_row("u3", "q3", "Article: Vote day | Headline: "
                                                                         "Polls open", "Polls close")])
    records = load_p2p_data("LaMP-4", task_dir)
    assert [r.user_id for r in records] == ["u3", "u1", "u2"]  # folders in name order: random_test, train
    u3, u1, u2 = records
    assert u1.history == [{"text": "Rates rise | again, as expected", "title": "Rates up"},
                          {"text": "Snow in May", "title": "Late snow"}]
    assert u1.queries == [Query("q1", "Generate a headline for the following article: q1 text", "Rates climb")]
    assert u1.profile_text == "writes about money" and u2.profile_text is None  # "" means none
    assert u3.history == [{"text": "Vote day", "title": "Polls open"}]


def test_prepare_reads_the_release_folder_of_a_task_and_else_its_jsonl_file(tmp_path):
    from p2p.data.prepare import load_source

    _save_to_disk(tmp_path / "p2p_data" / "LaMP-4" / "news_headline_ood_test",
                  [_release_row("u9", "q9", "Article: Tide | Headline: High tide", "Low tide")])
    _write_jsonl(tmp_path / "p2p_data" / "LaMP-5.jsonl",
                 [{"user_id": "u1", "history": [{"title": "T", "abstract": "A"}], "input": "i", "output": "o"}])
    assert [r.user_id for r in load_source("p2p_data", "LaMP-4", tmp_path)] == ["u9"]
    assert [r.user_id for r in load_source("p2p_data", "LaMP-5", tmp_path)] == ["u1"]
    with pytest.raises(InputError, match=r"LaMP-7.jsonl: no LaMP-7 data here; `p2p data fetch p2p_data` says how"):
        load_source("p2p_data", "LaMP-7", tmp_path)


def test_p2p_data_folder_without_arrow_files_and_a_file_that_is_not_arrow(tmp_path):
    (tmp_path / "LaMP-4").mkdir()
    with pytest.raises(InputError, match="no .arrow files here"):
        load_p2p_data("LaMP-4", tmp_path / "LaMP-4")
    bad = tmp_path / "LaMP-4" / "news_headline_train" / "data-00000-of-00001.arrow"
    bad.parent.mkdir()
    bad.write_bytes(b"not arrow at all")
    with pytest.raises(InputError) as err:
        load_p2p_data("LaMP-4", tmp_path / "LaMP-4")
    assert str(err.value).startswith(f"{bad}: not an Arrow IPC stream")


# ----------------------------------------------------------------------------------------------- Personal Reddit

def test_personal_reddit_real_file(shared_data_dir):
    path = shared_data_dir / "personal_reddit" / "synthetic_dataset.jsonl"
    records = load_personal_reddit(path)
    assert (len(records), sum(len(r.queries) for r in records)) == (40, 525)  # as SOURCES.md states
    first_row = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    first = records[0]
    assert first.user_id == _hash_id("pr-", first_row["personality"])
    assert first.profile_text.startswith("age: 31; sex: male; city_country: Zurich, Switzerland; "
                                         "birth_city_country: Cleveland, Ohio; education: Masters in Computer Science")
    assert first.queries[0].input == first_row["question_asked"]
    assert first.queries[0].output == first_row["response"]
    for record in records:  # every row is a query and, tagged with that query's id, a history item
        assert [item["query_id"] for item in record.history] == [q.id for q in record.queries]
        assert [item["response"] for item in record.history] == [q.output for q in record.queries]
    assert len({q.id for r in records for q in r.queries}) == 525


def _pr_error(tmp_path, lines: list) -> tuple[Path, str]:
    path = tmp_path / "synthetic_dataset.jsonl"
    path.write_bytes(b"".join(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
                              for line in lines))
    with pytest.raises(InputError) as err:
        load_personal_reddit(path)
    return path, str(err.value)


_PR_ROW = {"personality": {"age": 31, "sex": "male"}, "question_asked": "q?", "response": "r."}


def test_personal_reddit_missing_personality(tmp_path):
    path, message = _pr_error(tmp_path, [_PR_ROW, {"question_asked": "q?", "response": "r."}])
    assert message == f"{path}: record line 2: field 'personality': missing"


def test_personal_reddit_wrong_types(tmp_path):
    path, message = _pr_error(tmp_path, [{**_PR_ROW, "response": 5}])
    assert message == f"{path}: record line 1: field 'response': expected a string, got int"
    path, message = _pr_error(tmp_path, [{**_PR_ROW, "personality": {"age": [31]}}])
    assert message == f"{path}: record line 1: field 'personality.age': expected a string or number, got list"


def test_personal_reddit_truncated_line_and_non_utf8(tmp_path):
    path, message = _pr_error(tmp_path, [_PR_ROW, b'{"personality": {"age": 3'])
    assert message.startswith(f"{path}: record line 2: malformed JSON")
    path, message = _pr_error(tmp_path, [b'{"response": "\xff"}\n'])
    assert message.startswith(f"{path}: record line 1: not UTF-8")


# -------------------------------------------------------------------------------------- Empathetic Conversations

def test_empathetic_real_files(shared_data_dir):
    directory = shared_data_dir / "empathetic_conversations"
    train = load_empathetic(directory, splits=["train"])
    assert (len(train), sum(len(r.queries) for r in train)) == (59, 792)  # as SOURCES.md states
    everything = load_empathetic(directory)
    assert (len(everything), sum(len(r.queries) for r in everything)) == (59 + 41 + 65, 792 + 208 + 100)
    first = train[0]  # the file's first row: conversation 2, article 35, speaker 30
    assert first.user_id == "ec-train-30"
    assert first.profile_text.startswith("gender: 1; education: 6; race: 3; age: 37; income: 40000; "
                                         "personality_conscientiousness: 7.0; personality_openess: 5.5")
    assert first.queries[0].id == "ec-train-1"
    assert first.queries[0].output.startswith("It breaks my heart to see people living in those conditions.")
    assert first.history[0] == {"article": first.queries[0].input, "essay": first.queries[0].output,
                                "query_id": "ec-train-1"}
    dev_profile = next(r for r in everything if r.meta["split"] == "dev").profile_text
    assert dev_profile == "gender: 2; education: 2; race: 1; age: 21; income: 20000"  # dev has no trait columns
    speaker_65 = next(r for r in everything if r.user_id == "ec-test-65")  # reports 3 different incomes
    assert len(speaker_65.meta["profile_differs_on_lines"]) == 2


_EC_COLUMNS = ["conversation_id", "article_id", "essay", "speaker_id", "gender", "education", "race", "age", "income",
               "speaker_number", "split", "essay_id"]


def _ec_dir(tmp_path, rows: list[str], columns=_EC_COLUMNS) -> Path:
    (tmp_path / "articles_adobe_AMT.csv").write_text('article_id,text\n1,"A flood, far away."\n2,Fires.\n')
    lines = ["\t".join(columns)] + rows
    (tmp_path / "WASSA23_essay_level_dev.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def _ec_error(tmp_path, rows, columns=_EC_COLUMNS) -> str:
    with pytest.raises(InputError) as err:
        load_empathetic(_ec_dir(tmp_path, rows, columns), splits=["dev"])
    return str(err.value)


_EC_ROW = "1\t1\tSo sad.\t68\t2\t2\t1\t21\t20000\t1\tdev\t0"


def test_empathetic_small_file_with_a_multiline_essay(tmp_path):
    rows = [_EC_ROW, '2\t2\t"First line,\nsecond ""quoted"" line"\t68\t2\t2\t1\t21\t20000\t1\tdev\t1']
    (record,) = load_empathetic(_ec_dir(tmp_path, rows), splits=["dev"])
    assert record.queries == [Query("ec-dev-0", "A flood, far away.", "So sad."),
                              Query("ec-dev-1", "Fires.", 'First line,\nsecond "quoted" line')]


def test_empathetic_missing_column(tmp_path):
    columns = [c for c in _EC_COLUMNS if c != "speaker_id"]
    message = _ec_error(tmp_path, ["1\t1\tSo sad.\t2\t2\t1\t21\t20000\t1\tdev\t0"], columns)
    assert message == (f"{tmp_path / 'WASSA23_essay_level_dev.tsv'}: record line 1: field 'speaker_id': "
                       "missing column in the header")


def test_empathetic_wrong_column_count_after_a_multiline_row(tmp_path):
    rows = ['1\t1\t"Two\nlines"\t68\t2\t2\t1\t21\t20000\t1\tdev\t0', "2\t1\tShort row.\t68\t2\t2"]
    message = _ec_error(tmp_path, rows)
    assert message == (f"{tmp_path / 'WASSA23_essay_level_dev.tsv'}: record line 4: field 'race': "
                       "6 columns, the header has 12")


def test_empathetic_non_numeric_speaker(tmp_path):
    message = _ec_error(tmp_path, [_EC_ROW.replace("\t68\t", "\tanna\t")])
    assert message == (f"{tmp_path / 'WASSA23_essay_level_dev.tsv'}: record line 2: field 'speaker_id': "
                       "expected a whole number, got 'anna'")


def test_empathetic_unknown_article_names_the_line_its_row_starts_on(tmp_path):
    multiline_row = '2\t9\t"Three\n\nlines"\t68\t2\t2\t1\t21\t20000\t1\tdev\t1'  # lines 3-5
    message = _ec_error(tmp_path, [_EC_ROW, multiline_row])
    assert message == (f"{tmp_path / 'WASSA23_essay_level_dev.tsv'}: record line 3: field 'article_id': "
                       "article_id 9 is not in articles_adobe_AMT.csv")


def test_empathetic_non_utf8_articles(tmp_path):
    _ec_dir(tmp_path, [_EC_ROW])
    (tmp_path / "articles_adobe_AMT.csv").write_bytes(b"article_id,text\n1,caf\xe9\n")
    with pytest.raises(InputError) as err:
        load_empathetic(tmp_path, splits=["dev"])
    assert str(err.value).startswith(f"{tmp_path / 'articles_adobe_AMT.csv'}: record line 2: not UTF-8")


def test_hold_out_queries_turns_older_rows_into_visible_history(shared_data_dir):
    from p2p.data.prepare import hold_out_queries
    from p2p.profiles.build import visible_items

    records = load_personal_reddit(shared_data_dir / "personal_reddit" / "synthetic_dataset.jsonl")
    assert all(not visible_items(r) for r in records)  # as loaded: every item is some query's gold
    held = hold_out_queries(records, 2)
    assert [r.user_id for r in held] == [r.user_id for r in records]
    for before, after in zip(records, held):
        assert [q.id for q in after.queries] == [q.id for q in before.queries[-2:]]
        assert len(after.history) == len(before.history)  # nothing lost, only made visible
        kept = {q.id for q in after.queries}
        assert {i["query_id"] for i in after.history if "query_id" in i} == kept  # the kept golds stay hidden
        assert len(visible_items(after)) == len(before.history) - 2
    assert hold_out_queries(records, None) is records


def test_hold_out_queries_leaves_a_past_to_small_users_and_caps_lamp_queries():
    from p2p.data.prepare import hold_out_queries
    from p2p.data.records import UserRecord

    pair = UserRecord("a", "PersonalReddit", [{"question": "q1", "response": "r1", "query_id": "1"},
                                               {"question": "q2", "response": "r2", "query_id": "2"}],
                      [Query("1", "q1", "r1"), Query("2", "q2", "r2")])
    single = UserRecord("b", "PersonalReddit", [{"question": "q", "response": "r", "query_id": "3"}],
                        [Query("3", "q", "r")])
    lamp = UserRecord("c", "LaMP-3", [{"id": "h", "text": "t", "score": "5"}],
                      [Query(str(i), f"q{i}", "4") for i in range(3)])
    a, b, c = hold_out_queries([pair, single, lamp], 5)
    assert [q.id for q in a.queries] == ["2"] and a.history[0] == {"question": "q1", "response": "r1"}
    assert [q.id for q in b.queries] == ["3"] and b.history == single.history
    assert [q.id for q in c.queries] == ["0", "1", "2"] and c.history == lamp.history
    assert [q.id for q in hold_out_queries([lamp], 2)[0].queries] == ["1", "2"]
