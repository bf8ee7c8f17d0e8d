"""Stage `<iter>/label`: the teacher answers the train pool (journaled row by row, so a killed run never
pays twice); an instruction it answered in an earlier iteration is reused, not asked again."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

from sdk.curation.labeling import Teacher, label_rows
from sdk.errors import ConfigError
from sdk.stages.base import Stage
from sdk.train.endpoint_topk import TOPK_FIELD, TokenMap, check_vocabulary, encode_reply, fill_from_endpoint


def run(ctx, k: int):
    it = ctx.layout.iteration(k)
    pool = ctx.store.read_jsonl(it.train_pool)
    earlier = ctx.teacher_answers(k - 1) if k > 0 else {}
    journal = ctx.store.journal(it.teacher_journal)
    use_context = ctx.recipe.curation.teacher_context == "passage"
    topk = endpoint_topk(ctx)
    model = ctx.teacher if topk is None else topk.model
    teacher = Teacher(model, ctx.name("teacher"), ctx.pack.spec.system_prompt, use_context, topk and topk.encode)
    todo = [r for r in pool if r["id"] not in earlier]
    if topk is not None and not topk.vocabulary_checked and todo:
        probe = label_rows(todo[:1], teacher, journal, budget=ctx.budget("teacher"))[0]  # one call, kept
        topk.check_first_reply(probe)
    fresh = label_rows(todo, teacher, journal, budget=ctx.budget("teacher"))
    answers = {r["id"]: r for r in fresh}

    def reused(r: dict) -> dict:
        before = earlier[r["id"]]
        return dict(r, answer=before["answer"], status="ok", provenance=dict(before["provenance"], reused=True))

    rows = [answers[r["id"]] if r["id"] in answers else reused(r) for r in pool]
    stored = store_teacher_logits(ctx, k, [r for r in rows if r["status"] == "ok"], topk)  # before the journal goes
    path = ctx.store.write_jsonl(it.teacher, [{f: v for f, v in r.items() if f != TOPK_FIELD} for r in rows])
    journal.remove()
    return [path] + stored


LOGIT_KEYS = tuple(
    f"train.kd.{k}" for k in ("source", "top_k", "beta", "lmbda", "temperature")
)  # what the store depends on


def stores_logits(recipe) -> bool:
    """The label stage stores the teacher's top-k when kd trains from it: kd.source store, or auto with an endpoint
    teacher (which can only be distilled white-box through its logprobs); kd.source auto then trains from it."""
    kd = recipe.train.kd
    endpoint = recipe.models.teacher.provider == "openai"
    return "kd" in recipe.train.stages and (kd.source == "store" or (kd.source == "auto" and endpoint))


@dataclass
class EndpointTopK:
    """An endpoint teacher asked for its top-k log-probabilities, and how its replies become the student's ids."""

    model: object  # the teacher's chat model, with generation.top_logprobs set
    token_map: TokenMap
    top_k: int
    vocabulary_checked: bool

    def encode(self, reply) -> dict:
        return encode_reply(reply, self.token_map, self.top_k)

    def check_first_reply(self, row: dict) -> None:
        """Without /tokenize, the first reply decides: its tokens must map onto the student's vocabulary."""
        error = (row.get(TOPK_FIELD) or {}).get("error") if row["status"] == "ok" else None
        if error:
            raise ConfigError(
                f"models.teacher's reply does not map onto the student's vocabulary ({error}), so its top-k cannot "
                "train the student (white-box KD needs one vocabulary): use a student of the teacher's family, or "
                "train.stages without kd"
            )
        self.vocabulary_checked = row["status"] == "ok"


def endpoint_topk(ctx) -> Optional[EndpointTopK]:
    """For an endpoint teacher whose top-k kd trains from: the teacher asking for logprobs, its vocabulary checked
    against the student's through /tokenize where the server has it (before anything is paid for)."""
    spec = ctx.recipe.models.teacher
    if spec.provider != "openai" or not stores_logits(ctx.recipe):
        return None
    from sdk.train.kd import student_tokenizer

    tokenizer = student_tokenizer(ctx.recipe)  # the spec's: the student stage keeps it (eval_teacher runs before)
    top_k = ctx.recipe.train.kd.top_k
    model = copy.copy(ctx.teacher)  # the same client, cache and limits; only the request differs
    model.settings = model.settings.model_copy(update={"top_logprobs": top_k})
    return EndpointTopK(model, TokenMap(tokenizer), top_k, bool(check_vocabulary(spec, tokenizer)))


def store_teacher_logits(ctx, k: int, rows: list[dict], topk: Optional[EndpointTopK] = None) -> list:
    """The teacher's top-k per answer token to iter_<k>/teacher_logits/ (resumable): a local teacher's from one
    forward pass over each answer; an endpoint's from the logprobs of its replies (a row reused from an earlier
    iteration brings its stored top-k along)."""
    if not stores_logits(ctx.recipe):
        return []
    from sdk.progress import log
    from sdk.train.logit_store import FillSettings, LogitStore, fill_from_local_teacher

    folder = ctx.layout.iteration(k).teacher_logits
    with LogitStore(folder, ctx.recipe.train.kd.top_k) as store:
        if ctx.recipe.models.teacher.provider == "openai":
            previous = ctx.layout.iteration(k - 1).teacher_logits if k > 0 else None
            copy_rows(previous, store, [r for r in rows if r.get("provenance", {}).get("reused")])
            topk = topk or endpoint_topk(ctx)
            summary = fill_from_endpoint(store, topk.token_map.tokenizer, rows, ctx.pack.spec.system_prompt)
            share = summary["teacher_topk_share"]
            log(
                f"stored the endpoint teacher's top-{summary['top_k']} for {summary['rows']} answers "
                f"({summary['tokens']} tokens, {share:.0%} with the teacher's top-k, the rest one-hot)"
                + (f"; without top-k: {summary['rows_without_topk']}" if summary["rows_without_topk"] else "")
            )
            return [folder]
        settings = FillSettings(batch_size=ctx.recipe.eval.batch_size)
        summary = fill_from_local_teacher(
            store, ctx.teacher.model, ctx.teacher.tokenizer, rows, ctx.pack.spec.system_prompt, settings
        )
    log(
        f"stored the teacher's top-{summary['top_k']} for {summary['rows']} answers ({summary['tokens']} tokens, {summary['bytes_per_token']:.0f} bytes per token)"
    )
    return [folder]


def copy_rows(source, store, rows: list[dict]) -> None:
    """Rows answered in an earlier iteration keep the top-k stored then (the endpoint is not asked again)."""
    from sdk.train.logit_store import LogitStore

    if source is None or not (source / "meta.json").is_file():
        return
    earlier = LogitStore(source)
    for row in rows:
        if earlier.has(row["id"]) and not store.has(row["id"]):
            store.add_row(row["id"], earlier.get(row["id"]))  # its prompt digest comes along


STAGE = Stage(
    "label",
    run,
    per_iteration=True,
    reads=("iteration.train_pool", "previous.teacher"),
    writes=("iteration.teacher", "iteration.teacher_logits"),
    recipe=("domain", "models.teacher", "curation.teacher_context", "train.stages", *LOGIT_KEYS),
)
