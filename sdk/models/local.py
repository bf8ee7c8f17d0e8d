"""Local causal LMs: batched, left-padded chat generation and answer log-likelihoods."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from sdk.config import GenerationSettings
from sdk.models.base import ChatBackend

Messages = list[dict]


def sampling_kwargs(temperature: float, top_p: float, repetition_penalty: float, pad_token_id) -> dict:
    """transformers' generate() arguments: greedy at temperature 0, else nucleus sampling (no top-k cut)."""
    sample = temperature > 0
    return dict(
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        repetition_penalty=repetition_penalty,
        pad_token_id=pad_token_id,
    )


def uses_bf16(device, setting: str) -> bool:
    """Whether generation runs in bf16: `on` anywhere, `off` nowhere; `auto` on a CUDA GPU with bf16, or on a CPU
    with native bf16 (AVX512-BF16 or AMX). The fidelity figures (KL, top-1, perplexity) always stay in float32."""
    import torch

    from sdk.train import common

    if setting in ("on", "off"):
        return setting == "on"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and common.cpu_has_native_bf16()


def generation_precision(device, setting: str):
    """bf16 autocast on a GPU where uses_bf16 says so, else a no-op context (a CPU generates from a bf16 copy of
    the weights instead: see LocalChatModel.generation_model)."""
    import contextlib

    import torch

    if device.type != "cpu" and uses_bf16(device, setting):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def answer_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device):
    """(prompt ids, answer ids) rows, right-padded: input_ids, attention mask, a mask over the answer tokens (the
    prompt is context only), and `start`, the first column holding an answer token (at least 1), from which
    answer_logits reads."""
    import torch

    ids = [p + a for p, a in rows]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids], device=device)
    attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
    mask = torch.tensor([[0] * len(p) + [1] * len(a) + [0] * (width - len(p) - len(a)) for p, a in rows], device=device)
    start = max(1, int(mask.any(0).nonzero()[0])) if mask.any() else 1
    return input_ids, attention, mask, start


def answer_logits(model, input_ids, attention, start: int):
    """Logits at positions start-1 .. T-2, the ones that predict tokens start .. T-1 (the answers; `start` >= 1 is
    answer_batch's first answer column). The LM head and the softmax skip the prompt positions before them, which
    no score reads: a third to a half of a scoring pass over a chat prompt and a short answer."""
    import torch

    with torch.inference_mode():
        logits = model(
            input_ids=input_ids, attention_mask=attention, logits_to_keep=input_ids.shape[1] - start + 1
        ).logits
    return logits[:, :-1]


@dataclass
class LocalChatModel(ChatBackend):
    """A transformers model plus tokenizer, used through its tokenizer's chat template."""

    model: object
    tokenizer: object
    name: str
    settings: GenerationSettings
    _scored: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # loglik's memo
    _bf16_copy: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.model.eval()

    @property
    def device(self):
        return next(self.model.parameters()).device

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def cache_params(self, settings: GenerationSettings) -> dict:
        precision = "bf16" if uses_bf16(self.device, settings.bf16) else "fp32"  # bf16 greedy answers differ
        return dict(super().cache_params(settings), repetition_penalty=settings.repetition_penalty, precision=precision)

    def generation_model(self, settings: GenerationSettings):
        """The model that generates. On a CPU with bf16 generation, a bf16 copy of the weights, made once: on this
        project's 2-core AVX512-BF16 CPU it decoded batches of 32 at 1.99x the tokens per second of float32, and
        autocast over the float32 weights at 1.47x, because it casts every weight on every token (at batch 8 it
        was slower than float32; bench/generation.py). The float32 model keeps the fidelity figures."""
        if self.device.type != "cpu" or not uses_bf16(self.device, settings.bf16):
            return self.model
        if self._bf16_copy is None:
            import copy

            import torch

            self._bf16_copy = copy.deepcopy(self.model).to(torch.bfloat16).eval()
        return self._bf16_copy

    def _answer(self, items: list[tuple[int, Messages]], settings: GenerationSettings, budget, emit) -> None:
        """Sort the prompts by token length, longest first, so each batch pads little; emit per batch."""
        texts = [self.render(m) for _, m in items]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(items)), key=lambda k: -lengths[k])
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            granted = budget.reserve(len(batch)) if budget is not None else len(batch)
            if granted:
                outputs = self._generate_texts([texts[k] for k in batch[:granted]], settings, budget)
                emit([(items[k][0], out) for k, out in zip(batch, outputs)])
            if granted < len(batch):
                raise budget.error(self.name)

    def _generate_chunk(self, conversations: Sequence[Messages], settings: GenerationSettings) -> list:
        return self._generate_texts([self.render(m) for m in conversations], settings)

    def _generate_texts(self, prompts: list[str], settings: GenerationSettings, budget=None) -> list[str]:
        """One left-padded batch: every prompt ends at the same column, so new tokens line up."""
        import torch

        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.device)
        with torch.inference_mode(), generation_precision(self.device, settings.bf16):
            out = self.generation_model(settings).generate(
                **enc,
                max_new_tokens=settings.max_new_tokens,
                **sampling_kwargs(settings.temperature, settings.top_p, settings.repetition_penalty, tok.pad_token_id),
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        if budget is not None:
            budget.record(int(enc["attention_mask"].sum()), int((new_tokens != tok.pad_token_id).sum()))
        return [t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True)]

    def loglik(
        self, conversations: Sequence[Messages], answers: Sequence[str], batch_size: int = 8
    ) -> list[float | None]:
        """Mean per-token log-likelihood of each answer given its conversation, under this model.

        score = (1/|a|) * sum_t log p(a_t | prompt, a_<t), over the answer tokens only.
        An empty answer has no score (None).

        Scored by the model that generates (generation_model): on a CPU with bf16 generation, the bf16 copy. These
        scores rank answers (the likelihood referee's gap, the relative score), where bf16 moved them by 0.007
        nats/token on average (0.03 at most) against float32, on the smoke run's answers; the headline fidelity
        figures (KL, top-1 agreement, perplexity: sdk/evaluate/fidelity.py) read the float32 weights.

        Scores are remembered for the life of this object (the weights of a model that scores do not change):
        the loop's referee scores the teacher's answers to the whole cache pool every iteration, and each
        evaluation scores the teacher's held-out answers again.
        """
        model = self.generation_model(self.settings)
        prompts = [self.render(m) for m in conversations]
        keys = [hashlib.sha256(f"{p}\0{a}\0{model.dtype}".encode()).hexdigest() for p, a in zip(prompts, answers)]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._scored}.values())
        if todo:
            scored = self._loglik(model, [prompts[i] for i in todo], [answers[i] for i in todo], batch_size)
            self._scored.update({keys[i]: score for i, score in zip(todo, scored)})
        return [self._scored[k] for k in keys]

    def _loglik(self, model, prompts: Sequence[str], answers: Sequence[str], batch_size: int) -> list[float | None]:
        """loglik's computation for rendered prompts, in batches."""
        import torch

        tok = self.tokenizer
        encoded = [
            (tok(p, add_special_tokens=False)["input_ids"], tok(a, add_special_tokens=False)["input_ids"])
            for p, a in zip(prompts, answers)
        ]
        # batches of similar length pad less; the scores go back in the callers' order
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]), reverse=True)
        scores: list[float | None] = [None] * len(encoded)
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            input_ids, attention, mask, start = answer_batch([encoded[i] for i in rows], tok.pad_token_id, self.device)
            logits = answer_logits(model, input_ids, attention, start).float()  # (B, T - start, V)
            # log p(a_t) = logit of the next token - logsumexp over the vocabulary, without materialising a second
            # (B, T, V) tensor of log-probabilities
            target = input_ids[:, start:]
            token_lp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            m = mask[:, start:].float()
            count = m.sum(-1)
            total = (token_lp * m).sum(-1)
            for i, c, s in zip(rows, count.tolist(), total.tolist()):
                scores[i] = s / c if c > 0 else None
        return scores
