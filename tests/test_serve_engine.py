"""The serving engine on its own (real tiny base model, real hypernetwork adapters, the engine's own thread): a row
whose sampling fails ends that request alone, and every other row's answer is what it is alone."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest
from conftest import build_smoke_checkpoint

from p2p.hyper.personalize import Personalizer
from p2p.models.generation import Sampling, chat_ids
from p2p.server.engine import Delta, Engine, Failed, Finished, Job

PROFILES = ["I love slow science fiction.", "Loud action films with car chases, always."]


@pytest.fixture(scope="module")
def personalizer(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Personalizer:
    checkpoint = build_smoke_checkpoint(tmp_path_factory.mktemp("engine") / "p2p", model_cache)
    return Personalizer.from_checkpoint(checkpoint, model_cache, device="cpu", onnx_embedder=False)


def run(engine: Engine, personalizer: Personalizer, requests: list[tuple[str | None, Sampling]]) -> list[object]:
    """Submit every request at once; each one's answer text, or its Failed."""
    prompt = chat_ids(personalizer.tokenizer, [{"role": "user", "content": "Recommend me a film."}])
    inboxes = [queue.Queue() for _ in requests]
    for (profile, sampling), inbox in zip(requests, inboxes):
        adapters = personalizer.adapters(personalizer.embed([profile]), None) if profile is not None else None
        engine.submit(Job(prompt, sampling, inbox.put, adapters=adapters, min_tokens=sampling.max_new_tokens))
    answers: list[object] = []
    for inbox in inboxes:
        text = ""
        while True:
            event = inbox.get(timeout=120)
            if isinstance(event, Delta):
                text += event.text
            elif isinstance(event, (Finished, Failed)):
                answers.append(text if isinstance(event, Finished) else event)
                break
    return answers


def test_a_row_whose_sampling_fails_fails_alone(personalizer):
    engine = Engine(personalizer.model, personalizer.tokenizer, personalizer.hyper.layout, personalizer.meta.lora,
                    max_batch=8, max_queue=8)
    engine.start()
    try:
        good = [(PROFILES[0], Sampling(max_new_tokens=12)), (None, Sampling(max_new_tokens=12)),
                (PROFILES[1], Sampling(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=3))]
        alone = [run(engine, personalizer, [request])[0] for request in good]
        assert all(isinstance(answer, str) and answer for answer in alone)
        bad = [(PROFILES[1], Sampling(max_new_tokens=12, temperature=1.0, seed=2**70)),  # fails as it is admitted
               (None, Sampling(max_new_tokens=12, temperature=float("inf"), seed=1))]  # NaN odds: fails at a token
        together = run(engine, personalizer, [bad[0], good[0], bad[1], good[1], good[2]])
        assert together[1::2] == alone[:2] and together[4] == alone[2]
        assert all(isinstance(answer, Failed) and answer.status == 500 for answer in together[0::2][:2])
        assert "generation failed" in together[0].message and "generation failed" in together[2].message
        assert run(engine, personalizer, good) == alone  # and the engine goes on serving
    finally:
        engine.stop()


def answer(inbox: queue.Queue, times: dict[str, float] | None = None) -> str:
    """The text of one request's events; `times` gets when the engine emitted its first event of each kind."""
    text = ""
    while True:
        emitted, event = inbox.get(timeout=120)
        if times is not None:
            times.setdefault(type(event).__name__, emitted)
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Finished):
            return text
        elif isinstance(event, Failed):
            raise AssertionError(event.message)


def submit(engine: Engine, personalizer: Personalizer, question: str, profile: str | None, tokens: int) -> queue.Queue:
    inbox: queue.Queue = queue.Queue()
    prompt = chat_ids(personalizer.tokenizer, [{"role": "user", "content": question}])
    adapters = personalizer.adapters(personalizer.embed([profile]), None) if profile is not None else None
    engine.submit(Job(prompt, Sampling(max_new_tokens=tokens), lambda event: inbox.put((time.perf_counter(), event)),
                      adapters=adapters, min_tokens=tokens))
    return inbox


def test_rows_that_join_and_leave_mid_batch_leave_every_other_answer_as_it_is_alone(personalizer):
    """Rows of different lengths leave at different tokens (the batch's last row moves into each freed slot) and a
    longer prompt joins the running rows (the columns in use grow to the left): greedy answers stay each one's alone."""
    short, long = "Recommend me a film.", "I have a free evening and a big screen. " * 6 + "Which film should I watch?"
    first = [(short, PROFILES[0], 24), (short, None, 3), (long, PROFILES[1], 12), (short, PROFILES[1], 6)]
    later = [(long, PROFILES[0], 10), (short, None, 5)]
    engine = Engine(personalizer.model, personalizer.tokenizer, personalizer.hyper.layout, personalizer.meta.lora,
                    max_batch=8, max_queue=8, prefill_share=1.0)
    engine.start()
    try:
        alone = [answer(submit(engine, personalizer, *request)) for request in first + later]
        inboxes = [submit(engine, personalizer, *request) for request in first]
        texts = [answer(inboxes[1])]  # the 3-token row has left; the others are still decoding
        inboxes += [submit(engine, personalizer, *request) for request in later]
        texts = [answer(inboxes[0])] + texts + [answer(inbox) for inbox in inboxes[2:]]
    finally:
        engine.stop()
    assert texts == alone


@pytest.mark.parametrize("share, first_tokens, second_joins", [(1e-9, 3, False), (1e-9, 20, True), (1.0, 3, True)])
def test_prefills_of_rows_that_leave_at_once_spend_a_share_of_the_engine_and_others_wait(
        personalizer, share, first_tokens, second_joins):
    """A long row decodes; a first newcomer joins it (a little prefill time is lent ahead), then a second. When prefills
    may take almost none of the engine, a first newcomer that leaves within PAYBACK_TOKENS has spent that loan, and the
    second waits for the long row to finish; one that stayed to decode spent nothing. With a share of 1 every
    newcomer joins at once."""
    engine = Engine(personalizer.model, personalizer.tokenizer, personalizer.hyper.layout, personalizer.meta.lora,
                    max_batch=8, max_queue=8, prefill_share=share, prefill_burst=1e-6)
    engine.start()
    try:
        running: dict[str, float] = {}
        long = submit(engine, personalizer, "Recommend me a film.", None, 96)
        while "Delta" not in running:  # its first token: it is decoding
            emitted, event = long.get(timeout=120)
            running.setdefault(type(event).__name__, emitted)
        first: dict[str, float] = {}
        second: dict[str, float] = {}
        assert answer(submit(engine, personalizer, "Recommend me a film.", PROFILES[0], first_tokens), first)
        assert answer(submit(engine, personalizer, "Recommend me a film.", PROFILES[1], 2), second)
        answer(long, running)
    finally:
        engine.stop()
    assert first["Started"] < first["Finished"] < running["Finished"]
    assert (second["Started"] < running["Finished"]) is second_joins
