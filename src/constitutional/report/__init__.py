"""The run report: one self-contained HTML page (inline CSS, JS and PNG plots) from whatever a run holds so far.

The report reads nothing itself. The stage definitions build a `ReportInputs` from the run view; each section
draws its part and, when its input is missing, names the command that produces it, so a page can be made after
any prefix of the pipeline. Model text is untrusted and is escaped or passed as inert JSON (see `traces`).
"""

from constitutional.report.inputs import ReportInputs, StageRow
from constitutional.report.page import render, write_report

__all__ = ["ReportInputs", "StageRow", "render", "write_report"]
