"""Collective against built-in: the CAI pipeline run twice, differing only in the constitution, set side by side.

A comparison spec (YAML, `CompareSpec`) names a public conversation's export, a base recipe and the overrides that
size both runs, and the built-in constitution to compare with. `run` then

1. builds the collective constitution from the export (`collective.build`), skipped when it is there already and
   neither the export nor the build settings changed;
2. runs the pipeline twice through `pipeline.run`, into `collective/` and `builtin/`: the same recipe, except for
   `constitution` (and the run directory). Complete stages are skipped, stopped ones resume;
3. asks the recipe's judge, for each run's final model (`rl`, else `sl`) and each of its held-out answers from the
   evaluate stage, whether the answer follows each of a seeded sample of principles of EACH constitution. The
   question is put twice, "does it follow" and "does it go against", both answered Yes or No and read from one
   scoring pass each; P(follows) is the mean of P(Yes) to the first and P(No) to the second, so a judge that says
   Yes to everything scores exactly 0.5 instead of 1. Records go to `compare/` a chunk at a time (resumable);
4. writes `compare/summary.json` (`CompareSummary`) and one self-contained page, `report.html`: Elo per criterion
   of both runs, the 2x2 adherence table (model trained on X, scored against constitution Y), the judge's measured
   accuracy, and links to each run's own report.

Layout of the comparison directory::

    RUN_DIR/comparison.json               the spec as resolved (what was compared)
    RUN_DIR/constitution/collective.yaml  the collective constitution, its provenance, its build page, build.json
    RUN_DIR/collective/, RUN_DIR/builtin/ two ordinary run directories (manifest, stages, report.html)
    RUN_DIR/compare/part-*.jsonl          adherence records; summary.json
    RUN_DIR/report.html                   the side-by-side page
"""

from constitutional.compare.adherence import (
    ADHERENCE_QUESTIONS,
    ADHERENCE_RUBRIC,
    FINAL_CANDIDATES,
    TEMPLATES,
    AdherenceRecord,
    Answer,
    Item,
    adherence_questions,
    final_answers,
    pick_prompts,
    sample_principles,
    score_adherence,
    summarize_adherence,
)
from constitutional.compare.page import ASSETS, TITLES, render_page
from constitutional.compare.runner import CompareResult, build_constitution, run
from constitutional.compare.spec import (
    BUILTIN,
    COLLECTIVE,
    FILES,
    PER_RUN_KEYS,
    SIDES,
    AdherenceConfig,
    CompareSpec,
    Side,
    load_spec,
    location,
    recipes,
)
from constitutional.compare.summary import AdherenceCell, CompareSummary, JudgeBehaviour, PrincipleRow, RunSide

__all__ = [
    "ADHERENCE_QUESTIONS",
    "ADHERENCE_RUBRIC",
    "ASSETS",
    "BUILTIN",
    "COLLECTIVE",
    "FILES",
    "FINAL_CANDIDATES",
    "PER_RUN_KEYS",
    "SIDES",
    "TEMPLATES",
    "TITLES",
    "AdherenceCell",
    "AdherenceConfig",
    "AdherenceRecord",
    "Answer",
    "CompareResult",
    "CompareSpec",
    "CompareSummary",
    "Item",
    "JudgeBehaviour",
    "PrincipleRow",
    "RunSide",
    "Side",
    "adherence_questions",
    "build_constitution",
    "final_answers",
    "load_spec",
    "location",
    "pick_prompts",
    "recipes",
    "render_page",
    "run",
    "sample_principles",
    "score_adherence",
    "summarize_adherence",
]
