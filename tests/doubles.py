"""Test doubles shared by several test files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DiesOnCall:
    """Wraps a model and dies on its n-th generate call, as a killed process would."""

    model: object
    fail_on_call: int
    calls: int = 0

    @property
    def name(self) -> str:
        return self.model.name

    def generate(self, prompts, params):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        return self.model.generate(prompts, params)

    def choice_logprobs(self, prompts, choices):
        return self.model.choice_logprobs(prompts, choices)
