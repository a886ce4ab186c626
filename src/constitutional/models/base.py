"""The LanguageModel protocol — the only door to a model — and the types that cross it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, str]
# A prompt is raw text (pretrained style, "\n\nHuman: ...\n\nAssistant:") or chat messages.
Prompt = str | list[Message]

HUMAN_TURN = "\n\nHuman:"
# A transcript speaker's name at the start of a line, where the transcript starts a turn.
TRANSCRIPT_SPEAKER = re.compile(r"^([ \t]*)((?:human|assistant)[ \t]*:)", re.IGNORECASE | re.MULTILINE)


class SamplingParams(BaseModel):
    """Generation settings; recorded verbatim in every record a stage writes."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=128, ge=1, description="Upper bound on generated tokens per answer.")
    temperature: float = Field(default=0.7, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    # Models of ~100M parameters loop on a phrase within a few dozen tokens without these two.
    repetition_penalty: float = Field(default=1.2, ge=1.0)
    no_repeat_ngram_size: int = Field(default=4, ge=0, description="0 turns the n-gram block off.")
    stop: list[str] = Field(
        default_factory=lambda: [HUMAN_TURN, "\nHuman:", "\nUser:"],
        description="Text after which an answer is cut (the next turn a base model invents).",
    )
    seed: int | None = Field(default=None, description="Sampling seed; set per call by the stages for resumability.")


@runtime_checkable
class LanguageModel(Protocol):
    """Anything that can generate text and score choices. Backends batch internally."""

    name: str
    # Tokens the model reads at most, prompt and continuation together; None when the backend cannot tell.
    context_window: int | None

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        """One completion per prompt, cut at the first stop sequence."""
        ...

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        """Summed log-probability of each choice continuing each prompt: result[i][j] for prompt i, choice j."""
        ...

    def prompt_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        """How many tokens each prompt is once rendered as the model reads it (chat template included)."""
        ...


def quote_speakers(text: str) -> str:
    """Text that cannot start a transcript turn: a line opening with "Human:" or "Assistant:" shows it in quotes."""
    return TRANSCRIPT_SPEAKER.sub(r'\1"\2"', text)


def render_transcript(messages: Sequence[Message]) -> str:
    """Messages as the pretrained-model transcript of the CAI paper, ending with an open Assistant turn.

    A message's own lines never start a turn (see `quote_speakers`): only the transcript's turns do.
    """
    parts = []
    for message in messages:
        content = quote_speakers(message["content"].strip())
        if message["role"] == "system":
            parts.append(content)
            continue
        speaker = "Assistant" if message["role"] == "assistant" else "Human"
        parts.append(f"{speaker}: {content}")
    return "\n\n" + "\n\n".join(parts) + "\n\nAssistant:"


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Truncate at the earliest stop sequence and trim whitespace."""
    cut = len(text)
    for marker in stop:
        index = text.find(marker)
        if index != -1:
            cut = min(cut, index)
    return text[:cut].strip()


def context_overflows(
    model: LanguageModel, prompts: Sequence[Prompt], room: int, what: str = "prompt"
) -> list[str | None]:
    """Per prompt, why the model cannot read it and still have `room` tokens for what the stage adds; None if it can.

    `what` names the prompt in the reason. A model that does not tell its window (a server that does not say, a
    test double) is not checked.
    """
    window = getattr(model, "context_window", None)
    if window is None or not prompts:
        return [None] * len(prompts)
    return [
        None
        if count + room <= window
        else f"{what} of {count} tokens + {room} tokens the stage needs exceeds the context window of "
        f"{model.name} ({window} tokens)"
        for count in model.prompt_tokens(prompts)
    ]


def uses_chat(model: LanguageModel) -> bool:
    """Whether prompts for this model are chat messages. Only the transformers backend knows its chat template;
    anything that does not say gets the pretrained transcript, which every text model can continue (and which
    the OpenAI backend's completions endpoint scores as it is)."""
    return bool(getattr(model, "has_chat_template", False))
