"""The paper's prompt texts (App. J), kept as data in one place.

Every text here is the paper's wording. Only the PDF-to-markdown artefacts are undone: the `\\_` escapes and the
trailing two-space line breaks. The line layout of the judge prompt and rubric follows the authors' prompt files
(llm-judge/llm_eval_prompt.md and score_rubric.md in github.com/cf-x/P2P), whose wording is the same as App. J.

Two placeholder styles, as in the paper: the task prompts use `{field}` (filled with `str.format`), the profile,
embedding and judge prompts use `{{ name }}` (filled by `render_placeholders`, one pass, so a value that itself
contains `{{ ... }}` is never substituted again).
"""

from __future__ import annotations

import re

# --- Task descriptions (App. J "Task Description Prompt"), keyed by canonical task id -----------------------------

TASK_DESCRIPTIONS: dict[str, str] = {
    "LaMP-1": "Academic citation recommendation: Identify relevant reference papers for researchers based on their "
              "publication titles and research focus areas.",
    "LaMP-2N": "News article categorization: Classify news articles into topical categories based on content, "
               "subject matter, and thematic focus.",
    "LaMP-2M": "Movie genre tagging: Analyze movie descriptions and assign appropriate genre tags based on content "
               "themes, narrative elements, and stylistic features.",
    "LaMP-3": "Product review rating prediction: Analyze product reviews and predict the rating score based on "
              "sentiment, content quality, and expressed satisfaction levels.",
    "LaMP-4": "News article headline generation: Create a concise and engaging headline for news articles based on "
              "their content and key themes.",
    "LaMP-5": "Academic title generation: Generate concise and descriptive titles for research papers based on "
              "abstracts, capturing the main research contribution and scope.",
    "LaMP-7": "Tweet paraphrasing: Rewrite tweets in a personal style while maintaining the original meaning and "
              "adapting the tone and language to individual communication patterns.",
    "LongLaMP-1": "Academic abstract generation: Create comprehensive abstracts for research papers based on titles "
                  "and key research items, incorporating domain-specific knowledge and writing style.",
    "LongLaMP-2": "Topic-based content generation: Create personalized Reddit posts on given topics that reflect "
                  "individual writing style, interests, and communication preferences.",
    "LongLaMP-3": "Product review generation: Write detailed product reviews that reflect personal experiences, "
                  "preferences, and writing style based on ratings and product features.",
    "EmpatheticConv": "Empathetic news commentary: Provide personal commentary and emotional reactions to news "
                      "articles that reflect individual values, perspectives, and empathetic responses.",
    "PersonalReddit": "Personal conversation response: Generate authentic and personalized responses to "
                      "conversations that reflect individual personality, background, and communication style.",
}

# --- Task prompts (App. J), keyed by canonical task id ------------------------------------------------------------
# PersonalReddit has no prompt in the paper; the authors' code (tasks/personalreddit_*/metadata.yaml) uses the
# query input alone, `user_prompt_template: "{input_text}"`, and so do we.

TASK_TEMPLATES: dict[str, str] = {
    "LaMP-2M": (
        "# Instruction:\n"
        "Which tag does this movie relate to among the following tags?\n\n"
        "# Tags:\n"
        "sci-fi, based on a book, comedy, action, twist ending, dystopia, dark comedy, classic, psychology, fantasy, "
        "romance, thought-provoking, social commentary, violence, true story\n\n"
        "# Description:\n"
        "{description}\n\n"
        "# Output Format:\n"
        "Just answer with the tag name without further explanation.\n\n"
        "# Answer:"
    ),
    "LaMP-1": (
        "# Instruction:\n"
        "Identify the most relevant reference for the listed publication by the researcher. Select the reference "
        "paper that is most closely related to the researcher's work.\n\n"
        "# Paper Title:\n"
        "{paper_title}\n\n"
        "# Options:\n"
        "{options_str}\n\n"
        "# Output Format:\n"
        "Just answer with [1] or [2] without explanation.\n\n"
        "# Answer:"
    ),
    "LaMP-3": (
        "# Instruction:\n"
        "What is the score of the following review on a scale of 1 to 5?\n\n"
        "# Review:\n"
        "{review_text}\n\n"
        "# Output Format:\n"
        "Just answer with 1, 2, 3, 4, or 5 without further explanation.\n\n"
        "# Answer:"
    ),
    "LaMP-4": (
        "# Instruction:\n"
        "Generate a headline for the following article.\n\n"
        "# Article:\n"
        "{article}\n\n"
        "# Output Format:\n"
        "Just answer the headline without further explanation.\n\n"
        "# Answer:"
    ),
    "LaMP-2N": (
        "# Instruction:\n"
        "Which category does this article relate to among the following categories? Just answer with the category "
        "name without further explanation.\n\n"
        "# Categories:\n"
        "travel, education, parents, style & beauty, entertainment, food & drink, science & technology, business, "
        "sports, healthy living, women, politics, crime, culture & arts, religion\n\n"
        "# Article:\n"
        "{article}\n\n"
        "# Output Format:\n"
        "Just answer the category without further explanation.\n\n"
        "# Answer:"
    ),
    "LaMP-5": (
        "# Instruction:\n"
        "Generate a title for the following abstract of a paper.\n\n"
        "# Abstract:\n"
        "{abstract}\n\n"
        "# Output Format:\n"
        "Just answer the title without further explanation.\n\n"
        "# Answer:"
    ),
    "LaMP-7": (
        "# Instruction:\n"
        "Paraphrase the following text into tweet without any explanation before or after it.\n\n"
        "# Original Tweet:\n"
        "{original_tweet}\n\n"
        "# Output Format:\n"
        "Just answer the paraphrased tweet without further explanation.\n\n"
        "# Answer:"
    ),
    "EmpatheticConv": (
        "# Article:\n"
        "{article}\n\n"
        "# Instruction:\n"
        "After reading the news article, write an essay (300-800 characters) summarizing your thoughts and feelings "
        "about the article.\n\n"
        "# Answer:"
    ),
    "LongLaMP-1": (
        "# Instruction:\n"
        "Given the paper title and key items, generate an abstract for the paper.\n\n"
        "# Paper Title:\n"
        "{paper_title}\n\n"
        "# Output Format:\n"
        "Only output the abstract. Do not include any explanation or formatting.\n\n"
        "# Answer:"
    ),
    "LongLaMP-2": (
        "# Instruction:\n"
        "Generate the content for a Reddit post based on the provided topic.\n\n"
        "# Topic:\n"
        "{topic_prompt}\n\n"
        "# Output Format:\n"
        "Only output the reddit post. Do not include any explanation or formatting.\n\n"
        "# Answer:"
    ),
    "LongLaMP-3": (
        "# Instruction:\n"
        "Given the overall rating, product description, and review summary, generate the review text written by a "
        "reviewer.\n\n"
        "# Overall Rating:\n"
        "{rating}\n\n"
        "# Product Description:\n"
        "{product_description}\n\n"
        "# Review Summary:\n"
        "{review_summary}\n\n"
        "# Output Format:\n"
        "Only output the review text. Do not include any explanation or formatting.\n\n"
        "# Answer:"
    ),
    "PersonalReddit": "{input_text}",
}

# --- Prompt baselines (RAG, PAG, full history) ------------------------------------------------------------------
# The paper gives no template for its prompt baselines; ours puts the user's data before the task prompt, under the
# same headers as P2P's profile text, so every method sees the same words for the same information.

PERSONALIZED_PROMPT = "{profile}{history}{task_prompt}"
PERSONALIZED_PROFILE = "{profile}\n\n"
PERSONALIZED_HISTORY = "# User History:\n{items}\n\n"


def render_personalized_prompt(task_prompt: str, profile: str | None, items: list[str]) -> str:
    """The task prompt preceded by a profile section (PAG) and by history items, one per line (RAG, PAG, full
    history); an empty part is left out."""
    return PERSONALIZED_PROMPT.format(
        profile=PERSONALIZED_PROFILE.format(profile=profile) if profile else "",
        history=PERSONALIZED_HISTORY.format(items="\n".join(items)) if items else "",
        task_prompt=task_prompt)


# --- User profile generation (App. J) -----------------------------------------------------------------------------

PROFILE_GENERATION_PROMPT = """\
# Instruction
Generate a targeted user profile for {{ task_description }} based on the provided user history data. This profile \
will be used to understand user behavior patterns specific to this task.
IMPORTANT: You must analyze HOW this user behaves and makes decisions relevant to this task, NOT list WHAT specific \
content they interact with. Do not output lists of topics, keywords, or content examples. Focus only on behavioral \
tendencies, preferences, and decision-making patterns relevant to the target task. Focus on understanding patterns \
that inform task-specific user behavior:

1. Task-Relevant User Preferences:
  - Decision-making patterns and criteria relevant to the target task
  - Quality and content preferences that influence choices
  - Style and approach preferences in task-related activities
  - Consistency patterns in task-related decision making
2. Behavioral Patterns Related to Task Performance:
  - Interaction patterns and engagement styles relevant to the task
  - Response patterns to different types of content or options
  - Timing and frequency patterns in task-related activities
  - Adaptation patterns when encountering new or different scenarios
3. Personal Style and Voice Indicators:
  - Communication style patterns relevant to the task
  - Personal expression tendencies and voice characteristics
  - Authenticity markers and personal touch preferences
  - Consistency in personal style across different contexts
4. Context Awareness and Adaptation Patterns:
  - Awareness of audience, context, or requirements in task-related activities
  - Adaptation strategies for different scenarios within the task domain
  - Personalization approaches and individual preference integration
  - Balance between task requirements and personal style

# User History Data: {{ user_history }}

# Output Format
Output the user profile strictly in plain text describing the user's behavioral patterns, preferences, and \
decision-making tendencies specifically relevant to {{ task_description }}. Focus on patterns that predict how this \
user would approach and perform the target task.
Do NOT output:

- Lists of topics, keywords, or content they engage with
- Specific examples of content, products, or interactions
- Names of people, places, brands, or entities
- Content examples or subject matter details

DO output:

- Behavioral patterns and preferences relevant to the task
- Decision-making tendencies and criteria
- Personal style and approach patterns
- Task-specific interaction patterns

Derive insights strictly from the provided historical data. Do not include explanations, introductions, headings, \
bullet points, or any formatting structure."""

# --- User profile embedding (App. J) ------------------------------------------------------------------------------

PROFILE_EMBEDDING_PROMPT = """\
# Instruction:
Extract and represent key personalization features that reflect the user's unique characteristics, preferences, \
and behavioral patterns from the provided user information. Focus on demographics, stated and implicit \
preferences, interaction history, behavioral trends, and other traits that can inform task-specific \
personalization. Pay special attention to features relevant for the following task: {{ task_description }}

# User Information:
{{ user_profile }}"""

# --- LLM-as-a-judge (App. J "Reward Scoring Prompt Template", "Score Rubric", "Rubric Template") -------------------
# Item 4 follows the authors' prompt file: the paper's PDF text has a stray quote after "[RESULT]".

JUDGE_PROMPT = """\
###Task Description:
An instruction (might include an Input inside it), a response to evaluate, a reference answer that can get a score \
of 5, a user profile containing user preferences and information, and a score rubric representing a evaluation \
criteria are given.
1. Write a detailed feedback that assess the quality of the response strictly based on the given score rubric, not \
evaluating in general.
2. Consider how well the response aligns with the user's preferences, interests, and background information \
provided in the user profile when evaluating personalization quality.
3. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the score rubric.
4. The output format should look as follows: "(write a feedback for criteria) [RESULT] (an integer number between \
1 and 5)"
5. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{{ instruction }}

###Response to evaluate:
{{ response }}

###Reference Answer (Score 5):
{{ reference_answer }}

###User Profile:
{{ user_profile }}

###Score Rubrics:
{{ rubric }}

###Feedback:
"""

RUBRIC_TEMPLATE = """\
[{criteria}]
Score 1: {score1_description}
Score 2: {score2_description}
Score 3: {score3_description}
Score 4: {score4_description}
Score 5: {score5_description}"""

JUDGE_CRITERIA = "Evaluate how well the response to the instruction is personalized to the specific user."

#: Score descriptions for scores 1..5, in order.
JUDGE_SCORE_DESCRIPTIONS: tuple[str, str, str, str, str] = (
    "Generic or impersonal. Ignores the provided profile/personality. Style does not match the user; may feel "
    "robotic or off-topic. Makes incorrect assumptions or contradicts stated preferences. No meaningful use of user "
    "details; largely boilerplate.",
    "Minimal personalization. Mentions a profile detail superficially but remains mostly generic. Weak style match; "
    "limited relevance to the user's interests or situation. Includes filler or distracting disclaimers. Significant "
    "deviation from the reference's intent or emphasis.",
    "Basic personalization. References a few relevant details and partially adapts tone. Generally on topic but "
    "misses important user nuances (interests, constraints, or personality cues). Moderate similarity to the "
    "reference; may be verbose or somewhat generic.",
    "Good personalization. Integrates multiple user details accurately; content is relevant and helpful. Tone "
    "largely matches the user's personality and preferred style. Clear, concise, and engaging with only minor misses "
    "versus the user's preferences or the reference's intent.",
    "Excellent personalization. Seamlessly weaves in pertinent profile details; highly relevant and tailored "
    "guidance or conversation. Tone precisely matches the user's personality\u2014empathetic, engaging, and concise. "
    "Avoids boilerplate and unnecessary disclaimers. Closely aligned with the user's likely preference as indicated "
    "by the reference.",
)

_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def render_placeholders(template: str, values: dict[str, str]) -> str:
    """Fill every `{{ name }}` in one pass; a missing or unused value is a ValueError (a typo, not a silent gap)."""
    names = set(_PLACEHOLDER.findall(template))
    missing, unused = names - values.keys(), values.keys() - names
    if missing or unused:
        raise ValueError(f"placeholders missing: {sorted(missing)}, values not in the template: {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render_profile_prompt(task_description: str, user_history: str) -> str:
    """The profile-generation prompt for one user: the task description and that user's history text."""
    return render_placeholders(PROFILE_GENERATION_PROMPT,
                               {"task_description": task_description, "user_history": user_history})


def render_embedding_prompt(task_description: str, user_profile: str) -> str:
    """The text given to the embedding model: the task description and the user's profile text."""
    return render_placeholders(PROFILE_EMBEDDING_PROMPT,
                               {"task_description": task_description, "user_profile": user_profile})


def render_rubric(criteria: str = JUDGE_CRITERIA,
                  score_descriptions: tuple[str, ...] = JUDGE_SCORE_DESCRIPTIONS) -> str:
    """The rubric block of the judge prompt (the paper's personalisation rubric by default)."""
    if len(score_descriptions) != 5:
        raise ValueError(f"a rubric needs 5 score descriptions, got {len(score_descriptions)}")
    return RUBRIC_TEMPLATE.format(criteria=criteria,
                                  **{f"score{i}_description": d for i, d in enumerate(score_descriptions, start=1)})


def render_judge_prompt(instruction: str, response: str, reference_answer: str, user_profile: str,
                        rubric: str | None = None) -> str:
    """The judge prompt for one response; the rubric defaults to the paper's."""
    return render_placeholders(JUDGE_PROMPT, {
        "instruction": instruction, "response": response, "reference_answer": reference_answer,
        "user_profile": user_profile, "rubric": render_rubric() if rubric is None else rubric,
    })
