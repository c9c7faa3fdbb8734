"""Profile embeddings with the real offline models: MiniLM, the tiny random Qwen2 and SmolLM2's last layer."""

import math

import numpy as np
import pytest

from p2p.cache import Cache
from p2p.profiles.embeddings import (
    LastLayerEmbedder,
    SentenceEmbedder,
    embed_profiles,
    embed_texts,
    make_embedder,
    scale_rows,
)
from p2p.profiles.profile_text import profile_sections, profile_text

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY = "tiny-random-qwen2"

#: (text, its paraphrase, an unrelated text): the paraphrase must be the closer one.
TRIPLES = [
    ("The cat is sleeping on the warm windowsill.", "A cat naps on the sunny window ledge.",
     "Interest rates were raised by the central bank today."),
    ("I love watching science fiction movies about space travel.", "Sci-fi films set in outer space are my favourite.",
     "The recipe calls for two cups of flour and one egg."),
    ("He scored the winning goal in the final minute of the match.",
     "In the last minute of the game he netted the decisive goal.",
     "The software update fixed a memory leak in the database driver."),
]
TEXTS = ["a user who reviews sci-fi films", "a user who writes about cooking", "a user who posts about football",
         "a user who reads history books", "a user who follows the stock market"]


class Recording:
    """A real embedder that also records what it was asked to encode, and can fail on a given call."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner, self.fail_on_call = inner, fail_on_call
        self.model_id, self.dim = inner.model_id, inner.dim
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("killed halfway")
        return self.inner.encode(texts)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm(model_cache) -> SentenceEmbedder:
    return SentenceEmbedder(MINILM, model_cache)


@pytest.fixture(scope="module")
def tiny(model_cache) -> LastLayerEmbedder:
    return LastLayerEmbedder(TINY, model_cache)


@pytest.fixture
def cache(tmp_path) -> Cache:
    with Cache(tmp_path / "cache.sqlite", "embeddings") as opened:
        yield opened


def test_scale_rows_normalises_to_sqrt_dim_and_keeps_zero_rows():
    scaled = scale_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.6 * math.sqrt(2), 0.8 * math.sqrt(2)], [0.0, 0.0]], rtol=1e-6)


def test_minilm_rows_are_scaled_and_paraphrases_closest(minilm, cache):
    texts = [text for triple in TRIPLES for text in triple]
    result = embed_texts(texts, minilm, cache, progress=False)
    assert minilm.model_id == f"st:{MINILM}" and minilm.dim == 384
    assert result.vectors.shape == (9, 384) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), math.sqrt(384), rtol=1e-5)
    for anchor, paraphrase, unrelated in result.vectors.reshape(3, 3, 384):
        assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.3


def test_second_call_reads_everything_from_the_cache(minilm, cache):
    first = embed_texts(TEXTS, minilm, cache, progress=False)
    second = embed_texts(TEXTS, minilm, cache, progress=False)
    assert (first.hits, first.misses) == (0, 5) and first.texts_per_second > 0
    assert (second.hits, second.misses) == (5, 0) and second.texts_per_second == 0.0
    assert np.array_equal(first.vectors, second.vectors)
    assert len(cache) == 5


def test_duplicate_texts_are_embedded_once(minilm, cache):
    recording = Recording(minilm)
    result = embed_texts([TEXTS[0], TEXTS[1], TEXTS[0]], recording, cache, progress=False)
    assert recording.calls == [[TEXTS[0], TEXTS[1]]]
    assert result.misses == 2 and np.array_equal(result.vectors[0], result.vectors[2])


def test_interrupted_run_keeps_finished_chunks_and_rerun_computes_the_rest(minilm, cache):
    with pytest.raises(KeyboardInterrupt):
        embed_texts(TEXTS, Recording(minilm, fail_on_call=2), cache, batch_size=2, progress=False)
    assert len(cache) == 2
    rerun = Recording(minilm)
    result = embed_texts(TEXTS, rerun, cache, batch_size=2, progress=False)
    assert rerun.calls == [TEXTS[2:4], TEXTS[4:]]
    assert (result.hits, result.misses) == (2, 3)
    np.testing.assert_allclose(result.vectors, scale_rows(minilm.encode(TEXTS)), atol=1e-5)


def test_cache_keeps_model_ids_apart(minilm, model_cache, cache):
    short = SentenceEmbedder(MINILM, model_cache, max_seq_length=8)
    text = "a long profile text about a reader of science fiction, history and cooking books, written by a user"
    full = embed_texts([text], minilm, cache, progress=False)
    truncated = embed_texts([text], short, cache, progress=False)
    assert short.model_id == f"st:{MINILM}:8"
    assert truncated.misses == 1 and cosine(full.vectors[0], truncated.vectors[0]) < 0.99


def test_empty_input_gives_an_empty_matrix(minilm, tiny, cache):
    result = embed_texts([], minilm, cache, progress=False)
    assert result.vectors.shape == (0, 384) and (result.hits, result.misses) == (0, 0)
    assert minilm.encode([]).shape == (0, 384) and tiny.encode([]).shape == (0, 64)


def test_last_layer_shape_determinism_and_zero_row_for_an_empty_text(tiny, cache):
    result = embed_texts(["", *TEXTS], tiny, cache, progress=False)
    assert tiny.model_id == f"lastlayer:{TINY}:512" and tiny.dim == 64
    assert result.vectors.shape == (6, 64) and result.vectors.dtype == np.float32
    assert not result.vectors[0].any()
    np.testing.assert_allclose(np.linalg.norm(result.vectors[1:], axis=1), 8.0, rtol=1e-5)
    assert np.array_equal(tiny.encode(TEXTS), tiny.encode(TEXTS))


def test_last_layer_vector_does_not_depend_on_batch_padding(tiny):
    text = TRIPLES[0][0]
    alone = tiny.encode([text])[0]
    batched = tiny.encode(["a much longer text " * 20, text, "short"])[1]
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_last_layer_truncates_on_the_right(model_cache):
    short = LastLayerEmbedder(TINY, model_cache, max_length=4)
    assert short.model_id == f"lastlayer:{TINY}:4"
    head = "one two three four"
    assert len(short.tokenizer(head)["input_ids"]) == 4
    same_head = short.encode([head + " five six", head + " seven eight nine"])
    assert np.array_equal(same_head[0], same_head[1])
    assert not np.array_equal(same_head[0], short.encode(["one two three"])[0])


def test_make_embedder_builds_the_named_kind(model_cache):
    embedder = make_embedder("last_layer", TINY, model_cache, batch_size=2)
    assert isinstance(embedder, LastLayerEmbedder) and embedder.batch_size == 2
    with pytest.raises(ValueError, match="unknown embedder kind"):
        make_embedder("bag_of_words", TINY, model_cache)


def test_smollm2_last_layer_puts_paraphrases_closest(model_cache):
    smollm2 = LastLayerEmbedder(SMOLLM2, model_cache)
    vectors = smollm2.encode([text for triple in TRIPLES for text in triple]).reshape(3, 3, -1)
    for anchor, paraphrase, unrelated in vectors:
        assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.1


def test_sections_pooling_averages_each_sections_embedding(minilm, cache):
    texts = [profile_text("Loves sci-fi.", ["a robot film", "a space film"], "total=2 | sci-fi=2 (100%)"),
             profile_text("Loves sci-fi.", ["a cooking show"], "total=1 | comedy=1 (100%)"), "plain text"]
    embedded: list[list[str]] = []

    def embed(strings: list[str]) -> np.ndarray:
        embedded.append(strings)
        return embed_texts(strings, minilm, cache, progress=False).vectors

    pooled = embed_profiles(texts, embed, "sections")
    assert len(embedded) == 1 and embedded[0].count("## User Profile: Loves sci-fi.") == 1  # shared section once
    for text, row in zip(texts, pooled):
        sections = embed_texts(profile_sections(text), minilm, cache, progress=False).vectors
        np.testing.assert_allclose(row, scale_rows(sections.mean(axis=0, keepdims=True))[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), math.sqrt(minilm.dim), rtol=1e-5)
    assert cosine(pooled[0], pooled[1]) < 0.99  # the histogram and history sections tell the users apart
    whole = embed_profiles(texts, embed, "text")
    np.testing.assert_array_equal(whole, embed_texts(texts, minilm, cache, progress=False).vectors)
    assert not np.allclose(whole, pooled)
    assert embed_profiles([], embed, "sections").shape == (0, minilm.dim)
    with pytest.raises(ValueError, match="pooling"):
        embed_profiles(texts, embed, "tokens")


def test_length_batches_group_similar_lengths_in_order_and_cap_the_batch():
    from p2p.profiles.embeddings import length_batches

    # lengths 22, 26 (within 1.25x), 196 alone; then 4 texts of 10 tokens with a cap of 3 per batch
    assert length_batches([196, 26, 22], 1.25, 16) == [[2, 1], [0]]
    assert length_batches([10, 10, 12, 10, 13], 1.25, 3) == [[0, 1, 3], [2, 4]]
    assert length_batches([5, 7], 1.25, 16) == [[0], [1]]  # 7 > 1.25 * 5
    assert length_batches([], 1.25, 4) == []


def test_batching_similar_lengths_gives_the_vectors_of_one_text_at_a_time(model_cache):
    """The Personalizer's embedder batches a profile's short sections together; each row stays what it is alone."""
    texts = [*TEXTS, TRIPLES[0][0] * 6]  # five short texts and a long one
    alone = SentenceEmbedder(MINILM, model_cache, batch_size=1).encode(texts)
    bucketed = SentenceEmbedder(MINILM, model_cache, batch_size=16, max_padding=1.25)
    np.testing.assert_allclose(bucketed.encode(texts), alone, atol=1e-6, rtol=0)


def test_onnx_embedder_gives_the_sentence_transformers_vectors(model_cache):
    """`p2p serve` embeds profiles in ONNX Runtime: the rows of the PyTorch model, batched or alone, padded or not."""
    from p2p.profiles.onnx_embedder import OnnxSentenceEmbedder
    from p2p.profiles.profile_embedder import profile_embedder

    texts = [*TEXTS, TRIPLES[0][0] * 6, "  outer spaces  ", "", TRIPLES[1][1] * 40]  # the last one is truncated
    onnx = profile_embedder("sentence", MINILM, model_cache, "cpu", onnx=True)
    assert isinstance(onnx, OnnxSentenceEmbedder)
    torch_rows = SentenceEmbedder(MINILM, model_cache, batch_size=1).encode(texts)
    np.testing.assert_allclose(onnx.encode(texts), torch_rows, atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx.encode(texts[-1:]), torch_rows[-1:], atol=1e-5, rtol=0)
    assert onnx.encode([]).shape == (0, onnx.dim)
    unbatched = OnnxSentenceEmbedder(SentenceEmbedder(MINILM, model_cache, batch_size=4))  # max_padding None
    np.testing.assert_allclose(unbatched.encode(texts), torch_rows, atol=1e-5, rtol=0)
    assert type(profile_embedder("sentence", MINILM, model_cache, "cpu")) is SentenceEmbedder  # onnx only if asked


def test_onnx_embedder_refuses_a_model_it_cannot_run_the_same_way(model_cache):
    from p2p.profiles.onnx_embedder import OnnxSentenceEmbedder, UnsupportedEmbedder

    base = SentenceEmbedder(MINILM, model_cache)
    base.model[1].pooling_mode = "cls"  # a pooling the ONNX path does not do: refused, never embedded differently
    with pytest.raises(UnsupportedEmbedder, match="pooling cls"):
        OnnxSentenceEmbedder(base)


def test_onnx_embedder_refuses_a_graph_whose_vectors_differ(model_cache, monkeypatch):
    """The probe check at load: a graph that embeds differently (an encoder with one weight changed) is refused."""
    import copy

    import torch

    from p2p.profiles import onnx_embedder

    export = onnx_embedder._export

    def export_changed(encoder, example):
        changed = copy.deepcopy(encoder)
        with torch.no_grad():
            changed.embeddings.word_embeddings.weight.mul_(1.5)
        return export(changed, example)

    monkeypatch.setattr(onnx_embedder, "_export", export_changed)
    with pytest.raises(onnx_embedder.UnsupportedEmbedder, match="other vectors"):
        onnx_embedder.OnnxSentenceEmbedder(SentenceEmbedder(MINILM, model_cache))


def test_without_onnx_installed_the_server_embedder_falls_back_to_pytorch(model_cache, monkeypatch, caplog):
    """A missing `onnx` or `onnxruntime` (hidden here from the import system) means PyTorch embeds, with a warning."""
    import sys

    from p2p.profiles.profile_embedder import profile_embedder

    for package in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
        with caplog.at_level("WARNING", logger="p2p.profiles.profile_embedder"):
            embedder = profile_embedder("sentence", MINILM, model_cache, "cpu", onnx=True)
        assert type(embedder) is SentenceEmbedder
        assert "embedding profiles with PyTorch, not ONNX Runtime" in caplog.text
        monkeypatch.delitem(sys.modules, package)
        caplog.clear()
