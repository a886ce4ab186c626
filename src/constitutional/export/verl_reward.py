"""A verl custom reward function: `custom_reward_function.path=<this file or the one cai export writes>`.

verl's reward loop calls `compute_score` once per completion, from a pool of threads; the calls that arrive while
the model is busy are scored together (see `scorers.Batcher`). verl's batch reward manager
(`reward_model.reward_manager=batch`) calls `compute_score_batch` with whole lists instead.

verl hands a reward function only the decoded completion, the row's `reward_model.ground_truth` and its
`extra_info`; the prompt rows `cai export --format verl` writes carry the conversation, our record id and kind in
`extra_info`, and the run's answer to the prompt as the ground truth (the reference a comparing judge needs). The
reward is named by `reward=` (a reward kwarg in verl's config), else `extra_info["cai_reward"]`, else $CAI_REWARD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from constitutional.errors import InputError
from constitutional.export.scorers import ScoreItem, messages, reward_for, reward_source


def score_item(solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None) -> ScoreItem:
    extra = extra_info or {}
    if "conversation" not in extra:
        raise InputError(
            "extra_info has no 'conversation': the reward cannot see what the completion answers",
            field="extra_info.conversation",
            hint="train on the prompts `cai export --format verl` wrote, or add the chat messages there",
        )
    return ScoreItem(
        conversation=messages(extra["conversation"]),
        completion=solution_str,
        kind=str(extra.get("kind") or "red_team"),
        reference=str(ground_truth) if ground_truth else None,
        id=str(extra.get("id") or ""),
    )


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    reward: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """`{"score": reward}` of one completion."""
    source = reward_source(reward or (extra_info or {}).get("cai_reward"))
    (value,) = reward_for(source).score([score_item(solution_str, ground_truth, extra_info)])
    return {"score": value}


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict[str, Any] | None],
    reward: str | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """`[{"score": reward}, ...]` for a whole batch, in one call of the model."""
    first = extra_infos[0] if len(extra_infos) else None
    source = reward_source(reward or (first or {}).get("cai_reward"))
    items = [score_item(s, g, e) for s, g, e in zip(solution_strs, ground_truths, extra_infos, strict=True)]
    return [{"score": value} for value in reward_for(source).score(items)]
