"""Choice scoring: for a task with a fixed label set, the answer is the label the model finds most likely.

Each label is scored as the assistant's reply to the method's exact prompt, the way multiple-choice evaluation
harnesses (lm-evaluation-harness, HELM) score a fixed set of answers: the summed log-probability of the label's
tokens after the chat-formatted prompt with its generation prompt, i.e. from where the assistant's answer starts.

What is scored per label (`label_continuation`): the tokens the chat template renders for an assistant turn holding
the label (as training's `p2p.training.encode` teaches them), **up to and including the end-of-turn token**
(SmolLM2 and Qwen: `action<|im_end|>`). Counting the end of turn makes a label that is a prefix of another
comparable: "action" must be followed by the end of the turn, so it no longer wins every time "action movie" would
have. Whatever the template puts after the end-of-turn token (a newline) is not scored. Length normalisation
(`choose(..., normalise=True)`) divides each label's sum by that token count, the end of turn included.

Speed (`label_logprobs`): one forward over each batch of left-padded prompts keeps its attention cache, whose last
logits score every label's first token; one more forward from that cache feeds the remaining label tokens of all
labels side by side, with a block-diagonal causal mask so each label sees only the prompt and its own earlier
tokens. A long prefix every prompt shares (the task instruction) is encoded once, as `TransformersBackend` does,
and so is a long prefix a group of prompts shares (one user's history before each of their queries, in the full
history baseline: half the tokens of its prompt forward; `prefix_groups`), unless rows carry their own adapters.
The cache is never copied or expanded per label; each prompt stays one batch
row: with `row_context(indices)` (per-row adapters, as in `TransformersBackend`) both forwards run inside it, and
every label of a prompt is scored with that prompt's adapter.

`served_label_logprobs` scores the same prompts x labels on an OpenAI-compatible server through the completions
endpoint's prompt log-probabilities (`echo` with `logprobs`, which vLLM returns), sending token ids so that both
paths score exactly the same tokens.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2p.models.decoding import (
    RowContext,
    TransformersBackend,
    answer_text,
    decode,
    in_rows,
    positions,
    repeated_cache,
    shared_prefix,
    stop_ids,
)
from p2p.models.generation import GenerationError, answer_ids, prompt_ids
from p2p.models.openai_backend import HTTPRejection, OpenAIBackend
from p2p.models.precision import autocast


@dataclass(frozen=True)
class ChoiceScores:
    """Summed log-probabilities `logprobs[prompt, label]`, and `lengths[label]`: how many tokens each sum covers
    (the label's tokens and the end-of-turn token)."""

    logprobs: np.ndarray  # float64 (prompts, labels)
    lengths: np.ndarray  # int64 (labels,)

    def choose(self, normalise: bool = False) -> np.ndarray:
        return choose(self.logprobs, self.lengths, normalise)


def choose(logprobs: np.ndarray, lengths: np.ndarray, normalise: bool = False) -> np.ndarray:
    """Per prompt, the index of the best label: the highest summed log-probability, or with `normalise` the highest
    log-probability per token. A tie goes to the label listed first (the official label order)."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    lengths = np.asarray(lengths)
    if logprobs.ndim != 2 or lengths.shape != (logprobs.shape[1],):
        raise ValueError(f"logprobs must be (prompts, labels) and lengths (labels,); got {logprobs.shape} and "
                         f"{lengths.shape}")
    if normalise:
        if (lengths < 1).any():
            raise ValueError(f"every label needs at least one token to normalise by; lengths {lengths.tolist()}")
        logprobs = logprobs / lengths[None, :]
    return np.argmax(logprobs, axis=1)


def label_continuation(tokenizer: Any, prompt: str, label: str, stop: set[int]) -> list[int]:
    """The tokens of an assistant turn holding `label`, after the prompt's tokens, through the first end-of-turn
    token (all of them when the template renders none). Rendered by the chat template exactly as training encodes
    an answer (p2p.training.encode), so the tokenisation at the boundary is the template's own; a template that
    rewrites earlier turns falls back, as training does, to the label's own tokens plus the EOS token."""
    _, tail = answer_ids(tokenizer, prompt, label)
    for position, token in enumerate(tail):
        if token in stop:
            return tail[:position + 1]
    if not tail:
        raise ValueError(f"the chat template renders no tokens for the answer {label!r}")
    return tail


def label_continuations(tokenizer: Any, prompt: str, labels: Sequence[str], stop: set[int]) -> list[list[int]]:
    """`label_continuation` of every label. The generation prompt ends every chat-formatted prompt the same way, so
    the label's tokens do not depend on which prompt renders them: one prompt stands for all."""
    if not labels:
        raise ValueError("choice scoring needs at least one label")
    return [label_continuation(tokenizer, prompt, label, stop) for label in labels]


def label_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str], *,
                   batch_size: int = 8, row_context: RowContext | None = None) -> ChoiceScores:
    """Summed log-probability of every label as the assistant's answer to every prompt (see the module docstring).

    Prompts are user turns (the method's exact prompt text), chat-formatted here. They run `batch_size` at a time in
    order of length (results in input order). `row_context(indices)`, when given, is entered around both forwards of
    a batch with the indices (into `prompts`) of the batch's rows, row by row: per-row adapters stay on their rows.
    The model's attention must take a custom 4D mask (sdpa and eager do; flash attention does not).
    """
    return score_and_answer(model, tokenizer, prompts, labels, max_new_tokens=0, batch_size=batch_size,
                            row_context=row_context)[0]


def score_and_answer(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str], *,
                     max_new_tokens: int, batch_size: int = 8,
                     row_context: RowContext | None = None) -> tuple[ChoiceScores, list[str]]:
    """`label_logprobs` and, from the same prompt forward, each prompt's greedy answer of up to `max_new_tokens`
    tokens (p2p.models.decoding: `decode`, then `answer_text`, as `TransformersBackend.generate` answers).

    Evaluation needs both for every query of a labelled task (choice scoring and the official free-generation
    metrics); the prompt forward, which is most of the cost, then runs once instead of twice. `max_new_tokens=0`
    generates nothing (answers are empty)."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        return ChoiceScores(np.zeros((0, len(labels))), np.zeros(len(labels), dtype=np.int64))
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if "flash" in attention:
        raise ValueError(f"choice scoring packs the labels after each prompt with a 4D attention mask, which "
                         f"{attention} does not take; load the model with attn_implementation='sdpa'")
    continuations = label_continuations(tokenizer, prompts[0], labels, stop_ids(tokenizer, model))
    tokens = [prompt_ids(tokenizer, p) for p in prompts]
    # As in TransformersBackend.generate: a long prefix every prompt shares is encoded once; then a long prefix a
    # group of prompts shares (one user's history before each of their queries) once per batch. Not with per-row
    # adapters, which change even a prefix's attention states.
    shared = shared_prefix(tokens) if len(tokens) > 1 and row_context is None else []
    if len(shared) < TransformersBackend.MIN_SHARED_PREFIX:
        shared = []
    rest = [t[len(shared):] for t in tokens]
    groups = prefix_groups(rest, TransformersBackend.MIN_SHARED_PREFIX) if row_context is None else \
        [[i] for i in range(len(rest))]
    out = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    answers = [""] * len(prompts)
    stop = stop_ids(tokenizer, model)
    with torch.inference_mode(), autocast(model):
        prefix = None
        if shared:
            prefix = model(input_ids=torch.tensor([shared], device=model.device), use_cache=True).past_key_values
        for batch in group_batches(groups, rest, batch_size):
            heads = [shared_prefix([rest[i] for i in group]) if len(group) > 1 else [] for group in batch]
            rows = [i for group in batch for i in group]
            owner = [g for g, group in enumerate(batch) for _ in group]
            with in_rows(row_context, rows):
                cache, head_mask = _head_cache(model, tokenizer.pad_token_id, prefix, len(shared), heads, owner)
                out[rows], new = _score_batch(model, tokenizer.pad_token_id,
                                              [rest[i][len(heads[g]):] for i, g in zip(rows, owner)],
                                              continuations, head_mask, cache, max_new_tokens, stop)
            for i, ids in zip(rows, new):
                answers[i] = answer_text(tokenizer, ids, stop)
    return ChoiceScores(out, np.array([len(c) for c in continuations], dtype=np.int64)), answers


def prefix_groups(sequences: Sequence[Sequence[int]], min_shared: int) -> list[list[int]]:
    """Indices of `sequences` in groups whose members share a prefix worth encoding once: at least `min_shared`
    tokens and at least half of every member (each member keeping a token of its own, as `shared_prefix` leaves
    it). A chance overlap (two users' histories that open alike) is no group: its short head would leave the rest
    of every row in the batch to encode whole. A sequence that shares no such prefix is a group of one. Sequences
    are grouped in lexicographic order, so those with a common start end up side by side."""
    order = sorted(range(len(sequences)), key=lambda i: list(sequences[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            members = [sequences[j] for j in groups[-1] + [i]]
            head = len(shared_prefix(members))
            if head >= min_shared and 2 * head >= max(len(m) for m in members):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def group_batches(groups: list[list[int]], sequences: Sequence[Sequence[int]], batch_size: int
                  ) -> list[list[list[int]]]:
    """Groups packed into batches of at most `batch_size` sequences, in order of their longest member's length (so a
    batch pads little); a group larger than a batch is cut into batch-size pieces. Groups of one go into batches of
    their own: beside groups, a whole prompt would widen every row's own part to its length."""
    pieces = [group[k:k + batch_size] for group in groups for k in range(0, len(group), batch_size)]
    pieces.sort(key=lambda piece: (len(piece) == 1, max(len(sequences[i]) for i in piece), piece[0]))
    batches: list[list[list[int]]] = []
    for piece in pieces:
        last = batches[-1] if batches else None
        if last and (len(last[0]) == 1) == (len(piece) == 1) and sum(map(len, last)) + len(piece) <= batch_size:
            last.append(piece)
        else:
            batches.append([piece])
    return batches


def _head_cache(model: Any, pad: int, prefix: Any, shared: int, heads: list[list[int]], owner: list[int]
                ) -> tuple[Any, Any]:
    """(attention cache, its mask) of every row's head: the `shared` tokens of the `prefix` cache (batch of one),
    then the tokens of its group's own prefix `heads[owner[row]]` (left-padded to the longest), each group's
    encoded once; (None, None) when there is no head at all."""
    import torch

    device, rows = model.device, len(owner)
    if not any(heads):
        if prefix is None:
            return None, None
        return repeated_cache(prefix, rows), torch.ones(rows, shared, dtype=torch.long, device=device)
    width = max(len(h) for h in heads)
    ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(h)) + [1] * len(h) for h in heads], device=device)
    cache = None if prefix is None else repeated_cache(prefix, len(heads))
    position_ids = positions(mask)[:, shared:]
    cache = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True,
                  logits_to_keep=1).past_key_values
    index = torch.tensor(owner, device=device)
    cache.reorder_cache(index)  # each group's rows get their group's cache
    return cache, mask[index]


def _score_batch(model: Any, pad: int, prompts: list[list[int]], continuations: list[list[int]],
                 head_mask: Any = None, cache: Any = None, max_new_tokens: int = 0,
                 stop: set[int] | None = None) -> tuple[np.ndarray, list[list[int]]]:
    """(rows, labels) summed log-probs for one batch of prompts: a prompt forward, then all labels from its cache;
    and the rows' greedy continuations (`max_new_tokens` at most, each through its first `stop` token) decoded from
    a copy of the same cache. With a `cache` of each row's head (`_head_cache`; `head_mask` says which of its
    positions are tokens), `prompts` are the tokens after it.

    The second forward feeds every label's tokens but its last one side by side after the prompt, the same packed
    row for every prompt; a block-diagonal causal mask lets each label token see the prompt (not its padding) and
    its own label's earlier tokens only, and its position continues the prompt's, so each label is scored exactly
    as if it alone followed the prompt.
    """
    import torch

    device = model.device
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    # Padding sits between the head and each prompt's own tokens, as in TransformersBackend.
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    if head_mask is not None:
        mask = torch.cat([head_mask, mask], dim=-1)
    # Positions count real tokens only, as generate() computes them from the mask.
    position_ids = positions(mask)[:, mask.shape[1] - width:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (rows, vocab): each label's first token
    scores = torch.stack([first[:, tokens[0]] for tokens in continuations], dim=1).double()
    answers = decode(model, first, copy.deepcopy(out.past_key_values), mask, max_new_tokens, stop or set()) \
        if max_new_tokens > 0 else [[] for _ in prompts]

    feed, target, owner, offset = [], [], [], []  # per packed token: its input, what it predicts, label, position
    for label, tokens in enumerate(continuations):
        for j in range(len(tokens) - 1):
            feed.append(tokens[j])
            target.append(tokens[j + 1])
            owner.append(label)
            offset.append(j)
    if not feed:  # every label is a single token
        return scores.cpu().numpy(), answers
    owner_t = torch.tensor(owner, device=device)
    offset_t = torch.tensor(offset, device=device)
    index = torch.arange(len(feed), device=device)
    # Packed token q sees packed token k when k is q itself or an earlier token of the same label.
    own_label = (owner_t[:, None] == owner_t[None, :]) & (index[None, :] <= index[:, None])
    visible = torch.cat([mask.bool()[:, None, :].expand(rows, len(feed), mask.shape[1]),
                         own_label[None].expand(rows, -1, -1)], dim=-1)  # (rows, packed, prompt + packed)
    blocked = torch.finfo(model.dtype).min
    mask_4d = torch.zeros(visible.shape, dtype=model.dtype, device=device).masked_fill(~visible, blocked)[:, None]
    lengths = mask.sum(-1, keepdim=True)
    logits = model(input_ids=torch.tensor([feed] * rows, device=device), attention_mask=mask_4d,
                   position_ids=lengths + offset_t[None], past_key_values=out.past_key_values,
                   use_cache=True).logits.float()  # (rows, packed, vocab)
    targets = torch.tensor(target, device=device)[None, :, None].expand(rows, -1, -1)
    picked = (logits.gather(-1, targets)[..., 0] - logits.logsumexp(-1)).double()  # (rows, packed)
    scores.index_add_(1, owner_t, picked)
    return scores.cpu().numpy(), answers


# --- through an OpenAI-compatible server (vLLM) ---------------------------------------------------------------------

#: What a server must do for served choice scoring, named in every error about it.
SERVED_REQUIREMENT = ("choice scoring on a server needs its completions endpoint (POST /v1/completions) to return "
                      "prompt log-probabilities for `echo: true` with `logprobs`, as vLLM does")


def completion_request(model: str, prompt: list[int], continuations: list[list[int]]) -> dict[str, Any]:
    """The completions body that scores every label after one prompt: one token-id prompt per label, echoed with
    the log-probability of each of its tokens (one token is generated, since some servers refuse zero)."""
    return {"model": model, "prompt": [prompt + c for c in continuations], "max_tokens": 1, "temperature": 0.0,
            "echo": True, "logprobs": 1}


def served_label_logprobs(backend: OpenAIBackend, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str],
                          *, models: Sequence[str] | None = None) -> ChoiceScores:
    """`label_logprobs` on a server: one completions request per prompt (its labels as a batch of prompts), with
    `models[i]` (an adapter name on vLLM, see p2p.vllm_client) or the backend's model; `backend.concurrency`
    requests in flight, each retried as `OpenAIBackend.post` does.

    The same tokenizer as the server's model must be given: prompts go as token ids, so both paths score the same
    tokens. A server that returns no prompt log-probabilities (or has no completions endpoint) is a GenerationError
    saying so.
    """
    if models is not None and len(models) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(models)} model names; give one per prompt")
    if not prompts:
        return ChoiceScores(np.zeros((0, len(labels))), np.zeros(len(labels), dtype=np.int64))
    continuations = label_continuations(tokenizer, prompts[0], labels, stop_ids(tokenizer))

    def one(index: int) -> list[float]:
        model = backend.model if models is None else models[index]
        head = prompt_ids(tokenizer, prompts[index])
        payload = json.dumps(completion_request(model, head, continuations)).encode()
        try:
            raw = backend.post("completions", payload, f"choice scoring of prompt {index}", model)
        except HTTPRejection as err:
            if err.status == 404 and err.server_message.strip().lower() == "not found":  # no such route
                raise GenerationError(f"{backend.base_url} has no completions endpoint: {SERVED_REQUIREMENT}; "
                                      f"serve the model with vLLM or turn choice scoring off") from None
            raise
        return _served_sums(raw, len(head), continuations, backend.base_url, index)

    with ThreadPoolExecutor(max_workers=backend.concurrency, thread_name_prefix="choice-scoring") as pool:
        rows = list(pool.map(one, range(len(prompts))))
    return ChoiceScores(np.array(rows, dtype=np.float64), np.array([len(c) for c in continuations], dtype=np.int64))


def _served_sums(raw: bytes, start: int, continuations: list[list[int]], base_url: str, index: int) -> list[float]:
    """Each label's summed log-probability from a completions answer: its tokens' entries of the echoed prompt."""
    try:
        choices = sorted(json.loads(raw)["choices"], key=lambda c: c.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GenerationError(f"{base_url} answered the choice scoring of prompt {index} with something that is not "
                              f"a completion: {raw[:200].decode('utf-8', 'replace')}") from None
    if len(choices) != len(continuations):
        raise GenerationError(f"{base_url} answered {len(choices)} choices for the {len(continuations)} labels of "
                              f"prompt {index}; {SERVED_REQUIREMENT}")
    sums = []
    for choice, tokens in zip(choices, continuations):
        found = (choice.get("logprobs") or {}).get("token_logprobs") if isinstance(choice, dict) else None
        scored = found[start:start + len(tokens)] if isinstance(found, list) else []
        if len(scored) != len(tokens) or any(not isinstance(v, (int, float)) for v in scored):
            raise GenerationError(f"{base_url} returned no prompt log-probabilities for prompt {index}: "
                                  f"{SERVED_REQUIREMENT} (this server ignored echo/logprobs)")
        sums.append(float(sum(scored)))
    return sums
