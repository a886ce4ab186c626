"""The output gate's hold-back and the guard's reading of server-sent events, without any server."""

from __future__ import annotations

import random

import pytest

from constitutional.classifiers.screening import OutputClassifier
from constitutional.guard.gate import OutputGate, Piece, score_together
from constitutional.guard.testing import KeywordOutputClassifier
from constitutional.guard.wire import EventSplitter, chunk_texts, event_data

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "bomb", "eight", "nine"]


def pieces(words) -> list[Piece[str]]:
    return [Piece(word, {0: f"{word} "}) for word in words]


def run(gate: OutputGate, items) -> list[str]:
    """Feed pieces one at a time, as a stream would, then end the answer; what the client would have received."""
    received = []
    for item in items:
        received += gate.score([item])
    return received + gate.score([], final=True)


class Recording(KeywordOutputClassifier):
    """Keyword streams that record the texts of every classifier step (one `push_many`)."""

    def __init__(self, keywords):
        super().__init__(keywords)
        self.steps: list[list[str]] = []

    def start(self, conversation):
        stream = super().start(conversation)
        push_many = stream.push_many
        stream.push_many = lambda texts: self.steps.append(list(texts)) or push_many(texts)
        return stream

    @property
    def scored(self) -> str:
        return "".join(text for step in self.steps for text in step)


@pytest.mark.parametrize("hold_back", [0, 1, 3])
def test_each_piece_waits_for_hold_back_tokens_after_it(hold_back):
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back, step_tokens=1)
    received = []
    for number, item in enumerate(pieces(WORDS[:6]), start=1):
        received += gate.score([item])
        assert received == WORDS[: max(0, number - hold_back)]
    assert received + gate.score([], final=True) == WORDS[:6]


@pytest.mark.parametrize("hold_back", [0, 2])
def test_a_flag_withholds_the_flagged_piece_and_everything_held(hold_back):
    gate = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back, step_tokens=1)
    received = run(gate, pieces(WORDS))
    assert received == WORDS[: 7 - hold_back]  # "bomb" is the 8th word
    assert gate.halt.verdict.category == "weapons" and gate.halt.tokens == 8
    assert gate.score([], final=True) == [] and gate.score(pieces(["more"])) == []
    assert gate.text(0).endswith("bomb ")


@pytest.mark.parametrize("hold_back", [0, 2])
def test_pieces_scored_together_are_released_and_halted_as_one_by_one(hold_back):
    one_by_one = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back, step_tokens=1)
    together = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back, step_tokens=1)
    assert together.score(pieces(WORDS)) == run(one_by_one, pieces(WORDS)) == WORDS[: 7 - hold_back]
    assert together.halt == one_by_one.halt and together.text(0) == one_by_one.text(0)


def test_pieces_wait_unscored_and_unsent_until_a_steps_worth_of_tokens():
    classifier = Recording({})
    gate = OutputGate(classifier, [], hold_back=0, step_tokens=3)
    assert gate.score(pieces(["zero"])) == ["zero"]  # the first step: hold-back + 1 tokens, all the first piece needs
    assert gate.score(pieces(["one"])) == [] and gate.score(pieces(["two"])) == []
    assert classifier.steps == [["zero "]]  # two tokens wait: no classifier step yet
    assert gate.score(pieces(["three"])) == ["one", "two", "three"]
    assert classifier.steps[1:] == [["one ", "two ", "three "]]  # one step for the three
    assert gate.score([Piece("a", {0: "four five six seven "})]) == ["a"]  # one chunk, four tokens: a step
    assert gate.score(pieces(["eight"])) == []
    assert gate.score([], final=True) == ["eight"] and classifier.steps[-1] == ["eight "]


@pytest.mark.parametrize(("hold_back", "step"), [(8, 32), (0, 32), (8, 4)])
def test_the_first_step_scores_what_the_first_piece_needs_to_go_out(hold_back, step):
    classifier = Recording({})
    gate = OutputGate(classifier, [], hold_back, step_tokens=step)
    first = min(step, hold_back + 1)
    received = [gate.score(pieces([f"w{i}"])) for i in range(first + step)]
    assert [len(texts) for texts in classifier.steps] == [first, step]
    if first == hold_back + 1:  # the first piece goes out with the first step, as soon as the hold-back allows
        assert received[first - 1][:1] == ["w0"] and not any(received[: first - 1])


def test_the_hold_back_counts_scored_tokens_across_steps():
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back=2, step_tokens=3)
    received = [gate.score(pieces([word])) for word in WORDS[:7]]
    # Steps after the 3rd and 6th word; each releases what has two scored tokens after it.
    assert received == [[], [], ["one"], [], [], ["two", "three", "four"], []]
    assert gate.score([], final=True) == ["five", "six", "seven"]


@pytest.mark.parametrize("hold_back", [0, 1, 3])
@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 100])
@pytest.mark.parametrize("seed", range(4))
def test_in_steps_nothing_goes_out_unscored_and_the_same_pieces_go_out(hold_back, step, seed):
    """Random chunking, with the flagged word at a random place or nowhere: every payload the client receives has
    been scored, with `hold_back` scored tokens after it unless the answer had ended; the classifier steps read a
    step's worth of tokens but at the end; in all, the pieces that go out are those of scoring one at a time."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(rng.randint(6, 30))]
    if seed % 2:
        words.insert(rng.randrange(len(words)), "bomb")
    chunks, start = [], 0
    while start < len(words):
        size = rng.randint(1, 3)
        chunks.append(Piece(start, {0: "".join(f"{word} " for word in words[start : start + size])}))
        start += size
    ends = {chunk.payload: chunk.payload + len(chunk.texts[0].split()) for chunk in chunks}  # words up to its end
    classifier = Recording({"bomb": "weapons"})
    gate = OutputGate(classifier, [], hold_back, step_tokens=step)
    received = []
    for chunk in chunks:
        received += gate.score([chunk])
        scored = len(classifier.scored.split())
        assert all(ends[sent] <= scored for sent in received)  # every chunk sent has been scored ...
        if received:
            assert scored - ends[received[-1]] >= hold_back  # ... and hold_back scored tokens follow it
    received += gate.score([], final=True)
    sizes = [len("".join(texts).split()) for texts in classifier.steps]
    # The first step scores what the first piece needs to go out; only the answer's end may be smaller than a step.
    assert sizes[0] >= min(step, hold_back + 1) and all(size >= step for size in sizes[1:-1])
    reference = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back, step_tokens=1)
    assert received == run(reference, chunks)
    assert received == [c.payload for c in chunks][: len(received)]
    if "bomb" in words:
        flagged = next(c.payload for c in chunks if "bomb" in c.texts[0])
        assert gate.halt is not None and flagged not in received
    else:
        assert received == [c.payload for c in chunks] and classifier.scored.split() == words


def test_the_end_of_the_answer_is_scored_before_any_of_it_goes_out_and_a_flag_there_halts():
    gate = OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], hold_back=2, step_tokens=100)
    received = [gate.score([item]) for item in pieces(WORDS)]
    assert received == [[], [], ["one"]] + [[]] * (len(WORDS) - 3)  # a first step of three tokens, then none
    assert gate.halt is None  # the flagged word is not scored yet
    assert gate.score([], final=True) == WORDS[1:5]  # as one by one: up to two tokens before the flag
    assert gate.halt.verdict.category == "weapons" and gate.halt.tokens == 8


def test_tokens_are_the_classifiers_not_the_chunks():
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back=3, step_tokens=1)
    assert gate.score([Piece("a", {0: "one two three four "})]) == []  # four tokens, but nothing after them yet
    assert gate.score([Piece("b", {0: "five six seven "})]) == ["a"]  # three tokens follow "a" now


@pytest.mark.parametrize("step", [1, 4])
def test_pieces_without_text_do_not_wait_at_the_front_nor_pass_text_waiting(step):
    gate = OutputGate(KeywordOutputClassifier({}), [], hold_back=5, step_tokens=step)
    assert gate.score([Piece("role"), Piece("word", {0: "hello "}), Piece("ping")]) == ["role"]
    assert gate.score([], final=True) == ["word", "ping"]


class BreaksOnThirdPush(OutputClassifier):
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


@pytest.mark.parametrize("step", [1, 2])
def test_a_classifier_error_keeps_the_unscored_pieces_for_the_callers_policy(step):
    gate = OutputGate(BreaksOnThirdPush(), [], hold_back=1, step_tokens=step)
    received = gate.score(pieces(WORDS[:2])) + gate.score(pieces(WORDS[2:5]))  # the third piece's step fails
    assert received == ["one"] and isinstance(gate.error, RuntimeError)
    assert gate.score(pieces(["six"])) == [] and gate.score([], final=True) == []  # fail closed: nothing more
    # Fail open: held and unscored pieces go out, in order, and later ones pass.
    assert received + gate.unscreened() + gate.score(pieces(["seven"])) == [*WORDS[:5], "seven"]


class Batching(KeywordOutputClassifier):
    """Keyword streams whose `push_batch` calls are recorded (pushes per call); a stream of `broken` fails its push."""

    def __init__(self, keywords, broken=()):
        super().__init__(keywords)
        self.calls: list[int] = []
        self.broken = list(broken)

    def push_batch(self, pushes):
        self.calls.append(len(pushes))
        broken = {id(stream) for stream in self.broken}  # by identity: keyword streams with equal fields are equal
        return [ValueError("bad") if id(stream) in broken else stream.push_many(texts) for stream, texts in pushes]


def test_gates_sharing_a_classifier_are_scored_in_one_call_and_release_as_alone():
    shared = Batching({"bomb": "weapons"})
    gates = [OutputGate(shared, [], hold_back=1, step_tokens=2) for _ in range(3)]
    answers = [WORDS[:4], WORDS[5:], WORDS[2:6]]  # the second says "bomb"
    received = [[] for _ in gates]
    for step in range(0, 6, 2):
        batch = [(gate, pieces(answer[step : step + 2]), False) for gate, answer in zip(gates, answers, strict=True)]
        for index, payloads in enumerate(score_together(batch)):
            received[index] += payloads
    for index, payloads in enumerate(score_together([(gate, [], True) for gate in gates])):
        received[index] += payloads
    alone = [run(OutputGate(KeywordOutputClassifier({"bomb": "weapons"}), [], 1, 2), pieces(a)) for a in answers]
    assert received == alone and received[1] == ["six"]  # "seven" waited for a token after it: "bomb"
    assert gates[1].halt is not None and gates[0].halt is None and gates[2].halt is None
    assert shared.calls == [3, 3]  # per step, one call for all three gates (each had a step due)


def test_a_push_that_fails_in_a_shared_call_fails_its_gate_alone():
    shared = Batching({})
    gates = [OutputGate(shared, [], hold_back=0, step_tokens=1) for _ in range(2)]
    score_together([(gate, pieces(["one"]), False) for gate in gates])
    shared.broken.append(gates[0].streams[0])
    received = score_together([(gate, pieces(["two"]), False) for gate in gates])
    assert received == [[], ["two"]]
    assert isinstance(gates[0].error, ValueError) and gates[1].error is None
    assert gates[0].unscreened() == ["two"]  # fail open: its unscored piece was held, not lost


def test_a_classifier_error_while_counting_is_an_error_too():
    class BreaksCounting(KeywordOutputClassifier):
        def start(self, conversation):
            stream = super().start(conversation)
            stream.count = lambda text: 1 / 0
            return stream

    gate = OutputGate(BreaksCounting({}), [], hold_back=0, step_tokens=4)
    assert gate.score(pieces(["one"])) == [] and isinstance(gate.error, ZeroDivisionError)
    assert gate.unscreened() == ["one"]


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
