"""`evaluate_files`: official-format files in, one flat dict of metrics out; every bad file is a precise InputError."""

import json
import math

import pytest

from p2p.io import InputError
from p2p.tasks.scoring import evaluate_files


def write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def outputs(task, pairs):
    return {"task": task, "golds": [{"id": i, "output": o} for i, o in pairs]}


@pytest.fixture
def movie_golds(tmp_path):
    return write(tmp_path / "golds.json",
                 outputs("LaMP_2M", [("1", "comedy"), ("2", "comedy"), ("3", "action"), ("4", "sci-fi")]))


def test_classification_official_and_p2p(tmp_path, movie_golds):
    # listed in another order than the golds: entries are matched by id
    preds = write(tmp_path / "preds.json",
                  outputs("LaMP_2M", [("4", "romance!"), ("3", " action\n"), ("2", "Comedy"), ("1", "comedy")]))
    official = evaluate_files("LaMP-2M", preds, movie_golds)
    # hits: id 1 and id 3 -> accuracy 1/2; macro F1 over 15 labels: (comedy 2/3 + action 1) / 15 = 1/9
    assert official == {"task": "LaMP-2M", "style": "official", "n": 4,
                        "accuracy": pytest.approx(0.5), "f1_macro": pytest.approx(1 / 9)}
    p2p = evaluate_files("LaMP_2M", preds, movie_golds, style="p2p")
    # "Comedy" hits when case is ignored -> 3/4; weighted F1: comedy 1 (x2), action 1, sci-fi 0 -> 3/4
    assert p2p == {"task": "LaMP-2M", "style": "p2p", "n": 4,
                   "accuracy": pytest.approx(0.75), "f1_weighted": pytest.approx(0.75)}


def test_rating_official_and_p2p(tmp_path):
    golds = write(tmp_path / "golds.json", outputs("LaMP_3", [("a", "2"), ("b", "4"), ("c", "3")]))
    preds = write(tmp_path / "preds.json", outputs("LaMP_3", [("a", "2 stars"), ("b", "4"), ("c", "3")]))
    # official: "2 stars" is unparsable -> 5.0 (farthest from 2) -> errors 3, 0, 0
    assert evaluate_files("LaMP-3", preds, golds) == {"task": "LaMP-3", "style": "official", "n": 3,
                                                      "mae": pytest.approx(1.0), "rmse": pytest.approx(math.sqrt(3))}
    # p2p: first number 2 -> errors 0, 0, 0
    assert evaluate_files("LaMP-3", preds, golds, style="p2p") == {
        "task": "LaMP-3", "style": "p2p", "n": 3, "mae": 0.0, "rmse": 0.0, "n_scored": 3, "n_dropped": 0}


def test_generation_rouge(tmp_path):
    golds = write(tmp_path / "golds.json", outputs("LaMP_4", [("10", "police arrest man after bank robbery")]))
    preds = write(tmp_path / "preds.json", outputs("LaMP_4", [("10", "man arrested after robbery at bank")]))
    # overlap 4 of 6 each way -> ROUGE-1 2/3; LCS 3 of 6 -> ROUGE-L 1/2
    assert evaluate_files("LaMP-4", preds, golds) == {"task": "LaMP-4", "style": "official", "n": 1,
                                                      "rouge1": pytest.approx(2 / 3), "rougeL": pytest.approx(0.5)}


def test_integer_ids_and_missing_task_field_are_accepted(tmp_path):
    golds = write(tmp_path / "golds.json", {"golds": [{"id": 110, "output": "[1]"}]})
    preds = write(tmp_path / "preds.json", {"task": "LaMP_1", "golds": [{"id": "110", "output": "[1]"}]})
    assert evaluate_files("LaMP-1", preds, golds)["accuracy"] == 1.0


def test_movie_files_may_carry_the_plain_lamp2_name(tmp_path, movie_golds):
    preds = write(tmp_path / "preds.json",
                  outputs("LaMP_2", [("1", "comedy"), ("2", "comedy"), ("3", "action"), ("4", "sci-fi")]))
    assert evaluate_files("LaMP-2M", preds, movie_golds)["accuracy"] == 1.0


def expect_error(tmp_path, golds, preds_obj, *fragments, task="LaMP-2M"):
    preds = write(tmp_path / "preds.json", preds_obj)
    with pytest.raises(InputError) as err:
        evaluate_files(task, preds, golds)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return err.value


def test_wrong_top_level_type(tmp_path, movie_golds):
    err = expect_error(tmp_path, movie_golds, [{"id": "1", "output": "comedy"}],
                       "expected an object with 'task' and 'golds', got list")
    assert err.path.endswith("preds.json")


def test_missing_golds_key(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"task": "LaMP_2M", "preds": []}, "preds.json", "field 'golds'", "missing")


def test_golds_not_a_list_or_empty(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"golds": {"1": "comedy"}}, "field 'golds'", "expected a list, got dict")
    expect_error(tmp_path, movie_golds, {"golds": []}, "field 'golds'", "empty")


def test_entry_without_id(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"golds": [{"id": "1", "output": "comedy"}, {"output": "action"}]},
                 "record item 1", "field 'golds[1].id'", "missing")


def test_entry_not_an_object(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"golds": ["comedy"]}, "record item 0", "field 'golds[0]'",
                 "got str")


def test_entry_without_output(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"golds": [{"id": "1", "output": "comedy"}, {"id": "2"}]},
                 "record id 2", "field 'golds[1].output'", "missing")


def test_non_string_output(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"golds": [{"id": "1", "output": 3}]},
                 "record id 1", "field 'golds[0].output'", "expected a string, got int")


def test_bad_id_type(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, {"golds": [{"id": ["1"], "output": "comedy"}]},
                 "record item 0", "field 'golds[0].id'", "expected a string, got list")


def test_duplicate_ids(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds,
                 {"golds": [{"id": "1", "output": "comedy"}, {"id": "2", "output": "x"}, {"id": "1", "output": "y"}]},
                 "record id 1", "field 'golds[2].id'", "duplicate id (first at item 0)")


def test_mismatched_ids_list_missing_and_extra(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds,
                 outputs("LaMP_2M", [("1", "comedy"), ("2", "comedy"), ("9", "action"), ("8", "action")]),
                 "preds.json", "2 gold ids without a prediction (e.g. ['3', '4'])",
                 "2 prediction ids not in the golds (e.g. ['9', '8'])")


def test_task_field_must_match(tmp_path, movie_golds):
    expect_error(tmp_path, movie_golds, outputs("LaMP_5", [("1", "comedy")]), "field 'task'",
                 "file is for LaMP-5, not LaMP-2M")
    expect_error(tmp_path, movie_golds, outputs("LaMP_99", [("1", "comedy")]), "unknown task name 'LaMP_99'")


def test_truncated_json(tmp_path, movie_golds):
    preds = tmp_path / "preds.json"
    preds.write_text('{"task": "LaMP_2M", "golds": [{"id": "1", "out', encoding="utf-8")
    with pytest.raises(InputError, match="malformed JSON"):
        evaluate_files("LaMP-2M", preds, movie_golds)


def test_golds_must_be_scorable(tmp_path):
    golds = write(tmp_path / "golds.json", outputs("LaMP_2M", [("1", "comedy"), ("2", "Sports")]))
    preds = write(tmp_path / "preds.json", outputs("LaMP_2M", [("1", "comedy"), ("2", "comedy")]))
    with pytest.raises(InputError, match=r"golds\.json: record id 2: field 'golds\[1\]\.output': 'Sports' is not"):
        evaluate_files("LaMP-2M", preds, golds)
    ratings = write(tmp_path / "ratings.json", outputs("LaMP_3", [("1", "five")]))
    with pytest.raises(InputError, match="'five' is not a number"):
        evaluate_files("LaMP-3", preds, ratings)


def test_bad_task_or_style_is_a_value_error(tmp_path, movie_golds):
    with pytest.raises(ValueError, match="unknown task 'LaMP_9'"):
        evaluate_files("LaMP_9", movie_golds, movie_golds)
    with pytest.raises(ValueError, match="unknown style 'strict'"):
        evaluate_files("LaMP-2M", movie_golds, movie_golds, style="strict")
    with pytest.raises(ValueError, match="open-ended: it is scored by the LLM judge"):
        evaluate_files("EmpatheticConv", movie_golds, movie_golds)
