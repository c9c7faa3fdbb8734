"""Profile text, BM25 retrieval of history items, and the TF-IDF profile embedding: golden values by hand."""

from __future__ import annotations

import numpy as np
import pytest

from p2p.profiles.profile_text import label_histogram_line, profile_sections, profile_text, user_profile_text
from p2p.profiles.retrieval import bm25_top_k, tokenize
from p2p.profiles.text_embedding import tfidf_embeddings

MOVIES = [
    "A lonely robot explores a dystopian city after the collapse of civilisation.",
    "Two friends open a bakery and fall in love with the same pastry chef.",
    "A detective hunts a serial killer through the rain-soaked streets of Seoul.",
    "An astronaut stranded on Mars grows potatoes to survive until rescue.",
]


# --- label histogram -------------------------------------------------------------------------------------------


def test_label_histogram_line_golden():
    labels = ["comedy", "action", "comedy", "sci-fi", "action", "comedy", "romance", "comedy"]
    # comedy 4/8 = 50%; action 2/8 = 25%; romance and sci-fi 1/8 = 12.5% -> 13% (halves up), tied, so by label
    assert label_histogram_line(labels) == (
        "total=8 | comedy=4 (50%), action=2 (25%), romance=1 (13%), sci-fi=1 (13%)"
    )


def test_label_histogram_rounds_to_nearest_percent():
    # 1/3 = 33.33% -> 33%; 2/3 = 66.67% -> 67%; 1/6 = 16.67% -> 17%; 5/6 = 83.33% -> 83%
    assert label_histogram_line(["b", "a", "b"]) == "total=3 | b=2 (67%), a=1 (33%)"
    assert label_histogram_line(["x"] * 5 + ["y"]) == "total=6 | x=5 (83%), y=1 (17%)"
    # 1/200 = 0.5% -> 1% (half up); 199/200 = 99.5% -> 100%
    assert label_histogram_line(["5"] * 199 + ["1"]) == "total=200 | 5=199 (100%), 1=1 (1%)"


def test_label_histogram_of_nothing():
    assert label_histogram_line([]) == "total=0"


# --- profile text ----------------------------------------------------------------------------------------------


def test_profile_text_golden():
    text = profile_text("Loves quiet science fiction.", ["robot in a dystopia", "astronaut on Mars"])
    assert text == (
        "## User Profile: Loves quiet science fiction.\n\n## User History: robot in a dystopia\nastronaut on Mars"
    )


def test_profile_text_with_histogram_golden():
    histogram = "total=3 | sci-fi=2 (67%), comedy=1 (33%)"
    text = profile_text("Tags mostly sci-fi.", ["robot in a dystopia"], histogram=histogram)
    assert text == (
        "## User Profile: Tags mostly sci-fi.\ntotal=3 | sci-fi=2 (67%), comedy=1 (33%)\n\n"
        "## User History: robot in a dystopia"
    )


def test_profile_text_with_no_retrieved_items():
    assert profile_text("A persona.", []) == "## User Profile: A persona.\n\n## User History: "


def test_profile_sections_cut_the_summary_histogram_and_history_apart():
    histogram = "total=3 | sci-fi=2 (67%), comedy=1 (33%)"
    text = profile_text("Tags mostly sci-fi.\nWatches at night.", ["robot in a dystopia", "astronaut"], histogram)
    assert profile_sections(text) == ["## User Profile: Tags mostly sci-fi.\nWatches at night.", histogram,
                                      "## User History: robot in a dystopia\nastronaut"]


def test_profile_sections_without_histogram_history_or_layout():
    assert profile_sections(profile_text("A persona.", ["an item"])) == ["## User Profile: A persona.",
                                                                         "## User History: an item"]
    assert profile_sections(profile_text("A persona.", [])) == ["## User Profile: A persona."]
    assert profile_sections(user_profile_text("Rates 5.", "total=0")) == ["## User Profile: Rates 5.", "total=0"]
    # a summary line that merely starts like a histogram is not one when it is the only line of the section
    assert profile_sections("I like movies.\ntotal=many") == ["I like movies.\ntotal=many"]
    assert profile_sections("") == []


# --- BM25 retrieval --------------------------------------------------------------------------------------------


def test_tokenize_lowercases_words():
    assert tokenize("Sci-Fi, ROBOTS & 2 cats!") == ["sci", "fi", "robots", "2", "cats"]


def test_bm25_finds_the_obvious_match_first():
    assert bm25_top_k("robot in a dystopian city", MOVIES, k=1) == [0]
    assert bm25_top_k("astronaut on Mars", MOVIES, k=2)[0] == 3
    assert bm25_top_k("SERIAL KILLER detective", MOVIES, k=1) == [2]


def test_bm25_k_edges():
    assert bm25_top_k("robot", MOVIES, k=0) == []
    assert sorted(bm25_top_k("robot", MOVIES, k=10)) == [0, 1, 2, 3]
    assert bm25_top_k("robot", [], k=2) == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        bm25_top_k("robot", MOVIES, k=-1)


def test_bm25_ties_keep_the_original_order():
    # no document shares a word with the query: every score is 0, so the order is the input order
    assert bm25_top_k("zebra", MOVIES, k=3) == [0, 1, 2]
    # the two matches score the same (same length, one shared word each); the rest follow in input order
    documents = ["red fox", "blue sky", "red car", "green tree", "yellow sun"]
    assert bm25_top_k("red", documents, k=5) == [0, 2, 1, 3, 4]


def test_bm25_exclude_leaves_out_the_query_item():
    assert bm25_top_k("robot in a dystopian city", MOVIES, k=1, exclude=[0]) != [0]
    assert 0 not in bm25_top_k("robot", MOVIES, k=4, exclude=[0])
    assert bm25_top_k("robot", MOVIES, k=4, exclude=[0, 1, 2, 3]) == []
    with pytest.raises(ValueError, match="exclude index 4 is out of range for 4 documents"):
        bm25_top_k("robot", MOVIES, k=1, exclude=[4])


def test_bm25_handles_empty_documents():
    assert bm25_top_k("robot", ["", "", ""], k=2) == [0, 1]
    assert bm25_top_k("robot dystopia", ["", "a robot in a dystopia", "", "a bakery"], k=1) == [1]


# --- TF-IDF profile embedding ----------------------------------------------------------------------------------


def test_tfidf_embeddings_are_unit_rows_and_deterministic():
    X = tfidf_embeddings(MOVIES * 3, dim=5, seed=0)
    assert X.shape == (12, 5)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0)
    assert np.array_equal(X, tfidf_embeddings(MOVIES * 3, dim=5, seed=0))


def test_tfidf_embeddings_put_similar_texts_closer():
    texts = ["robots and dystopia", "a robot dystopia story", "baking bread and pastry", "pastry and bread baking"]
    X = tfidf_embeddings(texts, dim=3, seed=0)
    assert X[0] @ X[1] > X[0] @ X[2] and X[2] @ X[3] > X[2] @ X[1]


def test_tfidf_embeddings_cap_the_dimension_at_what_the_texts_support():
    assert tfidf_embeddings(["a b", "b c"], dim=64, seed=0).shape == (2, 2)  # 2 texts
    assert tfidf_embeddings(["a", "a", "a"], dim=64, seed=0).shape == (3, 1)  # a one-word vocabulary


def test_tfidf_embeddings_reject_text_without_words():
    with pytest.raises(ValueError, match="none of the 2 texts contains a word"):
        tfidf_embeddings(["...", "!!"], dim=4, seed=0)
    with pytest.raises(ValueError, match="no texts"):
        tfidf_embeddings([], dim=4, seed=0)
