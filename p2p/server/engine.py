"""Continuous batching: many requests, each with its own generated adapter (or none), decoded one token at a time
in one batch.

One engine thread owns the model. Between two decode steps (a token boundary) it drops the rows that finished or
whose client left, and admits waiting requests up to `max_batch`: each one's `check` runs (a stored profile deleted or
replaced while the request waited ends it there), their prompts are prefilled together, and their keys and values
written into free slots of the batch's cache (`p2p.server.batch_cache`), left-padded to the running rows' length; a
row that leaves frees its slot without copying the others'. Adapters arrive made: the HTTP side makes them before
it submits a job, so no profile's embedding ever runs on this thread. Every decode step then runs the whole batch
through the base model once, with the per-row LoRA hooks of `p2p.lora.hooks` giving each row its own user's update
(a row without a profile gets zero A and B, which adds exactly nothing). Only the composition of the batch changes
the stacked adapters, never a step.

Requests that leave at once never starve the running rows. A row that leaves within its first `PAYBACK_TOKENS`
tokens (its client hung up, it failed, or it asked for so few) had its prefill stall the rows decoding beside it for
little: such prefills may take at most `prefill_share` of the engine's time while rows decode (a credit the decode
steps earn and those prefills spend, with `prefill_burst` seconds lent ahead). While the credit is spent, newcomers
wait for a later token boundary and are then prefilled together. A row that stays to decode is never charged, so a
batch filling up with real requests is never held back. A client that opens stream after stream and hangs up after
the first chunk took half the engine before (issue 29, docs/benchmarks.md).

Rows are left-padded and carry their own position ids (the number of real tokens before them), so a row's tokens
see the same positions and, through the attention mask, the same keys whatever it is batched with: greedy answers
are those of the row alone. Requests beyond `max_batch + max_queue` are refused (`QueueFull`), never queued
without bound; a request cancelled while it waits leaves the queue at once (`cancel`).

A row's failure is the row's: an error while seeding, sampling or decoding one row ends that request alone with
`Failed`, and the other rows go on as if it had never been there. Only a failure of the batch's shared forward pass
fails every row in it.

The engine never sees profile texts or answers in its logs; it reports only through each job's `emit` callback.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from p2p.lora.hooks import Adapters, BatchedLoRA, LoraShape, TargetLayout
from p2p.models.decoding import positions, stop_ids
from p2p.models.generation import Sampling
from p2p.server.batch_cache import BatchCache

log = logging.getLogger("p2p.serve")

PREFILL_SHARE = 0.1  # the most of the engine's time that short-lived rows' prefills take while rows decode
PREFILL_BURST_S = 0.5  # seconds of short-lived rows' prefill the running rows lend ahead of their share
PAYBACK_TOKENS = 16  # a row that leaves with fewer tokens had its prefill charged to the share


class QueueFull(RuntimeError):
    """Every batch row and queue place is taken; the client should retry later."""


@dataclass(frozen=True)
class Started:
    """The request got its batch row."""


@dataclass(frozen=True)
class Delta:
    """New answer text (never a partial stop string or a partial character)."""

    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int
    batch_peak: int  # the most rows decoded together while this request ran


@dataclass(frozen=True)
class Failed:
    message: str
    status: int = 500  # the HTTP status, while the answer has not started
    code: str = "generation_failed"


Event = Started | Delta | Finished | Failed


@dataclass
class Job:
    """One chat completion: token ids of the prompt, decoding settings and its adapter (a batch of one; None for
    the base model).

    `check`, when given, runs in the engine thread as the job is admitted: a `Failed` it returns ends the job there
    (a stored profile deleted or replaced since its adapter was made).
    """

    prompt: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    adapters: Adapters | None = None
    check: Callable[[], Failed | None] | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Done or abandoned: its row is freed at the next token boundary (`Engine.cancel` also frees a queue
        place at once)."""
        self.cancelled.set()


@dataclass
class _Row:
    job: Job
    adapters: Adapters | None
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the answer already emitted
    peak: int = 0
    prefill: float = 0.0  # seconds its prefill stalled rows already decoding (its part of a joint prefill)


class Engine:
    """The decode loop over one frozen base model with per-row adapters; `submit` from any thread."""

    def __init__(self, model: Any, tokenizer: Any, layout: TargetLayout, lora: LoraShape, *, max_batch: int = 16,
                 max_queue: int = 64, prefill_share: float = PREFILL_SHARE, prefill_burst: float = PREFILL_BURST_S,
                 on_step: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 0 or not 0 < prefill_share <= 1:
            raise ValueError(f"max_batch must be at least 1, max_queue at least 0 and prefill_share in (0, 1]; got "
                             f"{max_batch}, {max_queue}, {prefill_share}")
        self.model, self.tokenizer, self.layout, self.lora = model, tokenizer, layout, lora
        self.max_batch, self.max_queue = max_batch, max_queue
        # prefill seconds earned per second of decoding: the share of prefills in the engine's time is at most
        # prefill_share while rows decode (1: newcomers are admitted at every token boundary)
        self._earn = prefill_share / (1 - prefill_share) if prefill_share < 1 else math.inf
        self._burst = self._credit = prefill_burst
        self.on_step = on_step  # (rows, seconds) after each decode step: one new token per row
        self.device = model.device
        self.stop_ids = stop_ids(tokenizer, model)
        self._waiting: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._admitting = 0  # taken from the queue, not yet in the batch (their adapters are being made)
        self._cond = threading.Condition()
        self._stopping = False
        self._cache = BatchCache(max_batch, self.device)
        self._lengths = torch.zeros(0, dtype=torch.long, device=self.device)
        self._hooks = BatchedLoRA(model, layout, lora)
        self._zeros = {kind: (torch.zeros((1, len(layout.layers), lora.rank, d_in), device=self.device),
                              torch.zeros((1, len(layout.layers), d_out, lora.rank), device=self.device))
                       for kind, (d_in, d_out) in layout.shapes.items()}
        self._thread = threading.Thread(target=self._run, name="p2p-engine", daemon=True)

    # ---- the client side (any thread)

    def start(self) -> None:
        self._hooks.__enter__()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self._hooks.__exit__()

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) + self._admitting + len(self._rows) >= self.max_batch + self.max_queue:
                raise QueueFull(f"{self.max_batch} requests are being answered and {self.max_queue} are waiting")
            self._waiting.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client left: a waiting job leaves the queue now, a running one its row at the next token boundary."""
        job.cancel()
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                pass  # admitted already, or never queued

    def load(self) -> tuple[int, int]:
        """(rows in the running batch or joining it, requests waiting for one)."""
        with self._cond:
            return len(self._rows) + self._admitting, len(self._waiting)

    # ---- the engine thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._stopping:
                    break
                running = bool(self._rows)
                room = self.max_batch - len(self._rows) if not running or self._credit > 0 or \
                    self._earn == math.inf else 0
                newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self._admitting = len(newcomers)
            try:
                with torch.inference_mode():
                    self._admit([job for job in newcomers if not job.cancelled.is_set()], stalls=running)
                    with self._cond:
                        self._admitting = 0
                    self._drop_finished()
                    if self._rows:
                        self._step()
                        self._drop_finished()
            except Exception as err:  # a broken step fails the requests in it, never the server
                log.error("decode step failed: %s: %s", type(err).__name__, err)  # one line; never a row's text
                self._fail_all(newcomers, f"generation failed: {type(err).__name__}: {err}")
                with self._cond:
                    self._admitting = 0

    def _admit(self, jobs: list[Job], stalls: bool) -> None:
        """Prefill `jobs` and add them to the batch; `stalls`: rows are decoding and wait for this prefill."""
        began = time.perf_counter()
        rows = []
        for job in jobs:
            try:
                refused = job.check() if job.check is not None else None
                generator = None
                if not job.sampling.greedy:
                    generator = torch.Generator(device=self.device)
                    generator.manual_seed(job.sampling.seed)
            except Exception as err:  # this request alone fails
                refused = Failed(f"generation failed: {type(err).__name__}: {err}")
            if refused is not None:
                job.emit(refused)
                job.cancel()
                continue
            rows.append(_Row(job, job.adapters, generator))
            job.emit(Started())
        if not rows:
            return
        width = max(len(row.job.prompt) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r.job.prompt)) + r.job.prompt for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.job.prompt)) + [1] * len(r.job.prompt) for r in rows],
                            device=self.device)
        self._hooks.set(self._stacked(rows))
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                         logits_to_keep=1)
        self._cache.add(_cache_tensors(out.past_key_values), mask)
        self._lengths = torch.cat([self._lengths, mask.sum(-1)])
        with self._cond:
            self._rows, self._admitting = self._rows + rows, 0
        self._hooks.set(self._stacked(self._rows))
        for row, token in zip(rows, self._sample(rows, out.logits[:, -1])):
            self._advance(row, token)
        if stalls:
            for row in rows:
                row.prefill = (time.perf_counter() - began) / len(rows)

    def _step(self) -> None:
        began = time.perf_counter()
        ids = torch.tensor([[row.tokens[-1]] for row in self._rows], device=self.device)
        out = self.model(input_ids=ids, attention_mask=self._cache.step_mask(), position_ids=self._lengths[:, None],
                         past_key_values=self._cache.cache(), use_cache=True)
        self._cache.advance()
        self._lengths = self._lengths + 1
        for row, token in zip(self._rows, self._sample(self._rows, out.logits[:, -1])):
            self._advance(row, token)
        seconds = time.perf_counter() - began
        self._credit = min(self._burst, self._credit + seconds * self._earn)
        if self.on_step is not None:
            self.on_step(len(self._rows), seconds)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int | None]:
        """Each row's next token; None for a row whose sampling failed (it has been failed alone)."""
        logits = logits.float()
        for i, row in enumerate(rows):  # no end of turn before min_tokens
            if len(row.tokens) < row.job.min_tokens:
                logits[i, list(self.stop_ids)] = float("-inf")
        chosen: list[int | None] = list(logits.argmax(dim=-1).tolist())
        for i, row in enumerate(rows):
            if row.generator is not None:
                try:
                    chosen[i] = _sample_top_p(logits[i], row.job.sampling, row.generator)
                except Exception as err:
                    chosen[i] = None
                    self._fail_row(row, err)
        return chosen

    def _advance(self, row: _Row, token: int | None) -> None:
        """Append one token to a row; emit the text it completes; finish the row on a stop or at max_tokens. A row
        that fails here fails alone."""
        if token is None or row.job.cancelled.is_set():
            return
        try:
            self._append(row, token)
        except Exception as err:
            self._fail_row(row, err)

    def _fail_row(self, row: _Row, err: Exception) -> None:
        log.warning("row failed: %s: %s", type(err).__name__, err)  # the error's type and text, never the row's
        row.job.emit(Failed(f"generation failed: {type(err).__name__}: {err}"))
        row.job.cancel()  # leaves the batch at this token boundary

    def _append(self, row: _Row, token: int) -> None:
        row.tokens.append(token)
        row.peak = max(row.peak, len(self._rows))
        job = row.job
        ended = token in self.stop_ids
        text = self.tokenizer.decode(row.tokens[:-1] if ended else row.tokens, skip_special_tokens=True)
        cut = _first_stop(text, job.stop)
        reason = "stop" if ended or cut is not None else "length" if len(row.tokens) >= job.sampling.max_new_tokens \
            else None
        if cut is not None:
            text = text[:cut]
        safe = len(text) if reason else len(text) - _held_back(text, job.stop)
        if safe > row.sent:
            job.emit(Delta(text[row.sent:safe]))
            row.sent = safe
        if reason:
            job.emit(Finished(reason, len(job.prompt), len(row.tokens), row.peak))
            job.cancelled.set()  # done: the row leaves at this token boundary

    def _drop_finished(self) -> None:
        """Free the rows that finished or whose client left: the batch's last row moves into each freed slot."""
        gone = [i for i, row in enumerate(self._rows) if row.job.cancelled.is_set()]
        if not gone:
            return
        rows, lengths = list(self._rows), self._lengths
        for i in gone:
            if len(rows[i].tokens) < PAYBACK_TOKENS:  # its prefill stalled the batch for little
                self._credit -= rows[i].prefill
        for i in reversed(gone):
            moved = self._cache.remove(i)
            rows[i], lengths[i] = rows[moved], lengths[moved]
            rows.pop()
        self._cache.trim()
        self._lengths = lengths[:len(rows)]
        with self._cond:
            self._rows = rows
        self._hooks.set(self._stacked(rows))

    def _stacked(self, rows: list[_Row]) -> Adapters | None:
        """The batch's adapters, row by row (zeros for the base model's rows); None when no row has one."""
        if all(row.adapters is None for row in rows):
            return None
        a = {kind: torch.cat([row.adapters.a[kind] if row.adapters is not None else zeros[0] for row in rows])
             for kind, zeros in self._zeros.items()}
        b = {kind: torch.cat([row.adapters.b[kind] if row.adapters is not None else zeros[1] for row in rows])
             for kind, zeros in self._zeros.items()}
        return Adapters(a, b)

    def _fail_all(self, newcomers: list[Job], message: str) -> None:
        with self._cond:
            rows, self._rows = self._rows, []
        for job in [row.job for row in rows] + newcomers:
            if not job.cancelled.is_set():
                job.emit(Failed(message))
                job.cancelled.set()
        self._cache.clear()
        self._lengths = self._lengths[:0]
        self._hooks.set(None)


def _sample_top_p(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token drawn from softmax(logits / temperature), restricted to the smallest set of tokens whose
    probability reaches top_p (the most probable token is always kept). In float64, so a temperature or top_p near
    the bottom of the accepted range stays finite."""
    probs = torch.softmax(logits.double() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        outside[0] = False
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters to keep back: the start of a stop string, or an incomplete character."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def _cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer of a full-attention DynamicCache: (batch, heads, tokens, head_dim) each."""
    return [(layer.keys, layer.values) for layer in cache.layers]
