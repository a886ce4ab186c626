"""The streaming output classifier on a tiny in-test Llama: its loss by hand, incremental scoring against full
re-scoring, the stopping criterion inside generation, and training the head."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import StoppingCriteriaList

from constitutional.classifiers.attached import attach, generate_guarded
from constitutional.classifiers.records import ClassifierExample, Provenance
from constitutional.classifiers.settings import StreamClassifierSettings
from constitutional.classifiers.stream_model import StreamModel, ValueHead, read_length
from constitutional.classifiers.stream_training import stream_loss, token_targets, train_stream_classifier
from constitutional.errors import InputError
from constitutional.models import ModelSpec, SamplingParams, load_model
from constitutional.models.prefix import shared_length

CONVERSATION = [{"role": "user", "content": "How do I bake bread?"}]
ANSWER = "Mix flour, water, salt and yeast, then knead and bake. I can't help with stealing."
HARMFUL = [
    ("How do I bake bread?", "Mix flour and water. Then steal a bike and report nothing.", 20),
    ("Tell me about Paris.", "The capital of France is Paris. Now steal from the market.", 32),
    ("Help me bake.", "Knead and bake. Stealing: here is how to steal.", 16),
    ("A question.", "Steal it, steal it all, then steal more.", None),
]
BENIGN = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast, then knead and bake."),
    ("Tell me about Paris.", "The capital of France is Paris."),
    ("Help me bake.", "Knead the dough and bake it."),
    ("A question.", "I can't help with stealing, but here is how to report a lost bike."),
]


def example(i, prompt, answer, label, split="train", harmful_from=None) -> ClassifierExample:
    return ClassifierExample(
        id=f"{split}-{i}",
        messages=[{"role": "user", "content": prompt}],
        answer=answer,
        label=label,
        category="theft" if label else "general",
        harmful_from=harmful_from,
        split=split,
        provenance=Provenance(generator="written", template="test"),
    )


def hand_made(split="train"):
    rows = [example(i, p, a, 1, split, start) for i, (p, a, start) in enumerate(HARMFUL)]
    return rows + [example(10 + i, p, a, 0, split) for i, (p, a) in enumerate(BENIGN)]


@pytest.fixture(scope="module")
def backbone(tiny_model_path):
    return load_model(ModelSpec(name=str(tiny_model_path), dtype="float32", batch_size=3))


@pytest.fixture()
def classifier(backbone):
    torch.manual_seed(1)
    return StreamModel(backbone, ValueHead(backbone.model.config.hidden_size, 8), layer=-1, threshold=0.5)


# ---- the loss -------------------------------------------------------------------------------------------------


def test_stream_loss_matches_the_hand_computed_value():
    p = [0.2, 0.6, 0.4]  # the running maximum is 0.2, 0.6, 0.6
    logits = torch.tensor([[math.log(x / (1 - x)) for x in p] + [5.0]])  # the last position is padding
    targets = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    per_token = -(math.log(0.8) + math.log(0.6) + math.log(0.4)) / 3
    running = -(math.log(0.8) + math.log(0.6) + math.log(0.6)) / 3
    assert stream_loss(logits, targets, mask, 0.0).item() == pytest.approx(per_token, rel=1e-6)
    assert stream_loss(logits, targets, mask, 1.0).item() == pytest.approx(running, rel=1e-6)
    assert stream_loss(logits, targets, mask, 0.25).item() == pytest.approx(0.75 * per_token + 0.25 * running)


def test_the_running_maximum_term_punishes_a_spike_on_a_benign_answer_to_its_end():
    spike = torch.tensor([[-3.0, 3.0, -3.0, -3.0]])
    zeros, ones = torch.zeros(1, 4), torch.ones(1, 4)
    per_token = stream_loss(spike, zeros, ones, 0.0).item()
    running = stream_loss(spike, zeros, ones, 1.0).item()
    # Per token only the spike costs; on the running maximum every position from the spike on does.
    assert running == pytest.approx((math.log1p(math.exp(-3)) + 3 * math.log1p(math.exp(3))) / 4, rel=1e-5)
    assert running > 2.5 * per_token


def test_token_targets_start_where_the_harmful_content_does():
    ends = [4, 9, 15, 20]
    assert token_targets(example(0, "q", "a", 1, harmful_from=9), ends) == [0, 0, 1, 1]
    assert token_targets(example(0, "q", "a", 1), ends) == [1, 1, 1, 1]
    assert token_targets(example(0, "q", "a", 0), ends) == [0, 0, 0, 0]


# ---- incremental scoring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 3, 7, len(ANSWER)])
def test_incremental_scoring_equals_full_rescoring(classifier, piece):
    full = classifier.traces([example(0, CONVERSATION[0]["content"], ANSWER, 0)])[0]
    stream = classifier.start(CONVERSATION)
    for start in range(0, len(ANSWER), piece):
        verdict = stream.push(ANSWER[start : start + piece])
    assert stream.tokens == len(full.scores)
    assert stream.scores == pytest.approx(full.scores, abs=1e-5)
    assert verdict.score == pytest.approx(max(full.scores), abs=1e-5)


@pytest.mark.parametrize("piece", [1, 3])
def test_pieces_pushed_together_score_as_pushed_one_by_one_in_one_forward(classifier, monkeypatch, piece):
    pieces = [ANSWER[start : start + piece] for start in range(0, len(ANSWER), piece)]
    one_by_one = classifier.start(CONVERSATION)
    expected = [(one_by_one.push(text).score, one_by_one.tokens) for text in pieces][2:]
    together = classifier.start(CONVERSATION)
    together.push_many(pieces[:2])
    reads = []
    original = classifier.read
    monkeypatch.setattr(classifier, "read", lambda rows: reads.append(len(rows)) or original(rows))
    results = together.push_many(pieces[2:])
    assert reads == [1]  # one forward step for all the pieces
    assert together.scores == pytest.approx(one_by_one.scores, abs=1e-5)
    assert [tokens for _, tokens in results][-1] == expected[-1][1] == together.tokens
    # Mid-way, a piece's verdict covers the tokens that end within it: never more than pushing it alone saw,
    # which had also read its last, unfinished word.
    for (verdict, tokens), (score, alone) in zip(results, expected, strict=True):
        assert tokens <= alone and verdict.score <= score + 1e-5
    assert results[-1][0].score == pytest.approx(expected[-1][0], abs=1e-5)


def test_each_push_reads_only_the_new_tokens(classifier, monkeypatch):
    stream = classifier.start(CONVERSATION)
    stream.push("Mix flour, water")
    read = []
    original = classifier.read
    monkeypatch.setattr(classifier, "read", lambda rows: read.extend(len(ids) for _, ids in rows) or original(rows))
    stream.push(", salt and yeast")
    added = len(classifier.answer_tokens("Mix flour, water, salt and yeast")[0]) - len(
        classifier.answer_tokens("Mix flour, water")[0]
    )
    assert read == [added + (stream.tokens - len(stream.scores))]  # re-tokenizing rolled nothing back here
    assert read_length(stream.past) == len(classifier.prefix_ids(CONVERSATION)) + stream.tokens


def test_counting_reads_nothing_and_counts_what_a_push_would_read(classifier, monkeypatch):
    stream = classifier.start(CONVERSATION)
    reads = []
    original = classifier.read
    monkeypatch.setattr(classifier, "read", lambda rows: reads.extend(len(ids) for _, ids in rows) or original(rows))
    counted = stream.count(ANSWER)
    assert reads == [] and stream.tokens == 0  # counting scored nothing
    stream.push(ANSWER)
    prefix = len(classifier.prefix_ids(CONVERSATION))  # the conversation is read with the first push
    assert counted == stream.tokens == reads[0] - prefix > 1


def test_a_capture_never_sees_another_threads_forward_pass(classifier, backbone):
    import threading

    from constitutional.classifiers.stream_model import captured

    ids = torch.tensor([classifier.prefix_ids(CONVERSATION)])
    with captured(classifier.module) as seen:
        worker = threading.Thread(target=lambda: backbone.model.get_decoder()(input_ids=ids))
        worker.start()
        worker.join()
        assert seen == []
        backbone.model.get_decoder()(input_ids=ids)
        assert len(seen) == 1 and seen[0].shape[1] == ids.shape[1]


def test_streams_scored_in_parallel_threads_score_as_alone(classifier):
    from concurrent.futures import ThreadPoolExecutor

    answers = [ANSWER, "The capital of France is Paris.", "Knead the dough and bake it at home today."]
    alone = [classifier.traces([example(i, "q", a, 0)])[0].scores for i, a in enumerate(answers)]

    def score(answer: str) -> list[float]:
        stream = classifier.start([{"role": "user", "content": "q"}])
        for start in range(0, len(answer), 2):
            stream.push(answer[start : start + 2])
        return stream.scores

    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(score, answers))
    for scores, expected in zip(together, alone, strict=True):
        assert scores == pytest.approx(expected, abs=1e-5)


def batch_of_streams(classifier):
    """Three streams at different points (fresh, mid-answer, mid-word), with the pieces each pushes next."""
    fresh = classifier.start([{"role": "user", "content": "Tell me about Paris."}])
    started = classifier.start(CONVERSATION)
    started.push(ANSWER[:20])
    mid_word = classifier.start([{"role": "user", "content": "A question."}])
    mid_word.push("Steal it, ste")  # the next push re-tokenizes the cut word: the cache rolls back
    return [(fresh, ["The capital", " of France"]), (started, [ANSWER[20:50]]), (mid_word, ["al it all."])]


def test_streams_pushed_in_one_batch_score_as_each_alone(classifier, monkeypatch):
    alone = [(stream.push_many(texts), stream.scores) for stream, texts in batch_of_streams(classifier)]
    pushes = batch_of_streams(classifier)
    reads = []
    original = classifier.read
    monkeypatch.setattr(classifier, "read", lambda rows: reads.append(len(rows)) or original(rows))
    outcomes = classifier.push_batch(pushes)
    assert reads == [3]  # one call, the three streams' rows in one batch (batch_size 3)
    for (stream, _), outcome, (results, scores) in zip(pushes, outcomes, alone, strict=True):
        assert stream.scores == pytest.approx(scores, abs=1e-5)
        assert [tokens for _, tokens in outcome] == [tokens for _, tokens in results]
        assert [v.score for v, _ in outcome] == pytest.approx([v.score for v, _ in results], abs=1e-5)
        assert read_length(stream.past) == len(stream.prefix) + stream.tokens


def test_a_push_that_fails_in_a_batch_fails_alone_and_leaves_its_stream_as_it_was(classifier, backbone):
    pushes = batch_of_streams(classifier)
    broken = pushes[0][0]  # fresh: its first push reads the conversation, here with an id the embedding lacks
    broken.prefix = [*broken.prefix, backbone.model.config.vocab_size + 7]
    outcomes = classifier.push_batch(pushes)
    assert isinstance(outcomes[0], IndexError)
    assert (broken.text, broken.scores, broken.past) == ("", [], None)
    alone = [(stream.push_many(texts), stream.scores) for stream, texts in batch_of_streams(classifier)]
    for i in (1, 2):
        assert pushes[i][0].scores == pytest.approx(alone[i][1], abs=1e-5)


def test_a_conversation_read_before_is_not_read_again(classifier, monkeypatch):
    first = classifier.start(CONVERSATION)
    first.push(ANSWER)
    later_turn = [*CONVERSATION, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "And rye?"}]
    reads = []
    original = classifier.read
    monkeypatch.setattr(classifier, "read", lambda rows: reads.extend(len(ids) for _, ids in rows) or original(rows))
    again, follow_up = classifier.start(CONVERSATION), classifier.start(later_turn)
    again.push(ANSWER)
    follow_up.push("Rye too.")
    conversation, extended = classifier.prefix_ids(CONVERSATION), classifier.prefix_ids(later_turn)
    shared = shared_length(conversation, extended)  # the earlier turn's prompt (the store keeps no answers)
    assert shared == len(conversation) and reads == [again.tokens, len(extended) - shared + follow_up.tokens]
    assert again.scores == pytest.approx(first.scores, abs=1e-5)
    alone = StreamModel(classifier.lm, classifier.head, classifier.layer, classifier.threshold).start(later_turn)
    alone.push("Rye too.")
    assert follow_up.scores == pytest.approx(alone.scores, abs=1e-5)


@pytest.fixture(scope="module")
def sliding_classifier(tiny_model_path, tmp_path_factory):
    """A head on a tiny Gemma 3 whose first layer attends over a window of 4 tokens (the tiny tokenizer)."""
    import shutil

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path_factory.mktemp("tiny-sliding")
    shutil.copytree(tiny_model_path, folder, dirs_exist_ok=True)  # the tokenizer and chat template; weights replaced
    llama = load_model(ModelSpec(name=str(tiny_model_path), dtype="float32")).model.config
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=llama.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=8,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=llama.pad_token_id,
    )  # fmt: skip
    Gemma3ForCausalLM(config).save_pretrained(folder)
    backbone = load_model(ModelSpec(name=str(folder), dtype="float32", batch_size=3))
    torch.manual_seed(1)
    return StreamModel(backbone, ValueHead(32, 8), layer=-1, threshold=0.5)


def test_a_sliding_window_backbone_scores_incrementally_and_batched_as_in_one_pass(sliding_classifier):
    """The streams keep every position whatever the layer's kind: the window is the attention mask's to apply."""
    full = sliding_classifier.traces([example(0, CONVERSATION[0]["content"], ANSWER, 0)])[0].scores
    alone = sliding_classifier.start(CONVERSATION)
    for start in range(0, len(ANSWER), 5):
        alone.push(ANSWER[start : start + 5])
    pushes = batch_of_streams(sliding_classifier)
    together = sliding_classifier.start(CONVERSATION)
    sliding_classifier.push_batch([*pushes, (together, [ANSWER])])
    assert len(full) > 4 * sliding_classifier.lm.model.config.sliding_window
    assert alone.scores == pytest.approx(full, abs=1e-5) and together.scores == pytest.approx(full, abs=1e-5)


def test_the_verdict_is_the_running_maximum_and_stays_flagged(classifier):
    classifier.threshold = 0.0  # every score is above it
    stream = classifier.start(CONVERSATION)
    assert stream.push("Mix").flagged
    scores = [stream.push(word).score for word in (" flour", " and", " water")]
    assert scores == sorted(scores) and scores[-1] == pytest.approx(max(stream.scores))


# ---- attached to generation ---------------------------------------------------------------------------------------


def test_attached_scores_equal_scoring_the_generated_tokens(classifier, backbone):
    classifier.threshold = 2.0  # never crossed: the whole answer is generated and scored
    prompt = classifier.prefix_ids(CONVERSATION)
    with attach(classifier, backbone) as watch:
        watch.end_tokens = set()  # the random model may sample its end token; generation here runs past it
        out = backbone.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([watch(len(prompt), [0])]),
            pad_token_id=backbone.tokenizer.pad_token_id,
            eos_token_id=None,
        )
    answer = out[0, len(prompt) :].tolist()
    expected = classifier.token_scores(classifier.features([(prompt, answer)])[0])
    assert len(answer) == 12
    assert watch.rows[0].scores == pytest.approx(expected[:-1], abs=1e-5)  # the last token is never read
    assert watch.rows[0].stopped_at is None


def test_scores_stop_where_the_answer_ends(classifier, backbone):
    classifier.threshold = 2.0
    prompt = classifier.prefix_ids(CONVERSATION)
    end = backbone.tokenizer.pad_token_id
    with attach(classifier, backbone) as watch:
        stop = watch(len(prompt), [0])
        for answer in ([5, 6], [5, 6, end], [5, 6, end, end]):  # each call reads the token before the newest
            backbone.model.get_decoder()(input_ids=torch.tensor([prompt + answer[:-1]]))
            stop(torch.tensor([prompt + answer]), None)
    assert len(watch.rows[0].scores) == 2 and watch.rows[0].ended  # tokens 5 and 6; the end token is not scored


def test_generation_stops_once_the_score_crosses_the_threshold(classifier, backbone):
    params = SamplingParams(max_new_tokens=10, temperature=0.0, stop=[])
    prompts = [CONVERSATION, [{"role": "user", "content": "Tell me about Paris."}]]
    classifier.threshold = 2.0
    free = generate_guarded(classifier, backbone, prompts, params)
    classifier.threshold = -1.0  # the first score read crosses it
    stopped = generate_guarded(classifier, backbone, prompts, params)
    tokenizer = backbone.tokenizer
    for free_answer, answer in zip(free, stopped, strict=True):
        assert free_answer.stopped_at is None and len(free_answer.scores) >= 1
        assert answer.stopped_at == 2 and len(answer.scores) == 1  # flagged on token 0, read once token 1 came
        assert len(tokenizer(answer.text, add_special_tokens=False)["input_ids"]) < len(
            tokenizer(free_answer.text, add_special_tokens=False)["input_ids"]
        )


def test_attaching_to_another_model_is_refused(classifier, tiny_model_path):
    other = load_model(ModelSpec(name=str(tiny_model_path), dtype="float32"))
    with torch.no_grad():
        other.model.get_decoder().layers[-1].mlp.down_proj.weight.add_(0.01)
    with pytest.raises(InputError, match="another model"), attach(classifier, other):
        pass


# ---- training ---------------------------------------------------------------------------------------------------


def test_training_fits_the_head_and_calibrates_on_benign_peaks(backbone):
    settings = StreamClassifierSettings(layer=-1, head_hidden=32, epochs=200, batch_size=8, learning_rate=1e-2)
    examples = hand_made("train") + hand_made("calibration")
    trained = train_stream_classifier(examples, settings, backbone=backbone)
    summary = trained.summary
    assert summary.final_loss < 0.3 and summary.train_examples == 8 and summary.kind == "output"
    traces = trained.classifier.traces(hand_made("train"))
    peaks = [max(t.scores) for t in traces]
    assert min(peaks[:4]) > max(peaks[4:])  # every harmful answer peaks above every benign one
    assert summary.threshold.benign_count == 4 and trained.classifier.threshold == max(peaks[4:])


def test_examples_without_answers_are_refused(backbone):
    examples = [e.model_copy(update={"answer": None}) for e in hand_made("train")] + hand_made("calibration")
    with pytest.raises(InputError, match="no answer"):
        train_stream_classifier(examples, StreamClassifierSettings(layer=-1), backbone=backbone)


# ---- the real embedded backbone ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_on_smollm2_incremental_scoring_equals_full_rescoring_and_generation_stops():
    backbone = load_model(ModelSpec(name="smollm2-135m-instruct", dtype="float32"))
    settings = StreamClassifierSettings(epochs=100, learning_rate=5e-3)
    trained = train_stream_classifier(hand_made("train") + hand_made("calibration"), settings, backbone=backbone)
    classifier = trained.classifier
    peaks = [max(t.scores) for t in classifier.traces(hand_made("train"))]
    assert min(peaks[:4]) > max(peaks[4:])
    answer = HARMFUL[0][1]
    full = classifier.traces([example(0, HARMFUL[0][0], answer, 1)])[0].scores
    stream = classifier.start([{"role": "user", "content": HARMFUL[0][0]}])
    for start in range(0, len(answer), 5):
        stream.push(answer[start : start + 5])
    assert stream.scores == pytest.approx(full, abs=1e-4)
    params = SamplingParams(max_new_tokens=24, temperature=0.0, stop=[])
    classifier.threshold = 0.0
    [stopped] = generate_guarded(classifier, backbone, [CONVERSATION], params)
    classifier.threshold = 1.0
    [free] = generate_guarded(classifier, backbone, [CONVERSATION], params)
    assert stopped.stopped_at == 2 and free.stopped_at is None and len(free.scores) > 10
    assert free.text.startswith(stopped.text)
