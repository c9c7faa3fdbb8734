"""Text generation behind one interface: transformers in-process, or any OpenAI-compatible HTTP endpoint.

A backend takes chat conversations (lists of `{"role", "content"}` messages) and returns one `Generation` per
conversation, in order. `on_result(index, generation)` is called as each one finishes, so callers can persist
results immediately (a run that fails or is killed keeps what was done). `model_id` names what produced the text,
for cache keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Conversation = list[dict[str, str]]
OnResult = Callable[[int, "Generation"], None]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:  # checked when made, so a bad setting fails before any model loads
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected at least 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature: expected at least 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


class GenerationError(RuntimeError):
    """Generation failed for good (after retries); the message says what failed and what to do."""


class Backend(Protocol):
    model_id: str

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Generation]: ...


def chat_ids(tokenizer: Any, conversation: Conversation, add_generation_prompt: bool = True) -> list[int]:
    """The chat template's tokens of `conversation`, without the default system turn some templates insert when
    the conversation has none (SmolLM2: "You are a helpful AI assistant named SmolLM, ...", 21 tokens per row).

    Such a turn carries nothing for our prompts but costs every forward of training, scoring and generation. Every
    place that renders a prompt (training samples, generation, choice scoring, summaries, `p2p serve`) renders it
    here, so training and inference see the same tokens. A conversation that opens with its own system message is
    rendered as the template renders it. How: the conversation is rendered after an empty system turn, which
    replaces the default, and the text of that lone empty turn is cut off the front (a BOS token the template
    puts before the system turn is kept); a template that renders no such turn, or refuses one, renders the
    conversation as is.
    """
    def render(messages: Conversation) -> str:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    if not conversation or conversation[0]["role"] == "system":
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=True,
                                             return_dict=True)["input_ids"]
    empty_turn = [{"role": "system", "content": ""}]
    try:
        empty = tokenizer.apply_chat_template(empty_turn, add_generation_prompt=False, tokenize=False)
        text = render(empty_turn + list(conversation))
    except Exception:  # a template without system turns (it raises on one)
        empty, text = "", ""
    if not empty or not text.startswith(empty):
        text = render(list(conversation))
    else:
        text = text[len(empty):]
        bos = tokenizer.bos_token or ""
        if bos and empty.startswith(bos) and not text.startswith(bos):  # Llama: BOS, then the system turn
            text = bos + text
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The chat-formatted user prompt, ending where the assistant's answer starts (`chat_ids`)."""
    return chat_ids(tokenizer, [{"role": "user", "content": prompt}])


def answer_ids(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt tokens, answer tokens) of the user turn `prompt` and the assistant turn `answer`, as the chat
    template renders them together, so the tokenisation at the boundary is the template's own. A template that
    rewrites earlier turns gets the answer's own tokens plus EOS appended instead. Training (p2p.training.encode)
    and choice scoring (p2p.models.choice) both read an answer this way."""
    head = prompt_ids(tokenizer, prompt)
    full = chat_ids(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                    add_generation_prompt=False)
    if full[:len(head)] == head:
        return head, list(full[len(head):])
    return head, tokenizer(answer + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
