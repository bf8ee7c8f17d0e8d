"""Offline KD from a stored teacher top-k: the store on disk, the sparse loss, and training without the teacher."""

import json
import math

import numpy as np
import pytest
import torch

from sdk.errors import DistilleryError
from sdk.train.kd_store import STAGE, sparse_forward_kl, store_kd_trainer
from sdk.train.logit_store import (
    INDEX,
    STORE_DIR,
    FillSettings,
    LogitStore,
    completion_tokens,
    fill_from_local_teacher,
    tail_from_topk,
)
from tests.train_helpers import ROWS, SYSTEM, tiny_model_dir, tiny_recipe, write_iteration


def fake_row(rng, n: int, k: int, vocab: int = 1000):
    logits = rng.normal(size=(n, vocab)) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :k]
    top = np.take_along_axis(logp, ids, -1)
    return rng.integers(0, vocab, n), ids, top, tail_from_topk(top)


def assert_row(got, row):
    tokens, ids, top, tail = row
    np.testing.assert_array_equal(got.token_ids, tokens)
    np.testing.assert_array_equal(got.topk_ids, ids)
    np.testing.assert_array_equal(got.topk_logprobs, top.astype(np.float16))
    np.testing.assert_array_equal(got.tail_logprob, tail.astype(np.float16))


def shards(folder):
    return sorted(p.name for p in folder.glob("shard-*.npy"))


# --- the store ---------------------------------------------------------------------------------------


def test_store_round_trips_rows_memory_mapped_and_reports_bytes_per_token(tmp_path):
    rng, k, folder = np.random.default_rng(0), 20, tmp_path / STORE_DIR
    rows = {f"r{i}": fake_row(rng, 3 + i, k) for i in range(6)}
    with LogitStore(folder, k, shard_tokens=10) as store:
        assert all(store.add(rid, *row) for rid, row in rows.items())
        assert store.add("r0", *rows["r1"]) is False  # a stored row is kept as it is
        assert_row(store.get("r5"), rows["r5"])  # buffered rows read back before the flush too
    assert store.bytes_per_token == 6 * k + 6 == 126  # int32 token + k int32 ids + k float16 log-probs + float16 tail
    reopened = LogitStore(folder)  # top_k from meta.json
    assert reopened.top_k == k and sorted(reopened.row_ids()) == sorted(rows) and len(shards(folder)) >= 3
    for rid, row in rows.items():
        assert_row(reopened.get(rid), row)
    assert isinstance(reopened.get("r2").topk_ids, np.memmap)
    stats = reopened.stats()
    assert stats["tokens"] == sum(3 + i for i in range(6)) and stats["bytes_per_token"] == 126
    assert 126 < stats["disk_bytes_per_token"] < 126 + 200  # npy headers and the index, amortised over 33 tokens
    with pytest.raises(KeyError):
        reopened.get("missing")
    with pytest.raises(DistilleryError, match="top-20 tokens, not the top-8"):
        LogitStore(folder, 8)
    with pytest.raises(DistilleryError, match="shapes"):
        reopened.add("bad", *fake_row(rng, 4, 5))
    with pytest.raises(DistilleryError, match="no teacher logit store"):
        LogitStore(tmp_path / "empty")


def test_a_killed_writer_leaves_no_half_row_and_a_resume_skips_stored_rows(tmp_path, monkeypatch):
    rng, folder = np.random.default_rng(1), tmp_path / STORE_DIR
    rows = {f"r{i}": fake_row(rng, 4, 4) for i in range(3)}
    store = LogitStore(folder, 4)
    store.add("r0", *rows["r0"])
    store.flush()
    # killed after the shard was renamed into place, before its rows reached the index
    store.add("r1", *rows["r1"])

    def killed(self, entries):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(LogitStore, "_append_index", killed)
    with pytest.raises(KeyboardInterrupt):
        store.flush()
    monkeypatch.undo()
    assert shards(folder) == ["shard-00000.npy", "shard-00001.npy"]
    # and a torn last index line plus a temp file from another kill
    with open(folder / INDEX, "a") as fh:
        fh.write('{"id": "r2", "shard": "shard-000')
    (folder / ".shard-00007.npy.x.tmp").write_bytes(b"half a shard")
    resumed = LogitStore(folder)
    assert resumed.row_ids() == ["r0"] and shards(folder) == ["shard-00000.npy"]  # the orphan shard is removed
    assert not list(folder.glob("*.tmp")) and (folder / INDEX).read_text().endswith("\n")
    assert [resumed.add(rid, *row) for rid, row in rows.items()] == [False, True, True]
    resumed.close()
    final = LogitStore(folder)
    assert sorted(final.row_ids()) == ["r0", "r1", "r2"] and len(shards(folder)) == 2
    for rid, row in rows.items():
        assert_row(final.get(rid), row)
    assert [json.loads(line)["id"] for line in (folder / INDEX).read_text().splitlines()] == ["r0", "r1", "r2"]


def test_tail_from_topk_is_the_log_mass_outside_the_top_k():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(8, 50)) * 4
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    order = np.argsort(-logp, axis=-1)
    top = np.take_along_axis(logp, order[:, :20], -1)
    rest = np.take_along_axis(logp, order[:, 20:], -1)
    np.testing.assert_allclose(tail_from_topk(top), np.log(np.exp(rest).sum(-1)), rtol=1e-6)
    assert np.all(tail_from_topk(np.take_along_axis(logp, order, -1)) < -25)  # the whole vocabulary: ~log 0


# --- the sparse loss ---------------------------------------------------------------------------------


def teacher_topk(teacher_logits, k):
    logp = teacher_logits.log_softmax(-1)
    values, ids = logp.topk(k, dim=-1)
    return ids, values, torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)


def test_sparse_kl_is_the_dense_forward_kl_at_full_k_and_a_close_lower_bound_below():
    torch.manual_seed(0)
    n, vocab = 64, 50
    student, teacher = torch.randn(n, vocab) * 2, torch.randn(n, vocab) * 3
    lt, ls = teacher.log_softmax(-1), student.log_softmax(-1)
    dense = (lt.exp() * (lt - ls)).sum(-1)
    full = sparse_forward_kl(student, *teacher_topk(teacher, vocab))  # tail bucket empty (-inf)
    torch.testing.assert_close(full, dense, rtol=1e-5, atol=1e-5)
    ids, top, tail = teacher_topk(teacher, vocab)
    stored = sparse_forward_kl(student, ids.int(), top.half(), tail.half())  # as the store keeps them
    torch.testing.assert_close(stored, dense, rtol=1e-2, atol=1e-2)
    previous = torch.zeros(n)
    for k in (1, 5, 10, 20, 40, vocab):  # a finer partition never lowers a KL: nondecreasing in k, up to the dense KL
        sparse = sparse_forward_kl(student, *teacher_topk(teacher, k))
        assert (sparse >= -1e-6).all() and (sparse <= dense + 1e-5).all() and (sparse >= previous - 1e-5).all()
        previous = sparse
    top20 = sparse_forward_kl(student, *teacher_topk(teacher, 20))
    assert abs(top20.mean() - dense.mean()) / dense.mean() < 0.02  # k = 20 of 50 keeps the KL within 2 %
    same = sparse_forward_kl(teacher, *teacher_topk(teacher, 20))
    torch.testing.assert_close(same, torch.zeros(n), rtol=0, atol=1e-5)
    grad_input = student.clone().requires_grad_(True)
    sparse_forward_kl(grad_input, *teacher_topk(teacher, vocab)).sum().backward()  # -inf tail: no NaN gradient
    assert torch.isfinite(grad_input.grad).all()


# --- end to end on tiny models -------------------------------------------------------------------------


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def answer_kl(teacher, student, tok, rows):
    """Mean full-vocabulary KL(teacher || student) over the training answers' completion tokens."""
    from sdk.train.sft import sft_dataset

    total, count = 0.0, 0
    for ex in sft_dataset(rows, SYSTEM):
        full, p = completion_tokens(tok, ex["prompt"], ex["completion"])
        ids = torch.tensor([full])
        with torch.no_grad():
            lt = teacher(input_ids=ids).logits[0, p - 1 : -1].float().log_softmax(-1)
            ls = student(input_ids=ids).logits[0, p - 1 : -1].float().log_softmax(-1)
        total += float((lt.exp() * (lt - ls)).sum())
        count += len(full) - p
    return total / count


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny student, and a tiny teacher made peaky as a trained LM is: a random one spreads its mass over all
    49k tokens (its top-20 holds 0.06 %); with its final norm scaled by 40 the top-20 holds ~85 %, the top-1 ~60 %."""
    root = tmp_path_factory.mktemp("tiny")
    teacher_dir = tiny_model_dir(root / "teacher", layers=3, seed=1)
    teacher = load(teacher_dir)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(40.0)
    teacher.save_pretrained(teacher_dir)
    return tiny_model_dir(root / "student", layers=2, seed=0), teacher_dir


def test_fill_from_a_tiny_teacher_then_train_a_student_without_it(tiny, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.train.common import StageContext, TrainRequest, run_trainer

    student_dir, teacher_dir = tiny
    it = write_iteration(tmp_path / "iter_00")
    rows = [r for r in map(json.loads, (it / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"]
    tok = AutoTokenizer.from_pretrained(student_dir)
    teacher = load(teacher_dir).eval()
    with LogitStore(it / STORE_DIR, 20) as store:
        first = fill_from_local_teacher(store, teacher, tok, rows[:4], SYSTEM, FillSettings(batch_size=3))
    assert first["rows"] == 4 and first["tokens"] > 4 * 10 and first["bytes_per_token"] == 126
    with LogitStore(it / STORE_DIR, 20) as store:  # a resumed fill pays only for the rows not stored yet
        second = fill_from_local_teacher(store, teacher, tok, rows, SYSTEM, FillSettings(batch_size=4))
    assert second["rows"] == 2 and second["skipped"] == 4 and len(store) == len(ROWS)
    kl_before = answer_kl(teacher, load(student_dir), tok, rows)

    # from here on no teacher may be loaded
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    real_from_pretrained = AutoModelForCausalLM.from_pretrained.__func__

    def guarded(cls, path, *args, **kwargs):
        assert str(path) != str(teacher_dir), "the teacher was loaded"
        return real_from_pretrained(cls, path, *args, **kwargs)

    monkeypatch.setattr("sdk.models.load_local", no_teacher)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(guarded))
    recipe = tiny_recipe(student_dir, teacher_dir, max_steps=16, batch_size=3, save_steps=8, learning_rate=1e-2)
    ctx = StageContext(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM), rows=rows)
    student = load(student_dir)
    trainer = store_kd_trainer(student, tok, ctx, LogitStore(it / STORE_DIR))
    # the fill tokenized each row exactly as SFTTrainer does: the same ids, the completion where its labels start
    stored = LogitStore(it / STORE_DIR)
    for example in trainer.train_dataset:
        full, prompt_len = completion_tokens(tok, example["prompt"], example["completion"])
        assert example["input_ids"] == full
        assert example["labels"] == [-100] * prompt_len + full[prompt_len:]
        assert stored.get(example["row_id"]).token_ids.tolist() == full[prompt_len:]
    metrics = run_trainer(trainer, ctx.stage_dir(STAGE))
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert metrics["steps"] == 16 and all(math.isfinite(x) and x >= 0 for x in losses)
    assert losses[-1] < losses[0]
    assert any("kl" in h for h in trainer.state.log_history)
    assert list(ctx.stage_dir(STAGE).glob("checkpoint-*"))
    monkeypatch.undo()
    kl_after = answer_kl(teacher, trainer.model.eval(), tok, rows)
    assert kl_after < 0.9 * kl_before, (kl_before, kl_after)


def test_a_store_filled_another_way_is_refused_naming_the_row(tiny, tmp_path):
    from transformers import AutoTokenizer

    from sdk.train.common import StageContext, TrainRequest

    student_dir, teacher_dir = tiny
    it = write_iteration(tmp_path / "iter_00")
    rows = [r for r in map(json.loads, (it / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"]
    tok = AutoTokenizer.from_pretrained(student_dir)
    teacher = load(teacher_dir)
    with LogitStore(it / STORE_DIR, 4) as store:
        fill_from_local_teacher(store, teacher, tok, rows, SYSTEM)
    recipe = tiny_recipe(student_dir, teacher_dir)
    ctx = StageContext(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM), rows=rows)
    trainer = store_kd_trainer(load(student_dir), tok, ctx, LogitStore(it / STORE_DIR))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    n = sum(x != -100 for i in range(3) for x in trainer.train_dataset[i]["labels"][1:])
    assert batch["teacher_topk_ids"].shape == (n, 4) and batch["teacher_tail_logprob"].shape == (n,)
    with LogitStore(it / "prompt", 4) as other:  # filled with another system prompt: same answer tokens
        fill_from_local_teacher(other, teacher, tok, rows, "Another system prompt.")
    trainer = store_kd_trainer(load(student_dir), tok, ctx, LogitStore(it / "prompt"))
    with pytest.raises(DistilleryError, match="row 't0'.*another prompt"):
        trainer.data_collator([trainer.train_dataset[0]])
    with LogitStore(it / "other", 4) as other:  # another answer for the same row id
        fill_from_local_teacher(other, teacher, tok, [dict(rows[0], answer="Something else.")], SYSTEM)
    trainer = store_kd_trainer(load(student_dir), tok, ctx.__class__(ctx.request, rows[:1]), LogitStore(it / "other"))
    with pytest.raises(DistilleryError, match="row 't0'.*first difference at token 0"):
        trainer.data_collator([trainer.train_dataset[0]])
    with pytest.raises(DistilleryError, match="5 of 6 training rows have no stored teacher top-k"):
        store_kd_trainer(load(student_dir), tok, ctx, LogitStore(it / "other"))
    # a completion cut at max_length by the trainer uses the stored prefix
    short = tiny_recipe(student_dir, teacher_dir, max_seq_length=30)
    ctx = StageContext(TrainRequest.in_folder(short, it, tmp_path / "student", None, SYSTEM), rows=rows)
    trainer = store_kd_trainer(load(student_dir), tok, ctx, LogitStore(it / STORE_DIR))
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    assert len(example["input_ids"]) == 30 and batch["teacher_topk_ids"].shape[0] == sum(
        x != -100 for x in example["labels"][1:]
    )


def test_lora_student_trains_from_the_store_and_a_killed_run_resumes(tiny, tmp_path):
    from transformers import AutoTokenizer

    from sdk.train.common import StageContext, TrainRequest, run_trainer

    student_dir, teacher_dir = tiny
    it = write_iteration(tmp_path / "iter_00")
    rows = [r for r in map(json.loads, (it / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"]
    tok = AutoTokenizer.from_pretrained(student_dir)
    with LogitStore(it / STORE_DIR, 8) as store:
        fill_from_local_teacher(store, load(teacher_dir), tok, rows, SYSTEM)
    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}

    def context(steps):
        recipe = tiny_recipe(student_dir, teacher_dir, max_steps=steps, save_steps=2, lora=lora)
        return StageContext(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM), rows=rows)

    killed = store_kd_trainer(load(student_dir), tok, context(2), LogitStore(it / STORE_DIR), ce_weight=0.5)
    assert hasattr(killed.model, "peft_config")
    killed.train()  # a first session that stopped after checkpoint-2
    ctx = context(3)
    trainer = store_kd_trainer(load(student_dir), tok, ctx, LogitStore(it / STORE_DIR), ce_weight=0.5)
    metrics = run_trainer(trainer, ctx.stage_dir(STAGE))
    assert metrics["resumed_from_checkpoint"].endswith("checkpoint-2") and metrics["steps"] == 3
    logged = [h for h in trainer.state.log_history if "loss" in h]
    first = [h for h in killed.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3] and logged[:2] == first  # steps 1-2 come from the checkpoint
    for h in logged:  # loss = KL + ce_weight * CE, both per answer token
        assert math.isfinite(h["loss"]) and h["loss"] == pytest.approx(h["kl"] + 0.5 * h["ce"], rel=1e-3)


# --- the pipeline: the label stage fills the store, the kd objective trains from it --------------------


def test_label_stage_stores_the_top_k_and_kd_trains_from_it_without_the_teacher(tiny, tmp_path, monkeypatch):
    from sdk.config import load_recipe
    from sdk.pipeline import Pipeline
    from sdk.stages import label, train
    from sdk.store import RunStore
    from sdk.train import kd as kd_module
    from tests.conftest import TINY_PACKS

    student, teacher = tiny
    overrides = {
        "domain": "tiny", "pack_paths": [str(TINY_PACKS)], "forgetting.enabled": False,
        "models.teacher.provider": "hf", "models.teacher.name_or_path": str(teacher),
        "models.teacher.generation.max_new_tokens": 12, "models.student.provider": "hf",
        "models.student.name_or_path": str(student), "train.stages": ["kd"], "train.kd.beta": 0.0,
        "train.kd.lmbda": 0.0,
        "train.kd.source": "store", "train.max_steps": 3, "train.batch_size": 2, "train.save_steps": 2,
    }  # fmt: skip
    pipeline = Pipeline(load_recipe("smoke", overrides=overrides), RunStore(tmp_path / "run"))
    ctx, it = pipeline.ctx, pipeline.store.layout.iteration(0)
    rows = [
        {"id": f"q{i}", "instruction": q, "answer": a, "status": "ok", "source": "seed", "provenance": {}}
        for i, (q, a) in enumerate(ROWS)
    ]
    ctx.store.write_jsonl(it.teacher, rows)  # the teacher's answers, as the label stage writes them
    ctx.store.write_json(ctx.layout.student_init, {"path": None})

    assert label.stores_logits(ctx.recipe)  # kd.source store: the label stage stores the top-k
    sft_only = ctx.recipe.model_copy(update={"train": ctx.recipe.train.model_copy(update={"stages": ["sft"]})})
    online = ctx.recipe.model_copy(
        update={
            "train": ctx.recipe.train.model_copy(
                update={"kd": ctx.recipe.train.kd.model_copy(update={"source": "auto"})}
            )
        }
    )
    assert not label.stores_logits(sft_only) and not label.stores_logits(online)
    assert label.store_teacher_logits(ctx, 0, rows) == [it.teacher_logits]
    stored = LogitStore(it.teacher_logits)
    assert sorted(stored.row_ids()) == sorted(r["id"] for r in rows) and stored.top_k == 20

    import sdk.models

    load_local = sdk.models.load_local

    def no_teacher(spec, *args, **kwargs):
        if str(getattr(spec, "name_or_path", "")) == str(teacher):
            raise AssertionError("the teacher was loaded to train from the store")
        return load_local(spec, *args, **kwargs)

    def online(*args, **kwargs):
        raise AssertionError("kd trained online, with the teacher in memory")

    monkeypatch.setattr(kd_module, "online_kd", online)
    monkeypatch.setattr("sdk.models.load_local", no_teacher)
    ctx.release_models()
    train.run(ctx, 0)
    m = ctx.store.read_json(it.train_metrics)["stages"]["kd"]
    assert m["source"] == "store" and m["top_k"] == 20 and m["steps"] == 3
    assert all(math.isfinite(h["loss"]) for h in m["loss_history"])


def test_fidelity_estimated_from_a_stored_top_k_matches_a_hand_computation(tiny, tmp_path):
    """An endpoint teacher's fidelity figures (sdk/evaluate/fidelity.py, fidelity_from_topk): KL over the top-k and
    one tail bucket, exact top-1 agreement and student perplexity, against the same figures from dense logits."""
    from transformers import AutoTokenizer

    from sdk.evaluate.fidelity import fidelity_from_topk
    from sdk.train.sft import sft_dataset

    student_dir, teacher_dir = tiny
    teacher, student = load(teacher_dir), load(student_dir)
    tok = AutoTokenizer.from_pretrained(student_dir)
    it = write_iteration(tmp_path / "iter_00")
    rows = [r for r in map(json.loads, (it / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"][:3]
    k = 20
    with LogitStore(tmp_path / "store", k) as store:
        fill_from_local_teacher(store, teacher, tok, rows, SYSTEM)
    store = LogitStore(tmp_path / "store")
    items, kl, agree, nll, n = [], 0.0, 0.0, 0.0, 0
    for row, ex in zip(rows, sft_dataset(rows, SYSTEM)):
        full, p = completion_tokens(tok, ex["prompt"], ex["completion"])
        items.append((full, p, store.get(row["id"])))
        ids = torch.tensor([full])
        with torch.no_grad():
            lt = teacher(input_ids=ids).logits[0, p - 1 : -1].float().log_softmax(-1)
            ls = student(input_ids=ids).logits[0, p - 1 : -1].float().log_softmax(-1)
        top_lp, top_ids = lt.topk(k, dim=-1)
        s_top = ls.gather(-1, top_ids)
        t_tail, s_tail = torch.log1p(-top_lp.exp().sum(-1)), torch.log1p(-s_top.exp().sum(-1))  # the k+1-th bucket
        kl += float((top_lp.exp() * (top_lp - s_top)).sum() + (t_tail.exp() * (t_tail - s_tail)).sum())
        agree += float((lt.argmax(-1) == ls.argmax(-1)).sum())
        nll += float(-ls.gather(-1, torch.tensor(full[p:]).unsqueeze(-1)).sum())
        n += len(full) - p
    got = fidelity_from_topk(student, items)
    assert got["fidelity_tokens"] == n
    assert got["kl_per_token"] == pytest.approx(kl / n, rel=0.02)  # float16 storage of the teacher's log-probs
    assert got["top1_agreement"] == pytest.approx(agree / n, abs=1e-4)
    assert got["student_ppl"] == pytest.approx(math.exp(nll / n), rel=1e-3)
    assert got["kl_per_token"] <= answer_kl(teacher, student, tok, rows) + 1e-3  # a lower bound of the full KL
    assert got["teacher_ppl"] is None
