"""compare/summary.json (`CompareSummary`): the 2x2 adherence cells, the per-principle rows, the judge's
behaviour and each run's side, everything the side-by-side page shows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from constitutional.compare.spec import AdherenceConfig, Side
from constitutional.records import EloRow, Interval, JudgeQuality

# ---- the summary ------------------------------------------------------------------------------------------------


class AdherenceCell(BaseModel):
    """One cell of the 2x2 table: a run's model scored against one constitution."""

    model_config = ConfigDict(extra="forbid")

    model: Side = Field(description="The run (its constitution) the model was trained on.")
    constitution: Side = Field(description="The constitution its answers were scored against.")
    adherence: Interval = Field(description="Mean P(follows) over answers (each averaged over the principles).")
    answers: int
    principles: int


class PrincipleRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    constitution: Side
    id: str
    text: str
    adherence: dict[str, float] = Field(description="Model (run) -> mean P(follows) over its answers.")


class JudgeBehaviour(BaseModel):
    """How the judge answered these Yes/No questions, measured on them: no ground truth needed."""

    model_config = ConfigDict(extra="forbid")

    judge: str
    questions: int
    mean_p_yes: float = Field(description="Mean P(Yes) over both phrasings; 0.5 means no leaning either way.")
    consistent: float = Field(
        description="Share of items where 'follows?' and 'goes against?' get opposite answers, as they should."
    )
    at_chance: bool = Field(
        description="True when that share is not above one half at the 5% level (exact one-sided binomial test): "
        "the judge's verdicts do not depend on what it is asked."
    )


class RunSide(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str
    constitution: str = Field(description="name@version of the constitution the run was trained on.")
    candidate: str = Field(description="Which of the run's models was scored for adherence (rl or sl).")
    model_name: str
    report: str | None = Field(description="The run's own report, relative to the comparison directory.")
    judge: str | None
    elo: dict[str, list[EloRow]]
    judge_quality: JudgeQuality | None


class CompareSummary(BaseModel):
    """compare/summary.json: everything the side-by-side page shows."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    export: str
    attribution: str | None
    constitution_file: str = Field(description="The collective constitution, relative to the comparison directory.")
    build_page: str | None = Field(description="Its build report (opinion groups, consensus, provenance).")
    runs: dict[str, RunSide]
    adherence: list[AdherenceCell]
    principles: list[PrincipleRow]
    judge: JudgeBehaviour
    settings: AdherenceConfig
    seconds: float
