"""The `openai` backend: any OpenAI-compatible server (vLLM, llama-cpp-python, Ollama, hosted APIs).

Retries with backoff (connection errors, 429, 5xx) and per-request timeouts come from the official client;
this module adds a concurrency limit, stop handling and choice scoring from echoed prompt log-probs.

Scoring needs `/v1/completions` with `echo` + `logprobs` (vLLM and llama-cpp-python's server support it; the
C++ llama.cpp `llama-server` and current hosted OpenAI models do not). llama-cpp-python's server scores each
echoed token one position late when the model adds no BOS token (abetlen/llama-cpp-python#1983); serve such
models (SmolLM2, Qwen, ...) with `--kv_overrides tokenizer.ggml.add_bos_token=bool:true`.

Servers read special-token strings in prompt text as special tokens (llama-cpp-python and vLLM both do), and the
client cannot know the served model's tokenizer: text that looks like a chat special token is broken up with a
space before it is sent (`plain_text`), so an answer containing "<|im_end|>" cannot end its turn.

The context window is the `max_model_len` the server lists for the model (vLLM does; where it is missing, prompts
are not checked against it), and prompt lengths come from vLLM's `/tokenize`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import openai

from constitutional.errors import InputError, ModelUnavailableError
from constitutional.models.base import Prompt, SamplingParams, cut_at_stop, render_transcript
from constitutional.models.spec import ModelSpec

T = TypeVar("T")
R = TypeVar("R")

# The OpenAI API refuses more stop strings than this; the rest are applied client-side.
MAX_SERVER_STOPS = 4
# Chat special tokens as text: ChatML / Llama 3 / Phi "<|...|>", Gemma's turn markers, Llama 2 / Mistral's.
SPECIAL_TOKEN_TEXT = re.compile(r"<\|[^<>|\s]{1,64}\|>|</?(?:start_of_turn|end_of_turn|bos|eos|s)>|\[/?INST\]")


def plain_text(text: str) -> str:
    """Text in which nothing reads as a chat special token: a space after the opening bracket of each lookalike."""
    return SPECIAL_TOKEN_TEXT.sub(lambda match: f"{match.group(0)[0]} {match.group(0)[1:]}", text)


def _plain_prompt(prompt: Prompt) -> Prompt:
    if isinstance(prompt, str):
        return plain_text(prompt)
    return [{**message, "content": plain_text(message["content"])} for message in prompt]


class OpenAIModel:
    """A model served behind an OpenAI-compatible HTTP API; `spec.name` is the served model name.

    `no_repeat_ngram_size` has no equivalent in the OpenAI API and is not sent.
    """

    def __init__(self, spec: ModelSpec):
        if not spec.base_url:
            raise InputError(
                "the openai backend needs a server address",
                field="base_url",
                hint="set base_url, e.g. http://127.0.0.1:8000/v1",
            )
        self.spec = spec
        self.name = spec.name
        self.base_url = spec.base_url
        # Local servers ignore the key, but the client refuses to start without one.
        api_key = os.environ.get(spec.api_key_env) or "not-needed"
        self.client = openai.OpenAI(
            base_url=spec.base_url, api_key=api_key, timeout=spec.timeout, max_retries=spec.max_retries
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        common = {
            "model": self.name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": params.stop[:MAX_SERVER_STOPS] or None,
        }
        # vLLM reads `repetition_penalty`, llama.cpp servers `repeat_penalty`, each ignoring the other; hosted
        # OpenAI refuses both, so 1.0 (no penalty) sends neither.
        if params.repetition_penalty != 1.0:
            penalty = params.repetition_penalty
            common["extra_body"] = {"repetition_penalty": penalty, "repeat_penalty": penalty}
        if params.seed is not None:
            common["seed"] = params.seed

        def one(prompt: Prompt) -> str:
            prompt = _plain_prompt(prompt)
            if isinstance(prompt, str):
                text = self._call(self.client.completions.create, prompt=prompt, **common).choices[0].text
            else:
                response = self._call(self.client.chat.completions.create, messages=prompt, **common)
                text = response.choices[0].message.content or ""
            return cut_at_stop(text, params.stop)

        return self._map(one, prompts)

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        """Score each choice from the echoed log-probs of prompt + choice, one request per pair.

        Chat prompts are scored as `render_transcript` text: the client cannot know the served model's chat
        template, and the completions endpoint takes text only.
        """
        texts = [plain_text(p if isinstance(p, str) else render_transcript(p)) for p in prompts]
        pairs = [(text, choice) for text in texts for choice in choices]
        scores = self._map(lambda pair: self._score(*pair), pairs)
        n = len(choices)
        return [scores[i * n : (i + 1) * n] for i in range(len(texts))]

    @functools.cached_property
    def context_window(self) -> int | None:
        """The `max_model_len` the server lists for this model (vLLM does); None when it does not say."""
        try:
            listed = self._call(self.client.models.list).data
        except openai.APIStatusError:
            return None
        window = next((getattr(m, "max_model_len", None) for m in listed if m.id == self.name), None)
        return window if isinstance(window, int) else None

    def prompt_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        """Token counts from the server's `/tokenize` (vLLM's; chat prompts through the served chat template)."""
        url = str(self.client.base_url).rstrip("/").removesuffix("/v1") + "/tokenize"

        def count(prompt: Prompt) -> int:
            prompt = _plain_prompt(prompt)
            body = (
                {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt, "add_generation_prompt": True}
            )
            try:
                answer = self._call(self.client.post, path=url, body={"model": self.name, **body}, cast_to=object)
            except openai.NotFoundError:
                raise InputError(
                    f"the server at {self.base_url} lists a context window for '{self.name}' but cannot count "
                    "prompt tokens (no /tokenize)",
                    field="base_url",
                    hint="serve the model with vLLM, or another server with vLLM's /tokenize",
                ) from None
            return int(answer["count"])

        return self._map(count, prompts)

    def _score(self, prompt: str, choice: str) -> float:
        full = prompt + choice
        # max_tokens=1, not 0: llama-cpp-python treats 0 as "until the context is full".
        response = self._call(
            self.client.completions.create,
            model=self.name,
            prompt=full,
            max_tokens=1,
            temperature=0.0,
            echo=True,
            logprobs=1,
        )
        result = response.choices[0]
        lp = result.logprobs
        # An echoing server returns the prompt as the start of the text and log-probs from its first token.
        if not result.text.startswith(full) or lp is None or not lp.text_offset or not lp.token_logprobs:
            raise InputError(
                f"the server at {self.base_url} returned no log-probs for the prompt, so choices cannot be scored",
                field="base_url",
                hint="the server must support echo=True with logprobs on /v1/completions (vLLM and "
                "llama-cpp-python's server do); or use the transformers backend for this role",
            )
        return choice_logprob(lp.text_offset, lp.token_logprobs, len(prompt), len(full))

    def _call(self, create: Callable[..., R], **kwargs) -> R:
        try:
            return create(**kwargs)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
            raise ModelUnavailableError(
                f"model server {self.base_url} unavailable after {self.spec.max_retries} retries "
                f"({type(error).__name__}: {error}); check the server is running and base_url is right"
            ) from error

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """fn over items with at most `concurrency` requests in flight; results in input order."""
        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                # Fail fast: don't send the queued requests to a server we already know is failing.
                pool.shutdown(cancel_futures=True)
                raise


def choice_logprob(offsets: Sequence[int], logprobs: Sequence[float | None], start: int, end: int) -> float:
    """Sum the log-probs of the tokens overlapping text[start:end] (the choice after the prompt).

    A token straddling the prompt/choice boundary counts: it carries the choice's first characters. Tokens
    from `end` on (the one the server generated) don't.
    """
    total = 0.0
    for i, (offset, logprob) in enumerate(zip(offsets, logprobs, strict=True)):
        token_end = offsets[i + 1] if i + 1 < len(offsets) else end
        if offset >= end or token_end <= start:
            continue
        if logprob is None:  # only the very first token has no log-prob
            raise InputError("the prompt must contain at least one token before the choice to score it")
        total += logprob
    return total
