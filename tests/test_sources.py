"""Prompt sources: every format, stable ids, rejections with reasons, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from constitutional.errors import InputError
from constitutional.records import PromptRecord, RejectedRecord
from constitutional.sources import content_id, load_prompts, source_path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_jsonl_with_prompt(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Hello?"}, {"prompt": "How are you?"}])
    accepted, rejected = load_prompts(str(path))
    assert rejected == []
    assert [r.messages for r in accepted] == [user("Hello?"), user("How are you?")]
    assert accepted[0].id == "a"
    assert accepted[1].id == content_id(user("How are you?"))
    assert all(isinstance(r, PromptRecord) and r.source == str(path) for r in accepted)


def test_jsonl_with_messages(tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a joke."},
    ]
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}])
    accepted, rejected = load_prompts(str(path))
    assert rejected == []
    assert accepted[0].messages == messages
    assert accepted[0].id == content_id(messages)


def test_jsonl_bad_messages_names_line(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "ok"}, {"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(InputError) as info:
        load_prompts(str(path))
    assert info.value.line == 2
    assert info.value.field == "messages"


def test_conversation_ending_with_assistant_is_rejected(tmp_path):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": "x", "messages": messages}, {"id": "y", "prompt": "Hi"}])
    accepted, rejected = load_prompts(str(path))
    assert [r.id for r in accepted] == ["y"]
    assert rejected[0].id == "x"
    assert "user message" in rejected[0].reason


def test_csv_named_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,question,notes\nq1,"What is 2+2, really?",x\n,Name a colour.,y\n', encoding="utf-8")
    accepted, rejected = load_prompts(str(path), column="question")
    assert rejected == []
    assert [r.messages for r in accepted] == [user("What is 2+2, really?"), user("Name a colour.")]
    assert accepted[0].id == "q1"
    # An empty id cell falls back to the content hash.
    assert accepted[1].id == content_id(user("Name a colour."))


def test_csv_missing_column_names_it_and_the_available_ones(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,question\nq1,What?\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_prompts(str(path), column="text")
    message = str(info.value)
    assert "'text'" in message
    assert "question" in message and "id" in message
    assert str(path) in message


def test_plain_text_one_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("First prompt\n\nSecond prompt\n   \nThird prompt\n", encoding="utf-8")
    accepted, rejected = load_prompts(str(path))
    assert rejected == []
    assert [r.messages[0]["content"] for r in accepted] == ["First prompt", "Second prompt", "Third prompt"]


def test_saved_hf_dataset(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "ds"
    Dataset.from_list([{"id": "d1", "prompt": "One?"}, {"id": "d2", "prompt": "Two?"}]).save_to_disk(str(folder))
    accepted, rejected = load_prompts(str(folder))
    assert rejected == []
    assert [(r.id, r.messages) for r in accepted] == [("d1", user("One?")), ("d2", user("Two?"))]


def test_saved_hf_dataset_missing_column(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "ds"
    Dataset.from_list([{"text": "One?"}]).save_to_disk(str(folder))
    with pytest.raises(InputError, match="text"):
        load_prompts(str(folder))


def test_ids_stable_across_loads_and_files(tmp_path):
    rows = [{"prompt": "Same content"}, {"prompt": "Other content"}]
    first, _ = load_prompts(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    second, _ = load_prompts(str(write_jsonl(tmp_path / "b.jsonl", list(reversed(rows)))))
    by_content = {r.messages[0]["content"]: r.id for r in first}
    assert {r.messages[0]["content"]: r.id for r in second} == by_content
    assert len(set(by_content.values())) == 2
    # The same text from a plain-text file gets the same id too.
    text = tmp_path / "c.txt"
    text.write_text("Same content\n", encoding="utf-8")
    assert load_prompts(str(text))[0][0].id == by_content["Same content"]


def test_numeric_id_kept_as_string(tmp_path):
    accepted, _ = load_prompts(str(write_jsonl(tmp_path / "p.jsonl", [{"id": 7, "prompt": "Hi"}])))
    assert accepted[0].id == "7"


def test_empty_and_overlong_prompts_are_rejected_with_reason(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": "ok", "prompt": "Fine."}, {"id": "empty", "prompt": "   "}, {"id": "long", "prompt": "x" * 51}],
    )
    accepted, rejected = load_prompts(str(path), max_chars=50)
    assert [r.id for r in accepted] == ["ok"]
    reasons = {r.id: r.reason for r in rejected}
    assert set(reasons) == {"empty", "long"}
    assert all(isinstance(r, RejectedRecord) for r in rejected)
    assert "empty prompt" in reasons["empty"]
    assert "max_prompt_chars=50" in reasons["long"]
    # The reason points back at the input line.
    assert f"{path}:2" in reasons["empty"]
    assert f"{path}:3" in reasons["long"]


def test_malformed_jsonl_line_names_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"\n{"prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_prompts(str(path))
    assert info.value.line == 3
    assert f"{path}:3" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n["b"]\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_prompts(str(path))
    assert info.value.line == 2


def test_missing_prompt_field_names_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"question": "b"}])
    with pytest.raises(InputError) as info:
        load_prompts(str(path))
    assert info.value.line == 2
    assert info.value.field == "prompt"


def test_duplicate_ids_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(InputError, match="duplicate id 'a'") as info:
        load_prompts(str(path))
    assert info.value.line == 2


def test_duplicate_content_without_ids_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "same"}, {"prompt": "same"}])
    with pytest.raises(InputError, match="duplicate id"):
        load_prompts(str(path))


@pytest.mark.parametrize("name", ["red-team", "helpful"])
def test_builtin_sets(name):
    accepted, rejected = load_prompts(f"builtin:{name}")
    assert len(accepted) >= 40
    assert rejected == []
    assert len({r.id for r in accepted}) == len(accepted)
    assert all(r.source == f"builtin:{name}" for r in accepted)


def test_unknown_builtin():
    with pytest.raises(InputError) as info:
        load_prompts("builtin:nope")
    assert "builtin:red-team" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_prompts(str(tmp_path / "absent.jsonl"))


def test_source_path_is_the_file_load_prompts_reads(tmp_path):
    """Fingerprints hash the file at `source_path`: it must be the very file the prompts come from."""
    packaged = source_path("builtin:red-team")
    assert packaged.is_file()
    copy = tmp_path / f"copy{packaged.suffix}"
    copy.write_bytes(packaged.read_bytes())
    from_builtin, _ = load_prompts("builtin:red-team")
    from_copy, _ = load_prompts(str(copy))
    assert [(r.id, r.messages) for r in from_builtin] == [(r.id, r.messages) for r in from_copy]
    assert source_path(str(copy)) == copy


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", ""),
        ("blank.txt", "\n  \n\n"),
        ("header-only.csv", "id,prompt\n"),
        ("comments.jsonl", "\n\n"),
    ],
)
def test_a_source_without_prompts_is_an_error_not_an_empty_stage(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="no prompt to use") as info:
        load_prompts(str(path))
    assert info.value.path == path and "empty" in str(info.value)


def test_a_source_whose_every_prompt_is_refused_is_an_error_that_gives_the_first_reason(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "  "}, {"prompt": "x" * 60}])
    with pytest.raises(InputError, match="all 2 refused") as info:
        load_prompts(str(path), max_chars=50)
    assert f"{path}:1: empty prompt" in str(info.value)


@pytest.mark.parametrize("name", ["p.jsonl", "p.csv", "p.txt"])
def test_a_binary_file_is_an_input_error_naming_the_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"prompt\nfine\n\x89PNG\x00\xff\n")
    with pytest.raises(InputError, match="not UTF-8") as info:
        load_prompts(str(path))
    assert info.value.line == 3


def test_a_folder_that_is_not_a_saved_dataset_is_an_input_error(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello\n")
    with pytest.raises(InputError, match="not a saved dataset"):
        load_prompts(str(tmp_path / "folder"))


def test_a_byte_order_mark_and_windows_line_ends_are_read_as_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "Hi"}\r\n{"id": "b", "prompt": "Yo"}\r\n')
    accepted, _ = load_prompts(str(path))
    assert [(r.id, r.messages[0]["content"]) for r in accepted] == [("a", "Hi"), ("b", "Yo")]


def test_a_json_string_holding_a_line_separator_stays_one_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "one\u2028two\x85three"}\n', encoding="utf-8")
    accepted, _ = load_prompts(str(path))
    assert accepted[0].messages[0]["content"] == "one\u2028two\x85three"


def test_an_unpaired_surrogate_escape_is_refused_not_written(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "half \\ud800 a pair"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="surrogate") as info:
        load_prompts(str(path))
    assert info.value.line == 2


def test_a_quoted_csv_value_keeps_its_line_breaks_and_rows_are_numbered_by_their_first_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,prompt\na,"Two\nlines"\nb,"   "\n', encoding="utf-8")
    accepted, rejected = load_prompts(str(path))
    assert accepted[0].messages[0]["content"] == "Two\nlines"
    assert f"{path}:4: empty prompt" in rejected[0].reason
