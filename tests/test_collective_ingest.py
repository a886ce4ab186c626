"""Reading conversations: Polis exports and plain files, the latest vote standing, and errors that name the place."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from constitutional.collective import load_conversation
from constitutional.errors import InputError

COMMENTS_HEADER = "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n"
VOTES_HEADER = "timestamp,datetime,comment-id,voter-id,vote\n"


def polis(folder: Path, comments: list[str], votes: list[str], participants: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comments.csv").write_text(COMMENTS_HEADER + "".join(line + "\n" for line in comments))
    (folder / "votes.csv").write_text(VOTES_HEADER + "".join(line + "\n" for line in votes))
    if participants is not None:
        (folder / "participants-votes.csv").write_text(participants)
    return folder


COMMENTS = [
    '1,,0,0,0,0,1,"Be honest, even when it is awkward."',
    "2,,1,0,0,0,-1,Buy my product",
    '3,,2,1,0,0,0,"Say so when\nyou are unsure."',  # not yet moderated: kept; its body spans two lines
]


def vote_of(conversation, participant: str, statement: str) -> float:
    column = [s.id for s in conversation.statements].index(statement)
    return conversation.votes[conversation.participants.index(participant), column]


def test_latest_vote_stands_and_moderated_out_is_dropped(tmp_path):
    votes = [
        "200,,0,7,-1",  # the later vote, written first
        "100,,0,7,1",
        "100,,2,7,1",
        "100,,2,7,-1",  # same time: the later line wins
        "100,,1,8,1",  # only on a moderated-out comment: participant 8 has no standing vote
        "150,,2,9,0",
    ]
    conversation = load_conversation(polis(tmp_path / "export", COMMENTS, votes))
    assert [s.id for s in conversation.statements] == ["0", "2"]
    assert [s.id for s in conversation.moderated_out] == ["1"]
    assert conversation.statements[1].text == "Say so when\nyou are unsure."
    assert conversation.participants == ("7", "9")
    assert vote_of(conversation, "7", "0") == -1
    assert vote_of(conversation, "7", "2") == -1
    assert vote_of(conversation, "9", "2") == 0
    assert math.isnan(vote_of(conversation, "9", "0"))
    assert conversation.votes_read == 6
    assert conversation.reference_groups is None


def test_polis_groups_are_read_for_comparison(tmp_path):
    participants = "participant,group-id,n-comments,n-votes,n-agree,n-disagree,0,2\n7,1,0,2,0,2,-1,-1\n9,,0,1,0,0,,0\n"
    folder = polis(tmp_path / "export", COMMENTS, ["1,,0,7,1", "1,,2,9,1"], participants)
    assert load_conversation(folder).reference_groups == {"7": 1}


@pytest.mark.parametrize(
    ("file", "lines", "where", "message"),
    [
        ("votes.csv", ["1,,0,7,1", "2,,0,8,yes"], "votes.csv:3 field 'vote'", "'yes' is not a vote"),
        ("votes.csv", ["1,,0,7,1", "2,,5,8,1"], "votes.csv:3 field 'comment-id'", "comments.csv lacks"),
        ("votes.csv", ["1,,0,7"], "votes.csv:2 field 'voter-id'", "4 values where the header names 5"),
        ("votes.csv", ["1,,0,seven,1"], "votes.csv:2 field 'voter-id'", "not a whole number"),
        ("votes.csv", ["1,,0,,1"], "votes.csv:2 field 'voter-id'", "is empty"),
        ("comments.csv", [*COMMENTS, '4,,3,0,0,0,1,"never closed'], "comments.csv:6", "malformed CSV"),
        ("comments.csv", [COMMENTS[0], COMMENTS[0]], "comments.csv:3 field 'comment-id'", "appears twice"),
        ("comments.csv", ["1,,0,0,0,0,2,Hi"], "comments.csv:2 field 'moderated'", "not a moderation state"),
        ("comments.csv", ["2,,1,0,0,0,-1,Buy my product"], "comments.csv", "no comment is left"),
    ],
)
def test_malformed_polis_files_name_file_line_and_column(tmp_path, file, lines, where, message):
    folder = polis(tmp_path / "export", COMMENTS, ["1,,0,7,1"])
    header = VOTES_HEADER if file == "votes.csv" else COMMENTS_HEADER
    (folder / file).write_text(header + "".join(line + "\n" for line in lines))
    with pytest.raises(InputError) as caught:
        load_conversation(folder)
    assert where in str(caught.value)
    assert message in str(caught.value)
    assert "->" in str(caught.value)  # and says what to do


def test_header_problems_and_odd_bytes_are_input_errors(tmp_path):
    folder = polis(tmp_path / "export", COMMENTS, ["1,,0,7,1"])
    (folder / "votes.csv").write_text("when,comment-id,vote\n1,0,1\n")
    with pytest.raises(InputError, match=r"votes\.csv:1: the header lacks column\(s\) voter-id"):
        load_conversation(folder)
    (folder / "votes.csv").write_bytes(VOTES_HEADER.encode() + b"1,,0,7,\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_conversation(folder)
    (folder / "votes.csv").write_text("")
    with pytest.raises(InputError, match="the file is empty"):
        load_conversation(folder)


def test_a_folder_without_a_conversation_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        load_conversation(tmp_path / "missing")
    with pytest.raises(InputError, match="no conversation found"):
        load_conversation(tmp_path)


def test_plain_csv_with_words_and_timestamps(tmp_path):
    (tmp_path / "statements.csv").write_text('id,text,moderated\ns1,"Be kind, always",1\ns2,Spam,-1\ns3,Be brief,\n')
    (tmp_path / "votes.csv").write_text(
        "participant,statement,vote,timestamp\nann,s1,agree,5\nann,s1,disagree,3\nbob,s3,pass,\nbob,s3,-1,\n"
    )
    conversation = load_conversation(tmp_path)
    assert conversation.format == "plain"
    assert [s.text for s in conversation.statements] == ["Be kind, always", "Be brief"]
    assert vote_of(conversation, "ann", "s1") == 1  # timestamp 5 beats 3
    assert vote_of(conversation, "bob", "s3") == -1  # no timestamps: the later line


def test_plain_jsonl_errors_name_the_line(tmp_path):
    (tmp_path / "statements.jsonl").write_text('{"id": "a", "text": "Be kind"}\n')
    (tmp_path / "votes.jsonl").write_text('{"participant": "p", "statement": "a", "vote": 1}\n{"participant": "p"\n')
    with pytest.raises(InputError, match=r"votes\.jsonl:2: invalid JSON"):
        load_conversation(tmp_path)
    (tmp_path / "votes.jsonl").write_text('{"participant": "p", "statement": "a"}\n')
    with pytest.raises(InputError, match=r"votes\.jsonl:1 field 'vote': missing key"):
        load_conversation(tmp_path)
    (tmp_path / "votes.jsonl").write_text('{"participant": ["p"], "statement": "a", "vote": 1}\n')
    with pytest.raises(InputError, match=r"votes\.jsonl:1 field 'participant': is a list"):
        load_conversation(tmp_path)
    (tmp_path / "votes.csv").write_text("participant,statement,vote\n")
    with pytest.raises(InputError, match=r"both votes\.csv and votes\.jsonl exist"):
        load_conversation(tmp_path)


def test_attribution_is_read_from_a_readme_beside_the_data(tmp_path):
    (tmp_path / "README.md").write_text("# Data\n\nSome words.\n\nLicensed CC BY 4.0,\nwith credit to Someone.\n")
    conversation = load_conversation(polis(tmp_path / "export", COMMENTS, ["1,,0,7,1"]))
    assert conversation.attribution == "Licensed CC BY 4.0, with credit to Someone."
    assert load_conversation(tmp_path / "export", attribution="Mine").attribution == "Mine"
