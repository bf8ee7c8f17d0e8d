"""The short before/after table printed at the end of a run."""

from __future__ import annotations

from rich.table import Table

# (metrics key, label, higher is better). Fidelity to the teacher and degeneration lead: they are what
# the training objective cannot game (docs/metrics.md).
EVAL_ROWS = [
    ("kl_per_token", "KL(teacher‖student) nats/token", False),
    ("top1_agreement", "top-1 agreement with teacher", True),
    ("student_ppl", "perplexity on teacher's answers", False),
    ("kl_gap_closed", "share of KL gap closed", True),
    ("domain_ppl", "domain perplexity (held-out chunks)", False),
    ("distinct_trigram_ratio", "distinct-trigram ratio", True),
    ("looping_answers", "looping answers", False),
    ("empty_answers", "empty answers", False),
    ("rougeL_vs_teacher", "ROUGE-L vs teacher", True),
    ("teacher_loglik", "teacher log-lik / token", True),
    ("rougeL_vs_reference", "ROUGE-L vs reference", True),
    ("key_point_recall", "key-point recall", True),
    ("answer_tokens", "answer length (tokens)", None),
]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fidelity_estimate(summary: dict) -> str:
    """How the fidelity figures were estimated (from an endpoint's top-k: KL a lower bound), or '' when measured."""
    how = str(summary.get("fidelity") or "")
    return how if how.startswith("estimated") else ""


def teacher_values(metrics: dict) -> dict:
    """The teacher's own figures for the rows where it has one (KL 0 and agreement 1 by definition)."""
    teacher = metrics["eval"].get("teacher") or {}
    reference = metrics["eval"].get("teacher_vs_reference") or {}
    white_box = metrics["eval"]["after"].get("kl_per_token") is not None
    return {
        "kl_per_token": 0.0 if white_box else None,
        "top1_agreement": 1.0 if white_box else None,
        "domain_ppl": teacher.get("domain_ppl"),
        "distinct_trigram_ratio": teacher.get("distinct_trigram_ratio"),
        "looping_answers": teacher.get("looping_answers"),
        "empty_answers": teacher.get("empty_answers"),
        "rougeL_vs_teacher": 1.0,
        "rougeL_vs_reference": reference.get("rougeL_vs_reference"),
        "key_point_recall": reference.get("key_point_recall"),
    }


def eval_rows(metrics: dict) -> list[tuple[str, str, str, str, bool | None, str]]:
    """(label, before, after, change, improved, teacher) per metric; improved is None where it does not apply."""
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    teacher = teacher_values(metrics)
    estimated = bool(fidelity_estimate(after))
    rows = []
    for key, label, higher in EVAL_ROWS:
        if estimated and key == "kl_per_token":
            label += " (top-k estimate)"
        b, a = before.get(key), after.get(key)
        delta = "" if b is None or a is None else f"{a - b:+.3f}"
        improved = None if not delta or higher is None or a == b else (a > b) == higher
        rows.append((label, fmt(b), fmt(a), delta, improved, fmt(teacher.get(key)) if key in teacher else ""))
    return rows


def summary_table(metrics: dict) -> Table:
    table = Table(
        title=f"Distillery: {metrics['domain']} ({metrics['preset']}), student on {metrics['data']['eval_prompts']} held-out prompts"
    )
    for col in ("metric", "before", "after", "change", "teacher"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for label, before, after, delta, improved, teacher in eval_rows(metrics):
        colour = {True: "green", False: "red", None: "default"}[improved]
        table.add_row(label, before, after, f"[{colour}]{delta}[/]" if delta else "", teacher)
    relative = metrics.get("relative_score") or {}
    if relative.get("before") is not None and relative.get("per_iteration"):
        b, a = relative["before"], relative["per_iteration"][-1]
        colour = "green" if a > b else "red" if a < b else "default"
        table.add_row(
            f"relative score % ({relative.get('referee')} referee)",
            f"{b:.1f}",
            f"{a:.1f}",
            f"[{colour}]{a - b:+.1f}[/]",
            "100.0",
        )
    init = metrics.get("student_init") or {}
    if init.get("before_heal") and init.get("after_heal"):
        b, a = init["before_heal"], init["after_heal"]
        table.add_row(
            "[dim]healing: KL before → after[/]",
            fmt(b.get("kl_per_token")),
            fmt(a.get("kl_per_token")),
            f"{a['kl_per_token'] - b['kl_per_token']:+.3f}",
            "",
        )
    train = metrics.get("train", {})
    data = metrics["data"]
    table.caption = (
        f"teacher {metrics['models']['teacher']} · student {metrics['models']['student']} · "
        f"{data['teacher_ok']}/{data['teacher_ok'] + data['teacher_failed']} teacher answers used · "
        f"{train.get('steps', 0)} steps, loss {fmt(train.get('first_logged_loss'))} → {fmt(train.get('last_logged_loss'))}"
    )
    forgetting = metrics.get("forgetting")
    if forgetting:
        colour = "green" if forgetting["passed"] else "bold red"
        drops = ", ".join(
            f"{t} {r['primary']} {r['before']:.3f}→{r['after']:.3f}" for t, r in forgetting["tasks"].items()
        )
        table.caption += f"\n[{colour}]{forgetting['verdict']}[/] ({drops}; max drop {forgetting['max_drop']})"
    return table


def iteration_rows(metrics: dict) -> list[tuple[str, ...]]:
    """One row per loop iteration: pools, the split, generation and the held-out scores after it."""
    rows = [
        (
            "before",
            "",
            "",
            "",
            "",
            "",
            "",
            fmt(metrics["eval"]["before"].get("rougeL_vs_teacher")),
            fmt(metrics.get("relative_score", {}).get("before")),
        )
    ]
    for it in metrics.get("iterations", []):
        d, g, e = it["discrimination"], it["generation"], it["eval"]
        rows.append(
            (
                str(it["iteration"]),
                str(it["train_pool"]),
                str(d["refereed"]),
                f"{d['hard']}/{d['easy']}" + (f" ({d['unparsed']} unread)" if d["unparsed"] else ""),
                fmt(d["hard_ratio"]),
                f"{fmt(d['gap_mean'])} / {fmt(d['gap_median'])}",
                "skipped (last iteration)"
                if g.get("skipped")
                else f"{g['kept']}/{g['target']} in {g['attempts']} ({g['kept_hard']}h {g['kept_easy']}e)",
                fmt(e.get("rougeL_vs_teacher")),
                fmt(e.get("relative_score")),
            )
        )
    return rows


ITERATION_COLUMNS = (
    "iteration",
    "train pool",
    "refereed",
    "hard/easy",
    "hard ratio",
    "gap mean / median",
    "generated kept/target in attempts",
    "ROUGE-L vs T",
    "relative score %",
)


def iteration_table(metrics: dict) -> Table:
    referee = metrics.get("relative_score", {}).get("referee", "")
    table = Table(
        title=f"The loop, per iteration ({referee} referee; relative score = student total / teacher total on the held-out set)"
    )
    for col in ITERATION_COLUMNS:
        table.add_column(col, justify="left" if col in ("iteration", "generated kept/target in attempts") else "right")
    for row in iteration_rows(metrics):
        table.add_row(*row)
    table.caption = rejections_line(metrics)
    return table


def rejections_line(metrics: dict) -> str | None:
    """Why generated instructions were turned away, per iteration (kept out of the table to keep it narrow)."""
    per = [
        f"{it['iteration']}: "
        + (", ".join(f"{k} {v}" for k, v in it["generation"]["rejected_by_reason"].items()) or "none")
        for it in metrics.get("iterations", [])
        if not it["generation"].get("skipped")
    ]
    return "generated instructions rejected, by reason, per iteration: " + "; ".join(per) if per else None


def stage_times(metrics: dict) -> list[tuple[str, float, list[float]]]:
    """Seconds per kind of stage, in run order: (stage, total, [per iteration, for the loop's stages]).
    From metrics["timings_s"], whose keys are "eval_before" or "iter_01/train"."""
    totals: dict[str, list[float]] = {}
    for name, seconds in metrics.get("timings_s", {}).items():
        totals.setdefault(name.split("/")[-1], []).append(float(seconds))
    return [(stage, sum(values), values if len(values) > 1 else []) for stage, values in totals.items()]


def timing_table(metrics: dict) -> Table | None:
    """Where the time went: seconds per stage (summed over iterations) and their share of the run."""
    rows = stage_times(metrics)
    if not rows:
        return None
    total = sum(seconds for _, seconds, _ in rows)
    table = Table(title=f"Where the time went: {total:.0f} s of stages ({total / 60:.1f} min)")
    for col in ("stage", "seconds", "share", "per iteration"):
        table.add_column(col, justify="left" if col in ("stage", "per iteration") else "right")
    for stage, seconds, per in sorted(rows, key=lambda r: -r[1]):
        table.add_row(stage, f"{seconds:.1f}", f"{seconds / total:.0%}", " / ".join(f"{v:.0f}" for v in per))
    return table
