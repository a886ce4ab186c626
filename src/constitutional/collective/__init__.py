"""Collective Constitutional AI: from a public conversation's votes to a constitution whose principles cite them.

Load a Polis export (or plain statement and vote files), find opinion groups the way Polis does, keep the statements
every group agrees with (group-aware consensus), merge near-duplicates with the embedded MiniLM, and write them as
critique/revision and comparison principles, each recording its source statements and every group's agreement.
"""

from constitutional.collective.build import build, config_from
from constitutional.collective.consensus import RULES, Consensus, StatementScore, score_statements
from constitutional.collective.conversation import Conversation, Statement
from constitutional.collective.groups import OpinionGroups, agreement_with, find_groups
from constitutional.collective.ingest import load_conversation
from constitutional.collective.page import render_page
from constitutional.collective.principles import Principle, merge_similar, write_principles
from constitutional.collective.result import BuildResult, CollectiveConfig
from constitutional.models.sentence import Embedder, MiniLM

__all__ = [
    "RULES",
    "BuildResult",
    "CollectiveConfig",
    "Consensus",
    "Conversation",
    "Embedder",
    "MiniLM",
    "OpinionGroups",
    "Principle",
    "Statement",
    "StatementScore",
    "agreement_with",
    "build",
    "config_from",
    "find_groups",
    "load_conversation",
    "merge_similar",
    "render_page",
    "score_statements",
    "write_principles",
]
