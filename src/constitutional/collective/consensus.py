"""Which statements count as agreed: group-aware consensus, every group above a threshold, or a plain majority.

Every rule reads the same numbers: for each opinion group, the agreement (1 + agrees) / (2 + votes seen), where a
pass counts as a vote seen and the two pseudo-votes keep a statement few people saw near 1/2. All rules count the
votes of the participants placed in opinion groups, so they differ only in how they combine the groups.

- group-aware: the product of the groups' agreements (Polis's group-aware consensus); kept when its geometric mean
  (the product normalised for the number of groups) is above the threshold. One group's rejection sinks it.
- every-group: kept when the least agreeing group is above the threshold.
- majority: the agreement of all grouped participants pooled, above the threshold; a large group can outvote a
  small one, which is what the other two rules prevent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from constitutional.collective.conversation import AGREE, DISAGREE, PASS, Conversation, Statement
from constitutional.collective.groups import OpinionGroups
from constitutional.errors import InputError

Rule = Literal["group-aware", "every-group", "majority"]
RULES: tuple[Rule, ...] = ("group-aware", "every-group", "majority")
DEFAULT_THRESHOLD: dict[str, float] = {"group-aware": 0.6, "every-group": 0.6, "majority": 0.5}
# A statement one group mostly backs while another mostly does not, by at least this much agreement.
DIVISIVE_GAP = 0.3


@dataclass(frozen=True)
class GroupAgreement:
    group: int
    agrees: int
    disagrees: int
    passes: int
    seen: int

    @property
    def agreement(self) -> float:
        return (1 + self.agrees) / (2 + self.seen)


@dataclass(frozen=True)
class StatementScore:
    statement: Statement
    groups: tuple[GroupAgreement, ...]
    overall: float
    group_aware: float
    normalised: float
    score: float
    selected: bool
    rank: int

    @property
    def lowest(self) -> float:
        return min(group.agreement for group in self.groups)

    @property
    def spread(self) -> float:
        """How far apart the most and the least agreeing groups are."""
        agreements = [group.agreement for group in self.groups]
        return max(agreements) - min(agreements)


@dataclass(frozen=True)
class Consensus:
    rule: str
    threshold: float
    ranked: tuple[StatementScore, ...]

    def selected(self) -> list[StatementScore]:
        return [score for score in self.ranked if score.selected]

    def divisive(self, gap: float = DIVISIVE_GAP) -> list[StatementScore]:
        """Statements left out that one group backs while another does not, most divided first."""
        split = [s for s in self.ranked if not s.selected and s.spread >= gap and max_agreement(s) > 0.5]
        return sorted(split, key=lambda s: s.spread, reverse=True)


def max_agreement(score: StatementScore) -> float:
    return max(group.agreement for group in score.groups)


def score_statements(
    conversation: Conversation, groups: OpinionGroups, rule: Rule = "group-aware", threshold: float | None = None
) -> Consensus:
    """Every statement scored under `rule`, ranked best first, with the ones the rule keeps marked."""
    if rule not in RULES:
        raise InputError(f"unknown consensus rule '{rule}'", field="rule", hint=f"choose one of {', '.join(RULES)}")
    threshold = DEFAULT_THRESHOLD[rule] if threshold is None else threshold
    votes, labels = conversation.votes[groups.clustered], groups.labels[groups.clustered]
    counts = [_counts(votes[labels == group], group) for group in range(groups.k)]
    pooled = _counts(votes, -1)
    unranked = []
    for column, statement in enumerate(conversation.statements):
        per_group = tuple(group_counts[column] for group_counts in counts)
        product = float(np.prod([g.agreement for g in per_group]))
        normalised = product ** (1 / len(per_group))
        overall = pooled[column].agreement
        score = {"group-aware": normalised, "every-group": min(g.agreement for g in per_group), "majority": overall}
        unranked.append((statement, per_group, overall, product, normalised, score[rule]))
    # Equal scores keep the conversation's order, so the ranking is reproducible.
    ordered = sorted(unranked, key=lambda item: -item[5])
    ranked = tuple(
        StatementScore(*item[:5], score=item[5], selected=item[5] > threshold, rank=rank)
        for rank, item in enumerate(ordered, start=1)
    )
    return Consensus(rule=rule, threshold=threshold, ranked=ranked)


def _counts(votes: np.ndarray, group: int) -> list[GroupAgreement]:
    agrees, disagrees, passes = ((votes == value).sum(axis=0) for value in (AGREE, DISAGREE, PASS))
    return [
        GroupAgreement(group=group, agrees=int(a), disagrees=int(d), passes=int(p), seen=int(a + d + p))
        for a, d, p in zip(agrees, disagrees, passes, strict=True)
    ]
