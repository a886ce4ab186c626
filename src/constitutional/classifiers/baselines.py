"""Baselines the trained classifiers are measured against, behind the same InputClassifier protocol:

- a keyword filter whose terms come from the classifier constitution's restricted categories (TF-IDF over the
  categories' texts picks the words most particular to each), flagging any conversation that uses one;
- "policy in the prompt": a judge model given the constitution's categories in full and asked whether the
  conversation asks for restricted help, its score P(Yes) read from choice log-probabilities (never generated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from constitutional.classifiers.input_model import conversation_text
from constitutional.classifiers.screening import Verdict
from constitutional.comparison import probability_first
from constitutional.errors import InputError
from constitutional.models.base import LanguageModel, Message, context_overflows, uses_chat
from constitutional.prompts import (
    JUDGE_RATING_LEAD,
    YES_NO_OPTIONS,
    judge_options,
    judge_request,
    policy_judge_question,
)

if TYPE_CHECKING:
    from constitutional.classifiers.constitution import ClassifierConstitution

KEYWORDS_PER_CATEGORY = 12
# Words of at least three letters; digits and single letters say nothing about a category.
_WORD = r"(?u)\b[a-zA-Z][a-zA-Z]{2,}\b"


# ---- keyword filter --------------------------------------------------------------------------------------------


def keyword_terms(
    constitution: ClassifierConstitution, per_category: int = KEYWORDS_PER_CATEGORY
) -> dict[str, list[str]]:
    """The `per_category` words most particular to each restricted category's definition and examples.

    Every category (restricted and permitted) is one document of a TF-IDF model, so words all categories share
    weigh little and a restricted category's own vocabulary rises to the top; permitted categories are only there to
    be contrasted with. Words of a category's `uplift` note are left out: it names what is *not* uplift too.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    documents = [" ".join([c.definition, *c.examples]) for c in (*constitution.restricted, *constitution.permitted)]
    vectorizer = TfidfVectorizer(stop_words="english", token_pattern=_WORD, sublinear_tf=True)
    weights = vectorizer.fit_transform(documents).toarray()
    vocabulary = vectorizer.get_feature_names_out()
    terms = {}
    for row, category in zip(weights, constitution.restricted, strict=False):
        top = np.argsort(-row, kind="stable")[:per_category]
        terms[category.id] = [str(vocabulary[i]) for i in top if row[i] > 0]
    return terms


class KeywordFilter:
    """Flags a conversation that uses any term of a restricted category; the score grows with the number of hits
    (1 - 2^-hits), so a calibrated threshold can ask for more than one."""

    def __init__(self, terms: Mapping[str, Sequence[str]], threshold: float = 0.0):
        self.name = "keyword filter"
        self.terms = {category: list(words) for category, words in terms.items()}
        self.threshold = threshold
        self._patterns = {
            category: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\w*", re.IGNORECASE)
            for category, words in self.terms.items()
            if words
        }

    def hits(self, conversation: Sequence[Message]) -> dict[str, int]:
        text = conversation_text(conversation)
        return {category: len(pattern.findall(text)) for category, pattern in self._patterns.items()}

    def screen(self, conversations: Sequence[Sequence[Message]]) -> list[Verdict]:
        verdicts = []
        for conversation in conversations:
            hits = self.hits(conversation)
            total = sum(hits.values())
            score = 1.0 - 0.5**total
            flagged = score > self.threshold
            category = max(hits, key=hits.__getitem__) if flagged and total else None
            verdicts.append(Verdict(score=score, flagged=flagged, category=category))
        return verdicts


def keyword_filter(constitution: ClassifierConstitution, per_category: int = KEYWORDS_PER_CATEGORY) -> KeywordFilter:
    return KeywordFilter(keyword_terms(constitution, per_category))


# ---- policy in the prompt ----------------------------------------------------------------------------------------


def policy_categories(constitution: ClassifierConstitution) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(restricted, permitted) as (id, description) pairs: a restricted category with what counts as uplift."""
    restricted = [(c.id, f"{c.definition.strip()} {c.uplift.strip()}") for c in constitution.restricted]
    permitted = [(c.id, c.definition.strip()) for c in constitution.permitted]
    return restricted, permitted


class PolicyJudge:
    """A language model reading the constitution's categories and one conversation, scored P(Yes: restricted)."""

    def __init__(self, model: LanguageModel, constitution: ClassifierConstitution, threshold: float = 0.5):
        self.model = model
        self.name = f"policy in the prompt ({model.name})"
        self.restricted, self.permitted = policy_categories(constitution)
        self.threshold = threshold

    def prompts(self, conversations: Sequence[Sequence[Message]]) -> list:
        chat = uses_chat(self.model)
        questions = [policy_judge_question(self.restricted, self.permitted, c) for c in conversations]
        return [judge_request(question, chat, JUDGE_RATING_LEAD) for question in questions]

    def screen(self, conversations: Sequence[Sequence[Message]]) -> list[Verdict]:
        if not conversations:
            return []
        prompts = self.prompts(conversations)
        for number, reason in enumerate(context_overflows(self.model, prompts, room=8, what="policy question")):
            if reason is not None:
                raise InputError(
                    f"conversation {number}: {reason}",
                    field="judge",
                    hint="use a judge with a longer context window, or a constitution with shorter definitions",
                )
        scored = self.model.choice_logprobs(prompts, judge_options(YES_NO_OPTIONS, uses_chat(self.model)))
        verdicts = []
        for logprobs in scored:
            score = probability_first(logprobs)  # P(Yes), Yes being the first option
            verdicts.append(Verdict(score=score, flagged=score > self.threshold))
        return verdicts
