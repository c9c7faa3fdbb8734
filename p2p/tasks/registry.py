"""The task registry: one `TaskSpec` per task, as data.

Each spec says what kind of task it is, its labels, which fields a history item carries, the paper's task
description and prompt (App. J), and how to pull the prompt's fields out of the official query `input` string.

Query inputs (checked against public code that parses the real files):
- LaMP-1  `For an author who has written the paper with the title "{title}", which reference is related? Just answer
  with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"`
- LaMP-2N `Which category does this article relate to among the following categories? Just answer with the category
  name without further explanation. categories: [women, religion, ...] article: {text}`
- LaMP-2M `Which tag does this movie relate to among the following tags? Just answer with the tag name without
  further explanation. tags: [sci-fi, ...] description: {text}`
- LaMP-3  `What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 without
  further explanation. review: {text}`
- LaMP-4/5/7 `Generate a headline for the following article: {text}`, `Generate a title for the following abstract
  of a paper: {abstract}`, `Paraphrase the following tweet without any explanation before or after it: {text}`
- LongLaMP `Generate an abstract for the title "{title}" using the following items: 1. ...`, `Generate the content
  for a reddit post {summary}`, `Generate the review text written by a reviewer who has given an overall rating of
  "{overall}" for a product with description "{description}". The summary of the review text is "{summary}".`
The patterns below anchor on the fixed words around each field but not on the label list inside the brackets
(its order differs between releases) nor on letter case ("Just"/"just").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from p2p.tasks.prompts import TASK_DESCRIPTIONS, TASK_TEMPLATES

KINDS = ("classification", "rating", "generation", "open_ended")

LAMP_1_LABELS = ("[1]", "[2]")
# Official index order (LaMP's evaluator and its data loader); the macro F1 averages over all of them.
LAMP_2M_LABELS = ("sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy",
                  "classic", "psychology", "fantasy", "romance", "thought-provoking", "social commentary", "violence",
                  "true story")
LAMP_2N_LABELS = ("food & drink", "sports", "education", "parents", "religion", "travel", "business", "crime",
                  "science & technology", "culture & arts", "entertainment", "politics", "women", "style & beauty",
                  "healthy living")
#: LaMP-3's ratings as choice-scoring labels (its gold outputs are these strings).
RATING_LABELS = ("1", "2", "3", "4", "5")
#: The task kinds with a fixed answer set: choice scoring applies (`choice_labels`).
LABELLED_KINDS = ("classification", "rating")

_FLAGS = re.IGNORECASE | re.DOTALL


@dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline needs to know about one task.

    `input_pattern` is a regex whose named groups are the prompt template's fields; groups named `option_1`,
    `option_2`, ... are gathered into the `options_str` field as `[1]: "..."` lines (the authors' format). With no
    pattern, the whole query input fills the template's single field `whole_input_field`.
    """

    id: str
    title: str
    kind: str
    official_name: str | None
    aliases: tuple[str, ...]
    labels: tuple[str, ...]
    label_field: str | None
    history_fields: tuple[str, ...]
    description: str
    template: str
    input_pattern: str | None = None
    whole_input_field: str | None = None

    def __post_init__(self) -> None:
        """Catch an inconsistent spec when the module loads, not when some query first reaches it."""
        if self.kind not in KINDS:
            raise ValueError(f"{self.id}: kind {self.kind!r} is not one of {KINDS}")
        if bool(self.labels) != (self.kind == "classification"):
            raise ValueError(f"{self.id}: classification tasks, and only they, have labels")
        if (self.input_pattern is None) == (self.whole_input_field is None):
            raise ValueError(f"{self.id}: give exactly one of input_pattern and whole_input_field")

    def extract_fields(self, query_input: str) -> dict[str, str]:
        """The template's fields pulled out of an official query input string (ValueError if it does not match)."""
        if self.input_pattern is None:
            return {self.whole_input_field: query_input.strip()}
        match = re.search(self.input_pattern, query_input, _FLAGS)
        if match is None:
            raise ValueError(f"{self.id}: query input does not have the official phrasing: {query_input[:120]!r}")
        fields, options = {}, []
        for name, value in match.groupdict().items():
            value = value.strip()
            if not value:
                raise ValueError(f"{self.id}: query input has an empty {name}: {query_input[:120]!r}")
            if name.startswith("option_"):
                options.append(f'[{name.removeprefix("option_")}]: "{value}"')
            else:
                fields[name] = value
        if options:
            fields["options_str"] = "\n".join(options)
        return fields

    def build_prompt(self, query_input: str) -> str:
        """The paper's prompt for one query (without any profile or history)."""
        return self.template.format(**self.extract_fields(query_input))

    def item_text(self, item: dict[str, Any]) -> str:
        """One history item as text, for BM25 and profiles: `field: value` for the task's fields, joined by ` | `.

        Fields are in the task's order; absent or empty ones are skipped (LaMP-7 items, for instance, may carry a
        `date` we do not show). An item with none of the fields is a ValueError.
        """
        parts = [f"{name}: {str(item[name]).strip()}" for name in self.history_fields
                 if item.get(name) is not None and str(item[name]).strip()]
        if not parts:
            raise ValueError(f"{self.id}: history item has none of the fields {list(self.history_fields)}")
        return " | ".join(parts)


def _spec(id: str, title: str, kind: str, official_name: str | None, history_fields: tuple[str, ...], *,
          aliases: tuple[str, ...] = (), labels: tuple[str, ...] = (), label_field: str | None = None,
          input_pattern: str | None = None, whole_input_field: str | None = None) -> TaskSpec:
    return TaskSpec(id=id, title=title, kind=kind, official_name=official_name, aliases=aliases, labels=labels,
                    label_field=label_field, history_fields=history_fields, description=TASK_DESCRIPTIONS[id],
                    template=TASK_TEMPLATES[id], input_pattern=input_pattern, whole_input_field=whole_input_field)


TASKS: dict[str, TaskSpec] = {spec.id: spec for spec in (
    _spec("LaMP-1", "Citation Identification", "classification", "LaMP_1", ("title", "abstract"),
          labels=LAMP_1_LABELS,
          input_pattern=r'with the title "(?P<paper_title>.*)",? which reference is related\?.*?'
                        r'\[1\]:\s*"(?P<option_1>.*)"\s*\[2\]:\s*"(?P<option_2>.*)"\s*$'),
    _spec("LaMP-2N", "News Categorization", "classification", "LaMP_2", ("title", "text", "category"),
          aliases=("LaMP_2N", "LaMP_2_news"), labels=LAMP_2N_LABELS, label_field="category",
          input_pattern=r"categories:\s*\[[^\]]*\]\s*article:\s*(?P<article>.*)$"),
    _spec("LaMP-2M", "Movie Tagging", "classification", "LaMP_2M", ("description", "tag"),
          aliases=("LaMP_2_movies", "LaMP_2_movie", "LaMP_2/new"), labels=LAMP_2M_LABELS, label_field="tag",
          input_pattern=r"tags:\s*\[[^\]]*\]\s*description:\s*(?P<description>.*)$"),
    _spec("LaMP-3", "Product Rating", "rating", "LaMP_3", ("text", "score"), label_field="score",
          input_pattern=r"on a scale of 1 to 5\?.*?review:\s*(?P<review_text>.*)$"),
    _spec("LaMP-4", "News Headline Generation", "generation", "LaMP_4", ("title", "text"),
          input_pattern=r"generate a headline for the following article:\s*(?P<article>.*)$"),
    _spec("LaMP-5", "Scholarly Title Generation", "generation", "LaMP_5", ("title", "abstract"),
          input_pattern=r"generate a title for the following abstract of a paper:\s*(?P<abstract>.*)$"),
    _spec("LaMP-7", "Tweet Paraphrasing", "generation", "LaMP_7", ("text",),
          input_pattern=r"paraphrase the following tweet without any explanation before or after it:\s*"
                        r"(?P<original_tweet>.*)$"),
    # The paper's prompt has one field, the title, though its instruction names "key items" too: the whole input
    # (title and numbered key items) fills it, so the items are not lost.
    _spec("LongLaMP-1", "Abstract Generation", "generation", None, ("title", "abstract"),
          aliases=("abstract_generation", "abstract_generation_user"), whole_input_field="paper_title"),
    _spec("LongLaMP-2", "Topic Writing", "generation", None, ("summary", "content"),
          aliases=("topic_writing", "topic_writing_user"),
          input_pattern=r"generate (?:the )?content for (?:a|the) reddit post:?\s*(?P<topic_prompt>.*)$"),
    _spec("LongLaMP-3", "Review Writing", "generation", None, ("overall", "summary", "description", "reviewText"),
          aliases=("product_review", "product_review_user"),
          input_pattern=r'overall rating of "?(?P<rating>[^"]*?)"? for a product with description '
                        r'"(?P<product_description>.*)"\.?\s*the summary of the review text is '
                        r'"(?P<review_summary>.*)"\.?\s*$'),
    _spec("PersonalReddit", "Personal Reddit", "open_ended", None, ("question", "response"),
          aliases=("PR", "personal_reddit"), whole_input_field="input_text"),
    _spec("EmpatheticConv", "Empathetic Conversation", "open_ended", None, ("article", "essay"),
          aliases=("EC", "empathetic_conversations"), whole_input_field="article"),
)}

_BY_NAME: dict[str, str] = {name.lower(): spec.id for spec in TASKS.values()
                             for name in (spec.id, spec.official_name, *spec.aliases) if name is not None}


def get_task(name: str) -> TaskSpec:
    """Resolve a canonical id or an official/alias name (case-insensitive), e.g. `LaMP_3` -> LaMP-3."""
    task_id = _BY_NAME.get(str(name).strip().lower())
    if task_id is None:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)} "
                         f"(or official names such as LaMP_2 for LaMP-2N, LaMP_2M for LaMP-2M)")
    return TASKS[task_id]


def parse_output(task: str | TaskSpec, text: str) -> str:
    """A model's raw answer as the metrics expect it: stripped, nothing more.

    Matching a label or reading a number is left to the metric functions, so that official scoring stays exactly
    official (e.g. "Comedy" must stay a miss).
    """
    if isinstance(task, str):
        get_task(task)
    return text.strip()


def choice_labels(task: str | TaskSpec) -> tuple[str, ...]:
    """The fixed answer set choice scoring picks from: a classification task's labels (official index order), or the
    ratings "1".."5"; other tasks have none (ValueError)."""
    spec = get_task(task) if isinstance(task, str) else task
    if spec.kind == "classification":
        return spec.labels
    if spec.kind == "rating":
        return RATING_LABELS
    raise ValueError(f"{spec.id} is a {spec.kind} task: it has no fixed label set to choose from")


#: How a labelled history item becomes a training query in the official phrasing (for padding small train sets,
#: docs/architecture.md §9): task -> (query input format over the item's fields, the field holding the answer).
HISTORY_QUERIES: dict[str, tuple[str, str]] = {
    "LaMP-2N": ("Which category does this article relate to among the following categories? Just answer with the "
                f"category name without further explanation. categories: [{', '.join(LAMP_2N_LABELS)}] "
                "article: {text}", "category"),
    "LaMP-2M": ("Which tag does this movie relate to among the following tags? Just answer with the tag name "
                f"without further explanation. tags: [{', '.join(LAMP_2M_LABELS)}] description: {{description}}",
                "tag"),
    "LaMP-3": ("What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 "
               "without further explanation. review: {text}", "score"),
    "LaMP-4": ("Generate a headline for the following article: {text}", "title"),
    "LaMP-5": ("Generate a title for the following abstract of a paper: {abstract}", "title"),
}


def history_query(task: str, item: dict[str, Any]) -> tuple[str, str] | None:
    """(query input, answer) made from one history item, or None when the task or the item does not allow it."""
    entry = HISTORY_QUERIES.get(get_task(task).id)
    if entry is None:
        return None
    template, answer_field = entry
    try:
        values = {k: str(v).strip() for k, v in item.items() if v is not None}
        query, answer = template.format(**values), values.get(answer_field, "")
    except KeyError:
        return None
    return (query, answer) if answer else None


#: The one metric per task kind that tables and figures compare (higher is better except MAE).
HEADLINE = {"classification": "accuracy", "rating": "mae", "generation": "rouge1"}


def headline_key(task: str) -> str:
    """The key of the evaluate stage's results that tables and figures compare: choice-scored for the tasks with a
    fixed label set (`choice/accuracy`, `choice/mae`), the generated answers' official metric otherwise."""
    kind = get_task(task).kind
    return headline_metric(task, "choice" if kind in LABELLED_KINDS else "official")


def headline_metric(task: str, style: str | None = None) -> str:
    """The task's headline metric key: `accuracy`, or `official/accuracy` with a `style` prefix. Open-ended tasks
    are judged, not scored: their evaluate results carry only `ms_per_instance`."""
    kind = get_task(task).kind
    if kind == "open_ended":
        return "ms_per_instance"
    return f"{style}/{HEADLINE[kind]}" if style else HEADLINE[kind]
