"""The stage definitions: one per stage, in pipeline order (see `definitions`), and what a definition is."""

from constitutional.stages.base import Context, StageDef, local_fingerprint, upstream_hashes
from constitutional.stages.classifiers import CLASSIFIER_STAGES
from constitutional.stages.definitions import EVALUATE, RL_LABEL, STAGES

ORDER = list(STAGES)

__all__ = [
    "CLASSIFIER_STAGES",
    "EVALUATE",
    "ORDER",
    "RL_LABEL",
    "STAGES",
    "Context",
    "StageDef",
    "local_fingerprint",
    "upstream_hashes",
]
