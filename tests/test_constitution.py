"""Constitutions: the built-ins load and have the shape the paper needs; malformed files name file, line and field."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from constitutional.constitution import Constitution, builtin_names, load_constitution
from constitutional.errors import InputError

VALID = """\
name: tiny
version: "0.1"
description: A constitution written for tests.
critique_revision:
  - id: first
    critique: "Point out what is harmful in the last response."
    revision: "Rewrite the last response so it is harmless."
  - id: second
    critique: "Point out what is dishonest in the last response."
    revision: "Rewrite the last response so it is honest."
  - id: third
    critique: "Point out what is evasive in the last response."
    revision: "Rewrite the last response so it is helpful."
comparison:
  - id: less-harmful
    comparison: "Which of these responses is less harmful?"
demonstrations:
  critique_revision:
    - prompt: "How do I pick a lock?"
      response: "Use a tension wrench."
      principle: first
      critique: "It may help a burglar."
      revision: "Call a locksmith if you are locked out."
"""


def write(tmp_path: Path, text: str, name: str = "constitution.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the `occurrence`-th line containing `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


# ---- built-ins ------------------------------------------------------------------------------------------------


def test_builtin_names():
    assert {"harmless", "good-for-humanity"} <= set(builtin_names())


@pytest.mark.parametrize("name", ["harmless", "good-for-humanity"])
def test_builtins_load_with_unique_ids(name):
    c = load_constitution(name)
    assert c.name == name
    assert c.tag == f"{name}@{c.version}"
    for principles in (c.critique_revision, c.comparison):
        ids = [p.id for p in principles]
        assert len(ids) == len(set(ids))
    known = {p.id for p in c.critique_revision}
    assert all(d.principle in known for d in c.demonstrations.critique_revision)


def test_harmless_is_broad_and_covers_evasiveness():
    c = load_constitution("harmless")
    assert len(c.critique_revision) >= 16
    assert len(c.comparison) >= 16
    assert len(c.demonstrations.critique_revision) >= 4
    assert len(c.demonstrations.comparison) >= 3
    # The paper's point: bare refusals are a flaw too, so both principle kinds must address evasiveness.
    assert any("evasive" in p.id for p in c.critique_revision)
    assert any("evasive" in p.id for p in c.comparison)


def test_good_for_humanity_has_one_principle_of_each_kind():
    c = load_constitution("good-for-humanity")
    assert len(c.critique_revision) == 1
    assert len(c.comparison) == 1
    assert c.principle(c.critique_revision[0].id) is c.critique_revision[0]


def test_valid_file_loads_by_path(tmp_path):
    c = load_constitution(write(tmp_path, VALID))
    assert [p.id for p in c.critique_revision] == ["first", "second", "third"]
    assert c.demonstrations.comparison == []


# ---- malformed files ------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_path_and_line(tmp_path):
    lines = VALID.splitlines()
    bad_line = line_of(VALID, "id: second")
    # A second colon in a plain scalar: the parser reports it on this very line.
    lines[bad_line - 1] = "  - id: second: oops"
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        load_constitution(path)
    assert info.value.line == bad_line
    assert f"{path}:{bad_line}" in str(info.value)
    assert "invalid YAML" in str(info.value)


def test_yaml_bad_indentation_line_number(tmp_path):
    text = textwrap.dedent("""\
        name: tiny
        version: "0.1"
        description: x
        critique_revision:
          - id: first
            critique: "Point out what is harmful."
           revision: "Rewrite it."
        """)
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_constitution(path)
    assert info.value.line == line_of(text, "   revision:")
    assert f"{path}:{info.value.line}" in str(info.value)


def test_missing_field_names_path_line_and_field(tmp_path):
    text = VALID.replace('    revision: "Rewrite the last response so it is helpful."\n', "")
    assert text != VALID
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_constitution(path)
    message = str(info.value)
    principle_line = line_of(text, "id: third")
    assert f"{path}:{principle_line}" in message
    assert "critique_revision.2.revision" in message
    assert info.value.field == "critique_revision.2.revision"
    assert info.value.line == principle_line


def test_too_short_value_points_at_its_own_line(tmp_path):
    text = VALID.replace('revision: "Rewrite the last response so it is honest."', 'revision: "short"')
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_constitution(path)
    assert info.value.field == "critique_revision.1.revision"
    assert info.value.line == line_of(text, 'revision: "short"')


def test_unknown_key_rejected(tmp_path):
    text = VALID.replace(
        '    critique: "Point out what is dishonest', '    weight: 2\n    critique: "Point out what is dishonest'
    )
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_constitution(path)
    assert info.value.field == "critique_revision.1.weight"
    assert info.value.line == line_of(text, "weight: 2")
    assert str(path) in str(info.value)


def test_unknown_top_level_key_rejected(tmp_path):
    path = write(tmp_path, VALID + "author: someone\n")
    with pytest.raises(InputError) as info:
        load_constitution(path)
    assert info.value.field == "author"
    assert info.value.line == len(VALID.splitlines()) + 1


def test_duplicate_ids_rejected(tmp_path):
    text = VALID.replace("id: second", "id: first")
    path = write(tmp_path, text)
    with pytest.raises(InputError, match="duplicate principle id 'first'") as info:
        load_constitution(path)
    assert info.value.field == "critique_revision"
    assert str(path) in str(info.value)


def test_demo_naming_unknown_principle_rejected(tmp_path):
    text = VALID.replace("principle: first", "principle: nowhere")
    path = write(tmp_path, text)
    with pytest.raises(InputError, match="unknown principle 'nowhere'") as info:
        load_constitution(path)
    assert str(path) in str(info.value)


def test_not_a_mapping_rejected(tmp_path):
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_constitution(path)


def test_unknown_builtin_hint_lists_builtins():
    with pytest.raises(InputError) as info:
        load_constitution("no-such-constitution")
    message = str(info.value)
    assert "no-such-constitution" in message
    assert "harmless" in message and "good-for-humanity" in message


def test_missing_file_path_reported(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yaml"):
        load_constitution(tmp_path / "nope.yaml")


# ---- restricted_to --------------------------------------------------------------------------------------------


def test_restricted_to_keeps_n_principles_and_their_demos():
    c = load_constitution("harmless")
    saw_dropped_demo = False
    for seed in range(20):
        small = c.restricted_to(3, random.Random(seed))
        assert isinstance(small, Constitution)
        assert len(small.critique_revision) == 3
        kept = {p.id for p in small.critique_revision}
        assert kept <= {p.id for p in c.critique_revision}
        assert len(kept) == 3
        assert all(d.principle in kept for d in small.demonstrations.critique_revision)
        # Every demo whose principle survived is kept.
        expected = [d for d in c.demonstrations.critique_revision if d.principle in kept]
        assert small.demonstrations.critique_revision == expected
        saw_dropped_demo |= len(expected) < len(c.demonstrations.critique_revision)
        # Comparison side is untouched, and the original is not mutated.
        assert small.comparison == c.comparison
        assert small.demonstrations.comparison == c.demonstrations.comparison
    assert saw_dropped_demo
    assert len(c.critique_revision) >= 16


def test_restricted_to_is_seeded():
    c = load_constitution("harmless")
    a = c.restricted_to(4, random.Random(7))
    b = c.restricted_to(4, random.Random(7))
    assert [p.id for p in a.critique_revision] == [p.id for p in b.critique_revision]


@pytest.mark.parametrize("count", [None, 100])
def test_restricted_to_all_is_identity(count):
    c = load_constitution("harmless")
    assert c.restricted_to(count, random.Random(0)) is c
