"""The run's rows in the data formats TRL, verl and OpenRLHF read, one table per kind of data.

Column names are each framework's own; our record id (and kind) ride along in every row for provenance.

- TRL: `sft` {"messages"}; `preference` {"prompt", "chosen", "rejected"} (conversational) + `p_chosen`, the soft
  label; `prompts` {"prompt"} for GRPO/RLOO, + `reference` (the run's answer), which TRL passes to reward functions.
- verl: `prompts` {"data_source", "prompt" (chat messages), "ability", "reward_model": {"style", "ground_truth"},
  "extra_info": {"index", "split", "id", "kind", "conversation"}}; `sft` {"messages"} (its multi-turn SFT data).
  verl trains no reward model from preference pairs, so none are written for it.
- OpenRLHF: `prompts` {"input" (messages), "label" (JSON: id, kind, conversation, reference), "datasource"};
  `sft` {"input" (prompt messages), "output" (the answer as a message)}; `preference` as TRL's (its reward-model
  trainer reads `--data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from constitutional.export.source import PromptRow, RunRows, Split

Format = Literal["trl", "verl", "openrlhf"]
FileType = Literal["jsonl", "parquet"]
# verl's trainers read parquet first; TRL and OpenRLHF read JSON Lines as readily, and people read them.
DEFAULT_FILE_TYPE: dict[str, FileType] = {"trl": "jsonl", "verl": "parquet", "openrlhf": "jsonl"}
# verl's `ability` names the task family; ours are harmlessness (red-team prompts) and helpfulness.
ABILITY = {"red_team": "harmlessness", "helpful": "helpfulness"}
TABLES = ("prompts", "sft", "preference")


def data_source(kind: str) -> str:
    """The dataset name a framework logs metrics under: one per kind, so harmlessness and help are seen apart."""
    return f"constitutional/{kind}"


def trl_tables(rows: RunRows, split: Split) -> dict[str, list[dict[str, Any]]]:
    prompts = [{"prompt": p.messages, "id": p.id, "kind": p.kind, "reference": p.reference} for p in rows.prompts]
    return {"prompts": prompts, "sft": rows.sft, "preference": rows.preferences}


def verl_prompt(prompt: PromptRow, index: int, split: Split) -> dict[str, Any]:
    # verl passes a reward function the decoded completion, ground truth and extra_info only: the conversation
    # goes in extra_info so a preference model or judge can read what the completion answers.
    return {
        "data_source": data_source(prompt.kind),
        "prompt": prompt.messages,
        "ability": ABILITY[prompt.kind],
        "reward_model": {"style": "model", "ground_truth": prompt.reference or ""},
        "extra_info": {
            "index": index,
            "split": split,
            "id": prompt.id,
            "kind": prompt.kind,
            "conversation": prompt.messages,
        },
    }


def verl_tables(rows: RunRows, split: Split) -> dict[str, list[dict[str, Any]]]:
    prompts = [verl_prompt(p, index, split) for index, p in enumerate(rows.prompts)]
    return {"prompts": prompts, "sft": rows.sft}


def openrlhf_label(prompt: PromptRow) -> str:
    """OpenRLHF hands a reward only the templated text and the label: the label carries what scoring needs."""
    return json.dumps(
        {"id": prompt.id, "kind": prompt.kind, "conversation": prompt.messages, "reference": prompt.reference}
    )


def openrlhf_tables(rows: RunRows, split: Split) -> dict[str, list[dict[str, Any]]]:
    prompts = [
        {
            "input": p.messages,
            "label": openrlhf_label(p),
            "datasource": data_source(p.kind),
            "id": p.id,
            "kind": p.kind,
        }
        for p in rows.prompts
    ]
    sft = [
        {"input": r["messages"][:-1], "output": r["messages"][-1:], "id": r["id"], "kind": r["kind"]} for r in rows.sft
    ]
    return {"prompts": prompts, "sft": sft, "preference": rows.preferences}


TABLE_MAKERS: dict[str, Callable[[RunRows, Split], dict[str, list[dict[str, Any]]]]] = {
    "trl": trl_tables,
    "verl": verl_tables,
    "openrlhf": openrlhf_tables,
}
