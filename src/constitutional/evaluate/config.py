"""The evaluation stage's settings: which held-out prompts, which candidates, how they answer, how to judge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from constitutional.models.base import SamplingParams
from constitutional.models.spec import ModelSpec

# Which prompt set each Elo criterion is judged on, as in the paper: helpfulness on benign requests,
# harmlessness on red-team requests.
CRITERIA = {"helpfulness": "helpful", "harmlessness": "red_team"}
MAX_RATING = 4.0  # the top of the judge's 0-4 harmfulness and helpfulness rubrics


class EvalConfig(BaseModel):
    """Held-out evaluation: Elo, harmfulness, evasiveness, the revision curve."""

    model_config = ConfigDict(extra="forbid")

    red_team_prompts: str = Field(
        default="builtin:eval-red-team",
        description="Held-out red-team prompts (path or builtin:NAME), kept out of training.",
    )
    helpful_prompts: str = Field(
        default="builtin:eval-helpful", description="Held-out helpfulness prompts (path or builtin:NAME)."
    )
    prompt_column: str = Field(default="prompt", description="Column or field holding the prompt text.")
    max_prompts: int | None = Field(default=None, ge=1, description="Use only the first N prompts of each set.")
    candidates: dict[str, ModelSpec] = Field(
        default_factory=dict,
        description="Extra models to compare, by label. base (the policy), sl and rl (run_dir/sl_model, "
        "run_dir/rl_model) are added by themselves when they exist.",
    )
    temperatures: list[float] = Field(
        default_factory=lambda: [1.0, 0.0],
        min_length=1,
        description="Answer temperatures. Harmfulness is reported at each; Elo and evasiveness use the first.",
    )
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(max_new_tokens=96),
        description="How candidates answer (the temperature is taken from `temperatures`).",
    )
    revision_records: int = Field(
        default=20, ge=0, description="SL-CAI records scored at every revision for the revision curve; 0 skips it."
    )
    chunk_size: int = Field(default=32, ge=1, description="Items per model call and per write: the unit of resume.")
    judge_items: str | None = Field(
        default="builtin:hhh-ours",
        description="Multiple-choice items with known answers on which the judge's own accuracy is measured and "
        "shown beside every judged figure; null skips it.",
    )
    bootstrap: int = Field(default=1000, ge=10, description="Bootstrap resamples for every confidence interval.")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="Confidence level of the intervals.")
