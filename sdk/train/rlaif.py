"""RL from AI feedback with TRL's GRPOTrainer: the student samples a group of completions per prompt and
is pushed towards the ones the referee scores higher than the group's mean.

Reward of a completion a to instruction x (1-10 scale, like the referee's):
    s(x, a) = 1 + (clip(10 + l_T(a | x), 1, 10) - 1) * rho(a)
    r(x, a) = 1 + (s(x, a) - 1) * min(1, |a| / min_tokens) - penalty_warning * #warnings - penalty_error * #errors
where s is the likelihood referee's score (sdk.adversarial.referee.likelihood_score): l_T is the
teacher's mean per-token log-likelihood of a and rho(a) its share of distinct word trigrams, which
takes the reward away from a completion that loops; |a| is its length in tokens and the counts are the pack verifiers'
findings on a (severity "info" costs nothing). An empty completion has no likelihood and gets the minimum, 1,
and so does one of whitespace or punctuation only.

The length floor is there because a per-token mean is easy to game: a two-token answer made of the
teacher's likeliest opening words scores higher than any real answer, and GRPO finds that within a few
steps (bench/objectives.py saw the student collapse to empty answers without it). Below min_tokens the
score shrinks linearly towards the minimum, so a short answer has to be very good to beat a full one.
GRPO's advantage is r minus the mean reward of the completions sampled for the same prompt, divided by
their standard deviation, so only differences inside a group matter.

The teacher is a local model loaded beside the student, or a vLLM endpoint that scores each completion
through /v1/completions with echo (sdk/models/openai_backend.py, `loglik`; its answers go through the
response cache). A completion the endpoint cannot score after its retries stops the stage with the reason:
a reward of 0 or the minimum would push the student away from an answer nobody judged.
"""

from __future__ import annotations

import math
from typing import Optional

from sdk.adversarial.referee import SCALE_MIN, likelihood_score
from sdk.errors import DistilleryError
from sdk.train.common import StageContext, Verifier, full_weights, training_args_kwargs


def verifier_penalty(findings: list[dict], penalty_warning: float, penalty_error: float) -> float:
    """Reward points taken off for a completion's verifier findings."""
    per = {"warning": penalty_warning, "error": penalty_error}
    return sum(per.get(str(f.get("severity", "info")), 0.0) for f in findings)


def completion_text(completion) -> str:
    """GRPO hands a conversational completion as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion)
    return completion or ""


def user_text(prompt) -> str:
    if isinstance(prompt, list):
        return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return prompt


class TeacherReward:
    """The GRPO reward function: likelihood-referee score minus verifier penalties."""

    __name__ = "referee"  # the trainer logs rewards under the function's name

    def __init__(
        self,
        teacher,
        verifier: Optional[Verifier] = None,
        penalty_warning: float = 1.0,
        penalty_error: float = 3.0,
        min_tokens: int = 0,
        tokenizer=None,
    ):
        self.teacher = teacher  # a LocalChatModel, or an OpenAIChatModel on a vLLM server
        self.tokenizer = tokenizer if tokenizer is not None else teacher.tokenizer  # counts |a| for min_tokens
        self.min_tokens = min_tokens
        self.verifier = verifier
        self.penalty_warning = penalty_warning
        self.penalty_error = penalty_error
        self.last_findings: list[int] = []

    def scores(self, prompts: list, texts: list[str]) -> list[float]:
        conversations = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
        logliks = self.teacher.loglik(conversations, texts)
        unscored = [i for i, (ll, t) in enumerate(zip(logliks, texts)) if ll is None and t.strip()]
        if unscored:
            raise DistilleryError(
                f"rlaif: the teacher could not score {len(unscored)} of {len(texts)} completions (see the log for the "
                "reason); the stage stops rather than reward answers nobody judged. Resume when the teacher answers"
            )
        lengths = (
            [len(ids) for ids in self.tokenizer([t.strip() for t in texts], add_special_tokens=False)["input_ids"]]
            if self.min_tokens
            else [0] * len(texts)
        )
        out = []
        for ll, text, n in zip(logliks, texts, lengths):
            score = likelihood_score(ll, text)  # None: an empty completion, which has no likelihood
            if score is None:
                score = SCALE_MIN
            elif self.min_tokens:
                score = SCALE_MIN + (score - SCALE_MIN) * min(1.0, n / self.min_tokens)
            out.append(score)
        return out

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        rewards = self.scores(prompts, texts)
        self.last_findings = []
        if self.verifier is not None:
            for i, (prompt, text) in enumerate(zip(prompts, texts)):
                findings = self.verifier(user_text(prompt), text) or []
                self.last_findings.append(len(findings))
                rewards[i] -= verifier_penalty(findings, self.penalty_warning, self.penalty_error)
        return rewards


def rlaif_dataset(rows: list[dict], system_prompt: str):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": r["instruction"]}]}
            for r in rows
        ]
    )


def load_reward(ctx: StageContext, tokenizer) -> TeacherReward:
    from sdk.models import describe, load_chat_model, load_local
    from sdk.models.local import LocalChatModel

    recipe = ctx.recipe
    rl = ctx.settings.rlaif
    if recipe.models.teacher.provider == "openai":  # RunContext.check_roles probed it (/tokenize) before the run
        teacher, length_tokenizer = load_chat_model(recipe.models.teacher), tokenizer  # it has no local tokenizer
    else:
        with full_weights():  # the reward model runs outside DeepSpeed, so it must not be partitioned
            model, tok = load_local(recipe.models.teacher, recipe.models)
        spec = recipe.models.teacher
        teacher, length_tokenizer = LocalChatModel(model, tok, describe(spec, recipe.models), spec.generation), None
    return TeacherReward(teacher, ctx.verifier, rl.penalty_warning, rl.penalty_error, rl.min_tokens, length_tokenizer)


def rlaif_stage(model, tokenizer, ctx: StageContext):
    from trl import GRPOConfig, GRPOTrainer

    rl = ctx.settings.rlaif
    reward = load_reward(ctx, tokenizer)
    kwargs = training_args_kwargs(ctx.settings, ctx.seed, rl.learning_rate)
    # every prompt's group of num_generations completions must fit in one generation batch
    group = rl.num_generations
    kwargs["per_device_train_batch_size"] = math.ceil(ctx.settings.batch_size / group) * group
    args = GRPOConfig(
        output_dir=str(ctx.stage_dir("rlaif")),
        num_generations=group,
        max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature,
        beta=rl.beta,
        **kwargs,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=rlaif_dataset(ctx.rows, ctx.system_prompt),
        processing_class=tokenizer,
    )
    return trainer, {"prompts": len(ctx.rows), "num_generations": group, "verifier": ctx.verifier is not None}
