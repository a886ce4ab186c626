"""The llama.cpp backend: a GGUF model run in-process by llama-cpp-python, behind the LanguageModel protocol.

It runs the quantized file the embedded models ship as: Qwen2.5-Coder-1.5B loads in 1-3 s from its 1.1 GB GGUF,
where transformers takes ~13 s for its bf16 weights (3 GB in memory). Per token it read that model's prompts more
slowly than transformers' bf16 on this 2-core CPU; it wins when prompts share long beginnings across batches, as
a debiased judge's two option orders do (benchmarks/judge_scoring.py).

The context remembers the tokens whose keys and values it holds. Reading a new sequence drops only what differs
from them and reads the rest, so sequences sharing a beginning (the chat header and few-shot demonstration of
every feedback question, the same question in both option orders) read it once when they come one after the
other; `choice_logprobs` scores prompts in sorted token order for that. Each choice's tokens past the choices'
common start are read on top of the prompt and dropped again before the next choice. Scores equal reading prompt
and choice in one pass up to float rounding (tests/test_llamacpp.py).

Prompts are rendered as the transformers backend renders them (the GGUF's chat template through the same Jinja
settings, special tokens only from the template, never from text; BOS as the model's metadata says), so the two
backends see the same token ids. Generation samples in numpy with the transformers semantics of every
SamplingParams field, including `no_repeat_ngram_size`, which llama.cpp's samplers lack; one sequence at a time.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from constitutional.errors import InputError
from constitutional.models.base import Prompt, SamplingParams, cut_at_stop, render_transcript
from constitutional.models.prefix import shared_length
from constitutional.models.spec import ModelSpec
from constitutional.models.tokens import common_prefix, render_chat

# Enough for a feedback question with a few-shot demonstration and two long answers; the keys and values of a
# 1.5B model at this length take ~120 MB. Longer prompts are refused by name, not truncated.
DEFAULT_CONTEXT = 4096
READ_BATCH = 512


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class LlamaCppModel:
    """A GGUF model in llama.cpp. Not thread-safe: one context, whose contents the instance tracks."""

    def __init__(self, name: str, llama):
        from llama_cpp import llama_cpp as api
        from llama_cpp._internals import LlamaBatch
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.name = name
        self.llama = llama
        self._api = api
        self._context = llama._ctx
        self._vocab = llama._model.vocab
        self._batch = LlamaBatch(n_tokens=READ_BATCH, embd=0, n_seq_max=1, verbose=False)
        self._held: list[int] = []  # the tokens whose keys and values the context holds, in order
        self.tokens_read = 0  # tokens run through the model so far (what reading shared beginnings once saves)
        template = llama.metadata.get("tokenizer.chat_template")
        self._chat = (
            Jinja2ChatFormatter(
                template, eos_token=self._token_text(llama.token_eos()), bos_token=self._token_text(llama.token_bos())
            )
            if template
            else None
        )
        # Free the native model while the interpreter is still whole; at exit, llama-cpp-python's own
        # destructor would otherwise run after its bindings are gone and print a TypeError.
        weakref.finalize(self, llama.close)

    @classmethod
    def load(
        cls, spec: ModelSpec, path: str | Path, n_ctx: int = DEFAULT_CONTEXT, n_threads: int | None = None
    ) -> LlamaCppModel:
        """Load the GGUF at `path` (already resolved from the spec's name). `device` other than auto/cpu offloads
        every layer to the GPU, which needs a llama-cpp-python built with GPU support.

        `n_threads` defaults to every core this process may use. ggml's threads wait for each other by spinning, so
        on a machine busy with other work fewer threads can be faster: on this 2-core VM under a load of 5, one
        thread read gemma3-270m's prompts at ~370 tokens/s and two at 100-230.
        """
        try:
            from llama_cpp import Llama
        except ImportError:
            raise InputError(
                "the llamacpp backend needs llama-cpp-python", field="backend", hint="pip install llama-cpp-python"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise InputError(
                f"cannot load model '{spec.name}': no GGUF file at {path}",
                field="name",
                hint="the llamacpp backend takes a .gguf file or an embedded name (see `cai models list`)",
            )
        threads = n_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=READ_BATCH,
                n_ubatch=READ_BATCH,
                # llama-cpp-python's default is half the cores for generation; on a 2-core machine, one.
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=0 if spec.device in ("auto", "cpu") else -1,
                verbose=False,
            )
        except ValueError as err:
            raise InputError(f"cannot load model '{spec.name}' from {path}: {err}", field="name") from None
        return cls(spec.name, llama)

    def close(self) -> None:
        self.llama.close()

    @property
    def has_chat_template(self) -> bool:
        return self._chat is not None

    @property
    def context_window(self) -> int:
        """Tokens the context holds, prompt and continuation together (`n_ctx` at load)."""
        return self._context.n_ctx()

    def _token_text(self, token: int) -> str:
        return self.llama._model.token_get_text(token) if token != -1 else ""

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """Token ids of text; `add_bos` adds BOS only if the model's metadata asks for it, `special` reads
        special-token strings in the text as special tokens."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def render(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: chat messages through the chat template, else the pretrained transcript.

        As in the transformers backend, only the chat template makes special tokens: text, and every message's
        content, is read as plain text, so an answer that contains "<|im_end|>" cannot end its turn.
        """
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_bos=True, special=False)
        if self._chat is not None:
            return render_chat(
                prompt,
                lambda messages: self._chat(messages=messages).prompt,
                template_ids=self.tokenize,
                content_ids=lambda text: self.tokenize(text, special=False),
                model=self.name,
            )
        return self.tokenize(render_transcript(prompt), add_bos=True, special=False)

    def prompt_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        return [len(self.render(prompt)) for prompt in prompts]

    def _read(self, tokens: list[int], logits_from: int) -> list[np.ndarray]:
        """Make the context hold exactly `tokens`, reading only what it lacks; the logits after each position from
        `logits_from` on (positions already held have none, so they are read again)."""
        if len(tokens) > self.context_window:
            raise InputError(
                f"a sequence of {len(tokens)} tokens does not fit the context of {self.context_window}",
                field="prompts",
                hint="shorten the prompt, or load the model with a larger n_ctx",
            )
        keep = min(shared_length(self._held, tokens), logits_from)
        if keep < len(self._held) and not self._context.kv_cache_seq_rm(0, keep, -1):
            keep = 0  # some memory kinds (recurrent, sliding-window) cannot drop a tail: start over
            self._context.kv_cache_clear()
        del self._held[keep:]
        logits = []
        batch = self._batch.batch
        try:
            for start in range(keep, len(tokens), READ_BATCH):
                piece = tokens[start : start + READ_BATCH]
                batch.n_tokens = len(piece)
                wanted = []
                for i, token in enumerate(piece):
                    batch.token[i], batch.pos[i] = token, start + i
                    batch.seq_id[i][0], batch.n_seq_id[i] = 0, 1
                    batch.logits[i] = start + i >= logits_from
                    if batch.logits[i]:
                        wanted.append(i)
                self._context.decode(self._batch)
                self._held.extend(piece)
                self.tokens_read += len(piece)
                for i in wanted:
                    row = np.ctypeslib.as_array(self._context.get_logits_ith(i), shape=(self.llama.n_vocab(),))
                    logits.append(row.copy())
        except BaseException:
            # What the context holds is unknown after a failed or interrupted read.
            self._context.kv_cache_clear()
            self._held.clear()
            raise
        return logits

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        """Summed log-probability of each choice after each prompt; every prompt read once (its beginning shared
        with the previous prompt not even that), each choice's distinct tokens read on top of it."""
        choice_ids = [self.tokenize(choice) for choice in choices]
        if not choice_ids or any(not ids for ids in choice_ids):
            raise InputError("a choice is empty after tokenization", field="choices", hint="pass non-empty choices")
        shared = common_prefix(choice_ids)
        tails = [ids[len(shared) :] for ids in choice_ids]
        rendered = [self.render(prompt) for prompt in prompts]
        for i, ids in enumerate(rendered):
            if not ids:
                raise InputError(
                    f"prompt {i} is empty after tokenization (and the model adds no BOS token)", field="prompts"
                )
        scores: list[list[float]] = [[] for _ in rendered]
        for i in sorted(range(len(rendered)), key=rendered.__getitem__):  # neighbours share the longest beginnings
            scores[i] = self._score(rendered[i], shared, tails)
        return scores

    def _score(self, prompt: list[int], shared: list[int], tails: list[list[int]]) -> list[float]:
        base = prompt + shared
        rows = [log_softmax(row) for row in self._read(base, len(prompt) - 1)]
        shared_score = sum(float(row[token]) for row, token in zip(rows, shared, strict=False))
        totals = []
        for tail in tails:
            total = shared_score
            if tail:
                total += float(rows[len(shared)][tail[0]])
            if len(tail) > 1:
                later = self._read(base + tail[:-1], len(base))
                total += sum(float(log_softmax(row)[token]) for row, token in zip(later, tail[1:], strict=True))
            totals.append(total)
        return totals

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        """One completion per prompt, in order; with a seed, prompt i samples from seed + i."""
        outputs = []
        for i, prompt in enumerate(prompts):
            rng = np.random.default_rng(None if params.seed is None else params.seed + i)
            outputs.append(self._generate_one(self.render(prompt), params, rng))
        return outputs

    def _generate_one(self, tokens: list[int], params: SamplingParams, rng: np.random.Generator) -> str:
        if not tokens:
            raise InputError("a prompt is empty after tokenization (and the model adds no BOS token)", field="prompts")
        tokens = list(tokens)
        answer: list[int] = []
        [logits] = self._read(tokens, len(tokens) - 1)
        for _ in range(params.max_new_tokens):
            token = next_token(logits, tokens, params, rng)
            if self._api.llama_vocab_is_eog(self._vocab, token):
                break
            answer.append(token)
            tokens.append(token)
            if params.stop and any(stop in self._text(answer) for stop in params.stop):
                break
            if len(tokens) >= self.context_window:
                break
            [logits] = self._read(tokens, len(tokens) - 1)
        return cut_at_stop(self._text(answer), params.stop)

    def _text(self, tokens: list[int]) -> str:
        return self.llama.detokenize(tokens).decode("utf-8", errors="replace")


def next_token(logits: np.ndarray, tokens: list[int], params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token as transformers' generate picks it: repetition penalty and n-gram block over the whole
    sequence (prompt included), then greedy, or temperature and top-p and a draw."""
    scores = logits.astype(np.float64)
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(tokens))
        picked = scores[seen]
        scores[seen] = np.where(picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty)
    n = params.no_repeat_ngram_size
    if n and len(tokens) + 1 >= n:
        scores[banned_tokens(tokens, n)] = -np.inf
    if params.temperature == 0:
        return int(np.argmax(scores))
    scores /= params.temperature
    if params.top_p < 1.0:
        order = np.argsort(scores)
        cumulative = np.cumsum(softmax(scores[order]))
        dropped = cumulative <= 1 - params.top_p
        dropped[-1] = False  # the likeliest token always stays
        scores[order[dropped]] = -np.inf
    return int(rng.choice(len(scores), p=softmax(scores)))


def banned_tokens(tokens: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `tokens` (transformers' NoRepeatNGramLogitsProcessor)."""
    if n == 1:
        return list(set(tokens))
    last = tokens[len(tokens) - n + 1 :]
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == last]


def softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()
