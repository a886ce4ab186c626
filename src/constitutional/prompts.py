"""Every prompt template of the toolkit, as named constants with named slots, and the builders that fill them.

Prompts are built as chat messages; a backend renders them with the model's chat template, or as the
paper's `Human:/Assistant:` transcript for a pretrained model without one.
"""

from __future__ import annotations

from collections.abc import Sequence

from constitutional.constitution import CritiqueRevisionDemo, CritiqueRevisionPrinciple
from constitutional.models.base import Message

CRITIQUE_TEMPLATE = "Critique request: {request}\nAnswer with a short critique only."
REVISION_TEMPLATE = "Revision request: {request}\nAnswer with the rewritten response only, addressed to the user."


def critique_turn(principle: CritiqueRevisionPrinciple) -> Message:
    return {"role": "user", "content": CRITIQUE_TEMPLATE.format(request=principle.critique)}


def revision_turn(principle: CritiqueRevisionPrinciple) -> Message:
    return {"role": "user", "content": REVISION_TEMPLATE.format(request=principle.revision)}


def demonstration_turns(
    demos: Sequence[CritiqueRevisionDemo], principles: dict[str, CritiqueRevisionPrinciple], with_critique: bool
) -> list[Message]:
    """Worked examples as earlier turns of the same conversation, in the order the real step will follow."""
    turns: list[Message] = []
    for demo in demos:
        principle = principles[demo.principle]
        turns += [{"role": "user", "content": demo.prompt}, {"role": "assistant", "content": demo.response}]
        if with_critique:
            turns += [critique_turn(principle), {"role": "assistant", "content": demo.critique}]
        turns += [revision_turn(principle), {"role": "assistant", "content": demo.revision}]
    return turns


def critique_prompt(
    prefix: list[Message], conversation: list[Message], response: str, principle: CritiqueRevisionPrinciple
) -> list[Message]:
    """Ask for a critique of `response` to `conversation` under `principle`, after the few-shot `prefix`."""
    return [*prefix, *conversation, {"role": "assistant", "content": response}, critique_turn(principle)]


def revision_prompt(
    prefix: list[Message],
    conversation: list[Message],
    response: str,
    principle: CritiqueRevisionPrinciple,
    critique: str | None,
) -> list[Message]:
    """Ask for a revision; with `critique=None` the model revises directly (the paper's no-critique ablation)."""
    turns = [*prefix, *conversation, {"role": "assistant", "content": response}]
    if critique is not None:
        turns += [critique_turn(principle), {"role": "assistant", "content": critique}]
    return [*turns, revision_turn(principle)]
