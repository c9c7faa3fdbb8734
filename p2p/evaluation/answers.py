"""Running the methods: every method x task x split answered the same way on the same queries.

Methods (p2p.methods; docs/architecture.md §10): the prompt baselines `base`, `rag`, `pag`, `full_history`
(p2p.baselines.prompting), the adapters `mt_lora` (one for everyone), `oppu` (one per test user) and `p2p` (made
from each query's profile embedding by the hypernetwork; `p2p_shuffled` gives each query another test user's
profile, Table 5); on the synthetic benchmark also `oracle` (the planted rule with the true preference) and
`query_only` (the best user-blind answer). All generate greedily with the same base model, chat template and
answer budget, in batches; adapter methods run every row of a batch with its own adapter.

With `generation.backend: openai` the base model lives on a vLLM server (p2p.vllm_client): prompt methods ask
it directly, adapter methods export each query's adapter (once per distinct adapter), load it into the server at
runtime and name it in the query's request, all queries in flight together. Only the tokenizer (answer budgets,
prompt lengths) and the hypernetwork run here.

Per method x task x split the evaluate stage (p2p.stages.evaluate) writes the predictions in the official LaMP JSON
format (`{"task": ..., "golds": [{"id", "output"}]}`, readable by `p2p eval-metrics` and the official script) and
the seconds it took; p2p.evaluation.scores scores them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2p.baselines.prompting import PromptSettings, build_prompt
from p2p.data import synth
from p2p.data.records import Query, UserRecord
from p2p.evaluation.scores import CHOICE_VARIANTS, MethodRun
from p2p.hyper.personalize import Personalizer
from p2p.io import write_json
from p2p.lora.hooks import Adapters, LoraShape, TargetLayout, adapters_applied
from p2p.lora.stacked import load_adapters
from p2p.methods import ADAPTER_METHODS, HYPERNETWORK_METHODS, PROMPT_METHODS, REFERENCE_METHODS
from p2p.models.choice import ChoiceScores, label_logprobs, score_and_answer, served_label_logprobs
from p2p.models.decoding import RowContext, TransformersBackend
from p2p.models.generation import Sampling
from p2p.paths import TaskData
from p2p.profiles.embeddings import ablate
from p2p.profiles.noise import EmbeddingNoise
from p2p.tasks import get_task
from p2p.tasks.registry import LABELLED_KINDS, choice_labels
from p2p.vllm_client import ServedAdapter, VLLMLoraClient, export_for_serving

log = logging.getLogger(__name__)


@dataclass
class Models:
    """The base model and whatever each configured method needs besides it."""

    model: Any  # None when a server generates (`served`)
    tokenizer: Any
    layout: TargetLayout
    lora: LoraShape
    batch_size: int
    personalizer: Personalizer | None = None  # in-process generation with the hypernetwork's adapters
    mt_lora: Adapters | None = None
    hypernetwork: Any = None  # p2p.hyper.hypernet.HyperNetwork (served generation: only its adapters are needed)
    served: VLLMLoraClient | None = None  # generation.backend openai: the server, with per-user adapters


@dataclass(frozen=True)
class EvalSettings:
    """What every method's run shares (the `evaluate` params, the seed, the base model's name)."""

    answer_tokens: Mapping[str, int]  # new tokens per answer by task kind (never derived from the golds)
    retrieval_k: int  # RAG and PAG history items
    context_tokens: int  # full_history's budget
    seed: int  # p2p_shuffled's permutation
    base_llm: str  # what served adapters are exported for
    noise: EmbeddingNoise = EmbeddingNoise()  # P2P's privacy defence on its profile embeddings (off by default)


@dataclass
class TaskInputs:
    """One task's data and what its methods read besides the models (the stages' outputs of that task)."""

    data: TaskData
    summaries: dict[str, str]  # user id -> LLM summary (PAG)
    oppu_adapters: Path  # the oppu stage's stacked adapters of this task
    synth_dir: Path  # the synthetic benchmark's files of this task (oracle, query_only)


def split_queries(records: list[UserRecord], users: list[str]) -> list[tuple[UserRecord, Query]]:
    """Every query of the chosen users, in record order; each must have its gold."""
    chosen = set(users)
    out = []
    for record in records:
        if record.user_id not in chosen:
            continue
        for query in record.queries:
            if query.output is None:
                raise ValueError(f"{record.task}: user {record.user_id} query {query.id} has no gold output; "
                                 f"evaluation needs the outputs file")
            out.append((record, query))
    return out


def answer_texts(models: Models, prompts: list[str], sampling: Sampling, rows: RowContext | None = None) -> list[str]:
    """Greedy answers of the base model; with `rows(indices)`, each batch row runs with its own adapter
    (in-process only: a server answers with adapters by name, see `_served_adapter_answers`)."""
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    if models.served is not None:
        if rows is not None:
            raise ValueError("a server takes adapters by name: use _served_adapter_answers")
        return [g.text for g in models.served.backend.generate(conversations, sampling)]
    backend = TransformersBackend(models.model, models.tokenizer, "eval", batch_size=models.batch_size,
                                  progress=False, row_context=rows)
    return [g.text for g in backend.generate(conversations, sampling)]


def choose_labels(models: Models, task: str, prompts: list[str], rows: RowContext | None = None,
                  names: list[str] | None = None) -> list[dict[str, str]]:
    """Choice scoring (p2p.models.choice): per prompt, the label of `choice_labels(task)` with the highest summed
    log-probability (`choice`) and per token (`choice_norm`), with the same per-row adapters as generation (`rows`
    in process; adapter `names` on a server)."""
    labels = choice_labels(task)
    if models.served is not None:
        scores = served_label_logprobs(models.served.backend, models.tokenizer, prompts, labels, models=names)
    else:
        scores = label_logprobs(models.model, models.tokenizer, prompts, labels, batch_size=models.batch_size,
                                row_context=rows)
    return _picks(scores, labels)


def answers_and_choices(models: Models, task: str, prompts: list[str], sampling: Sampling,
                        rows: RowContext | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """In process, for a labelled task: `generate`'s greedy answers and `choose_labels`' labels from one prompt
    forward per query (`p2p.models.choice.score_and_answer`), where separately each would run its own."""
    if models.served is not None or not sampling.greedy:
        raise ValueError("answers_and_choices decodes greedily in process; use generate and choose_labels")
    labels = choice_labels(task)
    scores, texts = score_and_answer(models.model, models.tokenizer, prompts, labels,
                                     max_new_tokens=sampling.max_new_tokens, batch_size=models.batch_size,
                                     row_context=rows)
    return texts, _picks(scores, labels)


def _picks(scores: ChoiceScores, labels: list[str]) -> list[dict[str, str]]:
    picks = zip(scores.choose(normalise=False), scores.choose(normalise=True))  # in CHOICE_VARIANTS' order
    return [dict(zip(CHOICE_VARIANTS, (labels[i], labels[j]))) for i, j in picks]


def run_method(method: str, models: Models | None, inputs: TaskInputs, split: str,
               settings: EvalSettings) -> MethodRun:
    """Answers of one method for every query of `split` of one task: generated, and for tasks with a fixed label
    set also chosen by choice scoring (`MethodRun.choices`); `seconds` is the answering's (for a labelled task in
    process: the one prompt forward both share, the decoding and the label scoring)."""
    data = inputs.data
    pairs = split_queries(data.records, data.split[split])
    ids = [q.id for _, q in pairs]
    spec = get_task(data.task)
    labelled = spec.kind in LABELLED_KINDS
    if method in REFERENCE_METHODS:
        predict = synth.oracle_predictions if method == "oracle" else synth.query_only_predictions
        predicted = predict(inputs.synth_dir)
        choices = {i: dict.fromkeys(CHOICE_VARIANTS, predicted[i]) for i in ids} if labelled else None
        return MethodRun(method, {i: predicted[i] for i in ids}, None, choices)
    if models is None:
        raise ValueError(f"method {method} needs the base model")
    sampling = Sampling(max_new_tokens=settings.answer_tokens[spec.kind])
    if method in PROMPT_METHODS:
        prompt_settings = PromptSettings(settings.retrieval_k, settings.context_tokens)

        def count(text: str) -> int:
            return len(models.tokenizer(text, add_special_tokens=False)["input_ids"])

        began = time.perf_counter()
        prompts = [build_prompt(method, r, q, inputs.summaries.get(r.user_id), prompt_settings, count)
                   for r, q in pairs]
        if labelled and models.served is None:
            texts, chosen = answers_and_choices(models, data.task, prompts, sampling)
            seconds = time.perf_counter() - began
        else:
            texts = answer_texts(models, prompts, sampling)
            seconds = time.perf_counter() - began
            chosen = choose_labels(models, data.task, prompts) if labelled else None
    elif method in ADAPTER_METHODS:
        prompts = [spec.build_prompt(q.input) for _, q in pairs]
        answer = _adapter_answers if models.served is None else _served_adapter_answers
        texts, chosen, seconds = answer(method, models, inputs, pairs, prompts, sampling, settings, labelled)
    else:
        raise ValueError(f"unknown method {method!r}")
    return MethodRun(method, dict(zip(ids, texts)), seconds, dict(zip(ids, chosen)) if chosen is not None else None)


def _row_adapters(method: str, models: Models, inputs: TaskInputs, pairs: list[tuple[UserRecord, Query]],
                  settings: EvalSettings) -> RowContext:
    """Each batch row's own adapter, in process: P2P's from the query's profile embedding (with the shape the
    hypernetwork was trained with), MT-LoRA's for every row, OPPU's of the query's user."""
    if method in HYPERNETWORK_METHODS:
        if models.personalizer is None:
            raise ValueError("p2p needs the trained hypernetwork (run the train stage)")
        return models.personalizer.row_adapters(_query_embeddings(method, inputs.data, pairs, settings),
                                                inputs.data.task)
    if method == "mt_lora":
        if models.mt_lora is None:
            raise ValueError("mt_lora needs the trained adapter (run the mt_lora stage)")
        return lambda idx: adapters_applied(models.model, models.layout, models.lora,
                                            models.mt_lora.rows([0] * len(idx)))
    adapters, rows = _oppu_adapters(inputs, pairs)
    adapters = Adapters({k: v.to(models.model.device) for k, v in adapters.a.items()},
                        {k: v.to(models.model.device) for k, v in adapters.b.items()})
    return lambda idx: adapters_applied(models.model, models.layout, models.lora,
                                        adapters.rows([rows[i] for i in idx]))


def _adapter_answers(method: str, models: Models, inputs: TaskInputs, pairs: list[tuple[UserRecord, Query]],
                     prompts: list[str], sampling: Sampling, settings: EvalSettings,
                     labelled: bool) -> tuple[list[str], list[dict[str, str]] | None, float]:
    """(generated answers, chosen labels or None, seconds of generation) with every row's own adapter."""
    rows = _row_adapters(method, models, inputs, pairs, settings)
    began = time.perf_counter()
    if labelled:
        texts, chosen = answers_and_choices(models, inputs.data.task, prompts, sampling, rows)
        return texts, chosen, time.perf_counter() - began
    texts = answer_texts(models, prompts, sampling, rows)
    return texts, None, time.perf_counter() - began


def _query_embeddings(method: str, data: TaskData, pairs: list[tuple[UserRecord, Query]],
                      settings: EvalSettings) -> np.ndarray:
    """The profile embedding P2P makes each query's adapter from (another test user's, for p2p_shuffled), with the
    privacy defence's noise when it is on (keyed by the query and the run's seed, p2p.profiles.noise)."""
    missing = [q.id for _, q in pairs if q.id not in data.queries]
    if missing:
        raise ValueError(f"{data.task}: no profile embedding for queries {missing[:3]}; rerun the embed stage")
    embeddings = np.stack([data.queries[q.id] for _, q in pairs])
    if method == "p2p_shuffled":  # Table 5: every query gets the profile of another test user's query
        embeddings = ablate(embeddings, [r.user_id for r, _ in pairs], "shuffled", settings.seed)
    return settings.noise.apply(embeddings, [q.id for _, q in pairs], str(settings.seed))


def _oppu_adapters(inputs: TaskInputs, pairs: list[tuple[UserRecord, Query]]) -> tuple[Adapters, list[int]]:
    """The OPPU stage's adapters of this task, and the row of each query's user."""
    adapters, users, _ = load_adapters(inputs.oppu_adapters)
    row_of = {u: i for i, u in enumerate(users)}
    missing = sorted({r.user_id for r, _ in pairs} - row_of.keys())
    if missing:
        raise ValueError(f"{inputs.data.task}: no OPPU adapter for users {missing[:3]}; rerun the oppu stage")
    return adapters, [row_of[r.user_id] for r, _ in pairs]


def _served_adapter_answers(method: str, models: Models, inputs: TaskInputs, pairs: list[tuple[UserRecord, Query]],
                            prompts: list[str], sampling: Sampling, settings: EvalSettings,
                            labelled: bool) -> tuple[list[str], list[dict[str, str]] | None, float]:
    """The adapter methods on a vLLM server: every distinct adapter is exported once (as `<kind>-<user>-<digest>`),
    loaded at runtime, named in the requests of its queries (generation and choice scoring), and unloaded once all
    are answered."""
    client = models.served
    owners = [r.user_id for r, _ in pairs]

    def export(adapters: Adapters, users: list[str]) -> list[ServedAdapter]:
        return export_for_serving(client.local_dir, models.layout, models.lora, adapters, users,
                                  settings.base_llm, method)

    if method in HYPERNETWORK_METHODS:
        if models.hypernetwork is None:
            raise ValueError("p2p needs the trained hypernetwork (run the train stage)")
        served = _served_p2p(models, inputs.data.task, _query_embeddings(method, inputs.data, pairs, settings), owners,
                             export)
    elif method == "mt_lora":
        if models.mt_lora is None:
            raise ValueError("mt_lora needs the trained adapter (run the mt_lora stage)")
        served = export(models.mt_lora, ["all"]) * len(pairs)
    else:
        adapters, rows = _oppu_adapters(inputs, pairs)
        user_of = dict(zip(rows, owners))  # adapter row -> its user, for the rows these queries use
        used = sorted(user_of)
        by_row = dict(zip(used, export(adapters.rows(used), [user_of[row] for row in used])))
        served = [by_row[row] for row in rows]
    client.load(served)
    names = [adapter.name for adapter in served]
    began = time.perf_counter()
    answers = client.generate([[{"role": "user", "content": p}] for p in prompts], names, sampling)
    seconds = time.perf_counter() - began
    chosen = choose_labels(models, inputs.data.task, prompts, names=names) if labelled else None
    client.unload(names)
    return [g.text for g in answers], chosen, seconds


def _served_p2p(models: Models, task: str, embeddings: np.ndarray, owners: list[str],
                export: Callable[[Adapters, list[str]], list[ServedAdapter]]) -> list[ServedAdapter]:
    """One exported adapter per query of `task`: the hypernetwork runs once per distinct (user, embedding), in
    batches."""
    import torch

    first: dict[tuple[str, bytes], int] = {}
    for i, (owner, embedding) in enumerate(zip(owners, embeddings)):
        first.setdefault((owner, embedding.tobytes()), i)
    distinct = list(first.values())
    device = next(models.hypernetwork.parameters()).device
    exported: list[ServedAdapter] = []
    for start in range(0, len(distinct), models.batch_size):
        rows = distinct[start:start + models.batch_size]
        with torch.no_grad():
            adapters = models.hypernetwork(torch.as_tensor(embeddings[rows], dtype=torch.float32, device=device),
                                           task)
        exported += export(adapters, [owners[i] for i in rows])
    by_query = dict(zip(distinct, exported))
    return [by_query[first[(owner, embedding.tobytes())]] for owner, embedding in zip(owners, embeddings)]


def write_predictions(path: Path, task: str, outputs: dict[str, str]) -> None:
    """The official LaMP outputs format (predictions and golds alike)."""
    spec = get_task(task)
    write_json(path, {"task": spec.official_name or spec.id,
                      "golds": [{"id": i, "output": text} for i, text in outputs.items()]})


