"""The output gate's hold-back and the guard's reading of server-sent events, without any server."""

from __future__ import annotations

import random

import pytest

from constitutional.guard.gate import OutputGate, Piece
from constitutional.guard.testing import KeywordOutputClassifier
from constitutional.guard.wire import EventSplitter, chunk_texts, event_data

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "bomb", "eight", "nine"]


def pieces(words) -> list[Piece[str]]:
    return [Piece(word, {0: f"{word} "}) for word in words]


def run(gate: OutputGate, items) -> list[str]:
    """Feed pieces one at a time, as a stream would; what the client would have received."""
    received = []
    for item in items:
        received += gate.score([item])
    return received


@pytest.mark.parametrize("hold_back", [0, 1, 3])
def test_each_piece_waits_for_hold_back_tokens_after_it(hold_back):
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back)
    received = []
    for number, item in enumerate(pieces(WORDS[:6]), start=1):
        received += gate.score([item])
        assert received == WORDS[: max(0, number - hold_back)]
    assert received + gate.flush() == WORDS[:6]


@pytest.mark.parametrize("hold_back", [0, 2])
def test_a_flag_withholds_the_flagged_piece_and_everything_held(hold_back):
    gate = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back)
    received = run(gate, pieces(WORDS))
    assert received == WORDS[: 7 - hold_back]  # "bomb" is the 8th word
    assert gate.halt.verdict.category == "weapons" and gate.halt.tokens == 8
    assert gate.flush() == [] and gate.score(pieces(["more"])) == []
    assert gate.text(0).endswith("bomb ")


@pytest.mark.parametrize("hold_back", [0, 2])
def test_pieces_scored_together_are_released_and_halted_as_one_by_one(hold_back):
    one_by_one = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back)
    together = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back)
    assert together.score(pieces(WORDS)) == run(one_by_one, pieces(WORDS)) == WORDS[: 7 - hold_back]
    assert together.halt == one_by_one.halt and together.text(0) == one_by_one.text(0)


def test_tokens_are_the_classifiers_not_the_chunks():
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back=3)
    assert gate.score([Piece("a", {0: "one two three four "})]) == []  # four tokens, but nothing after them yet
    assert gate.score([Piece("b", {0: "five six seven "})]) == ["a"]  # three tokens follow "a" now


def test_pieces_without_text_do_not_wait_at_the_front():
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back=5)
    assert gate.score([Piece("role"), Piece("word", {0: "hello "}), Piece("ping")]) == ["role"]
    assert gate.flush() == ["word", "ping"]


class BreaksOnThirdPush:
    threshold = 0.5

    def start(self, conversation):
        stream = KeywordOutputClassifier({}).start(conversation)
        push = stream.push

        def breaking(text):
            if stream.words == 2:
                raise RuntimeError("boom")
            return push(text)

        stream.push = breaking
        return stream


def test_a_classifier_error_keeps_the_unscored_pieces_for_the_callers_policy():
    gate = OutputGate(BreaksOnThirdPush(), [], hold_back=1)
    received = run(gate, pieces(WORDS[:2])) + gate.score(pieces(WORDS[2:5]))  # the third piece's call fails
    assert received == ["one"] and isinstance(gate.error, RuntimeError)
    gate.unscreened()  # fail open: held and unscored pieces go out, in order, and later ones pass
    assert received + gate.flush() + gate.score(pieces(["six"])) == [*WORDS[:5], "six"]


def test_events_survive_any_chunking_and_either_line_end():
    events = [b'data: {"choices": [{"index": 0, "delta": {"content": "x%d"}}]}' % i for i in range(20)]
    events.insert(5, b": ping - keep-alive")
    for separator in (b"\n\n", b"\r\n\r\n"):
        stream = separator.join(events) + separator
        rng = random.Random(0)
        cuts = sorted(rng.sample(range(1, len(stream)), 40))
        splitter = EventSplitter()
        got = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            got += splitter.feed(stream[start:end])
        assert got == events
    assert event_data(events[5]) is None
    assert chunk_texts("chat", {"choices": [{"index": 0, "delta": {"content": "hi"}}]}) == {0: "hi"}
    tool_call = {"tool_calls": [{"function": {"arguments": '{"q": "x"}'}}]}
    assert chunk_texts("chat", {"choices": [{"index": 1, "delta": tool_call}]}) == {1: '{"q": "x"}'}
