"""Choice scoring: golden values from a hand-built model, the cached batched scores against a naive forward per
candidate on the tiny random Qwen2 (left padding, per-row adapters), the served path against the fake vLLM server,
and the choice metrics with hand-computed values."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_vllm import FakeVLLM

from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapters_applied, find_targets
from p2p.models.choice import (
    ChoiceScores,
    choose,
    group_batches,
    label_continuations,
    label_logprobs,
    prefix_groups,
    prompt_ids,
    score_and_answer,
    served_label_logprobs,
)
from p2p.models.decoding import TransformersBackend, answer_text, shared_prefix, stop_ids
from p2p.models.generation import GenerationError, Sampling
from p2p.models.loading import load_causal_lm
from p2p.models.openai_backend import HTTPRejection, OpenAIBackend
from p2p.models.presets import TINY_RANDOM
from p2p.tasks import get_task
from p2p.tasks.metrics import choice_classification_scores, choice_rating_scores, label_share
from p2p.tasks.registry import LAMP_2M_LABELS, RATING_LABELS, choice_labels
from p2p.tasks.scoring import choice_score, format_valid
from p2p.training import IGNORE, Sample, encode

LORA = LoraShape(targets=("q_proj", "v_proj"), rank=4, alpha=8.0, dropout=0.05, rslora=True)
ATOL = 1e-4
#: Prompts of different lengths, so batches are left-padded.
PROMPTS = ["Which tag does this movie relate to? description: robots fight in space.", "Hi",
           "Rate this review from 1 to 5. review: " + "It was fine, I suppose, nothing special. " * 6]
#: Labels of one to four tokens, one the prefix of another.
LABELS = ["action", "action movie", "sci-fi", "based on a book", "5"]


@pytest.fixture(scope="module")
def tiny(model_cache):
    """(model, tokenizer, layout) of the tiny random Qwen2, fp32 on the CPU."""
    model, tokenizer = load_causal_lm(TINY_RANDOM, model_cache)
    return model, tokenizer, find_targets(model, LORA.targets)


def naive_logprob(model, tokenizer, prompt: str, continuation: list[int]) -> float:
    """The label's summed log-probability from one unpadded forward over prompt + label, no cache."""
    head = prompt_ids(tokenizer, prompt)
    with torch.no_grad():
        logits = model(torch.tensor([head + continuation])).logits[0, len(head) - 1:-1]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(logp[j, token].item() for j, token in enumerate(continuation))


def random_adapters(layout: TargetLayout, batch: int, seed: int) -> Adapters:
    gen = torch.Generator().manual_seed(seed)
    n, r = len(layout.layers), LORA.rank
    return Adapters({k: torch.randn(batch, n, r, d_in, generator=gen) * 0.3 for k, (d_in, _) in layout.shapes.items()},
                    {k: torch.randn(batch, n, d_out, r, generator=gen) * 0.3
                     for k, (_, d_out) in layout.shapes.items()})


# --- golden values: a hand-built bigram model --------------------------------------------------------------------


class BigramLM:
    """A causal LM whose next-token distribution depends only on the current token: `table[token] = {next: p}`
    (probabilities summing to 1), uniform after any other token. Records each forward's input shape."""

    device, dtype = torch.device("cpu"), torch.float32
    generation_config = None

    def __init__(self, vocab: int, table: dict[int, dict[int, float]]):
        self.vocab, self.table, self.calls = vocab, table, []

    def __call__(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                 logits_to_keep=0):
        self.calls.append(tuple(input_ids.shape))
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for (row, position), token in np.ndenumerate(input_ids.numpy()):
            if int(token) in self.table:
                logits[row, position] = -math.inf
                for nxt, p in self.table[int(token)].items():
                    logits[row, position, nxt] = math.log(p)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=past_key_values or _NoCache())


class _NoCache:
    def batch_repeat_interleave(self, repeats: int) -> None:
        pass


@pytest.fixture(scope="module")
def bigram(tiny):
    """The bigram model over the tiny model's tokenizer, with the labels "action", "action movie" and "1":

    after the generation prompt: action 0.6, "1" 0.4; after action: <|im_end|> 0.3, " movie" 0.7; after " movie":
    <|im_end|> 0.9; after "1": <|im_end|> 1.0. So "action" = ln .6 + ln .3, "action movie" = ln .6 + ln .7 + ln .9,
    "1" = ln .4 + ln 1.
    """
    _, tokenizer, _ = tiny
    action, movie, one, end = 4667, 7704, 33, tokenizer.eos_token_id
    assert label_continuations(tokenizer, "x", ["action", "action movie", "1"], {end}) == [
        [action, end], [action, movie, end], [one, end]]
    start = prompt_ids(tokenizer, "x")[-1]  # the generation prompt's last token ("\n" after "assistant")
    table = {start: {action: 0.6, one: 0.4}, action: {end: 0.3, movie: 0.7}, movie: {end: 0.9, 13: 0.1},
             one: {end: 1.0}}
    return BigramLM(len(tokenizer), table), tokenizer


def test_golden_label_logprobs_of_a_hand_built_model(bigram):
    model, tokenizer = bigram
    scores = label_logprobs(model, tokenizer, ["Pick one.", "A longer prompt to pick from."],
                            ["action", "action movie", "1"], batch_size=2)
    expected = [math.log(0.6) + math.log(0.3), math.log(0.6) + math.log(0.7) + math.log(0.9), math.log(0.4)]
    np.testing.assert_allclose(scores.logprobs, [expected, expected], atol=1e-6)
    assert scores.lengths.tolist() == [2, 3, 2]  # the end-of-turn token counts
    # One forward over the padded prompt batch (last logits only), then one from its cache with every label's tokens
    # but the last packed in one row per prompt: action | action movie | 1.
    assert len(model.calls) == 2 and model.calls[1] == (2, 1 + 2 + 1)


def test_golden_choice_the_end_of_turn_and_length_normalisation_decide(bigram):
    model, tokenizer = bigram
    scores = label_logprobs(model, tokenizer, ["Pick one."], ["action", "action movie", "1"])
    # "action" alone would be ln .6 = -0.51, the best; with its end of turn it is -1.71, the worst.
    # Summed: "1" (-0.92) beats "action movie" (-0.97); per token: "action movie" (-0.32) beats "1" (-0.46).
    assert scores.choose().tolist() == [2]
    assert scores.choose(normalise=True).tolist() == [1]


def test_choose_by_sum_or_per_token_and_ties_go_to_the_first_label():
    logprobs = np.array([[-2.0, -3.0], [-4.0, -4.0], [-3.0, -4.5]])
    lengths = np.array([1, 3])
    assert choose(logprobs, lengths).tolist() == [0, 0, 0]
    assert choose(logprobs, lengths, normalise=True).tolist() == [1, 1, 1]  # -3/3, -4/3, -4.5/3 beat -2, -4, -3
    assert ChoiceScores(logprobs, lengths).choose(normalise=True).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match=r"lengths \(labels,\)"):
        choose(logprobs, np.array([1, 2, 3]))


# --- the tiny real model: tokens, cache, padding, adapters ---------------------------------------------------------


def test_answers_end_at_the_eos_of_the_tokenizer_and_the_generation_config_not_at_padding(tiny):
    """One definition of the tokens that end an answer, for every decoder (p2p.models.decoding)."""
    model, tokenizer, _ = tiny
    eos = tokenizer.eos_token_id
    assert stop_ids(tokenizer) == stop_ids(tokenizer, model) == {eos}  # the tiny model's config names the same EOS
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = [eos, 7]  # as Qwen2.5 lists <|endoftext|> beside <|im_end|>
    assert stop_ids(tokenizer, SimpleNamespace(generation_config=config)) == {eos, 7}
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = "<|endoftext|>"
    assert padded.pad_token_id != eos and padded.pad_token_id not in stop_ids(padded, model)
    word = tokenizer("hello", add_special_tokens=False)["input_ids"]
    assert answer_text(tokenizer, [*word, eos, *word], {eos}) == "hello"
    assert answer_text(tokenizer, word + word, {eos}) == "hellohello"


def test_label_tokens_are_the_answer_training_teaches_through_the_end_of_turn(tiny):
    model, tokenizer, _ = tiny
    stop = stop_ids(tokenizer, model)
    for label, continuation in zip(LAMP_2M_LABELS, label_continuations(tokenizer, PROMPTS[0], LAMP_2M_LABELS, stop)):
        encoded = encode(tokenizer, Sample("LaMP-2M", "u", "q", PROMPTS[0], label, np.zeros(1)), max_length=10_000,
                         completion_only=True)
        taught = [t for t in encoded.labels if t != IGNORE]
        assert continuation == taught[:len(continuation)]
        assert continuation[-1] == tokenizer.eos_token_id and continuation.count(tokenizer.eos_token_id) == 1
        assert tokenizer.decode(continuation[:-1]) == label


@pytest.mark.parametrize("batch_size", [8, 2, 1])
def test_cached_batched_scores_equal_a_naive_forward_per_candidate(tiny, batch_size):
    model, tokenizer, _ = tiny
    scores = label_logprobs(model, tokenizer, PROMPTS, LABELS, batch_size=batch_size)
    continuations = label_continuations(tokenizer, PROMPTS[0], LABELS, stop_ids(tokenizer, model))
    naive = np.array([[naive_logprob(model, tokenizer, p, c) for c in continuations] for p in PROMPTS])
    np.testing.assert_allclose(scores.logprobs, naive, atol=ATOL)
    assert scores.lengths.tolist() == [len(c) for c in continuations] == [2, 3, 4, 5, 2]
    for normalise in (False, True):
        assert scores.choose(normalise).tolist() == choose(naive, scores.lengths, normalise).tolist()


class Spy:
    """The model, recording the shape of every forward's input_ids."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, **kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.model(**kwargs)


def test_a_long_prefix_all_prompts_share_is_encoded_once(tiny):
    model, tokenizer, _ = tiny
    spec = get_task("LaMP-2M")
    query = ("Which tag does this movie relate to among the following tags? Just answer with the tag name without "
             "further explanation. tags: [sci-fi, comedy] description: {}")
    prompts = [spec.build_prompt(query.format(text)) for text in ("Robots.", "A dog finds its way home " * 4, "Hm.")]
    spy = Spy(model)
    scores = label_logprobs(spy, tokenizer, prompts, LABELS, batch_size=2)
    shared = len(shared_prefix([prompt_ids(tokenizer, p) for p in prompts]))
    assert shared >= TransformersBackend.MIN_SHARED_PREFIX
    assert spy.shapes[0] == (1, shared)  # the prefix, once; then each batch's own tokens and its labels
    assert [s[0] for s in spy.shapes[1:]] == [2, 2, 1, 1]
    continuations = label_continuations(tokenizer, prompts[0], LABELS, stop_ids(tokenizer, model))
    naive = [[naive_logprob(model, tokenizer, p, c) for c in continuations] for p in prompts]
    np.testing.assert_allclose(scores.logprobs, naive, atol=ATOL)


def test_a_long_prefix_a_group_of_prompts_shares_is_encoded_once_for_the_group(tiny):
    """One user's history before each of their queries (full history, PAG's profile): the history is encoded once
    per batch for the user's rows, and every score and greedy answer is what the prompt alone gives."""
    model, tokenizer, _ = tiny
    spec = get_task("LaMP-2M")
    histories = ["I watch space operas with robots and long battles in orbit, always at night. " * 3,
                 "Only slapstick comedies about clumsy waiters and their loyal dogs, on Sundays. " * 3]
    query = ("Which tag does this movie relate to among the following tags? Just answer with the tag name without "
             "further explanation. tags: [sci-fi, comedy] description: {}")
    texts = ["Robots.", "A dog finds its way home after a long journey through the mountains.", "Hm."]
    prompts = [f"{history}\n{spec.build_prompt(query.format(text))}" for text in texts for history in histories]
    assert len(shared_prefix([prompt_ids(tokenizer, p) for p in prompts])) < TransformersBackend.MIN_SHARED_PREFIX
    spy = Spy(model)
    scores, answers = score_and_answer(spy, tokenizer, prompts, LABELS, max_new_tokens=4, batch_size=6)
    assert spy.shapes[0][0] == 2  # the two histories, once each
    assert spy.shapes[1][0] == 6 and spy.shapes[1][1] < min(len(prompt_ids(tokenizer, p)) for p in prompts) // 2
    continuations = label_continuations(tokenizer, prompts[0], LABELS, stop_ids(tokenizer, model))
    naive = [[naive_logprob(model, tokenizer, p, c) for c in continuations] for p in prompts]
    np.testing.assert_allclose(scores.logprobs, naive, atol=ATOL)
    alone = [score_and_answer(model, tokenizer, [p], LABELS, max_new_tokens=4)[1][0] for p in prompts]
    assert answers == alone


def test_prompts_are_grouped_by_a_long_common_start_and_batched_whole():
    sequences = [[1] * 40 + [2], [5, 6], [1] * 40 + [3, 4], [1] * 10 + [9]]
    assert prefix_groups(sequences, 32) == [[0, 2], [3], [1]]
    assert prefix_groups([[1] * 40 + [2] * 50, [1] * 40 + [3] * 50], 32) == [[0], [1]]  # 40 of 90: not worth it
    assert group_batches([[0, 2], [3], [1]], sequences, 2) == [[[0, 2]], [[1], [3]]]  # whole, shortest first
    assert group_batches([[0, 2], [3], [1]], sequences, 3) == [[[0, 2]], [[1], [3]]]  # groups of one on their own
    assert group_batches([[0, 1, 2]], sequences, 2) == [[[0, 1]], [[2]]]  # a group larger than a batch is cut


def test_per_row_adapters_give_each_row_its_own_adapters_scores(tiny):
    model, tokenizer, layout = tiny
    adapters = random_adapters(layout, len(PROMPTS), seed=3)
    seen: list[list[int]] = []

    def row_context(indices: list[int]):
        seen.append(list(indices))
        return adapters_applied(model, layout, LORA, adapters.rows(indices))

    together = label_logprobs(model, tokenizer, PROMPTS, LABELS, batch_size=2, row_context=row_context)
    continuations = label_continuations(tokenizer, PROMPTS[0], LABELS, stop_ids(tokenizer, model))
    for row, prompt in enumerate(PROMPTS):
        own = adapters.rows([row])
        alone = label_logprobs(model, tokenizer, [prompt], LABELS,
                               row_context=lambda idx, own=own: adapters_applied(model, layout, LORA,
                                                                                 own.rows([0] * len(idx))))
        np.testing.assert_allclose(together.logprobs[row], alone.logprobs[0], atol=ATOL)
        with adapters_applied(model, layout, LORA, own):
            naive = [naive_logprob(model, tokenizer, prompt, c) for c in continuations]
        np.testing.assert_allclose(together.logprobs[row], naive, atol=ATOL)
    base = label_logprobs(model, tokenizer, PROMPTS, LABELS)
    assert np.abs(together.logprobs - base.logprobs).max() > 1e-3  # the adapters matter
    assert seen == [[1, 0], [2]]  # batches in order of length, each row named by its prompt's index


def test_golden_greedy_answer_from_the_scoring_forward(bigram):
    """The bigram model's greedy path after the prompt is action (0.6), " movie" (0.7), end of turn (0.9): the
    answer stops there, well before the budget, and the scores are those of scoring alone."""
    model, tokenizer = bigram
    scores, answers = score_and_answer(model, tokenizer, ["x"], ["action", "action movie", "1"], max_new_tokens=8)
    assert answers == ["action movie"]
    np.testing.assert_allclose(scores.logprobs[0], [math.log(.6) + math.log(.3),
                                                    math.log(.6) + math.log(.7) + math.log(.9), math.log(.4)])
    assert score_and_answer(model, tokenizer, ["x"], ["1"], max_new_tokens=1)[1] == ["action"]  # the budget
    assert score_and_answer(model, tokenizer, ["x"], ["1"], max_new_tokens=0)[1] == [""]


@pytest.mark.parametrize("adapted", [False, True])
def test_answers_from_the_scoring_forward_equal_generates_greedy_answers(tiny, adapted):
    """Evaluation answers a labelled task's query and scores its labels from one prompt forward; the answers are
    `TransformersBackend.generate`'s greedy ones, with a shared prefix (no adapters) or per-row adapters."""
    model, tokenizer, layout = tiny
    model = copy.deepcopy(model)  # weights redrawn larger: the tiny model itself only ever writes newlines
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    query = ("Which tag does this movie relate to among the following tags? Just answer with the tag name without "
             "further explanation. tags: [sci-fi, comedy] description: {}")
    prompts = PROMPTS + [query.format(text) for text in ("Robots.", "A dog finds its way home " * 4, "Hm.")]
    adapters = random_adapters(layout, len(prompts), seed=5)
    rows = (lambda idx: adapters_applied(model, layout, LORA, adapters.rows(idx))) if adapted else None
    scores, answers = score_and_answer(model, tokenizer, prompts, LABELS, max_new_tokens=6, batch_size=2,
                                       row_context=rows)
    backend = TransformersBackend(model, tokenizer, "t", batch_size=2, progress=False, row_context=rows)
    expected = backend.generate([[{"role": "user", "content": p}] for p in prompts], Sampling(max_new_tokens=6))
    assert answers == [g.text for g in expected] and any(answers)
    alone = label_logprobs(model, tokenizer, prompts, LABELS, batch_size=2, row_context=rows)
    np.testing.assert_allclose(scores.logprobs, alone.logprobs, atol=1e-6)


# --- through an OpenAI-compatible server ---------------------------------------------------------------------------


def test_served_scores_are_the_echoed_prompt_logprobs_of_the_label_tokens(tiny):
    _, tokenizer, _ = tiny
    with FakeVLLM(base_model="base") as server:
        server.loaded["user-7"] = "/adapters/user-7"
        backend = OpenAIBackend(server.url, "base", retries=1, progress=False)
        scores = served_label_logprobs(backend, tokenizer, PROMPTS[:2], ["action", "[1]"], models=["base", "user-7"])
    # Scripted log-probs -(token % 10 + 1) / 8: "action" = 4667, 2 -> -8/8 - 3/8; "[1]" = 75, 33, 77, 2 -> -(6+4+8+3)/8
    np.testing.assert_allclose(scores.logprobs, [[-1.375, -2.625], [-1.375, -2.625]])
    assert scores.lengths.tolist() == [2, 4]
    bodies = sorted(server.bodies("/v1/completions"), key=lambda b: b["model"])
    assert [b["model"] for b in bodies] == ["base", "user-7"]
    head = prompt_ids(tokenizer, PROMPTS[0])
    assert bodies[0]["prompt"] == [head + [4667, 2], head + [75, 33, 77, 2]]
    assert bodies[0]["echo"] is True and bodies[0]["logprobs"] == 1 and bodies[0]["max_tokens"] == 1


def test_served_scores_equal_the_in_process_scores_of_the_same_model(tiny):
    model, tokenizer, _ = tiny

    def real_logprobs(name: str, tokens: list[int]) -> list[float | None]:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([tokens])).logits[0].double(), dim=-1)
        return [None] + [logp[j - 1, t].item() for j, t in enumerate(tokens) if j > 0]

    with FakeVLLM(base_model="base", scorer=real_logprobs) as server:
        backend = OpenAIBackend(server.url, "base", retries=1, concurrency=2, progress=False)
        served = served_label_logprobs(backend, tokenizer, PROMPTS, LABELS)
    local = label_logprobs(model, tokenizer, PROMPTS, LABELS, batch_size=2)
    np.testing.assert_allclose(served.logprobs, local.logprobs, atol=ATOL)
    assert served.lengths.tolist() == local.lengths.tolist()


def test_a_server_without_prompt_logprobs_fails_with_what_to_use(tiny):
    _, tokenizer, _ = tiny
    with FakeVLLM(prompt_logprobs=False) as server:
        backend = OpenAIBackend(server.url, "base", retries=1, progress=False)
        with pytest.raises(GenerationError, match=rf"^{server.url} returned no prompt log-probabilities for prompt 0:"
                                                  r" .*`echo: true` with `logprobs`, as vLLM does"):
            served_label_logprobs(backend, tokenizer, ["Say yes."], ["yes"])
    with FakeVLLM(completions=False) as server:
        backend = OpenAIBackend(server.url, "base", retries=1, progress=False)
        with pytest.raises(GenerationError, match=r"has no completions endpoint: .*serve the model with vLLM"):
            served_label_logprobs(backend, tokenizer, ["Say yes."], ["yes"])
    with FakeVLLM() as server:
        backend = OpenAIBackend(server.url, "base", retries=1, progress=False)
        with pytest.raises(HTTPRejection, match="does not exist"):
            served_label_logprobs(backend, tokenizer, ["Say yes."], ["yes"], models=["nobody"])


# --- metrics --------------------------------------------------------------------------------------------------------


def test_choice_labels_are_the_label_list_or_the_ratings():
    assert choice_labels("LaMP-2M") == LAMP_2M_LABELS
    assert choice_labels("LaMP-1") == ("[1]", "[2]")
    assert choice_labels(get_task("LaMP-3")) == RATING_LABELS == ("1", "2", "3", "4", "5")
    with pytest.raises(ValueError, match="no fixed label set"):
        choice_labels("LaMP-4")


def test_choice_classification_accuracy_and_macro_f1_by_hand():
    # gold comedy, comedy, action, sci-fi; chosen comedy, action, action, sci-fi -> 3 of 4 right.
    # F1: comedy P 1 R .5 -> 2/3; action P .5 R 1 -> 2/3; sci-fi 1; the other 12 labels 0 -> (2/3 + 2/3 + 1) / 15.
    result = choice_classification_scores(["comedy", "action", "action", "sci-fi"],
                                          ["comedy", "comedy", "action", "sci-fi"], LAMP_2M_LABELS)
    assert result == pytest.approx({"accuracy": 0.75, "f1": (2 / 3 + 2 / 3 + 1) / 15})
    assert choice_score(get_task("LaMP-2M"), ["comedy"], ["comedy"]) == pytest.approx({"accuracy": 1.0,
                                                                                       "f1": 1 / 15})
    with pytest.raises(ValueError, match="not one of the 15 labels"):
        choice_classification_scores(["Comedy"], ["comedy"], LAMP_2M_LABELS)


def test_choice_rating_mae_and_rmse_by_hand():
    # errors 1, 0, -2, 3 -> MAE 6/4; RMSE sqrt(14/4)
    result = choice_rating_scores(["4", "3", "1", "5"], ["3", "3", "3", "2"])
    assert result == pytest.approx({"mae": 1.5, "rmse": math.sqrt(3.5)})
    assert choice_score(get_task("LaMP-3"), ["4", "3", "1", "5"], ["3", "3.0", "3", "2"]) == pytest.approx(result)
    with pytest.raises(ValueError, match=r"'4.5' is not one of \['1'"):
        choice_score(get_task("LaMP-3"), ["4.5"], ["4"])


def test_format_valid_is_the_share_of_answers_that_are_exactly_a_label():
    lamp_2m = get_task("LaMP-2M")
    assert format_valid(lamp_2m, ["comedy", " action\n", "Comedy", "a comedy", "sci-fi"]) == pytest.approx(3 / 5)
    assert format_valid(get_task("LaMP-3"), ["4", " 5 ", "4.0", "4 stars"]) == pytest.approx(0.5)
    assert format_valid(get_task("LaMP-1"), ["[1]", "1", "[2]", "[3]"]) == pytest.approx(0.5)
    assert label_share(["x"], ["x"]) == 1.0
    with pytest.raises(ValueError, match="no answers"):
        format_valid(lamp_2m, [])
    with pytest.raises(ValueError, match="no fixed label set"):
        format_valid(get_task("LaMP-5"), ["a title"])
