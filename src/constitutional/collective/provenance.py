"""The two documents a build writes: the constitution (plain data for the schema) and its provenance record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from constitutional.collective.consensus import Consensus, StatementScore
from constitutional.collective.conversation import Conversation
from constitutional.collective.groups import LEFT_OUT, OpinionGroups
from constitutional.collective.principles import FALLBACK_TEMPLATES, WRITER_TEMPLATES, Principle

if TYPE_CHECKING:
    from constitutional.collective.result import BuildResult, CollectiveConfig

PROVENANCE_SCHEMA = "constitutional.collective-provenance/1"
GROUPS_METHOD = (
    "participants with at least min_votes votes; missing votes filled with the statement mean; 2-D PCA scaled by "
    "sqrt(statements / votes cast); k-means on up to 100 base clusters, k chosen by silhouette"
)


def constitution_document(
    conversation: Conversation,
    groups: OpinionGroups,
    consensus: Consensus,
    principles: list[Principle],
    config: CollectiveConfig,
    files: dict[str, str],
) -> dict[str, Any]:
    """The constitution as the schema reads it, with `_header` comment lines for the top of the file."""
    topic = f" ({conversation.topic})" if conversation.topic else ""
    description = (
        f"A collective constitution built from the votes of {int(groups.clustered.sum())} participants, in "
        f"{groups.k} opinion group(s), on the statements of the conversation '{conversation.name}'{topic}. "
        f"It keeps the {len(consensus.selected())} statement(s) that passed the {consensus.rule} consensus rule "
        f"above {consensus.threshold:.2f}. Each principle's source statements and every group's votes on them are "
        f"in {files['provenance']}."
    )
    if conversation.attribution:
        description += f"\n\nData attribution: {conversation.attribution}"
    header = [
        f"Collective constitution built by `cai ccai build` from {conversation.name}.",
        f"Provenance (source statements and per-group agreement of every principle): {files['provenance']}",
        *(f"Data: {line}" for line in (conversation.attribution or "").splitlines()),
    ]
    return {
        "_header": header,
        "name": config.name or f"collective-{conversation.slug}",
        "version": config.version,
        "description": description,
        "critique_revision": [{"id": p.id, "critique": p.critique, "revision": p.revision} for p in principles],
        "comparison": [{"id": p.id, "comparison": p.comparison} for p in principles],
    }


def provenance_document(result: BuildResult) -> dict[str, Any]:
    """Everything needed to trace each principle back to votes, and to redo the build."""
    conversation, groups, consensus = result.conversation, result.groups, result.consensus
    principle_of = {source.statement.id: p.id for p in result.principles for source in p.sources}
    return {
        "schema": PROVENANCE_SCHEMA,
        "constitution": {"tag": result.constitution.tag, "file": result.outputs["constitution"].name},
        "attribution": conversation.attribution,
        "source": _source(conversation),
        "config": result.config.model_dump(),
        "groups": _groups(result),
        "consensus": {"rule": consensus.rule, "threshold": consensus.threshold, "selected": len(consensus.selected())},
        "merging": {"embedder": result.embedder, "similarity": result.config.merge_similarity},
        "writer": {
            "model": result.writer,
            "templates": WRITER_TEMPLATES,
            "fallback_templates": FALLBACK_TEMPLATES,
        },
        "principles": [_principle(p) for p in result.principles],
        "statements": [
            statement_record(s) | {"principle": principle_of.get(s.statement.id)} for s in consensus.ranked
        ],
        "divisive": [s.statement.id for s in consensus.divisive()],
        "participant_groups": {
            participant: (None if label == LEFT_OUT else int(label))
            for participant, label in zip(conversation.participants, groups.labels, strict=True)
        },
    }


def statement_record(score: StatementScore) -> dict[str, Any]:
    return {
        "id": score.statement.id,
        "text": score.statement.text,
        "rank": score.rank,
        "selected": score.selected,
        "score": round(score.score, 6),
        "group_aware_consensus": round(score.group_aware, 6),
        "group_aware_normalised": round(score.normalised, 6),
        "overall_agreement": round(score.overall, 6),
        "groups": [
            {
                "group": g.group,
                "agrees": g.agrees,
                "disagrees": g.disagrees,
                "passes": g.passes,
                "seen": g.seen,
                "agreement": round(g.agreement, 6),
            }
            for g in score.groups
        ],
    }


def _principle(principle: Principle) -> dict[str, Any]:
    return {
        "id": principle.id,
        "critique": principle.critique,
        "revision": principle.revision,
        "comparison": principle.comparison,
        "written_by": principle.written_by,
        "rejected_drafts": list(principle.rejected),
        "sources": [
            statement_record(source) | {"similarity_to_first": similarity}
            for source, similarity in zip(principle.sources, principle.similarity, strict=True)
        ],
    }


def _source(conversation: Conversation) -> dict[str, Any]:
    return {
        "path": conversation.source,
        "format": conversation.format,
        "name": conversation.name,
        "topic": conversation.topic,
        "participants": len(conversation.participants),
        "statements": len(conversation.statements),
        "moderated_out": [statement.id for statement in conversation.moderated_out],
        "votes_read": conversation.votes_read,
        "votes_standing": int(np.count_nonzero(~np.isnan(conversation.votes))),
    }


def _groups(result: BuildResult) -> dict[str, Any]:
    groups = result.groups
    return {
        "method": GROUPS_METHOD,
        "min_votes": groups.min_votes,
        "k": groups.k,
        "sizes": groups.sizes(),
        "silhouette": groups.silhouette,
        "silhouette_by_k": {str(k): round(score, 6) for k, score in groups.silhouettes.items()},
        "explained_variance": list(groups.explained_variance),
        "seed": result.config.seed,
        "ari_vs_reference": result.reference_agreement,
        "representatives": {
            str(group): [rep.__dict__ for rep in reps] for group, reps in groups.representatives.items()
        },
    }
