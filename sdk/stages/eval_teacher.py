"""Stage `eval_teacher`: the teacher answers the held-out set (journaled), with its degeneration figures
and, for a local teacher, its perplexity on held-out corpus chunks. A local teacher's results are the
same for the same weights, prompts and settings, so they are kept in the user cache and a later run
reuses them (an endpoint teacher's replies are kept by the response cache).

An endpoint teacher that the recipe distills from its top-k (kd from the store) is asked for its top-k
here too, kept in eval/teacher_logits/, so the student's fidelity can be estimated
(sdk/evaluate/fidelity.py, fidelity_from_topk)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from sdk.curation.labeling import Teacher, label_rows
from sdk.models.cache import weights_fingerprint
from sdk.paths import cache_dir
from sdk.progress import log
from sdk.stages.base import Stage
from sdk.stages.evaluate import eval_provenance
from sdk.stages.label import LOGIT_KEYS, endpoint_topk
from sdk.store import atomic_write_json
from sdk.train.endpoint_topk import TOPK_FIELD


def run(ctx):
    out = ctx.layout.eval
    rows = [
        {"id": r["id"], "instruction": r["instruction"], "provenance": eval_provenance(ctx, "eval")}
        for r in ctx.eval_rows()
    ]
    cached = cache_file(ctx, rows)
    if cached is not None and cached.is_file():
        log(
            f"reusing the teacher's held-out answers and perplexity from the cache: {cached} (same weights, prompts and settings)"
        )
        data = json.loads(cached.read_text(encoding="utf-8"))
        labeled, summary = data["rows"], data["summary"]
    else:
        labeled, summary = answer_and_measure(ctx, rows)
        if cached is not None and all(r["status"] == "ok" for r in labeled):
            atomic_write_json(cached, {"rows": labeled, "summary": summary})
    stored = [out.teacher_logits] if (out.teacher_logits / "meta.json").is_file() else []  # answer_and_measure's
    path = ctx.store.write_jsonl(out.teacher, [{f: v for f, v in r.items() if f != TOPK_FIELD} for r in labeled])
    return [path, ctx.store.write_json(out.teacher_summary, {"summary": summary})] + stored


def answer_and_measure(ctx, rows: list[dict]) -> tuple[list[dict], dict]:
    """The teacher's answers (journaled), their degeneration figures, and its held-out corpus perplexity."""
    from sdk.evaluate.degeneration import degeneration_summary

    journal = ctx.store.journal(ctx.layout.eval.teacher_journal)
    topk = endpoint_topk(ctx)
    model = ctx.teacher if topk is None else topk.model
    labeled = label_rows(
        rows,
        Teacher(model, ctx.name("teacher"), ctx.pack.spec.system_prompt, topk=topk and topk.encode),
        journal,
        "teacher answers eval set",
        ctx.budget("teacher"),
    )
    if topk is not None:  # the store is filled from the rows before the journal that holds their top-k goes
        store_endpoint_topk(ctx, labeled, topk)
    journal.remove()
    summary = degeneration_summary([r.get("answer") or "" for r in labeled if r["status"] == "ok"])
    if ctx.white_box_teacher():
        from sdk.evaluate.fidelity import perplexity

        heldout = ctx.heldout_texts()
        summary["domain_ppl"] = (
            perplexity(ctx.teacher.model, ctx.teacher.tokenizer, heldout)["ppl"] if heldout else None
        )
    return labeled, summary


def store_endpoint_topk(ctx, labeled: list[dict], topk) -> None:
    """eval/teacher_logits/: an endpoint teacher's top-k on its held-out answers (resumable; rows kept are skipped)."""
    from sdk.train.endpoint_topk import fill_from_endpoint
    from sdk.train.logit_store import LogitStore

    with LogitStore(ctx.layout.eval.teacher_logits, topk.top_k) as store:
        ok = [r for r in labeled if r["status"] == "ok"]
        fill_from_endpoint(store, topk.token_map.tokenizer, ok, ctx.pack.spec.system_prompt)


def cache_file(ctx, rows: list[dict]) -> Optional[Path]:
    """Where a local teacher's held-out answers are kept across runs: <cache>/heldout_teacher/<key>.json, keyed on
    its weights (not its name), tokenizer, generation settings, the system prompt, the prompts and the held-out
    chunks. None for an endpoint teacher, whose replies the response cache keeps."""
    if not ctx.white_box_teacher() or not ctx.recipe.eval.teacher_cache:
        return None
    teacher = ctx.teacher
    key = {
        "version": 1,
        "weights": weights_fingerprint(teacher.model),
        "chat_template": teacher.tokenizer.chat_template,
        "vocab": len(teacher.tokenizer),
        "generation": [teacher.settings.model_dump(), teacher.cache_params(teacher.settings)],  # bf16 resolved too
        "system_prompt": ctx.pack.spec.system_prompt,
        "rows": [[r["id"], r["instruction"], r.get("provenance")] for r in rows],
        "heldout": ctx.heldout_texts(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return cache_dir() / "heldout_teacher" / f"{digest[:24]}.json"


STAGE = Stage(
    "eval_teacher",
    run,
    reads=("knowledge",),
    writes=("eval.teacher", "eval.teacher_summary", "eval.teacher_logits"),
    recipe=("domain", "models.teacher", "data.max_eval", "eval.heldout_chunks", "train.stages", *LOGIT_KEYS),
)
