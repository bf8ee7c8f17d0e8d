"""The run report: report.html with plots, and the summary table printed at the end of a run."""

from sdk.report.html import write_report
from sdk.report.summary import iteration_table, summary_table, timing_table

__all__ = ["write_report", "summary_table", "iteration_table", "timing_table"]
