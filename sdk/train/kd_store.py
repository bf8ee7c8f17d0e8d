"""Offline white-box KD from the teacher's stored top-k (sdk/train/logit_store.py), with TRL's SFTTrainer.

DistillKit-style sparse KD (arcee-ai/DistillKit: the teacher's top-k logits are computed once and stored,
training never loads the teacher) on the forward KL of classic KD (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network", arXiv 1503.02531). Per answer token, with the teacher's stored top-k
log-probs t_i (i in K), its tail log-mass t_tail = log(1 - sum_i exp(t_i)), and the student's log-softmax
s over its full vocabulary:

    KL = sum_{i in K} exp(t_i) (t_i - s_i)  +  exp(t_tail) (t_tail - log(1 - sum_{i in K} exp(s_i)))

the forward KL between the two distributions coarsened to k + 1 buckets (the top-k tokens, and everything
else as one). It equals the full-vocabulary KL(P_t || P_s) when k is the vocabulary size, and is a lower
bound of it otherwise (coarsening never increases a KL divergence). With ce_weight > 0 the loss adds
ce_weight * -s(a_t), the cross-entropy of the teacher's own answer token. Both are averaged over the
batch's answer tokens, as SFTTrainer averages its loss.

The dataset is sft_dataset's (a system + user prompt and the assistant completion, completion-only loss)
plus each row's id; the stored tokens must equal the completion tokens SFTTrainer builds with the chat
template, and the prompt tokens their stored digest, or the row is refused with a DistilleryError
(logit_store.completion_tokens tokenizes the same way when the store is filled). The teacher is stored at temperature 1; there is no KD temperature here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from sdk.errors import DistilleryError
from sdk.train.common import StageContext, lora_config, training_args_kwargs
from sdk.train.logit_store import LogitStore, prompt_digest

STAGE = "kd"  # checkpoints in ctx.stage_dir(STAGE): the kd objective's, whichever source trains it
ROW_ID = "row_id"  # the dataset column that names a row's stored top-k
TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logprob")
_STUDENT_TAIL_FLOOR = -16.0  # log(1e-7): float32 cannot resolve less mass outside the top-k as 1 - sum exp(s_i)


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, stably (Maechler 2012): log(-expm1(x)) near 0, log1p(-exp(x)) below -ln 2.

    Each branch gets an input clamped to where it is finite, so neither puts NaN in the other's gradient.
    """
    import torch

    near = x.clamp(min=-math.log(2), max=-1e-30)
    far = x.clamp(max=-math.log(2))
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(near)), torch.log1p(-torch.exp(far)))


def sparse_forward_kl(student_logits, topk_ids, topk_logprobs, tail_logprob):
    """Per-token KL(teacher || student) over the teacher's top-k plus the tail bucket (see the module doc).

    student_logits (N, V); topk_ids (N, k) int; topk_logprobs (N, k) and tail_logprob (N,) the stored
    log-probs (any float dtype). Returns (N,) float32; >= 0 up to rounding.
    """
    import torch

    logits = student_logits.float()
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    s_top = logits.gather(-1, topk_ids.long()) - log_z  # (N, k) student log-probs of the teacher's top-k
    # The tail bucket: the student's mass outside the teacher's top-k, log(1 - sum_i exp(s_i)). It makes the
    # k + 1 buckets a distribution on both sides, so the loss is a true KL (>= 0) that also pulls the student's
    # mass off the tokens the teacher leaves out, instead of only raising its top-k log-probs.
    s_tail = log1mexp(torch.logsumexp(s_top, dim=-1).clamp(max=0.0)).clamp(min=_STUDENT_TAIL_FLOOR)
    t = torch.cat([topk_logprobs.float(), tail_logprob.float().unsqueeze(-1)], dim=-1)
    t = t - torch.logsumexp(t, dim=-1, keepdim=True)  # float16 storage leaves the k + 1 masses a hair off 1
    p = t.exp()
    t = torch.where(p > 0, t, torch.zeros_like(t))  # an empty bucket (tail -inf when k = V) contributes 0, not NaN
    s = torch.cat([s_top, s_tail.unsqueeze(-1)], dim=-1)
    return (p * (t - s)).sum(-1)


def token_nll(student_logits, targets):
    """-log p_student(target) per row of student_logits (N, V)."""
    import torch

    logits = student_logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def store_kd_dataset(rows: list[dict], system_prompt: str):
    """sft_dataset's prompt-completion rows, each with its id (the key into the store)."""
    from sdk.train.sft import sft_dataset

    return sft_dataset(rows, system_prompt).add_column(ROW_ID, [str(r["id"]) for r in rows])


@dataclass
class StoreCollator:
    """SFTTrainer's collator, plus the stored top-k of each example's completion tokens, flattened in the
    order of `labels[:, 1:] != -100` (example by example, position by position): (N, k), (N, k), (N,).

    Checks each example's completion tokens against the stored tokens. When SFTTrainer cut a long example
    at max_length, its completion is a prefix of the stored one and the prefix's top-k is used.
    """

    base: Callable
    store: LogitStore
    max_length: Optional[int] = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        ids, logps, tails = [], [], []
        for example in examples:
            row_id = example[ROW_ID]
            labels = example["labels"][1:]  # position t predicts token t + 1
            seen = np.asarray([x for x in labels if x != -100], dtype=np.int64)
            stored = self._stored(row_id)
            n = len(seen)
            cut = self.max_length is not None and len(example["input_ids"]) >= self.max_length and n < len(stored)
            if (n != len(stored) and not cut) or not np.array_equal(seen, stored.token_ids[:n]):
                raise DistilleryError(_mismatch(row_id, seen, np.asarray(stored.token_ids), self.store))
            start = next((i for i, x in enumerate(example["labels"]) if x != -100), 0)
            if stored.prompt is not None and stored.prompt != prompt_digest(example["input_ids"][:start]):
                raise DistilleryError(
                    f"row {row_id!r}: the teacher logit store {self.store.folder} was filled with another prompt for "
                    "it (another system prompt or chat template; the answer tokens agree): delete the folder and "
                    "fill it again"
                )
            ids.append(np.asarray(stored.topk_ids[:n]))
            logps.append(np.asarray(stored.topk_logprobs[:n]))
            tails.append(np.asarray(stored.tail_logprob[:n]))
        batch = self.base([{k: v for k, v in example.items() if k != ROW_ID} for example in examples])
        batch["teacher_topk_ids"] = torch.from_numpy(np.concatenate(ids)).long()
        batch["teacher_topk_logprobs"] = torch.from_numpy(np.concatenate(logps))
        batch["teacher_tail_logprob"] = torch.from_numpy(np.concatenate(tails))
        return batch

    def _stored(self, row_id: str):
        try:
            return self.store.get(row_id)
        except KeyError:
            raise DistilleryError(
                f"row {row_id!r} has no stored teacher top-k in {self.store.folder}: fill the store "
                "(fill_from_local_teacher) with every training row before training from it"
            ) from None


def _mismatch(row_id: str, seen, stored, store: LogitStore) -> str:
    first = next((i for i, (a, b) in enumerate(zip(seen, stored)) if a != b), min(len(seen), len(stored)))
    return (
        f"row {row_id!r}: the teacher logit store {store.folder} holds {len(stored)} answer tokens for it but the "
        f"trainer's completion has {len(seen)} (first difference at token {first}): the store was filled with "
        "another tokenizer, chat template, system prompt or answer, or a max_length below train.max_seq_length; "
        "delete the folder and fill it again"
    )


def _trainer_class():
    import torch
    from trl import SFTTrainer

    class StoreKDTrainer(SFTTrainer):
        """SFTTrainer whose loss is the sparse forward KL to the stored teacher top-k (+ ce_weight * CE).

        Pass `store` (a LogitStore) and a train_dataset from store_kd_dataset; everything else (LoRA,
        checkpoints, resume, DeepSpeed) is SFTTrainer's.
        """

        def __init__(self, *args, store: LogitStore, ce_weight: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            if self.padding_free or self.args.packing:
                raise DistilleryError("kd from the logit store needs packing and padding_free off")
            self.store, self.ce_weight = store, ce_weight
            self.data_collator = StoreCollator(self.data_collator, store, self.args.max_length)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()  # keep the row id through remove_unused_columns
            if ROW_ID not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, ROW_ID]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher = [inputs.pop(key) for key in TEACHER_KEYS]
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            logits = outputs.logits[:, :-1][mask]  # (N, V): the positions that predict an answer token
            if logits.shape[0] != teacher[0].shape[0]:
                raise DistilleryError(
                    f"the batch has {logits.shape[0]} answer tokens but {teacher[0].shape[0]} stored rows of top-k"
                )
            if teacher[0].numel() and int(teacher[0].max()) >= logits.shape[-1]:
                raise DistilleryError(
                    f"the logit store names token id {int(teacher[0].max())} but the student has {logits.shape[-1]} "
                    "logits: it was filled for another vocabulary"
                )
            kl = sparse_forward_kl(logits, *teacher)
            per_token = kl
            if self.ce_weight:
                nll = token_nll(logits, labels[mask])
                per_token = kl + self.ce_weight * nll
            # normalised as SFTTrainer normalises: over the answer tokens of the whole accumulated batch
            num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = per_token.sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if model.training else "eval"
            if mask.any():
                self._metrics[mode]["kl"].append(kl.detach().mean().item())
                if self.ce_weight:
                    self._metrics[mode]["ce"].append(nll.detach().mean().item())
            return (loss, outputs) if return_outputs else loss

    return StoreKDTrainer


_CLASS = None


def __getattr__(name: str):
    """StoreKDTrainer is built on first use, so importing this module does not import torch and TRL."""
    global _CLASS
    if name == "StoreKDTrainer":
        if _CLASS is None:
            _CLASS = _trainer_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def store_kd_trainer(model, tokenizer, ctx: StageContext, store: LogitStore, ce_weight: float = 0.0):
    """A StoreKDTrainer on ctx.rows (completion-only, sft_dataset's shape), checkpointing in ctx.stage_dir(STAGE).

    No teacher is loaded: the store holds its top-k. Every row must be in the store (fill_from_local_teacher).
    The learning rate is train.kd.learning_rate, else train.learning_rate.
    """
    from trl import SFTConfig

    settings = ctx.settings
    args = SFTConfig(
        output_dir=str(ctx.stage_dir(STAGE)),
        max_length=settings.max_seq_length,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        **training_args_kwargs(settings, ctx.seed, settings.kd.learning_rate),
    )
    missing = [r["id"] for r in ctx.rows if not store.has(str(r["id"]))]
    if missing:
        raise DistilleryError(
            f"{len(missing)} of {len(ctx.rows)} training rows have no stored teacher top-k in {store.folder} "
            f"(first: {missing[0]!r}): fill the store before training from it"
        )
    already_peft = hasattr(model, "peft_config")
    return __getattr__("StoreKDTrainer")(
        model=model,
        args=args,
        train_dataset=store_kd_dataset(ctx.rows, ctx.system_prompt),
        processing_class=tokenizer,
        peft_config=None if already_peft else lora_config(settings),
        store=store,
        ce_weight=ce_weight,
    )
