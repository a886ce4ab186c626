"""The report page of a collective constitution build: one self-contained HTML file (plots inlined as PNG).

Statements and principles are text from the public and from a model: every piece of text goes through html.escape.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from constitutional.collective.consensus import StatementScore
from constitutional.collective.groups import LEFT_OUT

if TYPE_CHECKING:
    from constitutional.collective.principles import Principle
    from constitutional.collective.result import BuildResult

# Matplotlib's tab10, so a group has the same colour on the map and in the bars.
GROUP_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
LEFT_OUT_COLOUR = "#c8c8c8"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; line-height: 1.4; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.muted { color: #666; } .stats { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; }
.stat { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .8rem; min-width: 7rem; }
.stat b { display: block; font-size: 1.3rem; }
.attribution { background: #f6f6f0; border-left: 4px solid #b5a642; padding: .6rem 1rem; font-size: .9rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #eee; padding: .35rem .5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.kept { background: #f1f8f1; }
.bar { display: flex; align-items: center; gap: .4rem; font-size: .8rem; white-space: nowrap; }
.track { width: 110px; height: 10px; background: #eee; border-radius: 3px; overflow: hidden; }
.fill { height: 100%; }
figure { margin: 1rem 0; } figure img { max-width: 100%; } figcaption { color: #666; font-size: .85rem; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_page(result: BuildResult) -> str:
    """The whole page as HTML text."""
    conversation = result.conversation
    title = f"Collective constitution: {result.constitution.name}"
    sections = [
        _overview(result),
        _opinion_map(result),
        _groups(result),
        _ranking(result),
        _principles(result),
        _divisive(result),
    ]
    topic = f'<p class="muted">{esc(conversation.topic)}</p>' if conversation.topic else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>{topic}{''.join(sections)}</body></html>\n"
    )


def _overview(result: BuildResult) -> str:
    summary = result.summary()
    ari = summary["ari_vs_reference"]
    silhouette = summary["silhouette"]
    stats = [
        (summary["participants"], "participants"),
        (summary["participants_kept"], f"in groups (≥ {result.groups.min_votes} votes)"),
        (summary["statements"], "statements"),
        (summary["groups"], "opinion groups"),
        ("–" if silhouette is None else f"{silhouette:.3f}", "silhouette"),
        ("–" if ari is None else f"{ari:.3f}", "ARI vs the source's groups"),
        (summary["consensus_statements"], f"pass {result.consensus.rule} > {result.consensus.threshold:.2f}"),
        (summary["principles"], "principles"),
    ]
    cards = "".join(f'<div class="stat"><b>{esc(value)}</b>{esc(label)}</div>' for value, label in stats)
    source = (
        f'<p class="muted">Source: {esc(result.conversation.source)} ({esc(result.conversation.format)}); '
        f"constitution {esc(result.constitution.tag)}; provenance in {esc(result.outputs['provenance'].name)}.</p>"
    )
    attribution = result.conversation.attribution
    note = f'<p class="attribution">Data attribution: {esc(attribution)}</p>' if attribution else ""
    return f'<div class="stats">{cards}</div>{source}{note}'


def _opinion_map(result: BuildResult) -> str:
    groups, reference = result.groups, result.conversation.reference_groups
    panels = 2 if reference else 1

    def draw(*axes) -> None:
        _scatter(axes[0], groups.coords, groups.labels, "Our opinion groups")
        if reference:
            theirs = np.array([reference.get(p, LEFT_OUT) for p in result.conversation.participants])
            _scatter(axes[1], groups.coords, theirs, "Groups the source tool gave (Polis group-id)")

    image = _png(draw, panels)
    caption = (
        "Each dot is a participant, placed by a PCA of their votes (Polis's scaling for people who voted on few "
        "statements). Grey: fewer votes than the minimum, left out of the groups."
    )
    return (
        f'<h2>Opinion map</h2><figure><img src="data:image/png;base64,{image}" alt="opinion map">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _scatter(ax, coords: np.ndarray, labels: np.ndarray, title: str) -> None:
    left_out = labels == LEFT_OUT
    ax.scatter(*coords[left_out].T, s=10, c=LEFT_OUT_COLOUR, label="left out")
    for group in sorted(set(labels[~left_out].tolist())):
        members = labels == group
        colour = GROUP_COLOURS[int(group) % len(GROUP_COLOURS)]
        ax.scatter(*coords[members].T, s=14, c=colour, label=f"group {group} ({int(members.sum())})")
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=8, loc="best")


def _png(draw, panels: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), squeeze=False)
    draw(*axes[0])
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _groups(result: BuildResult) -> str:
    texts = {statement.id: statement.text for statement in result.conversation.statements}
    rows = []
    for group, size in enumerate(result.groups.sizes()):
        picked = result.groups.representatives.get(group, [])
        items = "".join(
            f"<li>{esc(rep.direction)}s ({rep.in_group:.0%} vs {rep.out_group:.0%} elsewhere): "
            f'<q>{esc(texts[rep.statement])}</q> <span class="muted">#{esc(rep.statement)}</span></li>'
            for rep in picked
        )
        rows.append([_swatch(group) + f" group {group}", str(size), f"<ul>{items}</ul>" if items else "–"])
    explained = ", ".join(f"{share:.0%}" for share in result.groups.explained_variance)
    note = f'<p class="muted">Variance explained by the two components: {esc(explained)}.</p>'
    return "<h2>Opinion groups</h2>" + note + _table(["group", "size", "representative statements"], rows, {1})


def _ranking(result: BuildResult) -> str:
    principle_of = {s.statement.id: p.id for p in result.principles for s in p.sources}
    rows = [
        [
            str(score.rank),
            f'{esc(score.statement.text)} <span class="muted">#{esc(score.statement.id)}</span>',
            f"{score.group_aware:.3f}",
            f"{score.normalised:.3f}",
            f"{score.overall:.2f}",
            _bars(score),
            "✓" if score.selected else "",
            esc(principle_of.get(score.statement.id, "")),
        ]
        for score in result.consensus.ranked
    ]
    headers = ["rank", "statement", "group-aware", "normalised", "all", "agreement per group", "kept", "principle"]
    intro = (
        f"Every statement, ranked by the {result.consensus.rule} rule. Agreement is (1 + agrees) / (2 + votes "
        "seen); group-aware consensus is its product over groups, normalised is the geometric mean."
    )
    kept = {i for i, s in enumerate(result.consensus.ranked) if s.selected}
    return f'<h2>Statements ranked by consensus</h2><p class="muted">{esc(intro)}</p>' + _table(
        headers, rows, {0, 2, 3, 4}, kept
    )


def _principles(result: BuildResult) -> str:
    rows = [_principle_row(principle) for principle in result.principles]
    headers = ["principle", "source statements", "critique / revision", "comparison", "written by"]
    return "<h2>From statements to principles</h2>" + _table(headers, rows)


def _principle_row(principle: Principle) -> list[str]:
    sources = "".join(
        f'<li><q>{esc(source.statement.text)}</q> <span class="muted">#{esc(source.statement.id)}'
        + (f", similarity {similarity:.2f}" if index else "")
        + "</span></li>"
        for index, (source, similarity) in enumerate(zip(principle.sources, principle.similarity, strict=True))
    )
    writers = sorted(set(principle.written_by.values()))
    return [
        esc(principle.id),
        f"<ul>{sources}</ul>",
        f"{esc(principle.critique)}<br><br>{esc(principle.revision)}",
        esc(principle.comparison),
        esc(", ".join(writers)) + (f" ({len(principle.rejected)} draft(s) refused)" if principle.rejected else ""),
    ]


def _divisive(result: BuildResult) -> str:
    divisive = result.consensus.divisive()
    if not divisive:
        return "<h2>Divisive statements left out</h2><p>None: no statement splits the groups this much.</p>"
    rows = [
        [f'{esc(s.statement.text)} <span class="muted">#{esc(s.statement.id)}</span>', _bars(s), f"{s.spread:.2f}"]
        for s in divisive
    ]
    intro = "Statements one group backs while another does not, most divided first: left out of the constitution."
    return f'<h2>Divisive statements left out</h2><p class="muted">{esc(intro)}</p>' + _table(
        ["statement", "agreement per group", "gap"], rows, {2}
    )


def _bars(score: StatementScore) -> str:
    return "".join(
        f'<div class="bar">{_swatch(g.group)}<span class="track"><span class="fill" style="display:block;'
        f'width:{g.agreement:.0%};background:{GROUP_COLOURS[g.group % len(GROUP_COLOURS)]}"></span></span>'
        f'{g.agreement:.0%} <span class="muted">({g.agrees}/{g.seen})</span></div>'
        for g in score.groups
    )


def _swatch(group: int) -> str:
    colour = GROUP_COLOURS[group % len(GROUP_COLOURS)]
    return f'<span style="color:{colour}">■</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), kept: set[int] = frozenset()):
    """Cells are HTML already escaped by the caller."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f"<tr{' class=kept' if index in kept else ''}>"
        + "".join(f"<td{' class=num' if col in numeric else ''}>{cell}</td>" for col, cell in enumerate(row))
        + "</tr>"
        for index, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
