"""An OpenRLHF remote reward: `reward_func(queries, prompts, labels)` for `--reward.remote_url FILE.py`, and the
same over HTTP (`cai reward serve`, then `--reward.remote_url http://127.0.0.1:5000/get_reward`).

OpenRLHF hands over each query as the chat-templated prompt followed by the completion (special tokens included),
the templated prompt, and the row's label. The prompt rows `cai export --format openrlhf` writes put a JSON label
there: our record id, kind, the conversation as messages and the run's answer to it (the judge's reference).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from constitutional.errors import InputError
from constitutional.export.scorers import ScoreItem, messages, reward_for, reward_source

# End-of-turn markers a decoded query ends with (<|im_end|>, <|eot_id|>, </s>, <end_of_turn>, <eos> ...): the
# reward reads the answer, and renders its own end of turn when it needs one.
TRAILING_MARKERS = re.compile(r"(\s*(<\|[^<>|]{1,40}\|>|</s>|<eos>|<end_of_turn>|<pad>))+\s*$")
# How much of the prompt's end is searched for when the query does not start with the whole prompt (OpenRLHF
# keeps the end of an over-long prompt; decoding may also not give back the prompt's text exactly).
PROMPT_TAIL = 200


def completion_of(query: str, prompt: str) -> str:
    """The completion inside a query: what follows the prompt, end-of-turn markers removed."""
    if query.startswith(prompt):
        rest = query[len(prompt) :]
    else:
        tail = prompt[-PROMPT_TAIL:]
        at = query.rfind(tail)
        if at < 0:
            raise InputError(
                "the query does not contain the end of its prompt, so the completion cannot be found in it",
                field="query",
                hint="send queries as OpenRLHF does: the templated prompt followed by the completion",
            )
        rest = query[at + len(tail) :]
    return TRAILING_MARKERS.sub("", rest).strip()


def item_from_label(completion: str, label: Any) -> ScoreItem:
    try:
        found = json.loads(label) if isinstance(label, str) else label
        conversation = found["conversation"]
    except (TypeError, KeyError, json.JSONDecodeError):
        raise InputError(
            f"label {str(label)[:80]!r} is not the JSON label `cai export` writes",
            field="label",
            hint="train on the prompts `cai export --format openrlhf` wrote, with --data.label_key label",
        ) from None
    return ScoreItem(
        messages(conversation), completion, found.get("kind", "red_team"), found.get("reference"), found.get("id", "")
    )


def scores(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], reward: str | None) -> list[float]:
    items = [item_from_label(completion_of(q, p), label) for q, p, label in zip(queries, prompts, labels, strict=True)]
    return reward_for(reward_source(reward)).score(items)


class RewardRequest(BaseModel):
    """OpenRLHF's request body: the queries, their prompts and their labels, in the same order."""

    query: list[str]
    prompts: list[str]
    labels: list[Any]


def reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], reward: str | None = None
) -> dict[str, Any]:
    """OpenRLHF's reward-function contract: tensors of rewards and of scores, and extra logs."""
    import torch

    values = torch.tensor(scores(queries, prompts, labels, reward), dtype=torch.float32)
    return {"rewards": values, "scores": values, "extra_logs": {"cai_reward": values}}


def reward_app(reward: str | Path):
    """The HTTP form: POST /get_reward with OpenRLHF's payload {"query", "prompts", "labels"}; GET /health."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    source = reward_source(reward)
    reward_for(source)  # load before serving: a bad reward fails at start, not at the first request
    app = FastAPI(title="constitutional reward")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "reward": source}

    @app.post("/get_reward")
    async def get_reward(payload: RewardRequest):
        try:
            values = await run_in_threadpool(scores, payload.query, payload.prompts, payload.labels, source)
        except InputError as err:
            return JSONResponse({"error": {"message": str(err), "type": "invalid_request_error"}}, status_code=400)
        return {"rewards": values, "scores": values, "extra_logs": {"cai_reward": values}}

    return app
