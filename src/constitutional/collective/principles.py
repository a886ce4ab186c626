"""From agreed statements to principles: merge near-duplicates, then write each as critique, revision and comparison.

A writer model (any LanguageModel, the `writer` role) drafts each principle from the statement; a draft that fails a
simple check is set aside with its reason and the deterministic template below is used instead, so a build always
finishes and every principle says how it was written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from constitutional.collective.consensus import StatementScore
from constitutional.models.base import LanguageModel, SamplingParams
from constitutional.models.sentence import Embedder

# ---- prompts for the writer model (our wording; each asks for one line of a constitution) ----------------------

# One worked example each, on a statement of our own: small writer models follow an example far better than an
# instruction alone.
CRITIQUE_WRITER_TEMPLATE = (
    "Turn a statement that people in a public consultation agreed on into one request that asks an AI assistant "
    "to critique its last response. Reply with the request only.\n\n"
    'Statement: "People should always be told when they are talking to a machine"\n'
    "Request: Point out where the assistant's last response hides or blurs the fact that it is a machine.\n\n"
    'Statement: "{statement}"\nRequest:'
)
REVISION_WRITER_TEMPLATE = (
    "Turn a statement that people in a public consultation agreed on into one request that asks an AI assistant "
    "to rewrite its last response. Reply with the request only.\n\n"
    'Statement: "People should always be told when they are talking to a machine"\n'
    "Request: Rewrite the response so that it is open about being a machine.\n\n"
    'Statement: "{statement}"\nRequest:'
)
COMPARISON_WRITER_TEMPLATE = (
    "Turn a statement that people in a public consultation agreed on into one question that asks which of two AI "
    "assistant responses follows it better. Reply with the question only.\n\n"
    'Statement: "People should always be told when they are talking to a machine"\n'
    "Question: Which of these responses is more open about being a machine?\n\n"
    'Statement: "{statement}"\nQuestion:'
)
WRITER_TEMPLATES = {
    "critique": CRITIQUE_WRITER_TEMPLATE,
    "revision": REVISION_WRITER_TEMPLATE,
    "comparison": COMPARISON_WRITER_TEMPLATE,
}

# ---- the fallback: the statement quoted inside fixed requests --------------------------------------------------

FALLBACK_TEMPLATES = {
    "critique": (
        'People across opinion groups agreed that "{statement}". '
        "Point out where the assistant's last response goes against this."
    ),
    "revision": (
        'Rewrite the assistant\'s response so that it respects the widely shared view that "{statement}", '
        "while staying as helpful as it can."
    ),
    "comparison": (
        'People across opinion groups agreed that "{statement}". Which of these responses better respects this?'
    ),
}

# Greedy and short: a request is one line, and a model that goes on tends to start the next example.
WRITER_PARAMS = SamplingParams(max_new_tokens=60, temperature=0.0, stop=["\n\n", "\nStatement:", "\nHuman:"], seed=0)
_LONGEST = 400
# A writer often repeats the label it was asked for ("Critique request: ..."); the label is not part of the line.
_LABEL = re.compile(
    r"^\s*(?:(?:critique|revision|comparison)\s*(?:request|question)?|request|question)\s*:\s*", re.IGNORECASE
)


@dataclass(frozen=True)
class Principle:
    id: str
    critique: str
    revision: str
    comparison: str
    written_by: dict[str, str]  # per field: "template" or "model:<name>"
    sources: tuple[StatementScore, ...]
    similarity: tuple[float, ...]  # each source's cosine similarity to the first (the highest ranked)
    rejected: tuple[dict[str, str], ...] = ()  # writer drafts refused, with the reason


def merge_similar(
    selected: Sequence[StatementScore], embedder: Embedder | None, threshold: float
) -> list[list[tuple[StatementScore, float]]]:
    """Statements grouped so that each group's members are near-duplicates of its first (highest ranked) one.

    Greedy in rank order: a statement joins the first group whose lead it resembles at least `threshold` (cosine),
    or starts its own. Without an embedder every statement stands alone.
    """
    if embedder is None or not selected:
        return [[(score, 1.0)] for score in selected]
    vectors = np.asarray(embedder([clean(score.statement.text) for score in selected]), dtype=float)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    groups: list[list[tuple[StatementScore, float]]] = []
    leads: list[int] = []
    for index, score in enumerate(selected):
        similarities = [float(vectors[index] @ vectors[lead]) for lead in leads]
        match = next((g for g, similarity in enumerate(similarities) if similarity >= threshold), None)
        if match is None:
            groups.append([(score, 1.0)])
            leads.append(index)
        else:
            groups[match].append((score, similarities[match]))
    return groups


def write_principles(
    merged: list[list[tuple[StatementScore, float]]],
    writer: LanguageModel | None = None,
    params: SamplingParams = WRITER_PARAMS,
) -> list[Principle]:
    """One principle per merged group, drafted by `writer` where its draft passes, from the templates otherwise."""
    statements = [clean(group[0][0].statement.text) for group in merged]
    drafts = {field: _drafts(writer, template, statements, params) for field, template in WRITER_TEMPLATES.items()}
    principles, taken = [], set()
    for index, group in enumerate(merged):
        texts, written_by, rejected = {}, {}, []
        for field in WRITER_TEMPLATES:
            draft = drafts[field][index]
            problem = None if draft is None else check_draft(field, draft, statements[index])
            if draft is not None and problem is None:
                texts[field], written_by[field] = tidy(draft), f"model:{writer.name}"
            else:
                texts[field] = FALLBACK_TEMPLATES[field].format(statement=statements[index])
                written_by[field] = "template"
                if draft is not None:
                    rejected.append({"field": field, "draft": draft, "reason": problem})
        principles.append(
            Principle(
                id=_unique_id(group[0][0].statement.id, taken),
                written_by=written_by,
                sources=tuple(score for score, _ in group),
                similarity=tuple(round(similarity, 4) for _, similarity in group),
                rejected=tuple(rejected),
                **texts,
            )
        )
    return principles


def _drafts(
    writer: LanguageModel | None, template: str, statements: list[str], params: SamplingParams
) -> list[str | None]:
    if writer is None or not statements:
        return [None] * len(statements)
    prompts = [[{"role": "user", "content": template.format(statement=s)}] for s in statements]
    return list(writer.generate(prompts, params))


def check_draft(field: str, draft: str, statement: str) -> str | None:
    """Why a writer's draft cannot be used as this field of a principle, or None when it can.

    The checks are cheap and catch what small models get wrong most: answering instead of asking, losing the
    statement's subject, and running on.
    """
    text = tidy(draft)
    if len(text) < 10:
        return "too short to be a request"
    if len(text) > _LONGEST:
        return f"longer than {_LONGEST} characters"
    if not re.search(r"\b(response|answer|reply)", text, re.IGNORECASE):
        return "does not refer to the assistant's response"
    if field == "comparison" and not (text.endswith("?") and text.lower().startswith("which")):
        return "a comparison must be a question starting with 'Which'"
    if field == "revision" and not re.search(r"\b(rewrite|revise)", text, re.IGNORECASE):
        return "a revision request must ask for a rewrite"
    if not _content_words(text) & _content_words(statement):
        return "shares no word with the statement"
    return None


def _content_words(text: str) -> set[str]:
    """Lower-case words of five letters or more, a rough stand-in for what a sentence is about."""
    return {word for word in re.findall(r"[a-z]+", text.lower()) if len(word) >= 5} - _FRAME_WORDS


# Words every request uses whatever its statement, so sharing them says nothing about the subject.
_FRAME_WORDS = {"response", "responses", "assistant", "rewrite", "revise", "which", "point", "where", "people"}


def tidy(draft: str) -> str:
    """The first non-empty line of a draft, without a repeated label or wrapping quotes."""
    line = next((line for line in draft.strip().splitlines() if line.strip()), "")
    return _LABEL.sub("", line).strip().strip('"').strip()


def clean(text: str) -> str:
    """A statement on one line, ready to quote inside a request: double quotes made single, no closing full stop."""
    return " ".join(text.split()).replace('"', "'").rstrip(".").strip()


def _unique_id(statement_id: str, taken: set[str]) -> str:
    base = "collective-" + (re.sub(r"[^a-z0-9]+", "-", statement_id.lower()).strip("-") or "statement")
    candidate, suffix = base, 2
    while candidate in taken:
        candidate, suffix = f"{base}-{suffix}", suffix + 1
    taken.add(candidate)
    return candidate
