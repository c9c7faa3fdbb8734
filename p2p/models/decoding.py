"""Decoding in process: the one decoding loop, the tokens that end an answer, and the per-row adapter context.

Every answer generated in process is decoded by `decode`, after a prompt forward its caller runs:
`TransformersBackend.generate` (evaluation, summaries, the judge, `p2p personalize`; greedy or sampled, a shared
prompt prefix encoded once) and choice scoring (`p2p.models.choice.score_and_answer`, whose prompt forward also
scores the labels). `next_tokens` picks each token, `stop_ids` says which tokens end an answer and `answer_text` cuts
its text, so a query's greedy answer is the same whichever of them decodes it. `p2p serve`'s engine
(p2p.server.engine) batches continuously, rows joining and leaving between steps, with a loop of its own, but ends
answers at the same `stop_ids`. Rows that carry their own adapters run inside a `RowContext`.

Only the `Sampling` settings shape the choice of a token: a model's generation config (Qwen2.5's repetition
penalty, its default temperature) is not applied, here as in `p2p serve` and choice scoring.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from p2p.models.generation import Conversation, Generation, OnResult, Sampling, chat_ids
from p2p.models.precision import autocast, model_compute_dtype

#: `row_context(indices)`: the context in which batch rows `indices` (indices into the caller's prompts, row by row)
#: run with their own adapters (p2p.lora.hooks.adapters_applied; `Personalizer.row_adapters` makes one).
RowContext = Callable[[list[int]], AbstractContextManager]


def in_rows(row_context: RowContext | None, indices: list[int]) -> AbstractContextManager:
    """`row_context(indices)`, or nothing to enter when the rows carry no adapters."""
    return row_context(indices) if row_context is not None else nullcontext()


def stop_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """The tokens that end an assistant turn, and so an answer: the tokenizer's EOS and, given the model, its
    generation config's EOS ids (Qwen2.5 lists `<|endoftext|>` there beside `<|im_end|>`).

    The padding token is not one of them: a tokenizer without a padding token pads with EOS (SmolLM2 and the tiny
    model have EOS as their padding token; p2p.models.loading gives it to any that has none), and Qwen2.5's padding
    token is one of its generation config's EOS ids."""
    ids = {tokenizer.eos_token_id} - {None}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is not None:
        ids |= set(eos if isinstance(eos, list) else [eos])
    return ids


def answer_end(tokens: list[int], stop: set[int]) -> int:
    """Length of the generated answer proper: up to (not including) the first stop token."""
    for position, token in enumerate(tokens):
        if token in stop:
            return position
    return len(tokens)


def answer_text(tokenizer: Any, tokens: list[int], stop: set[int]) -> str:
    """The text of generated `tokens` up to the first stop token, special tokens dropped, stripped."""
    return tokenizer.decode(tokens[:answer_end(tokens, stop)], skip_special_tokens=True).strip()


def positions(mask: Any) -> Any:
    """Each token's position from a left-padded attention mask: the number of real tokens before it (a padding
    token's position is masked out and never matters; it is 1, as transformers' `generate` sets it)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


class TransformersBackend:
    """Batched in-process generation with the model's chat template (left padding, greedy or sampled; `decode`).

    Conversations are batched in order of prompt length, so a batch pads little; results come back in input
    order. Sampling is seeded per batch (`seed + batch index`), so a rerun of the same inputs gives the same text.

    Prompts that share a long token prefix (the paper's profile and judge prompts put a fixed instruction before
    the user's data) have that prefix encoded once per call and its attention cache reused by every batch, with
    the padding placed between the shared prefix and each prompt's own tokens. Measured on SmolLM2-135M with the
    profile prompt (367 shared of ~770 tokens): 30% less time per batch, identical greedy output.

    `row_context(indices)`, when given, is entered around each batch's generation with the indices of the batch's
    conversations, row by row: P2P uses it to install the batch rows' own adapters. The shared prefix is then not
    cached, since each row's adapter changes even the prefix's attention states.
    """

    #: Shortest common prefix (in tokens) worth caching.
    MIN_SHARED_PREFIX = 32

    def __init__(self, model: Any, tokenizer: Any, model_id: str, batch_size: int = 8, progress: bool = True,
                 row_context: RowContext | None = None):
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.batch_size, self.progress, self.row_context = batch_size, progress, row_context

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        return chat_ids(self.tokenizer, conversation)

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Generation]:
        import torch
        from tqdm import tqdm

        prompts = [self.prompt_ids(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        results: list[Generation | None] = [None] * len(prompts)
        shared = shared_prefix(prompts) if len(prompts) > 1 else []
        if len(shared) < self.MIN_SHARED_PREFIX or self.row_context is not None:
            shared = []
        prefix_cache = self._encode(shared) if shared else None
        pad = self.tokenizer.pad_token_id
        stop = stop_ids(self.tokenizer, self.model)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch_index, batch in enumerate(tqdm(batches, desc="generate", unit="batch", mininterval=5,
                                                 disable=not self.progress)):
            own = [prompts[i][len(shared):] for i in batch]
            width = max(len(o) for o in own)
            ids = torch.tensor([shared + [pad] * (width - len(o)) + o for o in own], device=self.model.device)
            mask = torch.tensor([[1] * len(shared) + [0] * (width - len(o)) + [1] * len(o) for o in own],
                                device=self.model.device)
            if not sampling.greedy:
                torch.manual_seed(sampling.seed + batch_index)
            with torch.inference_mode(), autocast(self.model), in_rows(self.row_context, batch):
                cache = self._static_cache(prefix_cache, len(batch), ids.shape[1] + sampling.max_new_tokens)
                out = self.model(input_ids=ids[:, len(shared):], attention_mask=mask,
                                 position_ids=positions(mask)[:, len(shared):], past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
                generated = decode(self.model, out.logits[:, -1], out.past_key_values, mask,
                                   sampling.max_new_tokens, stop, sampling)
            for new, i in zip(generated, batch, strict=True):
                end = answer_end(new, stop)
                text = answer_text(self.tokenizer, new, stop)
                # Like OpenAI-compatible servers (vLLM, transformers serve), count the stop token generated.
                completion = end + 1 if end < len(new) else end
                results[i] = Generation(text=text, prompt_tokens=len(prompts[i]), completion_tokens=completion)
                if on_result is not None:
                    on_result(i, results[i])
        return results  # type: ignore[return-value]

    def choose(self, conversations: Sequence[Conversation], prefixes: Sequence[str],
               choices: Sequence[str]) -> list[str]:
        """Per conversation, the choice the model finds most probable as the next token of an assistant reply that
        begins with the conversation's prefix: constrained scoring, one forward pass each, no sampling.

        Every choice must be a single token after the prefix (digits are, in the tokenizers of the presets).
        """
        import torch

        out = []
        for conversation, prefix in zip(conversations, prefixes, strict=True):
            prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            candidates = [self._next_token(prefix, prefix_ids, choice) for choice in choices]
            ids = torch.tensor([self.prompt_ids(conversation) + prefix_ids], device=self.model.device)
            with torch.inference_mode(), autocast(self.model):
                logits = self.model(ids).logits[0, -1]
            out.append(choices[int(torch.argmax(logits[candidates]))])
        return out

    def _next_token(self, prefix: str, prefix_ids: list[int], choice: str) -> int:
        full = self.tokenizer(prefix + choice, add_special_tokens=False)["input_ids"]
        if full[:len(prefix_ids)] != prefix_ids or len(full) != len(prefix_ids) + 1:
            raise ValueError(f"{self.model_id}: {choice!r} is not one token after {prefix[-20:]!r}; constrained "
                             f"choice needs single-token choices")
        return full[-1]

    def _static_cache(self, prefix: Any, rows: int, length: int) -> Any:
        """The attention cache `decode` decodes into, for `rows` rows, holding the shared `prefix` cache (batch of
        one) in every row when given: preallocated for `length` positions where the model computes in its weights'
        dtype, else (autocast over fp32 weights) transformers' default, growing one.

        The default cache grows by concatenation, which copies all of it at every new token: with ~800-token summary
        prompts that was 43% of a batch's time (a static cache: 1.2x faster, identical greedy output;
        docs/benchmarks.md). Under autocast keys come out fp32 (the rotary embedding) and values bf16, which a
        preallocated cache of one dtype cannot hold."""
        import torch
        from transformers import StaticCache

        if model_compute_dtype(self.model) != next(self.model.parameters()).dtype:
            return None if prefix is None else repeated_cache(prefix, rows)
        cache = StaticCache(config=self.model.config, max_cache_len=length)
        if prefix is not None:
            with torch.inference_mode():
                for layer, shared in zip(cache.layers, prefix.layers, strict=True):
                    layer.update(shared.keys.expand(rows, -1, -1, -1).contiguous(),
                                 shared.values.expand(rows, -1, -1, -1).contiguous())
        return cache

    def _encode(self, ids: list[int]) -> Any:
        """The attention cache of one token sequence (batch of one)."""
        import torch

        with torch.inference_mode(), autocast(self.model):
            return self.model(torch.tensor([ids], device=self.model.device), use_cache=True).past_key_values

def repeated_cache(prefix: Any, rows: int) -> Any:
    """A copy of a one-row attention cache with its row repeated `rows` times (the prefix cache is kept for reuse)."""
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(rows)
    return cache


def shared_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The longest common prefix of all sequences, leaving each at least one token of its own."""
    if not sequences:
        return []
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return list(first[:length])


def next_tokens(logits: Any, sampling: Sampling) -> Any:
    """Each row's next token from its last logits (rows, vocab): the most probable one, or with a temperature a draw
    from the top-p nucleus of softmax(logits / temperature), made from torch's global generator (seeded by the
    caller). The arithmetic is transformers' own (its temperature and top-p warpers in fp32, then `multinomial` over
    every row), so a seeded run draws the same tokens as `model.generate` did."""
    import torch

    scores = logits.float()
    if sampling.greedy:
        return scores.argmax(-1)
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_p < 1.0:
        ascending, order = torch.sort(scores, descending=False)
        outside = ascending.softmax(-1).cumsum(-1) <= 1 - sampling.top_p
        outside[..., -1:] = False  # the most probable token always stays
        scores = scores.masked_fill(outside.scatter(1, order, outside), float("-inf"))
    return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)


GREEDY = Sampling(max_new_tokens=1)


def decode(model: Any, first: Any, cache: Any, mask: Any, max_new_tokens: int, stop: set[int],
           sampling: Sampling = GREEDY) -> list[list[int]]:
    """The decoding loop of every in-process answer: each row's continuation after a prompt forward
    (`max_new_tokens` at most, each through its first `stop` token), from that forward's last logits `first`
    (rows, vocab), its attention `cache` and left-padded `mask`. Tokens are chosen by `next_tokens` (greedy unless
    `sampling` has a temperature). A row that has produced a stop token is done; the rest go on until all are done
    or the budget is spent. Finished rows still run (their tokens are dropped), so every row's numbers and every
    draw are those of a batch that never shrinks: the same text whatever else shares the batch's steps."""
    import torch

    rows = first.shape[0]
    token = next_tokens(first, sampling)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    lengths = mask.sum(-1, keepdim=True)
    for step in range(max_new_tokens):
        for row in range(rows):
            if not done[row]:
                out[row].append(int(token[row]))
                done[row] = int(token[row]) in stop
        if all(done) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=-1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=lengths + step,
                       past_key_values=cache, use_cache=True).logits
        token = next_tokens(logits[:, -1], sampling)
    return out
