"""The method registry: every method the evaluate stage can run, defined once.

Each method says what the base model gets (its `kind`), what it needs from the earlier stages, and its name in
the report. Every list of methods (what params may name, the report's column order, the train stage's check)
derives from `METHODS`. docs/architecture.md §10 describes the methods themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["prompt", "adapter", "reference"]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind  # prompt: the user's data in the prompt; adapter: a LoRA per row; reference: a rule, no model
    needs: str  # what must exist before it runs (the stage that makes it)
    title: str  # its name in the report's tables and figures
    in_paper: bool = True  # a column of the paper's Tables 1-2; ours-only methods come after those


METHODS: tuple[Method, ...] = (
    Method("base", "prompt", "the base model", "base"),
    Method("rag", "prompt", "the base model", "RAG"),
    Method("pag", "prompt", "the summaries (summarize stage)", "PAG"),
    Method("full_history", "prompt", "the base model", "full history"),
    Method("mt_lora", "adapter", "the MT-LoRA adapter (mt_lora stage)", "MT-LoRA"),
    Method("oppu", "adapter", "every test user's OPPU adapter (oppu stage)", "OPPU"),
    Method("p2p", "adapter", "the hypernetwork (train stage)", "P2P"),
    Method("p2p_shuffled", "adapter", "the hypernetwork (train stage)", "P2P, shuffled profile‡", in_paper=False),
    Method("oracle", "reference", "the synthetic benchmark's planted preferences", "oracle†", in_paper=False),
    Method("query_only", "reference", "the synthetic benchmark's planted preferences", "user-blind best†",
           in_paper=False),
)
BY_NAME = {m.name: m for m in METHODS}


def names(kind: Kind | None = None, *, in_paper: bool | None = None) -> tuple[str, ...]:
    """The methods' names in registry order, of one kind and/or only those in (or not in) the paper's tables."""
    return tuple(m.name for m in METHODS
                 if (kind is None or m.kind == kind) and (in_paper is None or m.in_paper == in_paper))


PROMPT_METHODS = names("prompt")
ADAPTER_METHODS = names("adapter")
REFERENCE_METHODS = names("reference")  # the synthetic benchmark only
CONFIGURABLE = PROMPT_METHODS + ADAPTER_METHODS  # what `evaluate.methods` and `judge.methods` may name
HYPERNETWORK_METHODS = tuple(m.name for m in METHODS if m.name.startswith("p2p"))
#: The method every other one is compared with (reports/eval/comparisons.json: `p2p-METHOD`, paired intervals).
PROPOSED = "p2p"
TITLES = {m.name: m.title for m in METHODS}
