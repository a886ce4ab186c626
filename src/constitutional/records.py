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
