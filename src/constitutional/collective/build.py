"""Collective Constitutional AI end to end: a conversation's votes in, a constitution with provenance out.

`build` loads the conversation, finds opinion groups, keeps the statements the chosen consensus rule accepts, merges
near-duplicates, writes them as principles, and writes three files: the constitution (YAML, validated by the
constitution schema before it replaces anything), its provenance (JSON: for every principle the statements it came
from and each group's votes on them) and, if asked, the HTML report page. Each is written to a temporary file and
renamed into place, so an interrupted build leaves no half-written file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from constitutional.collective.consensus import Consensus, score_statements
from constitutional.collective.conversation import Conversation
from constitutional.collective.groups import find_groups
from constitutional.collective.ingest import load_conversation
from constitutional.collective.principles import WRITER_PARAMS, merge_similar, write_principles
from constitutional.collective.provenance import constitution_document, provenance_document
from constitutional.collective.result import BuildResult, CollectiveConfig
from constitutional.constitution import Constitution, load_constitution
from constitutional.errors import InputError, from_validation
from constitutional.models.base import LanguageModel
from constitutional.models.sentence import Embedder, MiniLM


def build(
    source: str | Path,
    output: str | Path,
    *,
    config: CollectiveConfig | None = None,
    writer: LanguageModel | None = None,
    embedder: Embedder | None = None,
    provenance: str | Path | None = None,
    report: str | Path | None = None,
) -> BuildResult:
    """Build a constitution from the conversation in `source` (a Polis export or plain statement/vote files).

    `output` is the constitution YAML; `provenance` defaults to `<output stem>.provenance.json` beside it; `report`,
    when given, is the HTML page. `writer` drafts the principles (template fallback without one); `embedder`
    replaces the embedded MiniLM for merging near-duplicates.
    """
    started = time.perf_counter()
    config = config or CollectiveConfig()
    output = Path(output)
    provenance = Path(provenance) if provenance else output.with_name(f"{output.stem}.provenance.json")
    conversation = load_conversation(source, config.attribution)
    groups = find_groups(conversation, min_votes=config.min_votes, k_range=(2, config.max_groups), seed=config.seed)
    consensus = score_statements(conversation, groups, config.rule, config.threshold)
    selected = consensus.selected()
    if not selected:
        raise _nothing_agreed(conversation, consensus)
    if config.merge and embedder is None:
        embedder = MiniLM()
    merged = merge_similar(selected, embedder if config.merge else None, config.merge_similarity)
    params = WRITER_PARAMS.model_copy(update={"seed": config.seed})
    principles = write_principles(merged[: config.max_principles], writer, params)
    names = {"constitution": output.name, "provenance": provenance.name}
    document = constitution_document(conversation, groups, consensus, principles, config, names)
    staged, constitution = _stage_constitution(output, document)
    outputs = {"constitution": output, "provenance": provenance} | ({"report": Path(report)} if report else {})
    result = BuildResult(
        conversation=conversation,
        groups=groups,
        consensus=consensus,
        principles=principles,
        constitution=constitution,
        config=config,
        outputs=outputs,
        seconds=0.0,
        writer=getattr(writer, "name", None),
        embedder=_name_of(embedder) if config.merge else None,
    )
    try:
        _write_text(provenance, json.dumps(provenance_document(result), indent=2, ensure_ascii=False) + "\n")
        if report:
            from constitutional.collective.page import render_page

            _write_text(Path(report), render_page(result))
        # The constitution goes in last, so it never stands without its provenance.
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - started
    return result


def config_from(**options: Any) -> CollectiveConfig:
    """A CollectiveConfig from command-line options; a bad value is an InputError naming the option."""
    try:
        return CollectiveConfig(**{key: value for key, value in options.items() if value is not None})
    except ValidationError as err:
        raise from_validation(err, hint="see --help for the accepted values") from None


def _name_of(embedder: Embedder | None) -> str | None:
    return getattr(embedder, "name", getattr(embedder, "__name__", type(embedder).__name__))


def _nothing_agreed(conversation: Conversation, consensus: Consensus) -> InputError:
    best = ", ".join(f"{s.statement.id} ({s.score:.3f})" for s in consensus.ranked[:3])
    return InputError(
        f"no statement passes the {consensus.rule} rule above {consensus.threshold:.2f}; the best are {best}",
        path=conversation.source,
        hint="lower the threshold or pick another rule; nothing was written",
    )


def _stage_constitution(path: Path, document: dict[str, Any]) -> tuple[Path, Constitution]:
    """The YAML in a temporary file beside `path`, read back through the constitution schema."""
    header = "".join(f"# {line}\n" for line in document.pop("_header"))
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=119)
    temporary = _temporary(path, text)
    try:
        return temporary, load_constitution(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    os.replace(_temporary(path, text), path)


def _temporary(path: Path, text: str) -> Path:
    """A hidden file beside `path` (same file system, so the rename is atomic), named per process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    return temporary
