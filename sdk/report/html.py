"""report.html: one self-contained page (plots embedded as PNG data URIs) built from the run directory alone.

Sections: headline verdicts, the recipe, held-out domain metrics (teacher, student before, after each
iteration), the loop per iteration, the forgetting table with the gate's verdict, training loss curves,
five sample instructions (hard first) with teacher and student answers side by side, and the corpus
chunks they came from. `distill report RUN_DIR` rebuilds it from metrics.json and the run's artifacts.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Optional

from sdk.evaluate.degeneration import degeneration
from sdk.report.summary import ITERATION_COLUMNS, eval_rows, fidelity_estimate, fmt, iteration_rows, rejections_line
from sdk.store import RunLayout, atomic_write_text, read_jsonl

N_SAMPLES = 5

STYLE = """
body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:bold} .fail{color:#cf222e;font-weight:bold} .muted{color:#666;font-size:.9em}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;margin-right:.5em;font-size:.9em}
.badge.pass{background:#dafbe1} .badge.fail{background:#ffebe9} .badge.info{background:#ddf4ff;color:#0550ae}
.sample{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.side{display:grid;grid-template-columns:1fr 1fr;gap:1em} .side pre{margin:0}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f8f8f8;padding:.6em;border-radius:4px;font-size:.85em}
pre.scroll{max-height:28em;overflow:auto} img{max-width:100%}
.hard{color:#cf222e} .easy{color:#1a7f37}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped; columns from `numeric_from` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{esc(c)}</td>" if i >= numeric_from else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(title: str, src: str) -> str:
    return f"<figure><img src='{src}' alt='{esc(title)}'><figcaption class='muted'>{esc(title)}</figcaption></figure>"


# plots -------------------------------------------------------------------------------------------
def plot_loop(metrics: dict) -> Optional[str]:
    iterations = metrics.get("iterations") or []
    if not iterations:
        return None
    plt = _pyplot()
    relative = metrics.get("relative_score", {})
    xs = ["before"] + [str(i["iteration"]) for i in iterations]
    ys = [relative.get("before")] + [i["eval"].get("relative_score") for i in iterations]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    left.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o")
    left.set_xlabel("iteration")
    left.set_ylabel("student / teacher (%)")
    left.set_title(f"Relative score on the held-out set ({relative.get('referee', '')} referee)")
    ratios = [i["discrimination"].get("hard_ratio") or 0 for i in iterations]
    right.bar([str(i["iteration"]) for i in iterations], ratios, color="#cf6a4c")
    right.set_ylim(0, 1)
    right.set_xlabel("iteration")
    right.set_ylabel("hard / refereed")
    right.set_title("Hard ratio of the cache pool")
    src = _png(fig)
    plt.close(fig)
    return src


def plot_losses(metrics: dict) -> Optional[str]:
    """One line per (iteration, training stage), on the run's step axis (metrics.train.loss_history)."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for h in metrics.get("train", {}).get("loss_history", []):
        lines.setdefault(f"iter {h['iteration']} · {h.get('stage', 'train')}", []).append((h["step"], h["loss"]))
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for label, points in lines.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.set_xlabel("optimizer step (cumulative over iterations)")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per step, by iteration and stage")
    ax.legend(fontsize=8, ncol=min(4, len(lines)))
    src = _png(fig)
    plt.close(fig)
    return src


def section_timings(metrics: dict) -> str:
    """Seconds per stage, summed over iterations, largest first, with a bar chart (metrics.timings_s)."""
    from sdk.report.summary import stage_times

    rows = sorted(stage_times(metrics), key=lambda r: -r[1])
    if not rows:
        return "<p class='muted'>No stage timings were recorded.</p>"
    total = sum(seconds for _, seconds, _ in rows)
    html = table(
        ["stage", "seconds", "share", "per iteration"],
        [[s, f"{t:.1f}", f"{t / total:.0%}", " / ".join(f"{v:.0f}" for v in per)] for s, t, per in rows],
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1))
    ax.barh([s for s, _, _ in rows][::-1], [t for _, t, _ in rows][::-1])
    ax.set_xlabel("seconds (summed over iterations)")
    ax.set_title(f"Where the time went: {total:.0f} s of stages")
    src = _png(fig)
    plt.close(fig)
    return html + figure("Seconds per stage", src)


def plot_forgetting(forgetting: dict) -> Optional[str]:
    tasks = forgetting.get("tasks") or {}
    if not tasks:
        return None
    plt = _pyplot()
    names = list(tasks)
    drops = [tasks[t]["drop"] for t in names]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.6 * len(names)))
    ax.barh(names, drops, color=["#1a7f37" if tasks[t]["passed"] else "#cf222e" for t in names])
    ax.axvline(forgetting["max_drop"], color="#555", linestyle="--", label=f"max_drop {forgetting['max_drop']}")
    ax.axvline(0, color="#999", linewidth=0.8)
    ax.set_xlabel("drop after training (positive = worse; acc in points, bits/byte relative)")
    ax.set_title("Forgetting: general ability lost per task")
    ax.legend(fontsize=8)
    src = _png(fig)
    plt.close(fig)
    return src


def plot_before_after(metrics: dict) -> str:
    plt = _pyplot()
    keys = [
        ("rougeL_vs_teacher", "ROUGE-L vs teacher"),
        ("rougeL_vs_reference", "ROUGE-L vs reference"),
        ("key_point_recall", "key-point recall"),
    ]
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    teacher = metrics["eval"].get("teacher_vs_reference", {})
    fig, ax = plt.subplots(figsize=(7, 3))
    xs = range(len(keys))
    ax.bar([x - 0.27 for x in xs], [before.get(k) or 0 for k, _ in keys], width=0.27, label="student before")
    ax.bar(list(xs), [after.get(k) or 0 for k, _ in keys], width=0.27, label="student after")
    # the teacher's ROUGE-L against itself is 1 by definition: no bar
    ax.bar(
        [x + 0.27 for x in xs],
        [0 if k == "rougeL_vs_teacher" else teacher.get(k) or 0 for k, _ in keys],
        width=0.27,
        label="teacher",
    )
    ax.set_xticks(list(xs), [label for _, label in keys])
    ax.legend(fontsize=8)
    ax.set_title("Held-out domain metrics")
    src = _png(fig)
    plt.close(fig)
    return src


def plot_layer_scores(prune: dict) -> Optional[str]:
    """Block influence per layer (kept vs dropped) and, for angular pruning, d(l, n) per block start."""
    if not prune or not prune.get("block_influence"):
        return None
    plt = _pyplot()
    bi, kept = prune["block_influence"], set(prune["kept"])
    fig, axes = plt.subplots(1, 2 if prune.get("angular_distance") else 1, figsize=(10, 3), squeeze=False)
    ax = axes[0][0]
    ax.bar(range(len(bi)), bi, color=["tab:blue" if i in kept else "tab:red" for i in range(len(bi))])
    ax.set_yscale("log")
    ax.set_xlabel("layer (blue kept, red dropped)")
    ax.set_ylabel("block influence 1 - cos(h_in, h_out)")
    ax.set_title("Block influence on the calibration text")
    if prune.get("angular_distance"):
        ax = axes[0][1]
        dropped = prune.get("dropped") or []
        ax.plot(range(len(prune["angular_distance"])), prune["angular_distance"], marker=".")
        if dropped:
            ax.axvline(min(dropped), color="tab:red", linestyle="--", label=f"dropped block starts at {min(dropped)}")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"first layer l of a block of {len(dropped)}")
        ax.set_ylabel("angular distance d(l, n)")
        ax.set_title("Angular distance of each contiguous block")
    fig.tight_layout()
    src = _png(fig)
    plt.close(fig)
    return src


def plot_heal_loss(heal: dict) -> Optional[str]:
    history = (heal or {}).get("loss_history") or []
    if not history:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    ax.set_xlabel("healing step")
    ax.set_ylabel("KL(teacher || student)")
    ax.set_title("Healing loss")
    src = _png(fig)
    plt.close(fig)
    return src


def section_student(metrics: dict) -> str:
    """How the student was built: the layers kept and why, and what healing did."""
    init = metrics.get("student_init") or {}
    prune, heal = init.get("prune"), init.get("heal")
    parts = []
    if prune:
        parts.append(
            f"<p>Pruned by <b>{esc(prune['method'])}</b>: kept {len(prune['kept'])} of {prune['base_layers']} layers "
            f"<code>{esc(prune['kept'])}</code>, dropped <code>{esc(prune.get('dropped'))}</code>; scored on {prune.get('calibration_chunks')} corpus chunks "
            f"({prune.get('calibration_tokens')} tokens).</p>"
        )
        src = plot_layer_scores(prune)
        if src:
            parts.append(figure("Layer scores on the domain's calibration text", src))
    else:
        parts.append("<p class='muted'>The student was not pruned.</p>")
    rows = [
        (name, init.get(key))
        for name, key in (("before healing", "before_heal"), ("after healing", "after_heal"))
        if init.get(key)
    ]
    if rows:
        cols = [
            ("kl_per_token", "KL(T‖S) / token"),
            ("top1_agreement", "top-1 agreement"),
            ("student_ppl", "ppl on teacher's answers"),
            ("domain_ppl", "domain ppl"),
        ]
        parts.append(
            table(["student"] + [c for _, c in cols], [[name] + [fmt(v.get(k)) for k, _ in cols] for name, v in rows])
        )
    if heal:
        parts.append(
            f"<p>Healed for {heal.get('steps')} steps on {heal.get('sequences')} sequences ({heal.get('corpus_chunks')} corpus chunks, {heal.get('general_texts')} general texts), {fmt(heal.get('runtime_s'), 1)} s.</p>"
        )
        src = plot_heal_loss(heal)
        if src:
            parts.append(figure("Healing loss", src))
    elif prune:
        parts.append("<p class='muted'>Not healed (heal.steps is 0, or the teacher is not local).</p>")
    return "".join(parts)


# sections ----------------------------------------------------------------------------------------
def section_headline(metrics: dict, status: str) -> str:
    badges = [f"<span class='badge info'>run {esc(status)}</span>"]
    relative = metrics.get("relative_score", {})
    per_iteration = relative.get("per_iteration") or []
    if per_iteration:
        badges.append(
            f"<span class='badge info'>relative score {fmt(relative.get('before'), 1)}% → {fmt(per_iteration[-1], 1)}%</span>"
        )
    before, after = metrics["eval"]["before"], metrics["eval"]["after"]
    if after.get("kl_per_token") is not None:
        estimate = fidelity_estimate(after)
        badges.insert(
            1,
            f"<span class='badge info'>KL to teacher {fmt(before.get('kl_per_token'), 2)} → {fmt(after['kl_per_token'], 2)} nats/token · top-1 agreement {fmt(before.get('top1_agreement'), 2)} → {fmt(after.get('top1_agreement'), 2)}{f' ({estimate})' if estimate else ''}</span>",
        )
    if after.get("looping_answers") or after.get("empty_answers"):
        badges.append(
            f"<span class='badge fail'>{after.get('looping_answers') or 0} looping, {after.get('empty_answers') or 0} empty answers</span>"
        )
    forgetting = metrics.get("forgetting")
    if forgetting:
        cls = "pass" if forgetting["passed"] else "fail"
        badges.append(f"<span class='badge {cls}'>{esc(forgetting['verdict'].split(':')[0])}</span>")
    models = metrics["models"]
    return (
        f"<p>{''.join(badges)}</p>"
        f"<p>Teacher <b>{esc(models['teacher'])}</b>, student <b>{esc(models['student'])}</b>, referee <b>{esc(models.get('referee'))}</b>. "
        f"{metrics['data']['eval_prompts']} held-out prompts, {metrics['data']['corpus_chunks']} corpus chunks, "
        f"{metrics['train']['steps']} optimizer steps over {len(metrics.get('iterations') or [])} iteration(s).</p>"
    )


def section_recipe(run_dir: Path, metrics: dict) -> str:
    path = RunLayout(run_dir).config
    if not path.is_file():
        return "<p class='muted'>config.yaml is missing from the run directory.</p>"
    import yaml

    recipe = yaml.safe_load(path.read_text()) or {}
    train, adv, models = recipe.get("train", {}), recipe.get("adversarial", {}), recipe.get("models", {})

    def model(role: str) -> str:
        spec = models.get(role) or {}
        return " ".join(
            str(v) for v in (spec.get("provider"), spec.get("model") or spec.get("name_or_path") or "") if v
        )

    lora = train.get("lora")
    tau = adv.get("tau")  # config.yaml holds the resolved recipe: the pack's defaults are merged in
    max_drop = recipe.get("forgetting", {}).get("max_drop")
    rows = [
        ["domain / preset", f"{recipe.get('domain')} / {recipe.get('preset')}"],
        ["teacher / student", f"{model('teacher')} / {model('student')}"],
        ["referee / generator", f"{model('referee')} ({adv.get('referee')}, tau {tau}) / {model('generator')}"],
        ["train stages", ", ".join(map(str, train.get("stages") or [])) or "n/a"],
        ["epochs, learning rate", f"{train.get('epochs')}, {train.get('learning_rate')}"],
        ["LoRA", "off" if not lora else f"r {lora.get('r')}, alpha {lora.get('alpha')}"],
        ["replay fraction", str(train.get("replay_fraction"))],
        ["iterations, new per iteration", f"{adv.get('iterations')}, {adv.get('new_per_iteration')}"],
        ["forgetting gate", f"max_drop {max_drop}" if recipe.get("forgetting", {}).get("enabled", True) else "off"],
    ]
    return (
        table(["setting", "value"], rows, numeric_from=9)
        + f"<details><summary>Full recipe (config.yaml)</summary><pre class='scroll'>{esc(path.read_text())}</pre></details>"
    )


DOMAIN_COLUMNS = [
    ("kl_per_token", "KL(T‖S) / token"),
    ("top1_agreement", "top-1 agreement"),
    ("domain_ppl", "domain ppl"),
    ("distinct_trigram_ratio", "distinct trigrams"),
    ("looping_answers", "looping answers"),
    ("rougeL_vs_reference", "ROUGE-L vs reference"),
    ("rougeL_vs_teacher", "ROUGE-L vs teacher"),
    ("key_point_recall", "key-point recall"),
    ("teacher_loglik", "teacher log-lik / token"),
    ("referee_student_mean", "referee score"),
    ("relative_score", "relative score %"),
    ("findings_student", "verifier findings"),
    ("answer_tokens", "answer tokens"),
]


def section_domain(metrics: dict) -> str:
    """Teacher, student before, and student after each iteration on the pack's held-out set."""
    teacher = dict(metrics["eval"].get("teacher_vs_reference") or {})
    after = metrics["eval"]["after"]
    teacher.update(
        {
            k: v
            for k, v in (metrics["eval"].get("teacher") or {}).items()
            if k in ("domain_ppl", "distinct_trigram_ratio", "looping_answers")
        }
    )
    if after.get("kl_per_token") is not None:
        teacher.update(kl_per_token=0.0, top1_agreement=1.0)
    teacher.update(
        rougeL_vs_teacher=1.0,
        teacher_loglik=None,
        relative_score=100.0,
        referee_student_mean=after.get("referee_teacher_mean"),
        findings_student=after.get("findings_teacher"),
    )
    rows = [("teacher", teacher), ("student before", metrics["eval"]["before"])]
    rows += [(f"student after iteration {it['iteration']}", it["eval"]) for it in metrics.get("iterations") or []]
    body = [[name] + [fmt(values.get(key)) for key, _ in DOMAIN_COLUMNS] for name, values in rows]
    change = "".join(
        f"<li>{esc(label)}: {esc(b)} → {esc(a)} <span class='{'pass' if improved else 'fail' if improved is False else 'muted'}'>{esc(delta)}</span></li>"
        for label, b, a, delta, improved, _ in eval_rows(metrics)
    )
    return (
        table(["model"] + [label for _, label in DOMAIN_COLUMNS], body)
        + "<p class='muted'>Referee score is the mean on the 1–10 scale; relative score is the student's total as a % of the teacher's. "
        "The teacher's ROUGE-L vs teacher is 1 by definition; its log-likelihood of its own answers is not measured.</p>"
        + f"<details><summary>Student before → after, per metric</summary><ul>{change}</ul></details>"
        + figure("Held-out domain metrics: student before, after, and the teacher", plot_before_after(metrics))
    )


def section_loop(metrics: dict) -> str:
    if not metrics.get("iterations"):
        return "<p class='muted'>No loop iterations ran.</p>"
    body = table(list(ITERATION_COLUMNS), [list(row) for row in iteration_rows(metrics)])
    body += f"<p class='muted'>{esc(rejections_line(metrics))}</p>"
    src = plot_loop(metrics)
    return body + (figure("Relative score and hard ratio per iteration", src) if src else "")


def section_forgetting(metrics: dict) -> str:
    forgetting = metrics.get("forgetting")
    if not forgetting:
        return "<p class='muted'>The forgetting check did not run (forgetting.enabled is false).</p>"
    rows = []
    for task, r in forgetting["tasks"].items():
        unit = "points" if r["higher_is_better"] else "relative"
        rows.append(
            [
                task,
                f"{r['primary']} ({'higher' if r['higher_is_better'] else 'lower'} is better)",
                fmt(r["before"], 4),
                fmt(r["after"], 4),
                f"{r['drop']:+.4f} {unit}",
                str(forgetting["max_drop"]),
                "pass" if r["passed"] else "FAIL",
            ]
        )
    cls = "pass" if forgetting["passed"] else "fail"
    src = plot_forgetting(forgetting)
    limit = forgetting.get("limit")
    return (
        f"<p class='{cls}'>{esc(forgetting['verdict'])}</p>"
        + table(["task", "metric", "before", "after", "drop", "max drop", "verdict"], rows, numeric_from=2)
        + f"<p>Replay fraction in training: <b>{esc(forgetting.get('replay_fraction'))}</b>. {esc(forgetting.get('hint'))}.</p>"
        + f"<p class='muted'>Measured with lm-eval{'' if limit is None else f' on the first {limit} items per task'}; full numbers in eval/forgetting.json.</p>"
        + (figure("Forgetting deltas per task, against the gate", src) if src else "")
    )


def section_training(metrics: dict) -> str:
    rows = []
    for it in metrics.get("iterations") or []:
        train = it.get("train", {})
        for stage, m in (train.get("stages") or {}).items():
            rows.append(
                [
                    str(it["iteration"]),
                    stage,
                    str(m.get("examples", "")),
                    str(m.get("steps", "")),
                    fmt(m.get("runtime_s"), 1),
                    fmt(m.get("first_logged_loss")),
                    fmt(m.get("last_logged_loss")),
                ]
            )
    src = plot_losses(metrics)
    out = (
        table(["iteration", "stage", "examples", "steps", "seconds", "first loss", "last loss"], rows)
        if rows
        else "<p class='muted'>No training stage ran.</p>"
    )
    return out + (figure("Training loss curves", src) if src else "")


def _lookup_instructions(run_dir: Path) -> dict[str, dict]:
    """Every instruction the run has seen, by id, with its provenance (seeds, synthesised, generated)."""
    known: dict[str, dict] = {}
    iterations = RunLayout(run_dir).iterations()
    for path in [it.cache_pool for it in iterations] + [it.generated for it in iterations]:
        if not path.is_file():
            continue
        for row in read_jsonl(path):
            known.setdefault(row["id"], row)
    return known


def _chunks(run_dir: Path) -> dict[str, dict]:
    """Corpus chunks the run recorded (their text travels with the synthesised instructions), by chunk id."""
    chunks: dict[str, dict] = {}
    iterations = RunLayout(run_dir).iterations()
    for path in [p for it in iterations for p in (it.synthesized, it.synthesis_rejected) if p.is_file()]:
        for row in read_jsonl(path):
            prov = row.get("provenance") or {}
            if prov.get("chunk_id") and row.get("context"):
                chunks.setdefault(prov["chunk_id"], {"document": prov.get("document"), "text": row["context"]})
    for path in [it.seed_grounding for it in iterations if it.seed_grounding.is_file()]:
        for row in read_jsonl(path):
            chunks.setdefault(row["chunk_id"], {"document": row["document"], "text": row["text"]})
    return chunks


def source_chunk(row: dict, known: dict[str, dict]) -> tuple[Optional[str], dict]:
    """The corpus chunk an instruction goes back to: its own, or its oldest ancestor's (a synthesised
    instruction's passage, or the chunk nearest a seed). Returns (chunk id or None, the ancestor row)."""
    seen = set()
    while row.get("parent_id") and row["parent_id"] in known and row["parent_id"] not in seen:
        seen.add(row["parent_id"])
        row = known[row["parent_id"]]
    prov = row.get("provenance") or {}
    return prov.get("chunk_id") or (prov.get("grounding") or {}).get("chunk_id"), row


def choose_samples(run_dir: Path, metrics: dict, n: int = N_SAMPLES) -> list[dict]:
    """The last iteration's refereed cache pool: hard rows first, each side by largest score gap."""
    iterations = metrics.get("iterations") or []
    layout = RunLayout(run_dir)
    path = layout.iteration(iterations[-1]["iteration"]).referee if iterations else None
    if path is None or not path.is_file():
        path = layout.eval.referee_before
    if not path.is_file():
        return []
    rows = sorted((r for r in read_jsonl(path) if r.get("status") == "ok"), key=lambda r: -(r.get("gap") or 0.0))
    hard = [r for r in rows if r.get("hard")]
    easy = [r for r in rows if not r.get("hard")]
    n_hard = n - min(len(easy), 2)  # mostly hard, and two easy ones for contrast where there are any
    return hard[:n_hard] + easy[: n - min(n_hard, len(hard))]


def _chunk_anchor(chunk_id: str) -> str:
    return "chunk-" + "".join(c if c.isalnum() else "-" for c in chunk_id)


def section_samples(run_dir: Path, metrics: dict, chunks: dict[str, dict]) -> tuple[str, set[str]]:
    """Side-by-side answers and their provenance; returns the html and the chunk ids it links to."""
    samples = choose_samples(run_dir, metrics)
    if not samples:
        return "<p class='muted'>No refereed instructions to show.</p>", set()
    known, cited, parts = _lookup_instructions(run_dir), set(), []
    for row in samples:
        source = known.get(row["id"], row)
        prov = source.get("provenance") or {}
        chunk_id, root = source_chunk(source, known)
        root_prov = root.get("provenance") or {}
        origin = f"{esc(root_prov.get('stage') or root.get('source') or 'pack')} <code>{esc(root['id'])}</code> from {esc(root_prov.get('document') or 'the pack')}"
        if chunk_id and chunk_id in chunks:
            cited.add(chunk_id)
            link = f"<a href='#{_chunk_anchor(chunk_id)}'>{esc(chunk_id)}</a>"
            grounding = root_prov.get("grounding")
            where = (
                f"{origin}; nearest corpus chunk {link} (cosine {fmt(grounding['score'], 2)})"
                if grounding
                else f"{origin}; corpus chunk {link}"
            )
        else:
            where = origin
        lineage = (
            f"; generated in iteration {prov['iteration']} from <code>{esc(prov.get('parent_id'))}</code>"
            if prov.get("stage") == "generate"
            else ""
        )
        side = "hard" if row.get("hard") else "easy"
        loop = degeneration(row.get("student_answer") or "")
        flag = (
            f" · <b class='fail'>student answer loops (longest repeat {loop['longest_repeat']}, distinct trigrams {fmt(loop['distinct_trigram_ratio'], 2)})</b>"
            if loop["looping"]
            else ""
        )
        why = f" ({esc(row.get('hard_because'))})" if row.get("hard_because") else ""
        findings = row.get("findings") or {}
        notes = "".join(
            f"<li>{esc(who)}: {esc(f.get('severity'))} {esc(f.get('verifier', ''))} {esc(f.get('message'))}</li>"
            for who in ("teacher", "student")
            for f in findings.get(who, [])
        )
        parts.append(
            f"<div class='sample'><p><b class='{side}'>{side}{why}</b> · gap {fmt(row.get('gap'), 2)} · "
            f"teacher {fmt(row.get('teacher_score'), 2)} vs student {fmt(row.get('student_score'), 2)} · "
            f"<code>{esc(row['id'])}</code> · {esc(source.get('subarea') or '')}{flag}</p>"
            f"<p><b>Instruction.</b> {esc(row['instruction'])}</p>"
            f"<p class='muted'>Provenance: {where}{lineage}.</p>"
            f"<div class='side'><div><b>Teacher</b><pre>{esc(row.get('teacher_answer'))}</pre></div>"
            f"<div><b>Student</b><pre>{esc(row.get('student_answer'))}</pre></div></div>"
            + (f"<p>Verifier findings:</p><ul>{notes}</ul>" if notes else "")
            + "</div>"
        )
    return "".join(parts), cited


def section_chunks(chunks: dict[str, dict], cited: set[str], corpus: Optional[str]) -> str:
    """The corpus chunks behind the instructions: those the samples cite first, then the rest the run used."""
    if not chunks:
        return "<p class='muted'>No corpus chunks were used (synthesis was off or kept nothing).</p>"
    order = sorted(chunks, key=lambda c: (c not in cited, c))
    parts = []
    for chunk_id in order:
        chunk = chunks[chunk_id]
        document = chunk.get("document") or ""
        link = (
            f" · <a href='{esc(Path(corpus, document).resolve().as_uri())}'>{esc(document)}</a>"
            if corpus and document
            else ""
        )
        cite = " <span class='badge info'>cited above</span>" if chunk_id in cited else ""
        parts.append(
            f"<div id='{_chunk_anchor(chunk_id)}' class='sample'><p><code>{esc(chunk_id)}</code>{link}{cite}</p><pre class='scroll'>{esc(chunk['text'])}</pre></div>"
        )
    head = f"<p class='muted'>{len(chunks)} chunk(s) from <code>{esc(corpus)}</code> grounded this run's instructions (the passages synthesis drew on, and the chunk nearest each seed).</p>"
    return head + "<details open><summary>Chunks</summary>" + "".join(parts) + "</details>"


def write_report(run_dir: Path, metrics: dict, status: Optional[str] = None) -> Path:
    """Write run_dir/report.html; `status` defaults to the manifest's (the finalize stage passes 'finished')."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    manifest_path = layout.manifest
    if status is None:
        status = (
            json.loads(manifest_path.read_text()).get("status", "finished") if manifest_path.is_file() else "finished"
        )
    knowledge_path = layout.knowledge
    corpus = json.loads(knowledge_path.read_text()).get("corpus") if knowledge_path.is_file() else None
    chunks = _chunks(run_dir)
    samples, cited = section_samples(run_dir, metrics, chunks)
    sections = [
        ("Recipe", section_recipe(run_dir, metrics)),
        ("Held-out domain metrics", section_domain(metrics)),
        ("The student: pruning and healing", section_student(metrics)),
        ("The loop, per iteration", section_loop(metrics)),
        ("Forgetting check", section_forgetting(metrics)),
        ("Training", section_training(metrics)),
        ("Where the time went", section_timings(metrics)),
        (f"Sample instructions from the last iteration's cache pool (hard first, {N_SAMPLES} at most)", samples),
        ("Provenance: corpus chunks", section_chunks(chunks, cited, corpus)),
    ]
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Distillery report: {esc(metrics["domain"])}</title>
<style>{STYLE}</style></head><body>
<h1>Distillery report: {esc(metrics["domain"])} ({esc(metrics["preset"])})</h1>
{section_headline(metrics, status)}
{body}
<h2>metrics.json</h2><p class='muted'>The same numbers for scripts; fields are described in docs/metrics.md.</p>
<details><summary>metrics.json</summary><pre class='scroll'>{esc(json.dumps(metrics, indent=2))}</pre></details>
</body></html>
"""
    path = layout.report
    atomic_write_text(path, page)
    return path
