"""A model wrapper for throughput benchmarks: it records what every call returned, so tokens are counted after the
timed region with the same tokenizer in every arm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from constitutional.models import LanguageModel, Prompt, SamplingParams


@dataclass
class CountingModel:
    """Records every real call to the model and the texts it returned; counting happens after timing."""

    model: LanguageModel
    calls: int = 0
    completions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.model.name

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        texts = self.model.generate(prompts, params)
        self.calls += 1
        self.completions.extend(texts)
        return texts

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        return self.model.choice_logprobs(prompts, choices)
