"""Small HTML pieces every section uses. Anything that came from a model or a file goes through `esc`."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from constitutional.records import Interval
from constitutional.report.inputs import ReportInputs


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    lead: str
    body: str
    ready: bool  # False when its input is missing and the body is only a "not run yet" note


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def not_run(inputs: ReportInputs, key: str, what: str) -> str:
    """The note a section shows instead of `what` while input `key` is missing: which command makes it."""
    command, stage = inputs.maker(key)
    by = f" (the <code>{esc(stage)}</code> stage)" if stage else ""
    return (
        f'<p class="missing">Not run yet: run <code>{esc(command)}</code>{by} to add {esc(what)}, or '
        "<code>cai run</code> for the whole pipeline.</p>"
    )


def note(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def callout(kind: str, title: str, text: str) -> str:
    """A boxed message that cannot be missed: `kind` is "danger" or "info"; both arguments are HTML."""
    return f'<div class="callout {kind}" role="note"><strong>{title}</strong> {text}</div>'


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), css: str = "data") -> str:
    """A table from cells that are already HTML; columns in `numeric` are right-aligned."""

    def cell(tag: str, index: int, content: str) -> str:
        return f'<{tag} class="num">{content}</{tag}>' if index in numeric else f"<{tag}>{content}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def stat(value: str, label: str) -> str:
    return f'<div class="stat"><div class="value">{esc(value)}</div><div class="label">{esc(label)}</div></div>'


def stats(*cards: str) -> str:
    return f'<div class="stats">{"".join(cards)}</div>'


def interval(iv: Interval, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(iv.value)} <span class='range'>[{fmt.format(iv.low)}, {fmt.format(iv.high)}]</span>"


def share(iv: Interval) -> str:
    return interval(Interval(value=iv.value * 100, low=iv.low * 100, high=iv.high * 100), "{:.0f}%")


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<' survives, so '</script>' cannot appear."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
