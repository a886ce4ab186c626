"""What a collective constitution build is given (its settings) and what it produces (groups, scores, principles)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from constitutional.collective.consensus import Consensus, Rule
from constitutional.collective.conversation import Conversation
from constitutional.collective.groups import OpinionGroups, agreement_with
from constitutional.collective.principles import Principle
from constitutional.constitution import Constitution


class CollectiveConfig(BaseModel):
    """Settings of a collective constitution build; every one is recorded in the provenance file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_votes: int = Field(default=7, ge=1, description="Participants with fewer votes are left out of the groups.")
    max_groups: int = Field(default=5, ge=2, le=10, description="Largest number of opinion groups tried (from 2).")
    rule: Rule = Field(default="group-aware", description="Consensus rule: group-aware, every-group or majority.")
    threshold: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Agreement a statement must exceed; default depends on the rule."
    )
    merge_similarity: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Cosine similarity at which two statements become one principle."
    )
    merge: bool = Field(default=True, description="Merge near-duplicate statements with the embedded MiniLM.")
    max_principles: int | None = Field(default=None, ge=1, description="Keep at most this many, best first.")
    seed: int = Field(default=0, description="Seed of k-means, recorded for reproducibility.")
    name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$", description="Constitution name.")
    version: str = Field(default="1.0", min_length=1)
    attribution: str | None = Field(
        default=None, description="Licence note of the data; default: read from a README beside the export."
    )


@dataclass
class BuildResult:
    conversation: Conversation
    groups: OpinionGroups
    consensus: Consensus
    principles: list[Principle]
    constitution: Constitution
    config: CollectiveConfig
    outputs: dict[str, Path]
    seconds: float
    writer: str | None
    embedder: str | None

    @property
    def reference_agreement(self) -> float | None:
        """Adjusted Rand index of our groups against the groups the source tool wrote (Polis's group-id)."""
        return agreement_with(self.conversation.reference_groups, self.conversation.participants, self.groups.labels)

    def summary(self) -> dict[str, Any]:
        """The headline figures a command prints after a build."""
        return {
            "participants": len(self.conversation.participants),
            "participants_kept": int(self.groups.clustered.sum()),
            "statements": len(self.conversation.statements),
            "groups": self.groups.k,
            "group_sizes": self.groups.sizes(),
            "silhouette": self.groups.silhouette,
            "ari_vs_reference": self.reference_agreement,
            "consensus_statements": len(self.consensus.selected()),
            "principles": len(self.principles),
            "seconds": round(self.seconds, 2),
            **{kind: str(path) for kind, path in self.outputs.items()},
        }
