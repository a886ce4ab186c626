"""Collective CAI on a synthetic conversation with planted opinion groups, consensus and divisive statements."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from constitutional.collective import (
    CollectiveConfig,
    build,
    find_groups,
    load_conversation,
    merge_similar,
    score_statements,
)
from constitutional.collective.groups import LEFT_OUT
from constitutional.constitution import load_constitution
from constitutional.errors import InputError

GROUP_SIZES = (50, 35, 25)
SPARSE_VOTERS = 8  # fewer than 7 votes each: on the map, out of the groups
CONSENSUS = {
    "c1": "Everyone deserves privacy online",
    "c2": "Everyone deserves privacy when online",  # a paraphrase of c1: merged into one principle
    "c3": "Answers should say when they are unsure",
    "c4": "An assistant must never help <script>alert(1)</script> hurt a child",  # markup must be escaped
}
# Agreed by groups 0 and 1 (85 of 110 people), rejected by group 2: a majority keeps them, group-aware does not.
DIVISIVE = {"d1": "Taxes on fuel should rise", "d2": "Cities should ban cars from their centres"}
# Each group backs its own four statements and rejects the others': this is what separates the groups.
PARTISAN = {f"p{g}{i}": f"Partisan claim {i} of camp {g}" for g in range(3) for i in range(4)}
ATTRIBUTION = "Test data under CC BY 4.0, with attribution to the test suite."


def planted_conversation(seed: int = 0) -> tuple[dict[str, str], list[tuple[str, str, int, int]], dict[str, int]]:
    """Statements, votes (participant, statement, vote, timestamp) and each participant's planted group."""
    rng = np.random.default_rng(seed)
    statements = {**CONSENSUS, **DIVISIVE, **PARTISAN}
    votes, planted, clock = [], {}, 0
    participants = [(f"u{g}-{i}", g) for g, size in enumerate(GROUP_SIZES) for i in range(size)]
    for participant, group in participants:
        planted[participant] = group
        for statement in statements:
            if rng.random() > 0.85:  # statements a participant never saw
                continue
            clock += 1
            votes.append((participant, statement, _vote(rng, _agree_chance(statement, group)), clock))
    for i in range(SPARSE_VOTERS):
        for statement in rng.choice(list(statements), size=3, replace=False):
            clock += 1
            votes.append((f"sparse-{i}", str(statement), int(rng.choice([-1, 1])), clock))
    return statements, votes, planted


def _agree_chance(statement: str, group: int) -> float:
    if statement in CONSENSUS:
        return 0.92
    if statement in DIVISIVE:
        return 0.1 if group == 2 else 0.92
    return 0.9 if statement[1] == str(group) else 0.1


def _vote(rng: np.random.Generator, agree: float) -> int:
    if rng.random() < 0.05:
        return 0
    return 1 if rng.random() < agree else -1


def write_polis_export(folder: Path, seed: int = 0) -> dict[str, int]:
    """The planted conversation as a Polis export folder (with a licence README), and the planted groups."""
    statements, votes, planted = planted_conversation(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = {key: index for index, key in enumerate(statements)}
    with (folder / "comments.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees", "moderated", "comment-body"]
        )
        for key, text in statements.items():
            writer.writerow([0, "", ids[key], 0, 0, 0, 1, text])
    participant_ids = {p: n for n, p in enumerate(dict.fromkeys(p for p, *_ in votes))}
    with (folder / "votes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "datetime", "comment-id", "voter-id", "vote"])
        for participant, statement, vote, clock in votes:
            writer.writerow([clock, "", ids[statement], participant_ids[participant], vote])
    (folder / "README.md").write_text(f"# Test conversation\n\n{ATTRIBUTION}\n")
    return {str(participant_ids[p]): group for p, group in planted.items()}


def bag_of_words(texts):
    """A stand-in for MiniLM: word-count vectors, so texts that share most words are near-duplicates."""
    vocabulary = sorted({word for text in texts for word in re.findall(r"\w+", text.lower())})
    vectors = np.array([[Counter(re.findall(r"\w+", t.lower()))[w] for w in vocabulary] for t in texts], float)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("planted") / "planted-conversation"
    return folder, write_polis_export(folder)


@pytest.fixture(scope="module")
def analysed(export):
    folder, planted = export
    conversation = load_conversation(folder)
    return conversation, find_groups(conversation), planted


def _polis_id(key: str) -> str:
    """The comment id the export gave a planted statement."""
    return str(list({**CONSENSUS, **DIVISIVE, **PARTISAN}).index(key))


def test_planted_groups_are_recovered(analysed):
    conversation, groups, planted = analysed
    assert groups.k == 3
    placed = zip(conversation.participants, groups.labels, strict=True)
    truth, found = zip(*[(planted[p], label) for p, label in placed if label >= 0], strict=True)
    assert adjusted_rand_score(truth, found) >= 0.9
    assert sorted(groups.sizes(), reverse=True) == groups.sizes()  # group 0 is the largest
    assert groups.silhouette > 0.5


def test_sparse_voters_are_mapped_but_left_out(analysed):
    conversation, groups, _ = analysed
    sparse = [i for i, p in enumerate(conversation.participants) if p not in analysed[2]]
    assert len(sparse) == SPARSE_VOTERS
    assert all(groups.labels[i] == LEFT_OUT for i in sparse)
    assert np.isfinite(groups.coords[sparse]).all()
    assert groups.clustered.sum() == sum(GROUP_SIZES)


def test_representative_statements_are_each_groups_own(analysed):
    conversation, groups, _ = analysed
    texts = {s.id: s.text for s in conversation.statements}
    for group, picked in groups.representatives.items():
        agreed = [texts[rep.statement] for rep in picked if rep.direction == "agree"]
        assert agreed, f"group {group} has no representative statement"
        camps = {text.rsplit(" ", 1)[-1] for text in agreed if text.startswith("Partisan")}
        assert len(camps) == 1  # all from the group's own camp


def test_group_aware_consensus_ranks_planted_consensus_first(analysed):
    conversation, groups, _ = analysed
    consensus = score_statements(conversation, groups, "group-aware")
    first = {score.statement.text for score in consensus.ranked[: len(CONSENSUS)]}
    assert first == set(CONSENSUS.values())
    assert {s.statement.text for s in consensus.selected()} == set(CONSENSUS.values())
    top = consensus.ranked[0]
    assert top.group_aware == pytest.approx(np.prod([g.agreement for g in top.groups]))
    assert top.normalised == pytest.approx(top.group_aware ** (1 / groups.k))


def test_divisive_statements_split_the_rules(analysed):
    conversation, groups, _ = analysed
    kept = {
        rule: {s.statement.text for s in score_statements(conversation, groups, rule).selected()}
        for rule in ("group-aware", "every-group", "majority")
    }
    for text in DIVISIVE.values():
        assert text not in kept["group-aware"]
        assert text not in kept["every-group"]
        assert text in kept["majority"]
    listed = {s.statement.text for s in score_statements(conversation, groups).divisive()}
    assert set(DIVISIVE.values()) <= listed
    assert not listed & set(CONSENSUS.values())


def test_unknown_rule_is_refused(analysed):
    conversation, groups, _ = analysed
    with pytest.raises(InputError, match="unknown consensus rule"):
        score_statements(conversation, groups, "plurality")


def test_near_duplicates_merge_into_one_principle(analysed):
    conversation, groups, _ = analysed
    merged = merge_similar(score_statements(conversation, groups).selected(), bag_of_words, 0.8)
    sources = [[score.statement.text for score, _ in group] for group in merged]
    assert len(merged) == len(CONSENSUS) - 1
    assert sorted([CONSENSUS["c1"], CONSENSUS["c2"]]) in [sorted(s) for s in sources]


class ScriptedWriter:
    """Answers each writer prompt with a fixed draft; its comparison drafts are not questions, so they are refused."""

    name = "scripted"

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, params):
        self.prompts += prompts
        drafts = []
        for prompt in prompts:
            text = prompt[-1]["content"]
            statement = re.findall(r'Statement: "(.*)"', text)[-1]
            if "critique its last response" in text:
                drafts.append(f"Critique request: Point out where the response ignores that {statement}.")
            elif "rewrite its last response" in text:
                drafts.append(f'"Rewrite the response so it respects that {statement}."\nExtra chatter.')
            else:
                drafts.append("Which one is better?")
        return drafts

    def choice_logprobs(self, prompts, choices):
        raise AssertionError("the writer only generates")


def test_build_writes_a_valid_constitution_with_provenance(export, tmp_path):
    folder, _ = export
    output = tmp_path / "out" / "collective.yaml"
    writer = ScriptedWriter()
    result = build(folder, output, writer=writer, embedder=bag_of_words, report=tmp_path / "report.html")

    constitution = load_constitution(output)
    assert constitution.name == "collective-planted-conversation"
    assert len(constitution.critique_revision) == len(constitution.comparison) == len(CONSENSUS) - 1
    assert ATTRIBUTION in constitution.description
    assert ATTRIBUTION in output.read_text()
    first, lead = constitution.critique_revision[0], result.principles[0].sources[0].statement.text
    assert first.critique == f"Point out where the response ignores that {lead}."
    assert first.revision == f"Rewrite the response so it respects that {lead}."
    assert "Which of these responses" in constitution.comparison[0].comparison  # the refused draft fell back
    assert len(writer.prompts) == 3 * len(result.principles)

    provenance = json.loads((tmp_path / "out" / "collective.provenance.json").read_text())
    assert provenance["attribution"] == ATTRIBUTION
    assert provenance["groups"]["k"] == 3
    assert provenance["consensus"] == {"rule": "group-aware", "threshold": 0.6, "selected": len(CONSENSUS)}
    principle = provenance["principles"][0]
    assert principle["written_by"] == {
        "critique": "model:scripted",
        "revision": "model:scripted",
        "comparison": "template",
    }
    assert principle["rejected_drafts"][0]["reason"] == "does not refer to the assistant's response"
    merged = next(p for p in provenance["principles"] if len(p["sources"]) == 2)
    assert {s["text"] for s in merged["sources"]} == {CONSENSUS["c1"], CONSENSUS["c2"]}
    for source in merged["sources"]:
        assert [g["group"] for g in source["groups"]] == [0, 1, 2]
        assert all(g["agreement"] == pytest.approx((1 + g["agrees"]) / (2 + g["seen"])) for g in source["groups"])
    assert set(provenance["divisive"]) >= {_polis_id(key) for key in DIVISIVE}
    assert not list(output.parent.glob(".*.tmp"))


def test_report_page_escapes_text_and_inlines_plots(export, tmp_path):
    folder, _ = export
    report = tmp_path / "report.html"
    build(folder, tmp_path / "c.yaml", embedder=bag_of_words, report=report)
    page = report.read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") == 1
    assert ATTRIBUTION in page
    for heading in ("Opinion map", "Statements ranked by consensus", "From statements to principles", "Divisive"):
        assert heading in page
    assert DIVISIVE["d1"] in page


def test_template_fallback_without_a_writer_is_deterministic(export, tmp_path):
    folder, _ = export
    config = CollectiveConfig(merge=False, name="mine", version="2")
    first = build(folder, tmp_path / "a" / "c.yaml", config=config)
    second = build(folder, tmp_path / "b" / "c.yaml", config=config)
    assert (tmp_path / "a" / "c.yaml").read_text() == (tmp_path / "b" / "c.yaml").read_text()
    assert first.constitution.tag == "mine@2"
    assert len(second.principles) == len(CONSENSUS)  # no merging: the paraphrases stay apart
    assert all(set(p.written_by.values()) == {"template"} for p in first.principles)
    assert first.principles[0].sources[0].statement.text in first.principles[0].critique


def test_nothing_agreed_is_refused_and_nothing_written(export, tmp_path):
    folder, _ = export
    output = tmp_path / "c.yaml"
    with pytest.raises(InputError, match=r"no statement passes the every-group rule above 0\.99"):
        build(folder, output, config=CollectiveConfig(rule="every-group", threshold=0.99), embedder=bag_of_words)
    assert not list(tmp_path.iterdir())


def test_plain_jsonl_conversation_builds(tmp_path):
    statements, votes, _ = planted_conversation(seed=1)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "statements.jsonl").write_text(
        "".join(json.dumps({"id": key, "text": text}) + "\n" for key, text in statements.items())
    )
    words = {1: "agree", -1: "disagree", 0: "pass"}
    (folder / "votes.jsonl").write_text(
        "".join(json.dumps({"participant": p, "statement": s, "vote": words[v]}) + "\n" for p, s, v, _ in votes)
    )
    result = build(folder, tmp_path / "c.yaml", embedder=bag_of_words)
    assert result.conversation.format == "plain"
    assert result.groups.k == 3
    assert result.reference_agreement is None
    ids = [p["id"] for p in yaml.safe_load((tmp_path / "c.yaml").read_text())["critique_revision"]]
    assert sorted(ids) in (
        ["collective-c1", "collective-c3", "collective-c4"],
        ["collective-c2", "collective-c3", "collective-c4"],
    )


def test_unanimous_votes_make_one_group_and_still_build(tmp_path):
    folder = tmp_path / "unanimous"
    folder.mkdir()
    (folder / "statements.csv").write_text("id,text\na,Be kind to people\nb,Tell the truth\n")
    (folder / "votes.csv").write_text(
        "participant,statement,vote\n" + "".join(f"p{i},a,1\np{i},b,1\n" for i in range(5))
    )
    result = build(folder, tmp_path / "c.yaml", config=CollectiveConfig(merge=False))
    assert result.groups.k == 1
    assert result.groups.silhouette is None
    assert len(load_constitution(tmp_path / "c.yaml").critique_revision) == 2


def test_bad_options_name_the_option():
    from constitutional.collective import config_from

    with pytest.raises(InputError, match="field 'threshold'"):
        config_from(threshold=1.5)
    with pytest.raises(InputError, match="field 'rule'"):
        config_from(rule="plurality")
    assert config_from(threshold=None, rule="majority").threshold is None


@pytest.mark.parametrize(
    ("field", "draft", "problem"),
    [
        ("critique", "Request: Point out where the response invades someone's privacy.", None),
        ("critique", "What would you like to ask?", "does not refer to the assistant's response"),
        ("critique", "Point out where the response is rude.", "shares no word with the statement"),
        ("critique", "Ok.", "too short to be a request"),
        ("critique", "Point out where the response " + "privacy " * 60, "longer than 400 characters"),
        ("revision", "Make the response respect privacy.", "a revision request must ask for a rewrite"),
        ("revision", "Rewrite the response so it respects privacy online.\nThen more.", None),
        ("comparison", "Which of these responses better protects privacy?", None),
        ("comparison", "Does the response protect privacy?", "a comparison must be a question starting with 'Which'"),
    ],
)
def test_writer_drafts_are_checked(field, draft, problem):
    from constitutional.collective.principles import check_draft

    assert check_draft(field, draft, CONSENSUS["c1"]) == problem
