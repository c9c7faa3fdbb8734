"""Golden values for the task metrics, each computed by hand in the test."""

import math

import pytest

from p2p.tasks.metrics import (
    classification_scores,
    first_number,
    label_index,
    lower_is_better,
    official_rating,
    rating_scores,
    rouge_per_example,
    rouge_scores,
)
from p2p.tasks.registry import LAMP_1_LABELS, LAMP_2M_LABELS, LAMP_2N_LABELS


def test_label_lists_keep_the_official_index_order():
    assert len(LAMP_2M_LABELS) == len(LAMP_2N_LABELS) == 15
    assert LAMP_2M_LABELS[:3] == ("sci-fi", "based on a book", "comedy")
    assert LAMP_2N_LABELS[:3] == ("food & drink", "sports", "education")
    assert LAMP_1_LABELS == ("[1]", "[2]")


def test_label_index_official_is_exact_after_strip():
    assert label_index("  comedy\n", LAMP_2M_LABELS) == 2
    assert label_index("Comedy", LAMP_2M_LABELS) == -1  # case-sensitive
    assert label_index("comedy.", LAMP_2M_LABELS) == -1
    assert label_index("Comedy", LAMP_2M_LABELS, ignore_case=True) == 2


# golds: comedy, comedy, action, sci-fi; predictions: exact, wrong case, padded with whitespace, unknown label.
GOLDS = ["comedy", "comedy", "action", "sci-fi"]
PREDS = ["comedy", "Comedy", " action\n", "romance!"]


def test_classification_official_accuracy_and_macro_f1_over_all_15_labels():
    result = classification_scores(PREDS, GOLDS, LAMP_2M_LABELS, "official")
    # indices: gold [2, 2, 3, 0]; pred [2, -1, 3, -1] -> 2 of 4 right
    assert result["accuracy"] == pytest.approx(0.5)
    # comedy: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3; action: F1 1; sci-fi: F1 0; the 12 other labels: 0.
    # Macro over all K=15 labels (not just the 3 seen): (2/3 + 1) / 15 = 1/9.
    assert result["f1_macro"] == pytest.approx(1 / 9)
    assert set(result) == {"accuracy", "f1_macro"}


def test_classification_p2p_is_case_insensitive_and_weighted():
    result = classification_scores(PREDS, GOLDS, LAMP_2M_LABELS, "p2p")
    # "Comedy" now hits: pred [2, 2, 3, -1] -> 3 of 4
    assert result["accuracy"] == pytest.approx(0.75)
    # per-label F1 weighted by gold support: comedy 1.0 (x2), action 1.0 (x1), sci-fi 0.0 (x1) -> 3/4
    assert result["f1_weighted"] == pytest.approx(0.75)


def test_classification_lamp1_macro_f1():
    # [1]: TP 1, FN 1 -> F1 2/3; [2]: TP 0, FP 1 -> F1 0; macro (2/3 + 0) / 2 = 1/3
    result = classification_scores(["[1]", "[2]"], ["[1]", "[1]"], LAMP_1_LABELS)
    assert result == {"accuracy": pytest.approx(0.5), "f1_macro": pytest.approx(1 / 3)}


def test_classification_unknown_prediction_never_matches():
    result = classification_scores(["banana", "banana"], ["travel", "sports"], LAMP_2N_LABELS)
    assert result == {"accuracy": 0.0, "f1_macro": 0.0}


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="not one of the 15 labels"):
        classification_scores(["comedy"], ["Comedy"], LAMP_2M_LABELS)  # a gold must be a label, case included
    with pytest.raises(ValueError, match="1 predictions but 2 golds"):
        classification_scores(["comedy"], ["comedy", "action"], LAMP_2M_LABELS)
    with pytest.raises(ValueError, match="no examples"):
        classification_scores([], [], LAMP_2M_LABELS)
    with pytest.raises(ValueError, match="unknown style"):
        classification_scores(["comedy"], ["comedy"], LAMP_2M_LABELS, "lenient")


def test_official_rating_unparsable_becomes_the_far_extreme():
    assert official_rating(" 4 ", 5.0) == 4.0
    assert official_rating("2.5", 1.0) == 2.5
    assert official_rating("two", 2.0) == 5.0  # |1-2| = 1 is not > |5-2| = 3 -> 5.0
    assert official_rating("", 4.0) == 1.0  # |1-4| = 3 > |5-4| = 1 -> 1.0
    assert official_rating("n/a", 3.0) == 5.0  # tie |1-3| = |5-3|: not ">", so 5.0
    assert official_rating("4 stars", 1.0) == 5.0  # official is float() or nothing


def test_rating_official_mae_rmse():
    preds = ["two", "", "n/a", " 4 ", "1"]
    golds = ["2", "4", "3", "5", "1"]
    # readings 5, 1, 5, 4, 1 -> errors 3, 3, 2, 1, 0
    result = rating_scores(preds, golds, "official")
    assert result["mae"] == pytest.approx(9 / 5)
    assert result["rmse"] == pytest.approx(math.sqrt(23 / 5))
    assert set(result) == {"mae", "rmse"}


def test_rating_p2p_takes_first_number_and_drops_the_rest():
    assert first_number(" 3 ") == 3.0
    assert first_number("Rating: 4 out of 5") == 4.0
    assert first_number("none") is None
    preds = ["4 stars", "Rating: 2", "none", "3"]
    golds = ["5", "2", "4", "1"]
    # readings 4, 2, dropped, 3 -> errors 1, 0, 2 over 3 scored
    result = rating_scores(preds, golds, "p2p")
    assert result["mae"] == pytest.approx(1.0)
    assert result["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert (result["n_scored"], result["n_dropped"]) == (3, 1)


def test_rating_p2p_all_dropped_has_no_error_value():
    result = rating_scores(["no idea"], ["3"], "p2p")
    assert result == {"mae": None, "rmse": None, "n_scored": 0, "n_dropped": 1}


def test_rating_gold_must_be_a_number():
    with pytest.raises(ValueError, match="gold rating 'five' is not a number"):
        rating_scores(["5"], ["five"])
    for gold in ("NaN", "inf", "-Infinity", "1e999"):
        with pytest.raises(ValueError, match=f"gold rating '{gold}' is not a number"):
            rating_scores(["5"], [gold])


@pytest.mark.parametrize("prediction", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "9" * 400])
def test_a_non_finite_rating_prediction_is_unparsable(prediction):
    """Official: the extreme farthest from the gold (the official script would give a NaN or infinite MAE);
    P2P: dropped. Every metric stays a finite number."""
    official = rating_scores([prediction, "3"], ["4", "3"])
    assert official == {"mae": pytest.approx(1.5), "rmse": pytest.approx(math.sqrt(9 / 2))}  # 1 is 3 from gold 4
    assert rating_scores([prediction, "3"], ["4", "3"], "p2p") == {"mae": 0.0, "rmse": 0.0, "n_scored": 1,
                                                                  "n_dropped": 1}


def test_rouge_hand_computed_no_stemmer():
    # gold  : police arrest man after bank robbery   (6 tokens)
    # pred  : man arrested after robbery at bank     (6 tokens)
    # unigram overlap: man, after, bank, robbery = 4 ("arrest" != "arrested": no stemmer) -> P = R = 4/6, F = 2/3
    # LCS: "man after robbery" = 3 -> P = R = 3/6, F = 1/2
    pair = rouge_scores(["man arrested after robbery at bank"], ["police arrest man after bank robbery"])
    assert pair["rouge1"] == pytest.approx(2 / 3)
    assert pair["rougeL"] == pytest.approx(1 / 2)


def test_rouge_averages_over_examples_and_ignores_case_and_punctuation():
    # second pair: the default tokenizer lowercases and drops punctuation -> both scores 1
    result = rouge_scores(["man arrested after robbery at bank", "hello world"],
                          ["police arrest man after bank robbery", "Hello, World!"])
    assert result["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["rougeL"] == pytest.approx((1 / 2 + 1) / 2)


def test_rouge_per_example_keeps_each_examples_score():
    # the two pairs above: (2/3, 1/2) and (1, 1); their mean is rouge_scores
    got = rouge_per_example(["man arrested after robbery at bank", "hello world"],
                            ["police arrest man after bank robbery", "Hello, World!"])
    assert got == {"rouge1": [pytest.approx(2 / 3), 1.0], "rougeL": [pytest.approx(1 / 2), 1.0]}


def test_lower_is_better_only_for_the_error_metrics():
    assert lower_is_better("official/mae") and lower_is_better("p2p/rmse") and lower_is_better("mae")
    assert not lower_is_better("official/accuracy") and not lower_is_better("official/rouge1")


def test_rouge_unequal_lengths_and_empty_prediction():
    # gold "a b c d" vs pred "a b": overlap 2, P = 1, R = 1/2 -> F = 2/3 (LCS also 2)
    assert rouge_scores(["a b"], ["a b c d"]) == {"rouge1": pytest.approx(2 / 3), "rougeL": pytest.approx(2 / 3)}
    assert rouge_scores([""], ["a b c d"]) == {"rouge1": 0.0, "rougeL": 0.0}
