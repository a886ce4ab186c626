"""The training settings of both classifiers, apart from the code that trains them: a recipe reads them (and
every `cai` command reads the recipe) without importing torch, transformers or scikit-learn."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from constitutional.classifiers.thresholds import DEFAULT_TARGET_FPR
from constitutional.models.sentence import MINILM_NAME


class InputClassifierSettings(BaseModel):
    """Fine-tuning the input classifier. The defaults train a few thousand short conversations in minutes on a CPU."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(
        default=MINILM_NAME, description=f"Encoder under the head: '{MINILM_NAME}' (embedded) or a local model folder."
    )
    max_length: int = Field(
        default=256,
        ge=16,
        description="Tokens read per conversation; longer ones lose their beginning, so the last request is kept "
        "(MiniLM was trained on pieces of at most 256 tokens).",
    )
    epochs: float = Field(default=3.0, gt=0)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0, description="Full fine-tuning: the encoder is small.")
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.1, ge=0, lt=1, description="Share of the steps with a rising learning rate.")
    checkpoint_steps: int = Field(default=100, ge=1, description="Resumable checkpoint every N optimizer steps.")
    target_fpr: float = Field(
        default=DEFAULT_TARGET_FPR, gt=0, lt=1, description="False-positive rate the threshold is calibrated to."
    )
    seed: int = 0


class StreamClassifierSettings(BaseModel):
    """Training the value head of the streaming output classifier on a frozen backbone."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(
        default="smollm2-135m-instruct",
        description="Causal LM whose hidden states the head reads; attach the classifier to this same model "
        "when it generates, and the classifier costs only its head.",
    )
    dtype: str = Field(default="auto", description="Backbone precision: auto (bf16 on CPU), float32, bfloat16.")
    layer: int = Field(default=-1, description="Decoder layer whose output the head reads; negative from the end.")
    head_hidden: int = Field(default=0, ge=0, description="Hidden units of the head; 0 for a linear probe.")
    cummax_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of the loss on the running maximum of the scores (the rest: per-token prediction).",
    )
    max_answer_tokens: int = Field(default=256, ge=1, description="Answer tokens read per training example.")
    epochs: int = Field(default=30, ge=1, description="Passes over the cached hidden states (cheap: head only).")
    batch_size: int = Field(default=32, ge=1, description="Answers per head-training step.")
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    target_fpr: float = Field(default=DEFAULT_TARGET_FPR, gt=0, lt=1)
    seed: int = 0
