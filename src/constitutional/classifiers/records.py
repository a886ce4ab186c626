"""The records the classifier stages write and read: labelled examples with their provenance, and verdicts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from constitutional.models.base import Message
from constitutional.records import Record

Split = Literal["train", "calibration", "test"]


class Provenance(BaseModel):
    """How an example came to be: enough to regenerate it, or to drop everything one generator or template made."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field(description="Model that wrote the text, or 'written' for hand-written data.")
    template: str = Field(description="Name of the prompts.py template (or data file) it came from.")
    augmentations: list[str] = Field(default_factory=list, description="Named transforms applied, in order.")
    seed: int | None = None
    judge: str | None = Field(default=None, description="Model that re-labelled it, when it was sampled for that.")


class ClassifierExample(Record):
    """One labelled conversation (input classifier) or conversation + answer (output classifier)."""

    messages: list[Message] = Field(description="The conversation up to and including the user's last turn.")
    answer: str | None = Field(default=None, description="The assistant's answer; None for input-only examples.")
    label: Literal[0, 1] = Field(description="1: restricted content (flag it); 0: permitted or ordinary.")
    category: str = Field(description="Id of the constitution category, or 'general' for ordinary requests.")
    # Character offset in `answer` where restricted content starts; None when the answer is benign throughout.
    harmful_from: int | None = None
    wrapper: str = Field(default="plain", description="Jailbreak-style wrapper family applied, or 'plain'.")
    split: Split = "train"
    contested: bool = Field(default=False, description="Generator and judge disagree: excluded from training.")
    provenance: Provenance
