"""The typed records stages read and write. Every record carries its schema version and provenance."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from constitutional.models.base import Message

SCHEMA_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    id: str


class PromptRecord(Record):
    """A conversation to answer; its last message is the user's."""

    messages: list[Message]
    source: str = Field(description="Where the prompt came from: a file path or a built-in set.")


class RevisionStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principle: str = Field(description="Id of the principle drawn for this step.")
    critique: str | None = Field(description="None when revising directly, without a critique.")
    revision: str


class SLRecord(Record):
    """One red-team prompt through the critique -> revision loop, or one helpfulness answer (no steps)."""

    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    initial: str
    steps: list[RevisionStep] = Field(default_factory=list)
    constitution: str = Field(description="name@version of the constitution used.")
    model: str
    params: dict[str, Any]
    seed: int

    @property
    def final(self) -> str:
        return self.steps[-1].revision if self.steps else self.initial


class RejectedRecord(Record):
    """An input a stage did not process, kept with the reason rather than dropped silently."""

    reason: str
    source: str


class PairRecord(Record):
    """Two answers from the policy to one prompt, sampled at temperature 1: the material for AI feedback."""

    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    a: str
    b: str
    constitution: str = Field(description="name@version of the run's constitution.")
    model: str
    params: dict[str, Any]
    seed: int


class ComparisonRecord(Record):
    """The feedback model's soft preference between the two answers of a pair.

    `p_a` is the final label: P(a is the better answer), averaged over the drawn principles and, when
    debiased, over both presentation orders. The per-order figures stay so position bias can be measured.
    """

    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    a: str
    b: str
    principles: list[str] = Field(description="Ids of the comparison principles drawn (k for an ensemble).")
    p_a: float = Field(ge=0.0, le=1.0)
    p_a_first: float = Field(ge=0.0, le=1.0, description="P(a better) with a shown as option (A).")
    p_a_second: float | None = Field(
        default=None, ge=0.0, le=1.0, description="P(a better) with a shown as option (B); None unless debiased."
    )
    logprobs: list[list[float]] = Field(description="[log p(A), log p(B)] per principle and order scored.")
    cot: list[str] | None = Field(default=None, description="Chain-of-thought texts, in CoT mode.")
    clamped: bool = Field(default=False, description="True when a CoT probability was clamped.")
    constitution: str
    model: str
    seed: int

    def preference_row(self) -> dict[str, Any]:
        """TRL's preference format plus the soft label: {"prompt", "chosen", "rejected", "p_chosen"}."""
        a_wins = self.p_a >= 0.5
        chosen, rejected = (self.a, self.b) if a_wins else (self.b, self.a)
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "p_chosen": self.p_a if a_wins else 1.0 - self.p_a,
            "kind": self.kind,
            "id": self.id,
        }
