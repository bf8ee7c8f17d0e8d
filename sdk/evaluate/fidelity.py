"""Fidelity: how close the student's next-token distribution is to the teacher's.

On the teacher's own held-out answers a (teacher forcing, both models see the same prefix), per token t:

  KL_t    = sum_v p_T(v | x, a_<t) * (log p_T(v | x, a_<t) - log p_S(v | x, a_<t))   full vocabulary
  agree_t = [argmax_v p_T(v | .) == argmax_v p_S(v | .)]                              top-1 agreement
  nll_t   = -log p_S(a_t | x, a_<t)                                                   student perplexity = exp(mean nll)

Every figure is token-weighted over the whole set (sum over all answer tokens / their count), so a long
answer counts for more than a short one. Domain perplexity is exp(mean nll) of a model on plain text
(held-out corpus chunks), with no prompt.

This needs both models' full logits, so a local teacher. An endpoint teacher that returned its top-k
log-probabilities for its held-out answers (stored as the teacher logit store keeps them) gives an
estimate instead, `fidelity_from_topk`: per token, KL over the teacher's top-k plus one bucket for the rest
of the vocabulary,

  KL_t ~= sum_{i in K} p_T(i) (log p_T(i) - log p_S(i)) + p_T(tail) (log p_T(tail) - log p_S(tail))

(the loss sdk/train/kd_store.py trains; a lower bound of the full KL, since merging outcomes never raises a
KL divergence), top-1 agreement exact (the teacher's top-1 is the first of its top-k), and the student's
perplexity exact. Positions for which the server gave no top-k (stored one-hot) are left out of KL and
top-1; the teacher's own perplexity is not known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sdk.models.local import answer_batch, answer_logits


def token_divergence(teacher_logits, student_logits, targets, mask) -> dict:
    """Sums over masked positions: KL(T||S), top-1 agreements, student and teacher NLL of the targets.

    teacher_logits, student_logits: (B, T, V) at the positions that predict `targets` (B, T); mask (B, T) 0/1.
    Returns per-row sums as lists, so callers can aggregate per item or over the set.
    """
    import torch

    t_logp = torch.log_softmax(teacher_logits.float(), dim=-1)
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    m = mask.float()
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # (B, T)
    agree = (t_logp.argmax(-1) == s_logp.argmax(-1)).float()  # (B, T)
    s_nll = -s_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    t_nll = -t_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return {
        "tokens": m.sum(-1).tolist(),
        "kl": (kl * m).sum(-1).tolist(),
        "agree": (agree * m).sum(-1).tolist(),
        "student_nll": (s_nll * m).sum(-1).tolist(),
        "teacher_nll": (t_nll * m).sum(-1).tolist(),
    }


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


FIDELITY_MAX_TOKENS = 1024  # prompt + answer tokens scored per item


def _encode(tokenizer, prompts: Sequence[str], answers: Sequence[str], device, max_length: int):
    """answer_batch of the tokenized rows, the first max_length tokens of each (the prompt is context only)."""
    rows = []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_length] if prompt else []
        a = tokenizer(answer, add_special_tokens=False)["input_ids"][: max_length - len(p)]
        rows.append((p, a))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return answer_batch(rows, pad, device)


def _logits(model, input_ids, attention):
    import torch

    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention).logits


def _vocab(logits, width: int):
    return logits[..., :width]  # models may pad their vocabulary; both read the tokenizer's ids


def fidelity(teacher, student, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 4) -> dict:
    """Per-item and set-level KL(T||S), top-1 agreement and perplexities on the given answers.

    prompts: rendered chat prompts (generation prompt included); answers: the teacher's answers.
    Items with an empty answer are skipped (they have no tokens to score).
    """
    width = len(tokenizer)
    keep = [i for i, a in enumerate(answers) if a and a.strip()]
    items: list[dict] = [{} for _ in answers]
    device = next(student.parameters()).device
    for chunk in _batches(keep, batch_size):
        # only the positions that predict answer tokens: from the batch's first answer token (start) on
        input_ids, attention, mask, start = _encode(
            tokenizer, [prompts[i] for i in chunk], [answers[i] for i in chunk], device, FIDELITY_MAX_TOKENS
        )
        teacher_device = next(teacher.parameters()).device
        t_logits = _vocab(
            answer_logits(teacher, input_ids.to(teacher_device), attention.to(teacher_device), start).to(device), width
        )
        s_logits = _vocab(answer_logits(student, input_ids, attention, start), width)
        sums = token_divergence(t_logits, s_logits, input_ids[:, start:], mask[:, start:])  # position t predicts t+1
        for j, i in enumerate(chunk):
            items[i] = {k: v[j] for k, v in sums.items()}
    return {"items": [_item(x) for x in items], "summary": _summary(items)}


def fidelity_from_topk(student, items: Sequence[tuple[list[int], int, object]]) -> dict:
    """The estimate from an endpoint's stored top-k (see the module docstring).

    items: (prompt + completion token ids, prompt length, the row's StoredRow), where the stored tokens are the
    completion tokens (logit_store.completion_tokens); positions past FIDELITY_MAX_TOKENS are not scored.
    """
    import torch

    from sdk.train.kd_store import sparse_forward_kl, token_nll

    device = next(student.parameters()).device
    sums = {"tokens": 0, "kl": 0.0, "agree": 0.0, "student_nll": 0.0, "nll_tokens": 0}
    for ids, prompt_len, row in items:
        n = min(len(row), FIDELITY_MAX_TOKENS - prompt_len)
        if n <= 0:
            continue
        input_ids = torch.tensor([ids[: prompt_len + n]], device=device)
        with torch.inference_mode():
            logits = student(input_ids=input_ids).logits[0, prompt_len - 1 : prompt_len + n - 1].float()  # (n, V)
        topk_ids = torch.from_numpy(row.topk_ids[:n].astype("int64")).to(device)
        topk_lp = torch.from_numpy(row.topk_logprobs[:n].astype("float32")).to(device)
        tail = torch.from_numpy(row.tail_logprob[:n].astype("float32")).to(device)
        targets = torch.from_numpy(row.token_ids[:n].astype("int64")).to(device)
        nll = token_nll(logits, targets)
        # a position the server gave no top-k for is stored one-hot (log-prob 0, nothing in the tail)
        scored = ~((topk_lp[:, 0] == 0) & torch.isinf(tail))
        kl = sparse_forward_kl(logits, topk_ids, topk_lp, tail)
        agree = (logits.argmax(-1) == topk_ids[:, 0]).float()
        sums["tokens"] += int(scored.sum())
        sums["kl"] += float(kl[scored].sum())
        sums["agree"] += float(agree[scored].sum())
        sums["student_nll"] += float(nll.sum())
        sums["nll_tokens"] += n
    n = sums["tokens"]
    return {
        "kl_per_token": round(sums["kl"] / n, 4) if n else None,
        "top1_agreement": round(sums["agree"] / n, 4) if n else None,
        "student_ppl": round(math.exp(sums["student_nll"] / sums["nll_tokens"]), 3) if sums["nll_tokens"] else None,
        "teacher_ppl": None,
        "fidelity_tokens": n,
    }


def _item(sums: dict) -> dict:
    n = sums.get("tokens", 0)
    if not n:
        return {"tokens": 0}
    return {
        "tokens": int(n),
        "kl_per_token": round(sums["kl"] / n, 4),
        "top1_agreement": round(sums["agree"] / n, 4),
        "student_ppl": round(math.exp(sums["student_nll"] / n), 3),
    }


def _summary(items: list[dict]) -> dict:
    n = sum(x.get("tokens", 0) for x in items)
    if not n:
        return {
            "kl_per_token": None,
            "top1_agreement": None,
            "student_ppl": None,
            "teacher_ppl": None,
            "fidelity_tokens": 0,
        }
    total = lambda key: sum(x.get(key, 0.0) for x in items)  # noqa: E731
    return {
        "kl_per_token": round(total("kl") / n, 4),
        "top1_agreement": round(total("agree") / n, 4),
        "student_ppl": round(math.exp(total("student_nll") / n), 3),
        "teacher_ppl": round(math.exp(total("teacher_nll") / n), 3),
        "fidelity_tokens": int(n),
    }


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 4, max_length: int = 512) -> dict:
    """Token-weighted perplexity of a model on plain texts (each scored from its second token on)."""
    import torch

    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for chunk in _batches([t for t in texts if t and t.strip()], batch_size):
        input_ids, attention, mask, _ = _encode(tokenizer, [""] * len(chunk), chunk, device, max_length)
        logp = torch.log_softmax(_vocab(_logits(model, input_ids, attention), len(tokenizer))[:, :-1].float(), dim=-1)
        m = mask[:, 1:].float()
        nll += float((-logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1) * m).sum())  # -log p(x_t+1 | x_<=t)
        count += int(m.sum())
    return {"ppl": round(math.exp(nll / count), 3) if count else None, "tokens": count}


def gap_closed(kl_start: float | None, kl_now: float | None) -> float | None:
    """Share of the starting KL gap to the teacher that training closed: 1 - KL_now / KL_start."""
    if kl_start is None or kl_now is None or kl_start <= 0:
        return None
    return round(1.0 - kl_now / kl_start, 4)
