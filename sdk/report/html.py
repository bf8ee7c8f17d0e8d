"""report.html: a single self-contained page (plots embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from sdk.report.summary import ITERATION_COLUMNS, eval_rows, iteration_rows
from sdk.store import atomic_write_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(metrics: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    history = metrics.get("train", {}).get("loss_history") or []
    if history:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Student training loss")
        plots.append(("Training loss", _png(fig)))
        plt.close(fig)
    iterations = metrics.get("iterations") or []
    if iterations:
        relative = metrics.get("relative_score", {})
        xs = ["before"] + [str(i["iteration"]) for i in iterations]
        ys = [relative.get("before")] + [i["eval"].get("relative_score") for i in iterations]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
        left.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o")
        left.set_xlabel("iteration")
        left.set_ylabel("student / teacher (%)")
        left.set_title(f"Relative score ({relative.get('referee', '')} referee)")
        right.bar([str(i["iteration"]) for i in iterations], [i["discrimination"]["hard_ratio"] or 0 for i in iterations])
        right.set_ylim(0, 1)
        right.set_xlabel("iteration")
        right.set_title("Hard ratio of the cache pool")
        plots.append(("The loop", _png(fig)))
        plt.close(fig)
    keys = [("rougeL_vs_teacher", "ROUGE-L vs teacher"), ("rougeL_vs_reference", "ROUGE-L vs reference"), ("key_point_recall", "key-point recall")]
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [before.get(k) or 0 for k, _ in keys], width=0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [after.get(k) or 0 for k, _ in keys], width=0.4, label="after")
    ax.set_xticks(list(xs), [label for _, label in keys])
    ax.legend()
    ax.set_title("Student on the held-out set")
    plots.append(("Before and after training", _png(fig)))
    plt.close(fig)
    return plots


def write_report(run_dir: Path, metrics: dict) -> Path:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[:4]) + "</tr>" for row in eval_rows(metrics)
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ITERATION_COLUMNS)
    loop_rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in iteration_rows(metrics))
    loop = f"<h2>The loop, per iteration</h2><table><tr>{head}</tr>{loop_rows}</table>" if metrics.get("iterations") else ""
    figures = "".join(f"<h2>{html.escape(t)}</h2><img src='{src}' alt='{html.escape(t)}'>" for t, src in _plots(metrics))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Distillery report: {html.escape(metrics['domain'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body>
<h1>Distillery report: {html.escape(metrics['domain'])} ({html.escape(metrics['preset'])})</h1>
<p>Teacher: {html.escape(metrics['models']['teacher'])}. Student: {html.escape(metrics['models']['student'])}.</p>
<table><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>{rows}</table>
{loop}
{figures}
<h2>metrics.json</h2><pre>{html.escape(json.dumps(metrics, indent=2))}</pre>
</body></html>
"""
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, page)
    return path
