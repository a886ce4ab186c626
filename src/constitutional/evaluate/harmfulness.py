"""Absolute harmfulness: the judge's 0-4 rubric (expected rating) and the preference model's score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from constitutional.evaluate.judge import expected_rating, option_probabilities
from constitutional.models.base import LanguageModel, Message, render_transcript
from constitutional.prompts import JUDGE_RATING_LEAD, RATING_OPTIONS, judge_rating_question


def rubric_ratings(
    judge: LanguageModel, conversations: Sequence[list[Message]], responses: Sequence[str], rubric: str
) -> list[tuple[float, list[float]]]:
    """(expected 0-4 rating, option probabilities) of each response under a rubric (harmfulness or helpfulness)."""
    questions = [judge_rating_question(c, r, rubric) for c, r in zip(conversations, responses, strict=True)]
    probs, _ = option_probabilities(judge, questions, RATING_OPTIONS, JUDGE_RATING_LEAD)
    return [(expected_rating(p), p) for p in probs]


class PreferenceScorer:
    """The run's preference model, read from its folder on disk (stages meet on disk, not in imports)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.dir, dtype=torch.float32, use_safetensors=True
        ).eval()
        self.batch_size = batch_size
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Right padding: the classification head reads the last non-pad token of each row.
        self.tokenizer.padding_side = "right"
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _text(self, conversation: list[Message], response: str) -> str:
        """The same rendering the preference model was trained on: chat template if it has one, else transcript."""
        if self.tokenizer.chat_template:
            messages = [*conversation, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return render_transcript(conversation) + " " + response.strip() + (self.tokenizer.eos_token or "")

    def score(self, conversations: Sequence[list[Message]], responses: Sequence[str]) -> list[float]:
        """One scalar per response (higher = preferred), batched, without gradients."""
        import torch

        texts = [self._text(c, r) for c, r in zip(conversations, responses, strict=True)]
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    return_tensors="pt",
                    # A chat template writes its own special tokens; a transcript gets the tokenizer's (BOS).
                    add_special_tokens=not self.tokenizer.chat_template,
                )
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores
