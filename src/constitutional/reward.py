"""A trained preference model used as a reward: the one loader behind evaluation, RL and `cai pm score`.

pm_train tokenizes its pairs with `encode` from here, and scoring reads answers through the same `encode` with the
`max_length` saved beside the model, so a score is computed on exactly the tokens the model was trained to read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from constitutional.errors import InputError
from constitutional.finetuning import load_score_model, load_tokenizer
from constitutional.jsonl import read_json_lines
from constitutional.models.base import Message, render_transcript

# pm_train writes its PMConfig here; scoring reads `max_length` from it.
SETTINGS_FILE = "pm_config.json"


def as_conversation(value: Any) -> list[Message] | None:
    """A prompt given as text or as a list of {role, content} messages; None when it is neither."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    return None


def encode(tokenizer: Any, conversation: list[Message], response: str, max_length: int | None) -> list[int]:
    """Token ids of a conversation ending in `response`; over-long sequences lose their start, never the answer."""
    if tokenizer.chat_template:
        messages = [*conversation, {"role": "assistant", "content": response}]
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    else:
        text = render_transcript(conversation) + " " + response.strip() + (tokenizer.eos_token or "")
        ids = tokenizer(text)["input_ids"]
    return ids[-max_length:] if max_length else ids


def rewards(model: Any, pad_token_id: int, sequences: Sequence[list[int]], batch_size: int = 16) -> list[float]:
    """The score head's output for each token sequence, in batches of similar length."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    out = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            ids = [torch.tensor(sequences[i]) for i in indices]
            input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_token_id).to(model.device)
            mask = pad_sequence([torch.ones_like(t) for t in ids], batch_first=True).to(model.device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits.squeeze(-1).float()
            for i, value in zip(indices, logits.tolist(), strict=True):
                out[i] = value
    return out


def with_pad_token(tokenizer: Any) -> Any:
    """The tokenizer, padding with its end-of-sequence token when it has no pad token (many causal LMs don't)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a preference-model folder, checked to give one scalar score and to know its padding."""
    if not (model_dir / "config.json").exists():
        raise InputError(
            "not a preference model folder (no config.json)", path=model_dir, hint="train one with `cai pm train`"
        )
    model = load_score_model(model_dir)
    if model.config.num_labels != 1:
        raise InputError(
            f"the preference model has num_labels={model.config.num_labels}; a reward needs one scalar score",
            path=model_dir / "config.json",
            field="num_labels",
            hint="train it with `cai pm train`, which saves a num_labels=1 model",
        )
    tokenizer = with_pad_token(load_tokenizer(model_dir))
    if model.config.pad_token_id is None:  # the score head finds each row's last token by the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_reward_model(path: str | Path, chat: bool) -> tuple[Any, Any]:
    """A preference model and its tokenizer as an RL reward for a policy that takes chat prompts (`chat`) or not."""
    path = Path(path)
    model, tokenizer = _load(path)
    if chat and not tokenizer.chat_template:
        raise InputError(
            "the policy takes chat prompts but the preference model's tokenizer has no chat template, so the "
            "conversations it should score cannot be rendered for it",
            path=path / "tokenizer_config.json",
            field="chat_template",
            hint="train the preference model from a chat model, or start RL from a policy without a chat template",
        )
    return model, tokenizer


class PreferenceModel:
    """A trained preference model read once from its folder, scoring many answers as it was trained to read them."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16):
        model_dir = Path(model_dir)
        self.model, self.tokenizer = _load(model_dir)
        settings = model_dir / SETTINGS_FILE
        self.max_length = json.loads(settings.read_text())["max_length"] if settings.exists() else None
        self.batch_size = batch_size

    def score(self, conversations: Sequence[list[Message]], responses: Sequence[str]) -> list[float]:
        """Scores (higher is better) of each response to its conversation, batched."""
        if len(conversations) != len(responses):
            raise InputError(f"{len(conversations)} conversations but {len(responses)} responses")
        sequences = [
            encode(self.tokenizer, c, r, self.max_length) for c, r in zip(conversations, responses, strict=True)
        ]
        return rewards(self.model, self.model.config.pad_token_id, sequences, self.batch_size)


def load_responses(path: str | Path) -> tuple[list[dict[str, Any]], list[list[Message]], list[str]]:
    """(rows, conversations, responses) from a JSONL of {"prompt" | "messages", "response"} for `cai pm score`."""
    path = Path(path)
    rows, conversations, responses = [], [], []
    for number, row in read_json_lines(path):
        field = "messages" if "messages" in row else "prompt"
        conversation = as_conversation(row.get(field))
        if conversation is None:
            raise InputError(
                f"missing or not a conversation: {field}",
                path=path,
                line=number,
                field=field,
                hint="give 'prompt' (a string) or 'messages' (a list of {role, content})",
            )
        if not isinstance(row.get("response"), str):
            raise InputError("missing or not a string: response", path=path, line=number, field="response")
        rows.append(row)
        conversations.append(conversation)
        responses.append(row["response"])
    return rows, conversations, responses
