"""Every reader of user files, fed arbitrary bytes and mutated valid files (hypothesis): it returns a result that
can be used (and written back as JSON), or raises InputError naming the file. Never another exception.

Readers: recipes, constitutions, prompt files (JSONL, CSV, text), multiple-choice items, preference files,
preference-model response files, conversations (a Polis export folder, a folder of plain files), the classifier
constitution, labelled classifier sets (JSONL, CSV) and comparison specs.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constitutional.errors import InputError

# Examples per property; each is a file written and read, so a few hundred take seconds. Derandomized: the same
# examples every run (a failure reproduces), and no example database left in the working tree.
EXAMPLES = 200
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DATA = resources.files("constitutional") / "data"

# Bytes that break readers in known ways: encodings, quoting, nesting, YAML tags and anchors, JSON escapes that
# are not text, numbers and dates Python cannot hold, spreadsheet and CSV separators.
TOKENS = [
    b"\x00",
    b"\xff\xfe",
    b"\x80",
    b"\xef\xbb\xbf",
    b"\n",
    b"\r\n",
    b"\r",
    b"\x0c",
    b"\xe2\x80\xa8",  # U+2028, a line separator to str.splitlines
    b'"',
    b"'",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b";",
    b"- ",
    b"? ",
    b"  ",
    b"\t",
    b"#",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!python/object/apply:os.system ['true']",
    b"!!binary xyz",
    b"%YAML 1.1\n",
    b"---\n",
    b"...\n",
    b"~",
    b"null",
    b"true",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"2024-13-45",
    b"12:30:61",
    b"0x1F",
    b"1" * 5000,
    b"[" * 3000,
    b"{" * 3000,
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b"\\u0000",
    b'"""',
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"\xc2\xb9",  # superscript one: a digit to str.isdigit, not to int()
    b"-1",
    b"1.5",
    b"agree",
]


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """A valid file with a few edits: bytes deleted, replaced or inserted (random or from TOKENS), lines
    duplicated, dropped or swapped, the file cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "replace", "insert", "token", "line", "cut"]))
        if edit == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif edit == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif edit == "line":
            lines = bytes(data).split(b"\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            action = draw(st.sampled_from(["duplicate", "drop", "swap"]))
            if action == "duplicate":
                lines.insert(j, lines[i])
            elif action == "drop":
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif edit == "cut":
            del data[at:]
    return bytes(data)


def files(original: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or a mutation of a valid file."""
    return st.one_of(st.binary(max_size=400), mutated(original))


# Text that looks like a number, a vote or nothing to one reader and not to another.
NASTY_TEXT = [
    "¹",
    "2²",
    "٣",
    "1" * 5000,
    "-1",
    "+1",
    "1_000",
    "1e999",
    "NaN",
    "0x1F",
    "",
    " ",
    "\u2028",
    "\x00",
    "agree",
]
LOOKS_NUMERIC = ["¹", "2²", "1" * 5000]
# JSON values of every kind, for rows whose keys are the ones the reader looks for.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(NASTY_TEXT),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def json_rows(keys: list[str]) -> st.SearchStrategy[bytes]:
    """JSONL files of objects with the reader's own keys (and others) holding any JSON value."""
    row = st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), json_values, max_size=len(keys) + 1)
    return st.lists(row, max_size=4).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="cai-properties-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def check(read: Callable[[Path], object], path: Path, data: bytes | None = None) -> object | None:
    """Write `data` to `path` (unless None), read it: the result, or None when the reader refused the file as it
    should."""
    if data is not None:
        path.write_bytes(data)
    try:
        return read(path)
    except InputError as err:
        assert str(err), "an InputError must say what is wrong"
        return None


# ---- recipes and constitutions (YAML) ----------------------------------------------------------------------------


def _recipe(path: Path):
    from constitutional.recipe import load_recipe

    recipe = load_recipe(path)
    recipe.model_dump_json()  # what the manifest and fingerprints record
    return recipe


def _constitution(path: Path):
    from constitutional.constitution import load_constitution
    from constitutional.stages.base import constitution_digest

    constitution = load_constitution(path)
    constitution_digest(constitution)  # every stage that reads it fingerprints it
    return constitution


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(NASTY_TEXT),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


def yaml_documents(keys: list[str]) -> st.SearchStrategy[bytes]:
    mapping = st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), yaml_values, max_size=4)
    return mapping.map(lambda data: yaml.safe_dump(data, allow_unicode=True).encode())


@SETTINGS
@given(data=files((DATA / "recipes" / "demo.yaml").read_bytes()))
def test_recipe_reader(scratch, data):
    check(_recipe, scratch / "recipe.yaml", data)


@SETTINGS
@given(data=yaml_documents(["run_dir", "seed", "constitution", "models", "sl", "sample", "label", "evaluate"]))
def test_recipe_reader_on_any_yaml_mapping(scratch, data):
    check(_recipe, scratch / "recipe.yaml", data)


@SETTINGS
@given(
    data=st.one_of(
        files((DATA / "constitutions" / "good-for-humanity.yaml").read_bytes()),
        mutated((DATA / "constitutions" / "harmless.yaml").read_bytes()),
    )
)
def test_constitution_reader(scratch, data):
    check(_constitution, scratch / "constitution.yaml", data)


@SETTINGS
@given(data=yaml_documents(["name", "version", "description", "critique_revision", "comparison", "demonstrations"]))
def test_constitution_reader_on_any_yaml_mapping(scratch, data):
    check(_constitution, scratch / "constitution.yaml", data)


# ---- prompt files --------------------------------------------------------------------------------------------------

PROMPTS = {
    "jsonl": b'{"id": "a", "prompt": "How do I pick a lock?"}\n'
    b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}\n'
    b'{"id": 7, "prompt": "   "}\n',
    "csv": b'id,prompt\na,"How do I pick a lock?"\nb,"Two\nlines"\n,Hello\n',
    "txt": b"How do I pick a lock?\nWhat is rain?\n\n  \n",
}


def _prompts(path: Path):
    from constitutional.sources import load_prompts

    accepted, rejected = load_prompts(str(path), max_chars=60)
    assert accepted, "a source with no usable prompt is an InputError"
    ids = [r.id for r in accepted + rejected]
    assert len(ids) == len(set(ids))
    for record in accepted + rejected:
        record.model_dump_json()  # the stage writes them as JSON lines
    return accepted


@SETTINGS
@given(suffix=st.sampled_from(sorted(PROMPTS)), data=st.data())
def test_prompt_reader(scratch, suffix, data):
    check(_prompts, scratch / f"prompts.{suffix}", data.draw(files(PROMPTS[suffix])))


@SETTINGS
@given(data=json_rows(["id", "prompt", "messages"]))
def test_prompt_reader_on_any_json_rows(scratch, data):
    check(_prompts, scratch / "prompts.jsonl", data)


# ---- multiple-choice items, preference files, response files -----------------------------------------------------


def _items(path: Path):
    from constitutional.evaluate.hhh import load_items

    return load_items(path)


def _preferences(path: Path):
    from constitutional.preference import load_preference_file

    rows = load_preference_file(path)
    json.dumps(rows)
    return rows


def _responses(path: Path):
    from constitutional.reward import load_responses

    rows, conversations, responses = load_responses(path)
    assert len(rows) == len(conversations) == len(responses)
    json.dumps([conversations, responses])
    return rows


ITEMS = b"".join((DATA / "eval" / "hhh_ours.jsonl").read_bytes().splitlines(keepends=True)[:2]) + (
    json.dumps(
        {
            "prompt": "x",
            "corrects": [" (A)"],
            "incorrects": [" (B)"],
            "text_correct": "\n\nHuman: Hi\n\nAssistant: Hello.",
            "text_incorrect": "\n\nHuman: Hi\n\nAssistant: Go away.",
        }
    ).encode()
    + b"\n"
)
PREFERENCES = (
    b'{"prompt": "hi", "chosen": "hello", "rejected": "go away", "p_chosen": 0.9, "kind": "helpful"}\n'
    b'{"id": "x", "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],'
    b' "rejected": "b", "p_chosen": 1}\n'
)
RESPONSES = (
    b'{"prompt": "How do I bake bread?", "response": "Mix, knead, bake."}\n'
    b'{"messages": [{"role": "user", "content": "Hi"}], "response": "Hello.", "id": 3}\n'
)


@SETTINGS
@given(data=files(ITEMS))
def test_multiple_choice_reader(scratch, data):
    check(_items, scratch / "items.jsonl", data)


@SETTINGS
@given(
    data=json_rows(
        ["prompt", "corrects", "incorrects", "conversation", "responses", "correct", "text_correct", "text_incorrect"]
    )
)
def test_multiple_choice_reader_on_any_json_rows(scratch, data):
    check(_items, scratch / "items.jsonl", data)


@SETTINGS
@given(data=st.one_of(files(PREFERENCES), json_rows(["id", "kind", "prompt", "chosen", "rejected", "p_chosen"])))
def test_preference_file_reader(scratch, data):
    check(_preferences, scratch / "preferences.jsonl", data)


@SETTINGS
@given(data=st.one_of(files(RESPONSES), json_rows(["id", "prompt", "messages", "response"])))
def test_response_file_reader(scratch, data):
    check(_responses, scratch / "responses.jsonl", data)


# ---- conversations: a Polis export, a folder of plain files ------------------------------------------------------

POLIS = {
    "comments.csv": b"timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n"
    b'1,,0,0,0,0,1,"Be honest, even when it is awkward."\n2,,1,0,0,0,-1,Buy my product\n'
    b'3,,2,1,0,0,0,"Say so when\nyou are unsure."\n',
    "votes.csv": b"timestamp,datetime,comment-id,voter-id,vote\n200,,0,7,-1\n100,,0,7,1\n100,,2,7,1\n150,,2,9,0\n",
    "participants-votes.csv": b"participant,group-id,n-comments,n-votes\n7,0,0,2\n9,,0,1\n",
    "summary.csv": b"topic,What should an assistant do?\nurl,https://example.org\n",
}
PLAIN = {
    "statements.jsonl": b'{"id": "s1", "text": "Be kind."}\n{"id": "s2", "text": "Be brief.", "moderated": -1}\n'
    b'{"id": 3, "text": "Say when unsure."}\n',
    "votes.csv": b"participant,statement,vote,timestamp\nann,s1,agree,1\nbob,s1,-1,2\nbob,3,pass,\nann,3,1,5\n",
}


def _conversation(folder: Path):
    from constitutional.collective import load_conversation

    conversation = load_conversation(folder)
    assert conversation.votes.shape == (len(conversation.participants), len(conversation.statements))
    return conversation


def _conversation_folder(scratch: Path, valid: dict[str, bytes], name: str, data: bytes) -> Path:
    folder = scratch / "conversation"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for file, content in valid.items():
        (folder / file).write_bytes(data if file == name else content)
    return folder


@SETTINGS
@given(name=st.sampled_from(sorted(POLIS)), data=st.data())
def test_polis_export_reader(scratch, name, data):
    folder = _conversation_folder(scratch, POLIS, name, data.draw(files(POLIS[name])))
    check(_conversation, folder)


@SETTINGS
@given(name=st.sampled_from(sorted(PLAIN)), data=st.data())
def test_plain_conversation_reader(scratch, name, data):
    folder = _conversation_folder(scratch, PLAIN, name, data.draw(files(PLAIN[name])))
    check(_conversation, folder)


def _table(rows: list[dict], as_csv: bool, columns: list[str]) -> bytes:
    if not as_csv:
        return "".join(json.dumps(row) + "\n" for row in rows).encode()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return buffer.getvalue().encode()


def _cell(*good):
    """A value as the format wants it, or a nasty text, or any JSON value: a third of the time each."""
    return st.sampled_from(good) | st.sampled_from(NASTY_TEXT) | json_values


@st.composite
def plain_conversations(draw) -> dict[str, bytes]:
    """Statement and vote files shaped as the format says, with values that are right or nasty."""
    ids = ["s1", "s2", "3"]
    participants = st.sampled_from(["ann", "7"]) | st.sampled_from(NASTY_TEXT) | json_values
    statements = draw(
        st.lists(
            st.fixed_dictionaries(
                {"id": _cell(*ids), "text": _cell("Be kind.")}, optional={"moderated": _cell(-1, 0, 1)}
            ),
            max_size=4,
        )
    )
    votes = draw(
        st.lists(
            st.fixed_dictionaries(
                {"participant": participants, "statement": _cell(*ids), "vote": _cell(1, -1, 0, "agree")},
                optional={"timestamp": _cell(1, 2.5)},
            ),
            max_size=6,
        )
    )
    as_csv = draw(st.booleans())
    suffix = ".csv" if as_csv else ".jsonl"
    return {
        f"statements{suffix}": _table(statements, as_csv, ["id", "text", "moderated"]),
        f"votes{suffix}": _table(votes, as_csv, ["participant", "statement", "vote", "timestamp"]),
    }


@SETTINGS
@given(files_=plain_conversations())
def test_plain_conversation_reader_on_nasty_values(scratch, files_):
    folder = _conversation_folder(scratch, files_, "", b"")
    check(_conversation, folder)


@pytest.mark.parametrize("participant", LOOKS_NUMERIC, ids=["superscript", "digit-superscript", "5000-digits"])
def test_a_participant_id_that_only_looks_like_a_number(scratch, participant):
    votes = json.dumps({"participant": participant, "statement": "s1", "vote": 1}).encode() + b"\n"
    files_ = {"statements.jsonl": b'{"id": "s1", "text": "Be kind."}\n', "votes.jsonl": votes}
    check(_conversation, _conversation_folder(scratch, files_, "", b""))


# ---- the classifier constitution, labelled classifier sets, comparison specs ----------------------------------


def _classifier_constitution(path: Path):
    from constitutional.classifiers.constitution import load_classifier_constitution

    return load_classifier_constitution(path).model_dump_json()


def _labelled(path: Path):
    from constitutional.classifiers.labelled import load_labelled

    return [example.model_dump_json() for example in load_labelled(str(path))]


def _compare_spec(path: Path):
    from constitutional.compare.spec import load_spec

    return load_spec(path).model_dump_json()


CLASSIFIER_DATA = DATA / "classifiers"


@SETTINGS
@given(data=files((CLASSIFIER_DATA / "constitution.yaml").read_bytes()[:3000]))
def test_classifier_constitution_reader(scratch, data):
    check(_classifier_constitution, scratch / "classifier-constitution.yaml", data)


@SETTINGS
@given(
    data=st.one_of(
        files((CLASSIFIER_DATA / "eval_outputs.jsonl").read_bytes()[:1500]),
        json_rows(["id", "prompt", "messages", "answer", "label", "category", "wrapper", "harmful_from"]),
    )
)
def test_labelled_classifier_set_reader_jsonl(scratch, data):
    check(_labelled, scratch / "labelled.jsonl", data)


@SETTINGS
@given(data=files(b'prompt,label,category\nhow do I kill a stuck process,0,everyday_language\n"a, b",1,explosives\n'))
def test_labelled_classifier_set_reader_csv(scratch, data):
    check(_labelled, scratch / "labelled.csv", data)


@SETTINGS
@given(data=files((DATA / "recipes" / "collective.yaml").read_bytes()))
def test_comparison_spec_reader(scratch, data):
    check(_compare_spec, scratch / "compare.yaml", data)
