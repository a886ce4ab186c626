"""A TRL reward function: `GRPOTrainer(..., reward_funcs=[ConstitutionalReward("reward.json")])` (or RLOOTrainer).

TRL calls it with the batch's prompts and completions (conversational or plain text) and every other dataset
column as a keyword list: the prompt rows `cai export --format trl` writes carry `id`, `kind` and `reference`,
which the judge uses; the preference model needs only the conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from constitutional.export.scorers import ScoreItem, messages, reward_for, reward_source


def completion_text(completion: Any) -> str:
    """A completion as text: TRL hands conversational completions as [{"role": "assistant", "content": ...}]."""
    return completion if isinstance(completion, str) else messages(completion)[-1]["content"]


class ConstitutionalReward:
    """`(prompts, completions, **columns) -> list[float]`; the reward is loaded on the first call, then kept."""

    def __init__(self, reward: str | Path | None = None, name: str = "constitutional_reward"):
        self.source = reward_source(reward)
        self.__name__ = name  # TRL logs each reward function's mean under its __name__

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        count = len(prompts)
        kinds = columns.get("kind") or ["red_team"] * count
        references = columns.get("reference") or [None] * count
        ids = columns.get("id") or [""] * count
        items = [
            ScoreItem(messages(prompt), completion_text(completion), kind, reference, str(record_id))
            for prompt, completion, kind, reference, record_id in zip(
                prompts, completions, kinds, references, ids, strict=True
            )
        ]
        return reward_for(self.source).score(items)
