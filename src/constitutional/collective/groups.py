"""Opinion groups found the way Polis finds them, with scikit-learn.

1. Participants with fewer than `min_votes` votes (Polis: 7, or every statement when there are fewer) are left out
   of clustering; they are still placed on the map.
2. A vote not cast is filled with the statement's mean vote among clustered participants, so after centring it
   adds nothing to a participant's position: only the votes a participant cast place them (Polis's
   sparsity-aware projection).
3. Two principal components; each participant's position is scaled by sqrt(statements / votes cast), so people
   who voted on few statements are not pulled into the middle (Polis's scaling).
4. Polis first groups participants into up to 100 base clusters, then runs k-means on the base clusters'
   centres (weighted by size) for k = 2..5 and keeps the k with the best silhouette over the base clusters.

Differences from Polis, measured against its `group-id` in the tests: moderated-out statements are dropped rather
than kept as all-zero columns (so they do not count in the scaling), and Polis's smoothing of k over successive
updates of a live conversation has no counterpart in a one-off analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score

from constitutional.collective.conversation import AGREE, DISAGREE, Conversation
from constitutional.errors import InputError

MIN_VOTES = 7
BASE_CLUSTERS = 100
K_RANGE = (2, 5)
LEFT_OUT = -1
# One-sided 90% confidence, the level Polis uses for representative statements.
Z_90 = NormalDist().inv_cdf(0.9)


@dataclass(frozen=True)
class Representative:
    """A statement that sets a group apart: its members agree (or disagree) more than everyone else does."""

    statement: str
    direction: str
    in_group: float
    out_group: float
    ratio: float
    z: float


@dataclass(frozen=True)
class OpinionGroups:
    coords: np.ndarray = field(repr=False)  # (participants, 2) map positions, everyone included
    labels: np.ndarray = field(repr=False)  # group per participant; LEFT_OUT below the vote threshold
    k: int
    silhouette: float | None  # over clustered participants, for the chosen k
    silhouettes: dict[int, float]  # the selection score (over base clusters) of every k tried
    explained_variance: tuple[float, ...]
    min_votes: int
    representatives: dict[int, list[Representative]] = field(default_factory=dict)

    @property
    def clustered(self) -> np.ndarray:
        return self.labels != LEFT_OUT

    def sizes(self) -> list[int]:
        return [int((self.labels == group).sum()) for group in range(self.k)]


def find_groups(
    conversation: Conversation, *, min_votes: int = MIN_VOTES, k_range: tuple[int, int] = K_RANGE, seed: int = 0
) -> OpinionGroups:
    """Opinion groups of the participants with enough votes, their map positions and representative statements."""
    votes = conversation.votes
    threshold = min(min_votes, votes.shape[1])
    cast = (~np.isnan(votes)).sum(axis=1)
    clustered = cast >= threshold
    if clustered.sum() < 2:
        raise InputError(
            f"only {int(clustered.sum())} participant(s) voted on at least {threshold} statements",
            path=conversation.source,
            hint="opinion groups need at least two such participants; lower the minimum number of votes",
        )
    coords, explained = project(votes, clustered)
    labels = np.full(len(votes), LEFT_OUT)
    k, scores, clustered_labels = _choose_k(coords[clustered], k_range, seed)
    labels[clustered] = clustered_labels
    labels = _by_size(labels)
    silhouette = float(silhouette_score(coords[clustered], labels[clustered])) if k > 1 else None
    groups = OpinionGroups(
        coords=coords,
        labels=labels,
        k=k,
        silhouette=silhouette,
        silhouettes=scores,
        explained_variance=explained,
        min_votes=threshold,
    )
    return _with_representatives(groups, conversation)


def project(votes: np.ndarray, clustered: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """Everyone's 2-D position from a PCA of the clustered participants' votes, with Polis's sparsity scaling."""
    seen = ~np.isnan(votes[clustered])
    # A statement no clustered participant saw gets mean 0 (a pass), so it moves nobody.
    means = np.nansum(votes[clustered], axis=0) / np.maximum(seen.sum(axis=0), 1)
    filled = np.where(np.isnan(votes), means[None, :], votes)
    components = min(2, votes.shape[1], int(clustered.sum()))
    # Votes without any spread (everyone voting alike) leave nothing to explain: 0/0 shares are reported as 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        pca = PCA(n_components=components, svd_solver="full").fit(filled[clustered])
    coords = np.zeros((len(votes), 2))
    coords[:, :components] = pca.transform(filled)
    cast = (~np.isnan(votes)).sum(axis=1)
    coords *= np.sqrt(votes.shape[1] / np.maximum(cast, 1))[:, None]
    return coords, tuple(float(share) for share in np.nan_to_num(pca.explained_variance_ratio_))


def _choose_k(points: np.ndarray, k_range: tuple[int, int], seed: int) -> tuple[int, dict[int, float], np.ndarray]:
    centres, weights, member_of = _base_clusters(points, seed)
    scores: dict[int, tuple[float, np.ndarray]] = {}
    for k in range(k_range[0], k_range[1] + 1):
        # Silhouette needs at least one base cluster more than there are groups.
        if k >= len(centres):
            break
        kmeans = KMeans(n_clusters=k, n_init=50, random_state=seed).fit(centres, sample_weight=weights)
        if len(set(kmeans.labels_)) == k:
            scores[k] = (float(silhouette_score(centres, kmeans.labels_)), kmeans.labels_)
    if not scores:
        return 1, {}, np.zeros(len(points), dtype=int)
    # Ties go to the smaller k: fewer groups is the more cautious reading.
    best = max(scores, key=lambda k: (scores[k][0], -k))
    return best, {k: score for k, (score, _) in scores.items()}, scores[best][1][member_of]


def _base_clusters(points: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, sizes and each point's base cluster; small conversations use their distinct positions as is."""
    distinct, member_of, counts = np.unique(points, axis=0, return_inverse=True, return_counts=True)
    if len(distinct) <= BASE_CLUSTERS:
        return distinct, counts, member_of.ravel()
    kmeans = KMeans(n_clusters=BASE_CLUSTERS, n_init=10, random_state=seed).fit(points)
    return kmeans.cluster_centers_, np.bincount(kmeans.labels_, minlength=BASE_CLUSTERS), kmeans.labels_


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber groups from the largest (0) down, so group numbers do not depend on k-means's random start."""
    groups = [g for g in np.unique(labels) if g != LEFT_OUT]
    order = sorted(groups, key=lambda g: (-(labels == g).sum(), g))
    renumbered = labels.copy()
    for new, old in enumerate(order):
        renumbered[labels == old] = new
    return renumbered


def _with_representatives(groups: OpinionGroups, conversation: Conversation, count: int = 5) -> OpinionGroups:
    """Up to `count` statements per group that its members agree (or disagree) with more than everyone else."""
    votes = conversation.votes[groups.clustered]
    labels = groups.labels[groups.clustered]
    picked: dict[int, list[Representative]] = {}
    for group in range(groups.k):
        inside, outside = votes[labels == group], votes[labels != group]
        candidates = []
        for direction, value in (("agree", AGREE), ("disagree", DISAGREE)):
            p_in, n_in = _smoothed(inside, value)
            p_out, n_out = _smoothed(outside, value)
            z = _two_proportion_z(p_in, n_in, p_out, n_out)
            for column in np.flatnonzero((p_in > 0.5) & (z > Z_90)):
                statement = conversation.statements[column].id
                inside_share, outside_share = float(p_in[column]), float(p_out[column])
                candidates.append(
                    Representative(
                        statement,
                        direction,
                        inside_share,
                        outside_share,
                        inside_share / outside_share,
                        float(z[column]),
                    )
                )
        candidates.sort(key=lambda rep: rep.ratio * rep.in_group, reverse=True)
        picked[group] = candidates[:count]
    return OpinionGroups(**{**groups.__dict__, "representatives": picked})


def _smoothed(votes: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray]:
    """Per statement: the share of votes equal to `value` with one pseudo-vote each way, and the votes seen."""
    seen = (~np.isnan(votes)).sum(axis=0)
    return (1 + (votes == value).sum(axis=0)) / (2 + seen), seen


def _two_proportion_z(p_in: np.ndarray, n_in: np.ndarray, p_out: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    pooled = (p_in * (n_in + 2) + p_out * (n_out + 2)) / (n_in + n_out + 4)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / (n_in + 2) + 1 / (n_out + 2)))
    return (p_in - p_out) / spread


def agreement_with(
    reference: dict[str, int] | None, participants: tuple[str, ...], labels: np.ndarray
) -> float | None:
    """Adjusted Rand index between our groups and a reference's, over participants both placed in a group."""
    if not reference:
        return None
    placed = zip(participants, labels, strict=True)
    pairs = [(reference[p], int(label)) for p, label in placed if label != LEFT_OUT and p in reference]
    if len(pairs) < 2:
        return None
    theirs, ours = zip(*pairs, strict=True)
    return float(adjusted_rand_score(theirs, ours))
