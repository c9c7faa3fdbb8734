"""The embedded default benchmark: LaMP-format tasks with *planted* personalisation and a known oracle.

Real benchmarks cannot tell whether a model learned a user or just the task. Here every gold is a fixed function of
(the query text, the user's planted preference), so the best a user-blind model can do is known, the oracle is
perfect, and a simple reader of the user's history gets close to the oracle. The three tasks:

- LaMP-2M (movie tagging): each user prefers 2 of the 15 tags, a pair drawn uniformly. Every description names 3
  candidate themes by their tag names, in random order: one of the user's 2 tags (the gold) and 2 of the 13 others,
  drawn uniformly; with user pairs and distractors both uniform, each named candidate is gold with probability
  exactly 1/3 without the user. Users watch films of one *scene* (the cluster: art house, blockbuster, anime, ...),
  drawn independently of the taste, so an OOD split by profile clustering leaves out scenes, not tastes: every
  tag stays preferred by some training users (disjoint taste groups as clusters made the OOD test a taste no
  training user had, which no model can learn from the users it is given).
- LaMP-3 (review rating): the review's wording sets a base score b in 1..5 (phrases of graded strength); each user
  is harsh or kind by a bias in -2..+2; gold = clip(b + bias, 1, 5). Users review products of one domain (the
  cluster), drawn independently of the bias, so the text carries no bias signal.
- LaMP-7 (tweet paraphrase): the gold is a fixed light rewording of the neutral input tweet, carrying the user's
  signature: an opener, slang words, a hashtag, a sign-off (words, so ROUGE sees them), emoji and casing. Users
  belong to one of 4 registers (texter, gushing, professional, hype) that set the signature's vocabulary.

Users come in clusters (film scene / product domain / register) so that OOD splits by profile clustering have
something to find. Everything is drawn from `random.Random` instances seeded by strings derived from the seed, so
files are byte-identical for a given seed and independent of any global random state.
`preferences.json` beside each task's files holds the planted preferences; `oracle_predictions` applies the
gold-maker's rule to them, `query_only_predictions` is the best user-blind answer and `history_predictions` recovers
the preference from the user's history alone. `unseen_scene_users` and `unseen_preference_users` say which test
users come from a scene, or have a planted preference, that no training user has: what a split really holds out.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.io import MANIFEST, InputError, read_json, write_dir, write_json, write_manifest

TASKS = ("LaMP-2M", "LaMP-3", "LaMP-7")
#: The `task` value of the official outputs files.
OFFICIAL_TASK_NAMES = {"LaMP-2M": "LaMP_2", "LaMP-3": "LaMP_3", "LaMP-7": "LaMP_7"}

MOVIE_TAGS = ("sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy", "classic",
              "psychology", "fantasy", "romance", "thought-provoking", "social commentary", "violence", "true story")

#: Official query phrasing; the query's own text follows the prefix.
QUERY_PREFIXES = {
    "LaMP-2M": "Which tag does this movie relate to among the following tags? Just answer with the tag name without "
               f"further explanation. tags: [{', '.join(MOVIE_TAGS)}] description: ",
    "LaMP-3": "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 "
              "without further explanation. review: ",
    "LaMP-7": "Paraphrase the following tweet without any explanation before or after it: ",
}

# ---------------------------------------------------------------------------------------------------------------------
# LaMP-2M: movie descriptions naming 3 candidate themes

#: Film scenes (the users' clusters): production note, protagonists and settings of the films a user watches.
FILM_SCENES = {
    "arthouse": ("A slow, festival-circuit art film shot on grainy 16mm.",
                 ("A reclusive painter", "A melancholy violinist", "An aging poet", "A silent film projectionist"),
                 ("a grey Parisian suburb", "a Lisbon apartment block", "a Viennese café quarter",
                  "a Belgian mining town")),
    "blockbuster": ("A big-budget studio tentpole with a summer release.",
                    ("A hotshot pilot", "A former special-forces medic", "A billionaire engineer", "A rookie cop"),
                    ("downtown Los Angeles", "a Manhattan skyscraper", "a Las Vegas casino strip",
                     "a Miami container port")),
    "anime": ("A hand-drawn Japanese animated feature.",
              ("A shy high-school girl", "A boy who talks to spirits", "A young mecha pilot", "A cat-eared courier"),
              ("a neon-lit Tokyo district", "a sleepy Kyoto shrine town", "a floating sky city",
               "an Osaka shopping arcade")),
    "bollywood": ("A three-hour Hindi-language musical with six song-and-dance numbers.",
                  ("A Mumbai taxi driver", "A cricket-mad village boy", "A wedding planner from Delhi",
                   "A Punjabi farmer's daughter"),
                  ("the crowded lanes of Old Delhi", "a Goa beach shack", "a Rajasthan palace hotel",
                   "a Kolkata tram depot")),
    "nordic": ("A sparse Scandinavian drama in muted colours.",
               ("A taciturn Icelandic fisherman", "A Swedish social worker", "A Norwegian ferry mechanic",
                "A Finnish sauna owner"),
               ("a fjord village in winter darkness", "a Reykjavik harbour", "a Lapland reindeer farm",
                "a Copenhagen housing estate")),
}
_JOURNEYS = ("returns to", "is stranded in", "takes a job in", "goes looking for a missing brother in",
             "inherits a crumbling house in", "is sent on an errand to", "falls in with a strange crowd in",
             "tries to start over in")
_COMPLICATIONS = ("What begins as a quiet visit turns into a reckoning with old debts and older secrets.",
                  "A chance meeting on the first night sets off a chain of events nobody can stop.",
                  "Every answer seems to raise two new questions, and time is running short.",
                  "Old friends turn out to be less friendly than remembered.",
                  "A stolen notebook holds the key, if anyone can read it.",
                  "The locals agree on only one thing: some doors should stay closed.")
#: One sentence per candidate theme; `{tag}` is the tag name verbatim, so a model (and `named_tags`) can read it.
_THEME_SENTENCES = ("Viewers file it under {tag}, thanks to {cue}.",
                    "Early audiences tagged it {tag} because of {cue}.",
                    "The {tag} label fits, given {cue}.", "Some call it {tag}, pointing to {cue}.",
                    "Critics mention {tag} when they bring up {cue}.", "It earns its {tag} tag with {cue}.")
#: Flavour per tag; none of these phrases contains a tag name.
_THEME_CUES = {
    "sci-fi": ("a starship crew and its rogue android", "a time machine that keeps misfiring",
               "a colony on a frozen moon"),
    "based on a book": ("the dense novel it adapts almost page by page", "a plot lifted from a well-loved novel",
                        "chapters of the source novel read aloud in voice-over"),
    "comedy": ("its rapid-fire jokes and slapstick", "the bickering sidekicks who steal every scene",
               "a running gag about a lost goat"),
    "action": ("a rooftop chase and a runaway train", "car chases through flooded streets",
               "a heist that goes loud in the final act"),
    "twist ending": ("a final reveal that reframes everything", "a last scene nobody sees coming",
                     "a closing revelation about the narrator"),
    "dystopia": ("a surveillance state that rations memories", "a city ruled by a faceless council",
                 "ration cards and curfews"),
    "dark comedy": ("a funeral that turns into a farce", "jokes about murder told with a straight face",
                    "a hapless hitman who keeps failing"),
    "classic": ("its black-and-white photography and timeless score", "performances people still quote decades later",
                "its golden-age studio polish"),
    "psychology": ("a mind slowly coming apart", "long sessions with a troubled therapist",
                   "its study of obsession and memory"),
    "fantasy": ("dragons, curses and a hidden kingdom", "a wizard's apprentice lost in an enchanted forest",
                "a sword pulled from a frozen lake"),
    "romance": ("a slow-burning love affair", "two rivals who fall for each other", "letters between separated lovers"),
    "thought-provoking": ("questions about free will that linger", "a quiet meditation on grief and meaning",
                          "moral dilemmas with no easy answers"),
    "social commentary": ("its sharp look at class and inequality", "a satire of corporate greed",
                          "a portrait of a neglected town"),
    "violence": ("brutal fights and a high body count", "unflinching bloodshed", "a massacre in the second act"),
    "true story": ("events drawn from a real court case", "the real life of a forgotten inventor",
                   "a real rescue at sea in 1972"),
}
_TAG_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in sorted(MOVIE_TAGS, key=len, reverse=True))
                          + r")(?![\w-])")


def named_tags(description: str) -> list[str]:
    """The tag names a description mentions, in order of appearance (longest name wins: `dark comedy`)."""
    return _TAG_PATTERN.findall(description)


def _describe_movie(rng: random.Random, themes: Sequence[str], scene: str) -> str:
    production, protagonists, settings = FILM_SCENES[scene]
    opening = f"{rng.choice(protagonists)} {rng.choice(_JOURNEYS)} {rng.choice(settings)}."
    sentences = [template.format(tag=tag, cue=rng.choice(_THEME_CUES[tag]))
                 for template, tag in zip(rng.sample(_THEME_SENTENCES, len(themes)), themes)]
    return " ".join([production, opening, rng.choice(_COMPLICATIONS), *sentences])


def _movie_preference(rng: random.Random, scene: str) -> dict[str, Any]:
    return {"group": scene, "tags": rng.sample(MOVIE_TAGS, 2)}


def _balanced(rng: random.Random, options: Sequence[Any], n: int) -> list[Any]:
    """n draws that use every option equally often (up to one), in random order: balance without periodicity."""
    start = rng.randrange(len(options))
    picks = [options[(start + k) % len(options)] for k in range(n)]
    rng.shuffle(picks)
    return picks


def _movie_samples(rng: random.Random, preference: dict[str, Any], n: int) -> list[tuple[str, str]]:
    """(description, gold tag) pairs; the gold alternates between the user's 2 tags so both show up."""
    others = [tag for tag in MOVIE_TAGS if tag not in preference["tags"]]
    samples = []
    for gold in _balanced(rng, preference["tags"], n):
        themes = [gold, *rng.sample(others, 2)]
        rng.shuffle(themes)
        samples.append((_describe_movie(rng, themes, preference["group"]), gold))
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# LaMP-3: reviews whose wording sets a base score

#: Product domains (the users' clusters): products and the parts a review talks about.
PRODUCT_DOMAINS = {
    "kitchen": (("blender", "chef's knife", "cast iron pan", "coffee grinder", "toaster", "rice cooker"),
                ("the motor", "the blade", "the handle", "the lid", "the base")),
    "electronics": (("pair of headphones", "phone charger", "bluetooth speaker", "webcam", "smartwatch",
                     "portable hard drive"),
                    ("the battery", "the cable", "the sound", "the screen", "the power button")),
    "books": (("cookbook", "mystery novel", "travel guide", "biography", "poetry collection", "history book"),
              ("the writing", "the pacing", "the binding", "the photography", "the index")),
    "outdoor": (("tent", "hiking backpack", "sleeping bag", "camping stove", "trekking pole set", "rain jacket"),
                ("the main zipper", "the fabric", "the shoulder strap", "the frame", "the stitching")),
    "beauty": (("face moisturizer", "hair dryer", "lipstick", "shampoo", "sunscreen", "nail polish"),
               ("the scent", "the texture", "the packaging", "the pump", "the color")),
    "toys": (("jigsaw puzzle", "building block set", "board game", "plush bear", "toy train", "kite"),
             ("the finish", "the instruction sheet", "the paint", "the box", "the design")),
}
#: Bias probabilities: mostly -1..+1, symmetric (so predicting b is the best user-blind answer for MAE).
RATING_BIASES = {-2: 0.1, -1: 0.25, 0: 0.3, 1: 0.25, 2: 0.1}
_VERDICTS = {1: ("terrible", "awful", "a complete waste of money", "useless"),
             2: ("disappointing", "underwhelming", "a letdown", "poor value"),
             3: ("okay", "average", "just so-so", "middle of the road"),
             4: ("good", "solid", "a nice buy", "pleasant to use"),
             5: ("excellent", "outstanding", "fantastic", "flawless")}
_DETAILS = {1: ("broke within two days", "stopped working almost at once", "fell apart the first time I used it"),
            2: ("feels cheaper than expected", "gave me trouble more than once", "wore out sooner than it should"),
            3: ("does the job, nothing more", "is about what you would expect for the price",
                "has its ups and downs"),
            4: ("works well apart from minor quirks", "holds up nicely", "is better than I expected"),
            5: ("works beautifully every single time", "is built to last", "exceeded every expectation")}
_RECOMMENDATIONS = {1: ("Avoid it.", "Save your money."), 2: ("I would not buy it again.", "Hard to recommend."),
                    3: ("Maybe worth it on sale.", "Fine if your expectations are low."),
                    4: ("I would recommend it.", "Happy with the purchase."),
                    5: ("I would buy it again in a heartbeat.", "Cannot recommend it enough.")}
_REVIEW_OPENINGS = ("I bought this {product} {when}.", "Ordered the {product} {when} {purpose}.",
                    "Got this {product} {when}.", "Picked up the {product} {when} {purpose}.")
_WHEN = ("last month", "a few weeks ago", "in the spring", "after reading the reviews", "on a whim")
_PURPOSE = ("for my sister", "for our new apartment", "as a birthday present", "for a trip", "for everyday use")
_VERDICT_SENTENCES = ("Overall it is {verdict}.", "Honestly, {verdict}.", "My verdict: {verdict}.")
_NEUTRAL_REMARKS = ("Shipping took about a week.", "It arrived in plain packaging.", "It looks like the photos.",
                    "I have used it for a few weeks now.", "Customer service answered within a day.")
_SENTIMENT_LEVELS = {phrase: level for table in (_VERDICTS, _DETAILS, _RECOMMENDATIONS)
                     for level, phrases in table.items() for phrase in phrases}
_SENTIMENT_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(
    re.escape(p) for p in sorted(_SENTIMENT_LEVELS, key=len, reverse=True)) + r")(?![\w-])")


def review_base_score(text: str) -> int:
    """The base score the review's wording expresses (every sentiment phrase has one strength level)."""
    levels = {_SENTIMENT_LEVELS[phrase] for phrase in _SENTIMENT_PATTERN.findall(text)}
    if len(levels) != 1:
        raise ValueError(f"not a synthetic review (sentiment levels found: {sorted(levels)}): {text[:80]!r}")
    return levels.pop()


def _clip_score(score: int) -> int:
    return min(5, max(1, score))


def _write_review(rng: random.Random, base: int, domain: str) -> str:
    products, parts = PRODUCT_DOMAINS[domain]
    opening = rng.choice(_REVIEW_OPENINGS).format(product=rng.choice(products), when=rng.choice(_WHEN),
                                                  purpose=rng.choice(_PURPOSE))
    verdict = rng.choice(_VERDICT_SENTENCES).format(verdict=rng.choice(_VERDICTS[base]))
    part = rng.choice(parts)
    detail = f"{part[0].upper()}{part[1:]} {rng.choice(_DETAILS[base])}."
    body = [verdict, detail]
    rng.shuffle(body)
    if rng.random() < 0.5:
        body.append(rng.choice(_NEUTRAL_REMARKS))
    return " ".join([opening, *body, rng.choice(_RECOMMENDATIONS[base])])


def _rating_preference(rng: random.Random, domain: str) -> dict[str, Any]:
    bias = rng.choices(list(RATING_BIASES), weights=list(RATING_BIASES.values()))[0]
    return {"group": domain, "bias": bias}


def _review_samples(rng: random.Random, preference: dict[str, Any], n: int) -> list[tuple[str, str]]:
    """(review, gold score) pairs: base scores uniform in 1..5 whatever the user, gold = clip(base + bias)."""
    samples = []
    for _ in range(n):
        base = rng.randint(1, 5)
        samples.append((_write_review(rng, base, preference["group"]), str(_clip_score(base + preference["bias"]))))
    return samples


def _recover_bias(history: Sequence[dict[str, Any]]) -> int:
    """The bias most consistent with the user's (review, score) history; ties go to the mildest bias."""
    pairs = [(review_base_score(item["text"]), int(item["score"])) for item in history]
    return min(RATING_BIASES, key=lambda bias: (sum(abs(_clip_score(b + bias) - s) for b, s in pairs), abs(bias)))


# ---------------------------------------------------------------------------------------------------------------------
# LaMP-7: neutral tweets, paraphrased and signed in the user's style

_TWEETS = ("Really looking forward to the {event} tonight, thanks to everyone who helped plan it.",
           "Can you believe it is already {month}? I need to finish {chore} before the weekend.",
           "Great {meal} at {place} today, people should definitely try the {dish}.",
           "Please remember to bring your {item} to the {event} tomorrow.",
           "I love how quiet {place} is before everyone wakes up.",
           "Thanks for all the kind messages today, you are all great.",
           "Just finished {chore} and now I am ready for {meal} with friends.",
           "Stuck in traffic because of the {event} downtown, see you all later.",
           "Does anyone know a good place for {meal} near {place}? Asking for a friend.",
           "Finally started reading the book you recommended and I really love it.")
_TWEET_SLOTS = {
    "event": ("concert", "book fair", "street market", "charity run", "open mic night", "farmers market"),
    "month": ("March", "June", "September", "November"),
    "chore": ("my taxes", "the laundry", "painting the fence", "my thesis chapter", "cleaning the garage"),
    "meal": ("brunch", "dinner", "lunch", "coffee"),
    "place": ("the harbor", "the old library", "Maple Street", "the park", "the corner cafe"),
    "dish": ("lemon pancakes", "mushroom soup", "fish tacos", "apple pie"),
    "item": ("umbrella", "water bottle", "camera", "folding chair"),
}
#: The neutral paraphrase: fixed phrase rewrites, applied in order (every tweet template has at least one).
_PARAPHRASES = (("Really looking forward to", "So excited for"), ("who helped plan it", "who helped organise it"),
                ("Can you believe", "Hard to believe"), ("I need to finish", "I have to get through"),
                ("Great ", "What a great "), ("should definitely try", "must try"),
                ("Please remember to bring", "Please do not forget to bring"),
                ("I love how quiet", "I love how peaceful"), ("before everyone wakes up", "before anyone is awake"),
                ("kind messages", "lovely messages"), ("you are all great", "you are all so great"),
                ("Just finished", "Just wrapped up"), ("now I am ready for", "now I am all set for"),
                ("Stuck in traffic", "Caught in traffic"), ("see you all later", "catch you all later"),
                ("Does anyone know a good place", "Can anyone suggest a spot"),
                ("Finally started reading", "At last I started reading"),
                ("I really love it", "I really love it so far"))
#: Slang words a signature may use (word -> slang), all alphanumeric so ROUGE counts them.
SLANG = {"you": "u", "your": "ur", "are": "r", "great": "gr8", "for": "4", "to": "2", "tonight": "2nite",
         "before": "b4", "please": "pls", "thanks": "thx", "really": "rly", "love": "luv", "people": "ppl",
         "tomorrow": "tmrw", "because": "bc", "later": "l8r"}
#: Registers (the users' clusters): the vocabulary each part of a signature is drawn from.
REGISTERS = {
    "texter": {"casing": "lower", "slang": tuple(SLANG), "slang_count": (6, 10),
               "openers": ("ngl", "lol", "tbh", "ok so"), "hashtags": ("#mood", "#vibes", "#nofilter"),
               "signoffs": ("ttyl", "peace out", "cya"), "emoji": ("", "😂", "🙃")},
    "gushing": {"casing": "as-is", "slang": ("love", "really", "great", "thanks"), "slang_count": (0, 2),
                "openers": ("omg", "honestly", "aww"), "hashtags": ("#blessed", "#grateful", "#goodvibes"),
                "signoffs": ("xoxo", "hugs", "love ya"), "emoji": ("💕", "✨", "🥰")},
    "professional": {"casing": "as-is", "slang": (), "slang_count": (0, 0),
                     "openers": ("Quick note:", "Reminder:", "FYI:"),
                     "hashtags": ("#community", "#leadership", "#productivity"),
                     "signoffs": ("~ jd", "~ mk", "-- ap", "-- rs"), "emoji": ("",)},
    "hype": {"casing": "upper", "slang": ("you", "are", "great", "tonight", "tomorrow", "people"),
             "slang_count": (2, 4), "openers": ("yo", "big news", "lets go"),
             "hashtags": ("#hype", "#letsgo", "#gameday"), "signoffs": ("no cap", "stay loud", "bet"),
             "emoji": ("🔥", "💯")},
}


def neutral_paraphrase(tweet: str) -> str:
    """The user-independent light rewording every gold starts from."""
    for old, new in _PARAPHRASES:
        tweet = tweet.replace(old, new)
    return tweet


def _use_slang(text: str, slang: dict[str, str]) -> str:
    if not slang:
        return text
    pattern = re.compile(r"\b(" + "|".join(re.escape(word) for word in slang) + r")\b", re.IGNORECASE)

    def replace(match: re.Match) -> str:
        short = slang[match.group(0).lower()]
        return short.capitalize() if match.group(0)[0].isupper() else short

    return pattern.sub(replace, text)


def apply_signature(text: str, signature: dict[str, Any]) -> str:
    """Write `text` the user's way: slang in the body, opener before, closing words after, then the casing."""
    words = ([signature["opener"]] if signature["opener"] else []) + [_use_slang(text, signature["slang"])]
    written = " ".join(words + list(signature["closing"]))
    return {"lower": written.lower(), "upper": written.upper(), "as-is": written}[signature["casing"]]


def _style_preference(rng: random.Random, register: str) -> dict[str, Any]:
    style = REGISTERS[register]
    slang_words = sorted(rng.sample(style["slang"], rng.randint(*style["slang_count"])), key=list(SLANG).index)
    hashtag = rng.choice(style["hashtags"]) if rng.random() < 0.75 else None
    closing = [part for part in (hashtag, rng.choice(style["signoffs"]), rng.choice(style["emoji"])) if part]
    return {"group": register, "casing": style["casing"],
            "opener": rng.choice(style["openers"]),
            "slang": {word: SLANG[word] for word in slang_words}, "closing": closing}


def _neutral_tweet(rng: random.Random) -> str:
    template = rng.choice(_TWEETS)
    return template.format(**{slot: rng.choice(options) for slot, options in _TWEET_SLOTS.items()})


def _tweet_samples(rng: random.Random, preference: dict[str, Any], n: int) -> list[tuple[str, str]]:
    """(neutral tweet, the user's paraphrase of it); as history, the paraphrase alone is the user's own tweet."""
    samples = []
    for _ in range(n):
        tweet = _neutral_tweet(rng)
        samples.append((tweet, apply_signature(neutral_paraphrase(tweet), preference)))
    return samples


def recover_signature(tweets: Sequence[str]) -> dict[str, Any]:
    """Guess a user's signature from their tweets alone: shared first/last words, slang seen, consistent casing.

    It knows the family of signatures (the slang table) but nothing about this user beyond the tweets. The opener
    and closing are the words every tweet starts / ends with, so one tweet is not enough to find them.
    """
    if all(t == t.lower() for t in tweets):
        casing = "lower"
    elif all(t == t.upper() for t in tweets):
        casing = "upper"
    else:
        casing = "as-is"
    token_lists = [t.split(" ") for t in tweets]
    prefix = _common_prefix(token_lists) if len(tweets) > 1 else []
    suffix = _common_prefix([tokens[::-1] for tokens in token_lists])[::-1] if len(tweets) > 1 else []
    seen = {re.sub(r"[^\w]", "", token).lower() for tokens in token_lists for token in tokens}
    return {"casing": casing, "opener": " ".join(prefix) or None,
            "slang": {word: short for word, short in SLANG.items() if short in seen}, "closing": suffix}


def _common_prefix(token_lists: Sequence[list[str]]) -> list[str]:
    prefix: list[str] = []
    for column in zip(*token_lists):
        if len(set(column)) > 1:
            break
        prefix.append(column[0])
    return prefix


# ---------------------------------------------------------------------------------------------------------------------
# Writing the files


@dataclass(frozen=True)
class _TaskRecipe:
    slots: Callable[[], list[Any]]  # the clusters users are spread over evenly
    preference: Callable[[random.Random, Any], dict[str, Any]]
    samples: Callable[[random.Random, dict[str, Any], int], list[tuple[str, str]]]  # (query text, gold) pairs
    history_item: Callable[[str, str], dict[str, Any]]  # profile fields from one (text, gold) pair


_RECIPES = {
    "LaMP-2M": _TaskRecipe(lambda: list(FILM_SCENES), _movie_preference, _movie_samples,
                           lambda text, gold: {"description": text, "tag": gold}),
    "LaMP-3": _TaskRecipe(lambda: list(PRODUCT_DOMAINS), _rating_preference, _review_samples,
                          lambda text, gold: {"text": text, "score": gold}),
    "LaMP-7": _TaskRecipe(lambda: list(REGISTERS), _style_preference, _tweet_samples,
                          lambda text, gold: {"text": gold}),
}
_RULES = {
    "LaMP-2M": "gold = the one named candidate theme among the user's 2 preferred tags",
    "LaMP-3": "gold = clip(base score of the review's wording + the user's bias, 1, 5)",
    "LaMP-7": "gold = the neutral paraphrase of the tweet written with the user's signature",
}


#: The files of one task directory; MANIFEST, written last, holds the others' sha256.
TASK_FILES = ("train_questions.json", "train_outputs.json", "preferences.json", MANIFEST)


def generate(out_dir: Path, *, seed: int, users: int, history_items: int | Sequence[int], queries_per_user: int,
             tasks: Sequence[str] = TASKS, force: bool = False) -> dict[str, Path]:
    """Write each task's `train_questions.json`, `train_outputs.json` and `preferences.json` under `out_dir/<task>`.

    `history_items`: every user's number of history items, or (fewest, most): each user draws a count uniformly
    from that range, so histories run from a handful of items to many as real LaMP users' do (Fig. 5). The planted
    rule, the oracle and the best user-blind answer do not depend on it.

    `out_dir` changes as a whole: it is built beside and swapped in, so a killed run leaves the old one, never a
    mix of two seeds (task directories of an earlier run that this one does not make are carried over). Each task's
    `manifest.json` lets `prepare` tell its files from another generation's. A directory holding anything else is
    refused unless `force`. Returns task -> its directory. The same arguments always give byte-identical files.
    """
    fewest, most = (history_items, history_items) if isinstance(history_items, int) else tuple(history_items)
    for name, value in (("users", users), ("history_items", fewest), ("queries_per_user", queries_per_user)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if most < fewest:
        raise ValueError(f"history_items: a range needs fewest <= most, got {list(history_items)}")  # type: ignore
    unknown = [task for task in tasks if task not in _RECIPES]
    if unknown:
        raise ValueError(f"unknown synthetic task(s) {unknown}; expected some of {list(TASKS)}")
    out = Path(out_dir)

    def fill(tmp: Path) -> None:
        for task in tasks:
            questions, golds, preferences = _generate_task(task, seed, users, (fewest, most), queries_per_user)
            write_json(tmp / task / "train_questions.json", questions, indent=None)
            write_json(tmp / task / "train_outputs.json", {"task": OFFICIAL_TASK_NAMES[task], "golds": golds},
                       indent=None)
            write_json(tmp / task / "preferences.json",
                       {"task": task, "seed": seed, "rule": _RULES[task], "users": preferences})
            write_manifest(tmp / task)
        for kept in sorted(out.iterdir()) if out.is_dir() else []:
            if kept.name not in tasks and _is_task_dir(kept):
                shutil.copytree(kept, tmp / kept.name)

    write_dir(out, fill, ours=_is_task_dir, force=force)
    return {task: out / task for task in tasks}


def _is_task_dir(entry: Path) -> bool:
    """A task directory `generate` writes (older versions wrote no manifest): the only thing it may replace."""
    return entry.name in TASKS and entry.is_dir() and all(f.name in TASK_FILES for f in entry.iterdir())


def _generate_task(task: str, seed: int, users: int, history_items: tuple[int, int],
                   queries_per_user: int) -> tuple[list[dict], list[dict], dict[str, dict]]:
    recipe = _RECIPES[task]
    slots = _balanced(random.Random(f"synth/{seed}/{task}"), recipe.slots(), users)
    questions, golds, preferences = [], [], {}
    for index, slot in enumerate(slots):
        rng = random.Random(f"synth/{seed}/{task}/user {index}")
        user_id = f"{task}-u{index:04d}"
        preference = preferences[user_id] = recipe.preference(rng, slot)
        fewest, most = history_items  # a fixed count draws nothing, so its files stay those of older versions
        items = fewest if fewest == most else rng.randint(fewest, most)
        profile = [{"id": f"{user_id}-h{k}", **recipe.history_item(text, gold)}
                   for k, (text, gold) in enumerate(recipe.samples(rng, preference, items))]
        for k, (text, gold) in enumerate(recipe.samples(rng, preference, queries_per_user)):
            question_id = f"{user_id}-q{k}"
            questions.append({"id": question_id, "input": QUERY_PREFIXES[task] + text, "profile": profile,
                              "user_id": user_id})
            golds.append({"id": question_id, "output": gold})
    return questions, golds, preferences


# ---------------------------------------------------------------------------------------------------------------------
# Reference predictions: oracle, user-blind, and history-only


def oracle_predictions(task_dir: Path) -> dict[str, str]:
    """The gold-maker's rule applied to each question's text and the planted preference (golds are not read)."""
    task, questions = _read_task(task_dir)
    preferences_path = Path(task_dir) / "preferences.json"
    planted = read_json(preferences_path)["users"]
    predictions = {}
    for question in questions:
        if question["user_id"] not in planted:
            raise InputError(preferences_path, "no planted preference for this user",
                             record=f"id {question['id']}", field=f"users.{question['user_id']}")
        predictions[question["id"]] = _predict(task, _query_text(task, question), planted[question["user_id"]])
    return predictions


def query_only_predictions(task_dir: Path) -> dict[str, str]:
    """The best answer that ignores the user: first named tag, the review's base score, the neutral paraphrase."""
    task, questions = _read_task(task_dir)
    predict = {"LaMP-2M": lambda text: named_tags(text)[0],
               "LaMP-3": lambda text: str(review_base_score(text)),
               "LaMP-7": neutral_paraphrase}[task]
    return {question["id"]: predict(_query_text(task, question)) for question in questions}


def history_predictions(task_dir: Path) -> dict[str, str]:
    """A non-oracle baseline: recover each user's preference from their history alone, then apply the rule."""
    task, questions = _read_task(task_dir)
    recovered: dict[str, dict[str, Any]] = {}
    predictions = {}
    for question in questions:
        user_id = question["user_id"]
        if user_id not in recovered:
            recovered[user_id] = _recover_preference(task, question["profile"])
        predictions[question["id"]] = _predict(task, _query_text(task, question), recovered[user_id])
    return predictions


def _recover_preference(task: str, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if task == "LaMP-2M":
        counts = Counter(item["tag"] for item in history)
        return {"tags": sorted(counts, key=lambda tag: -counts[tag])}
    if task == "LaMP-3":
        return {"bias": _recover_bias(history)}
    return recover_signature([item["text"] for item in history])


def _predict(task: str, text: str, preference: dict[str, Any]) -> str:
    if task == "LaMP-2M":
        candidates = named_tags(text)
        ranked = [tag for tag in preference["tags"] if tag in candidates]  # most preferred first
        return ranked[0] if ranked else candidates[0]
    if task == "LaMP-3":
        return str(_clip_score(review_base_score(text) + preference["bias"]))
    return apply_signature(neutral_paraphrase(text), preference)


# ---------------------------------------------------------------------------------------------------------------------
# What a test split holds out: scenes and planted preferences no training user has


def planted_preferences(task_dir: Path) -> dict[str, dict[str, Any]]:
    """user id -> the preference `generate` planted (`preferences.json`: its `group` is the user's scene)."""
    path = Path(task_dir) / "preferences.json"
    data = read_json(path)
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise InputError(path, "not a planted-preferences file (no `users` mapping)")
    return users


def preference_key(task: str, preference: dict[str, Any]) -> str:
    """What makes two users' planted preferences the same answer-maker: LaMP-2M the unordered tag pair (exactly one
    of the two is ever named in a description, so the order never matters), LaMP-3 the bias, LaMP-7 the whole
    signature (casing, opener, slang, closing words); never the scene."""
    if task == "LaMP-2M":
        return " + ".join(sorted(preference["tags"]))
    if task == "LaMP-3":
        return f"{preference['bias']:+d}"
    if task == "LaMP-7":
        return json.dumps({k: v for k, v in preference.items() if k != "group"}, sort_keys=True)
    raise ValueError(f"unknown synthetic task {task!r}; expected one of {list(TASKS)}")


def _unseen(task_dir: Path, train_users: Iterable[str], test_users: Iterable[str],
            key: Callable[[dict[str, Any]], Any]) -> set[str]:
    planted = planted_preferences(task_dir)
    train, test = list(train_users), list(test_users)
    missing = [u for u in train + test if u not in planted]
    if missing:
        raise InputError(Path(task_dir) / "preferences.json", f"no planted preference for {len(missing)} users "
                         f"(e.g. {missing[:3]}): the split is of another generation")
    seen = {key(planted[u]) for u in train}
    return {u for u in test if key(planted[u]) not in seen}


def unseen_scene_users(task_dir: Path, train_users: Iterable[str], test_users: Iterable[str]) -> set[str]:
    """The test users whose scene (film scene / product domain / register: the generator's cluster) no training
    user comes from."""
    return _unseen(task_dir, train_users, test_users, lambda preference: preference["group"])


def unseen_preference_users(task_dir: Path, train_users: Iterable[str], test_users: Iterable[str]) -> set[str]:
    """The test users whose planted preference (`preference_key`) no training user has: there a model can only be
    right beyond chance by reading the profile, not by recalling a training user with the same preference."""
    task = Path(task_dir).name
    if task not in _RECIPES:
        raise ValueError(f"{task_dir}: not a synthetic task directory (name must be one of {list(TASKS)})")
    return _unseen(task_dir, train_users, test_users, lambda preference: preference_key(task, preference))


def _read_task(task_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    task = Path(task_dir).name
    if task not in _RECIPES:
        raise ValueError(f"{task_dir}: not a synthetic task directory (name must be one of {list(TASKS)})")
    path = Path(task_dir) / "train_questions.json"
    questions = read_json(path)
    for i, question in enumerate(questions):
        for key in ("id", "input", "profile", "user_id"):
            if key not in question:
                raise InputError(path, "missing", record=f"item {i}", field=key)
    return task, questions


def _query_text(task: str, question: dict[str, Any]) -> str:
    prefix = QUERY_PREFIXES[task]
    if not question["input"].startswith(prefix):
        raise ValueError(f"question {question['id']}: input does not start with the {task} query phrasing")
    return question["input"][len(prefix):]
