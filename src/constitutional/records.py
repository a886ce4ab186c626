"""The typed records stages read and write. Every record carries its schema version and provenance."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from constitutional.models.base import Message

SCHEMA_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    id: str


class PromptRecord(Record):
    """A conversation to answer; its last message is the user's."""

    messages: list[Message]
    source: str = Field(description="Where the prompt came from: a file path or a built-in set.")


class RevisionStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principle: str = Field(description="Id of the principle drawn for this step.")
    critique: str | None = Field(description="None when revising directly, without a critique.")
    revision: str


class SLRecord(Record):
    """One red-team prompt through the critique -> revision loop, or one helpfulness answer (no steps)."""

    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    initial: str
    steps: list[RevisionStep] = Field(default_factory=list)
    constitution: str = Field(description="name@version of the constitution used.")
    model: str
    params: dict[str, Any]
    seed: int

    @property
    def final(self) -> str:
        return self.steps[-1].revision if self.steps else self.initial


class RejectedRecord(Record):
    """An input a stage did not process, kept with the reason rather than dropped silently."""

    reason: str
    source: str


class PairRecord(Record):
    """Two answers from the policy to one prompt, sampled at temperature 1: the material for AI feedback."""

    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    a: str
    b: str
    constitution: str = Field(description="name@version of the run's constitution.")
    model: str
    params: dict[str, Any]
    seed: int


class ComparisonRecord(Record):
    """The feedback model's soft preference between the two answers of a pair.

    `p_a` is the final label: P(a is the better answer), averaged over the drawn principles and, when
    debiased, over both presentation orders. The per-order figures stay so position bias can be measured.
    """

    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    a: str
    b: str
    principles: list[str] = Field(description="Ids of the comparison principles drawn (k for an ensemble).")
    p_a: float = Field(ge=0.0, le=1.0)
    p_a_first: float = Field(ge=0.0, le=1.0, description="P(a better) with a shown as option (A).")
    p_a_second: float | None = Field(
        default=None, ge=0.0, le=1.0, description="P(a better) with a shown as option (B); None unless debiased."
    )
    logprobs: list[list[float]] = Field(description="[log p(A), log p(B)] per principle and order scored.")
    cot: list[str] | None = Field(default=None, description="Chain-of-thought texts, in CoT mode.")
    clamped: bool = Field(default=False, description="True when a CoT probability was clamped.")
    constitution: str
    model: str
    seed: int

    def preference_row(self) -> dict[str, Any]:
        """TRL's preference format plus the soft label: {"prompt", "chosen", "rejected", "p_chosen"}."""
        a_wins = self.p_a >= 0.5
        chosen, rejected = (self.a, self.b) if a_wins else (self.b, self.a)
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "p_chosen": self.p_a if a_wins else 1.0 - self.p_a,
            "kind": self.kind,
            "id": self.id,
        }


class Interval(BaseModel):
    """A mean (or fitted value) with a confidence interval."""

    model_config = ConfigDict(extra="forbid")

    value: float
    low: float
    high: float


class EloRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The candidate's label (base, sl, rl, or as named in the recipe).")
    elo: Interval
    comparisons: int


class HarmfulnessRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float
    judge_score: Interval = Field(description="Mean 0-4 harmfulness from the judge's rubric (4 = most harmful).")
    pm_score: Interval | None = Field(description="Mean preference-model score; None without a preference model.")
    responses: int


class EvasivenessRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    judge_share: Interval = Field(description="Share of answers the judge calls evasive.")
    lexical_share: Interval = Field(description="Share flagged by the lexical refusal detector.")
    agreement: float = Field(description="Share of answers on which the judge and the lexical detector agree.")
    responses: int


class RevisionPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(description="0 is the initial answer, n the n-th revision.")
    harmlessness: Interval = Field(description="Preference-model score of the answer at this revision.")
    helpfulness: Interval = Field(description="The judge's helpfulness score of the answer at this revision.")


class CalibrationBin(BaseModel):
    """One equal-width bin of a reliability diagram."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    count: int
    predicted: float = Field(description="Mean predicted probability in the bin.")
    observed: float = Field(description="Mean outcome in the bin: share correct, or the mean soft label.")


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ece: float = Field(description="Expected calibration error: count-weighted |observed - predicted| over bins.")
    bins: list[CalibrationBin] = Field(description="The non-empty bins, in order.")


class LabelStats(BaseModel):
    """How the AI-feedback labels came out; the rl_label stage's summary, read by the CLI and the report."""

    model_config = ConfigDict(extra="forbid")

    labels: int
    mean_p_a: float | None
    p_a_histogram: list[int] = Field(description="Counts in ten bins of P(a better), from 0-0.1 to 0.9-1.0.")
    share_clamped: float | None
    position_flip_share: float | None = Field(
        description="Among pairs scored in both orders, the share whose preferred answer flips with the order."
    )
    mean_order_gap: float | None = Field(description="Mean |P(a better | a first) - P(a better | a second)|.")


class KindAccuracy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: int
    accuracy: float | None


class PMMetrics(BaseModel):
    """What pm_train measured; written beside the preference model, read by the report."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    train_pairs: int
    train_red_team: int
    train_helpful: int
    held_out_pairs: int
    accuracy: float | None = Field(description="Held-out pairwise accuracy against the hard label (p > 0.5).")
    by_kind: dict[str, KindAccuracy]
    calibration: Calibration | None = Field(description="sigmoid(margin) against the held-out soft labels.")


class JudgeQuality(BaseModel):
    """How good the judge behind a run's judged figures is, on a multiple-choice set with known answers."""

    model_config = ConfigDict(extra="forbid")

    judge: str
    items: str = Field(description="The item set, e.g. builtin:hhh-ours.")
    count: int
    mode: str = Field(description="How items were scored, e.g. 'debiased' (both option orders averaged).")
    accuracy: float
    accuracy_low: float = Field(description="Lower end of the 95% Clopper-Pearson interval of the accuracy.")
    accuracy_high: float
    ece: float
    at_chance: bool = Field(
        description="True when the accuracy interval includes 0.5: the judge's verdicts are noise."
    )


class EvalSummary(BaseModel):
    """What the evaluate stage concludes; written to run_dir/evaluate/summary.json, read by the report."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    judge: str
    elo: dict[str, list[EloRow]] = Field(description="Criterion (helpfulness, harmlessness) -> one row per model.")
    harmfulness: list[HarmfulnessRow]
    evasiveness: list[EvasivenessRow]
    revision_curve: list[RevisionPoint]
    revision_harmlessness: Literal["preference_model", "judge"] = Field(
        default="preference_model",
        description="What scored harmlessness in the revision curve: the preference model, or, without one, "
        "the judge (4 minus its 0-4 harmfulness rating).",
    )
    judge_quality: JudgeQuality | None = Field(
        default=None, description="The judge measured on a multiple-choice set; None when the recipe skips it."
    )


class EvalAnswer(BaseModel):
    """A candidate's answer to a held-out prompt."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["answer"] = "answer"
    model: str = Field(description="The candidate's label (base, sl, rl, or as named in the recipe).")
    model_name: str = Field(description="The weights behind the label: an embedded name, HF id or path.")
    prompt_id: str
    kind: Literal["red_team", "helpful"]
    prompt: list[Message]
    temperature: float
    text: str
    seed: int


class EvalPairwise(BaseModel):
    """The judge's preference between two candidates' answers to one prompt under one criterion."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["pairwise"] = "pairwise"
    criterion: Literal["helpfulness", "harmlessness"]
    prompt_id: str
    a: str = Field(description="Label of the candidate whose answer is 'a'.")
    b: str
    p_a: float = Field(ge=0.0, le=1.0, description="P(a better), the mean of both presentation orders.")
    p_a_first: float = Field(ge=0.0, le=1.0, description="P(a better) with a shown as (A).")
    p_a_second: float = Field(ge=0.0, le=1.0, description="P(a better) with a shown as (B).")
    logprobs: list[list[float]] = Field(description="[log p(A), log p(B)] for the a-first and the a-second order.")
    judge: str


class EvalRating(BaseModel):
    """One score of one text: a judge rubric (expected value over its options) or the preference model."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rating"] = "rating"
    metric: Literal["harmfulness", "helpfulness", "evasive", "pm"] = Field(
        description="harmfulness/helpfulness: 0-4 expected rating; evasive: P(yes); pm: preference-model score."
    )
    target: str = Field(description="Id of the answer rated, or sl:<record id>:<revision> for the revision curve.")
    model: str = Field(description="Candidate label, or 'revisions' for revision-curve texts.")
    temperature: float | None = None
    revision: int | None = Field(default=None, description="Revision number for revision-curve texts.")
    score: float
    probs: list[float] = Field(default_factory=list, description="The judge's normalized option probabilities.")
    scorer: str = Field(description="The judge's name, or the preference model's folder.")


class EvalRecord(Record):
    """One line of the evaluate stage: an answer, a pairwise judgement or a rating (one shard stream, one reset)."""

    entry: EvalAnswer | EvalPairwise | EvalRating = Field(discriminator="type")
