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


@dataclass(frozen=True)
class ExitsOnceLoader:
    """Loads a model whose process exits on its n-th generate call, the first time any process gets there (a marker
    file remembers): a Ray worker that dies mid-chunk, then comes back healthy when Ray restarts it."""

    marker: str
    on_call: int = 2

    def __call__(self, spec):
        from constitutional.models import load_model

        return _ExitsOnce(load_model(spec), self.marker, self.on_call)


class _ExitsOnce:
    def __init__(self, model, marker: str, on_call: int):
        self.model, self.marker, self.on_call, self.calls = model, marker, on_call, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, prompts, params):
        import os

        self.calls += 1
        if self.calls == self.on_call:
            try:
                with open(self.marker, "x") as mark:  # only the first process to get here dies
                    mark.write(str(os.getpid()))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return self.model.generate(prompts, params)
