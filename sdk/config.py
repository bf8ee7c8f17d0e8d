"""The recipe: every knob of a run, typed and validated.

A recipe is built in three layers, later ones winning:
  1. a preset, `configs/recipes/<preset>.yaml` (smoke, demo, full)
  2. an optional user YAML file (`--config FILE`)
  3. `--set a.b=c` overrides (values parsed as YAML, so `--set train.epochs=2` is an int)

An unknown key or a value out of range raises ConfigError naming the key and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdk.errors import ConfigError
from sdk.paths import data_dir

PRESETS = ("smoke", "demo", "full")
ROLES = ("teacher", "student", "referee", "generator")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class GenerationSettings(_Strict):
    max_new_tokens: int = Field(96, ge=1, le=8192, description="tokens generated per answer")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0, description="local models only")
    batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="prompts per forward pass (local) or concurrent requests (openai, unless concurrency is set)",
    )
    seed: Optional[int] = Field(
        None,
        ge=0,
        description="sampling seed sent to the endpoint; part of the response-cache key when temperature > 0",
    )
    bf16: Literal["auto", "on", "off"] = Field(
        "auto",
        description="local models: generate in bf16 (autocast on a GPU, a bf16 copy of the weights on a CPU, which also "
        "scores answers' log-likelihoods for the likelihood referee); auto = where the hardware has native bf16 (a CUDA "
        "GPU that supports it, or a CPU with AVX512-BF16 or AMX); the fidelity figures (KL, top-1, perplexity) stay in "
        "float32",
    )
    top_logprobs: Optional[int] = Field(
        None,
        ge=1,
        le=1024,
        description="openai: ask for the top-k log-probabilities of every generated token (set by the label stage "
        "when kd trains from the teacher's stored top-k; most servers cap k at 20)",
    )


class BudgetSettings(_Strict):
    """Spend limits for one role. A limit that is reached stops the stage cleanly (null = no limit)."""

    max_calls: Optional[int] = Field(
        None, ge=0, description="requests sent (local: generations); retries count, cache hits do not"
    )
    max_tokens: Optional[int] = Field(None, ge=0, description="prompt + completion tokens, from the server's usage")
    max_cost: Optional[float] = Field(
        None, ge=0, description="spend in the price unit (e.g. USD); needs the two prices"
    )
    prompt_price_per_mtok: Optional[float] = Field(None, ge=0, description="price of a million prompt tokens")
    completion_price_per_mtok: Optional[float] = Field(None, ge=0, description="price of a million completion tokens")

    @model_validator(mode="after")
    def _cost_needs_prices(self) -> BudgetSettings:
        if self.max_cost is not None and (self.prompt_price_per_mtok is None or self.completion_price_per_mtok is None):
            raise ValueError("max_cost needs prompt_price_per_mtok and completion_price_per_mtok")
        return self

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_calls, self.max_tokens, self.max_cost))


class ModelSpec(_Strict):
    """One model role. `provider` decides which other fields matter."""

    provider: Literal["embedded", "hf", "pruned", "openai"] = Field(
        "embedded", description="where the model comes from"
    )
    name_or_path: Optional[str] = Field(None, description="hf: local folder or hub id")
    gguf_file: Optional[str] = Field(None, description="hf: a GGUF file inside name_or_path to dequantise")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="weights dtype for local models"
    )
    # pruned
    base: Literal["teacher", "referee", "generator"] = Field(
        "teacher", description="pruned: the role whose model is pruned"
    )
    prune_method: Literal["angular", "block_influence", "every_k"] = Field(
        "angular",
        description="pruned: angular = drop the contiguous block of layers whose input and output are closest (Gromov et al.); block_influence = drop the layers that change the hidden state least (ShortGPT); every_k = keep 0, k, 2k, ... The first and last layers are always kept",
    )
    num_layers: Optional[int] = Field(
        None, ge=2, le=1024, description="pruned: layers the student keeps (first and last included)"
    )
    keep_ratio: Optional[float] = Field(
        None,
        gt=0.0,
        le=1.0,
        description="pruned: share of the base's layers kept when num_layers is not set (null and no num_layers = 0.8)",
    )
    keep_every: Optional[int] = Field(
        None, ge=1, le=64, description="pruned, every_k: keep every k-th layer (0, k, 2k, ...) and the last"
    )
    keep_layers: Optional[list[int]] = Field(
        None,
        description="pruned: explicit layer indices to keep (overrides the method; may drop the first or last layer)",
    )
    calibration_chunks: int = Field(
        32, ge=1, le=100_000, description="pruned: corpus chunks the layers are scored on (never the held-out set)"
    )
    calibration_tokens: int = Field(256, ge=8, le=32768, description="pruned: tokens per calibration chunk")
    # openai-compatible endpoint
    base_url: Optional[str] = Field(None, description="openai: e.g. http://localhost:8000/v1")
    model: Optional[str] = Field(None, description="openai: the served model name")
    api_key_env: Optional[str] = Field(None, description="openai: NAME of the env var holding the key (never the key)")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="openai: per-request timeout")
    max_retries: int = Field(
        5, ge=0, le=50, description="openai: retries with backoff on 429, 5xx, timeouts and dropped connections"
    )
    max_malformed_retries: int = Field(
        2,
        ge=0,
        le=50,
        description="openai: re-asks after a malformed or empty reply before the row is recorded as failed",
    )
    backoff_base_s: float = Field(
        0.5, ge=0, le=600, description="openai: first retry waits about this long, doubling each time (with jitter)"
    )
    backoff_max_s: float = Field(60.0, ge=0, le=3600, description="openai: cap on one wait, Retry-After included")
    concurrency: Optional[int] = Field(
        None, ge=1, le=4096, description="openai: requests in flight at once (null = generation.batch_size)"
    )
    requests_per_minute: Optional[float] = Field(None, gt=0, description="openai: request rate limit (null = none)")
    tokens_per_minute: Optional[float] = Field(
        None, gt=0, description="openai: token rate limit, prompt estimate + max_new_tokens per request (null = none)"
    )
    token_ids: bool = Field(
        False,
        description="openai: the server is vLLM: log-probabilities come back as token ids (return_tokens_as_token_ids) "
        "and the vocabulary is checked through its /tokenize route; else token strings are mapped through the "
        "student's tokenizer",
    )
    # every role
    cache: Optional[bool] = Field(
        None, description="keep replies in the persistent response cache (null = on for openai, off for local models)"
    )
    cache_path: Optional[str] = Field(
        None, description="response cache file (null = $DISTILLERY_RESPONSE_CACHE or <cache>/responses.sqlite)"
    )
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider == "hf" and not self.name_or_path:
            raise ValueError("provider 'hf' needs name_or_path (a local folder or hub id)")
        if self.provider == "openai" and not (self.base_url and self.model):
            raise ValueError("provider 'openai' needs base_url and model")
        if self.keep_layers is not None and (not self.keep_layers or min(self.keep_layers) < 0):
            raise ValueError("keep_layers must be a non-empty list of layer indices >= 0")
        if self.keep_every is not None and self.prune_method != "every_k":
            raise ValueError(f"keep_every applies to prune_method every_k, but prune_method is {self.prune_method}")
        if self.prune_method == "every_k" and self.keep_every is None and self.keep_layers is None:
            raise ValueError("prune_method every_k needs keep_every")
        if self.num_layers is not None and self.keep_ratio is not None:
            raise ValueError("give num_layers or keep_ratio, not both")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, _), not the key itself"
            )
        return self

    @property
    def use_cache(self) -> bool:
        return self.cache if self.cache is not None else self.provider == "openai"

    @property
    def in_flight(self) -> int:
        return self.concurrency or self.generation.batch_size


def _default_student() -> ModelSpec:
    return ModelSpec(provider="pruned", base="teacher", prune_method="angular", keep_ratio=0.8)


def _default_generator() -> ModelSpec:
    # sampled: greedy decoding would turn the same parent into the same new instruction every time
    return ModelSpec(generation=GenerationSettings(temperature=0.8, top_p=0.95, max_new_tokens=96))


class ModelsSettings(_Strict):
    teacher: ModelSpec = Field(default_factory=ModelSpec)
    student: ModelSpec = Field(default_factory=_default_student)
    referee: ModelSpec = Field(default_factory=ModelSpec)
    generator: ModelSpec = Field(default_factory=_default_generator)

    @model_validator(mode="after")
    def _student_local(self) -> ModelsSettings:
        if self.student.provider == "openai":
            raise ValueError("the student is trained locally: provider 'openai' is not allowed for models.student")
        for role in ("teacher", "referee", "generator"):
            if getattr(self, role).provider == "pruned" and getattr(self, role).base == role:
                raise ValueError(f"models.{role} cannot be a pruned copy of itself")
        return self


class DataSettings(_Strict):
    max_seeds: Optional[int] = Field(None, ge=1, description="cap on seed instructions used (null = all)")
    max_eval: Optional[int] = Field(None, ge=1, description="cap on held-out eval prompts (null = all)")


class KnowledgeSettings(_Strict):
    index_dir: Optional[str] = Field(
        None, description="where the corpus index lives (null = <cache>/indexes/<pack>); reused while unchanged"
    )
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="FAISS index; auto = flat up to flat_max_vectors, HNSW beyond"
    )
    flat_max_vectors: int = Field(20000, ge=1)
    embedder: str = Field(
        "all-MiniLM-L6-v2", description="sentence-transformers model (folder or hub id); the default ships with the SDK"
    )


class CurationSettings(_Strict):
    passages: int = Field(
        6, ge=0, le=1_000_000, description="corpus passages to synthesise instructions from (0 = seeds only)"
    )
    per_passage: int = Field(3, ge=1, le=50, description="instructions asked for per passage")
    teacher_context: Literal["passage", "none"] = Field(
        "passage", description="passage = the teacher answers with the source passage in its prompt (RAG teacher)"
    )
    min_words: int = Field(
        4, ge=1, le=1000, description="shorter instructions are dropped (Lion drops 3 words or fewer)"
    )
    max_words: int = Field(150, ge=2, le=10000)
    rouge_threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="drop a candidate whose ROUGE-L F to any kept instruction is >= this"
    )
    cosine_threshold: Optional[float] = Field(
        0.9, gt=0.0, le=1.0, description="drop a candidate whose embedding cosine is >= this (null = off)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> CurationSettings:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self


class LoraSettings(_Strict):
    enabled: bool = False
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="peft target_modules")
    merge: bool = Field(
        True,
        description="also write the adapter merged into its base at student/ (false = student/ holds the adapter, base in student/base/)",
    )


class KDSettings(_Strict):
    """White-box logit distillation (TRL GKDTrainer): generalized JSD between teacher and student tokens."""

    beta: float = Field(0.5, ge=0.0, le=1.0, description="0 = forward KL, 0.5 = JSD, 1 = reverse KL (MiniLLM)")
    lmbda: float = Field(
        0.5, ge=0.0, le=1.0, description="on-policy fraction: share of steps trained on the student's own samples"
    )
    temperature: float = Field(
        1.0, gt=0.0, le=10.0, description="softmax temperature of the divergence and of on-policy sampling"
    )
    max_new_tokens: int = Field(64, ge=1, le=8192, description="tokens the student samples on an on-policy step")
    learning_rate: Optional[float] = Field(
        None,
        gt=0,
        le=1.0,
        description="this objective's learning rate (null = train.learning_rate: KD is as stable as SFT)",
    )
    source: Literal["auto", "store", "online"] = Field(
        "auto",
        description="store = the label stage stores the teacher's top-k and kd trains from it (no teacher in memory; "
        "needs beta 0, lmbda 0, temperature 1); online = the teacher beside the student (GKD: any beta, on-policy "
        "lmbda); auto = from a store when the iteration has one, else online",
    )
    top_k: int = Field(
        20, ge=1, le=1024, description="store: teacher log-probabilities kept per token (plus the tail mass)"
    )
    ce_weight: float = Field(0.0, ge=0.0, le=10.0, description="store: weight of cross-entropy on the teacher's token")

    @model_validator(mode="after")
    def _store(self) -> KDSettings:
        if self.source == "store" and (self.beta != 0 or self.lmbda != 0 or self.temperature != 1.0):
            raise ValueError(
                "source 'store' trains forward KL on the teacher's stored top-k: it needs beta 0, lmbda 0 and "
                "temperature 1 (reverse KL, on-policy samples and a temperature need the teacher online: source online)"
            )
        return self


class DPOSettings(_Strict):
    """Preference optimisation (TRL DPOTrainer) on pairs the loop builds."""

    mode: Literal["teacher_over_student", "referee_ranked"] = Field(
        "teacher_over_student",
        description="teacher_over_student = teacher's answer chosen over the student's on hard instructions; referee_ranked = best vs worst of sampled student answers",
    )
    beta: float = Field(
        0.1, gt=0.0, le=10.0, description="strength of the implicit KL to the reference (initial) student"
    )
    samples: int = Field(4, ge=2, le=64, description="referee_ranked: student answers sampled per instruction")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="sigmoid = the DPO paper's loss")
    rpo_alpha: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="weight of the chosen answer's NLL added to the preference loss (RPO, arXiv 2404.19733; TRL's 'sft' loss term); it keeps DPO from unlearning fluent text; 0 = plain DPO",
    )
    learning_rate: float = Field(
        5e-6,
        gt=0,
        le=1.0,
        description="DPO's own learning rate: preference objectives take ~100x smaller steps than SFT (TRL's DPO examples use 5e-7 to 5e-6)",
    )


class RLAIFSettings(_Strict):
    """RL from AI feedback (TRL GRPOTrainer); the reward is the referee's score minus verifier penalties."""

    num_generations: int = Field(4, ge=2, le=256, description="completions sampled per prompt (the GRPO group)")
    max_new_tokens: int = Field(48, ge=1, le=8192, description="completion length")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="sampling temperature of the completions")
    beta: float = Field(
        0.04,
        ge=0.0,
        le=10.0,
        description="KL penalty to the reference (pre-GRPO) student, the anchor that keeps it from drifting into reward hacks; 0 = none, and no reference model is kept",
    )
    learning_rate: float = Field(1e-6, gt=0, le=1.0, description="GRPO's own learning rate (TRL's GRPOConfig default)")
    min_tokens: int = Field(
        16,
        ge=0,
        le=8192,
        description="length floor: a completion shorter than this has its score shrunk linearly towards the minimum (0 = off)",
    )
    penalty_warning: float = Field(
        1.0, ge=0.0, le=10.0, description="reward points taken off per verifier finding of severity warning"
    )
    penalty_error: float = Field(
        3.0, ge=0.0, le=10.0, description="reward points taken off per verifier finding of severity error"
    )


class LauncherSettings(_Strict):
    """Where the training stage runs: in this process, or as its own multi-process job."""

    kind: Literal["local", "accelerate", "deepspeed"] = Field(
        "local",
        description="local = in this process; accelerate = `accelerate launch`; deepspeed = torchrun + train.deepspeed",
    )
    num_processes: int = Field(1, ge=1, le=4096, description="processes (GPUs) per node for a launched stage")
    config: Optional[str] = Field(
        None,
        description="accelerate: the --config_file (e.g. configs/accelerate/zero3.yaml); a bare name is looked up in the shipped configs/accelerate/",
    )
    extra_args: list[str] = Field(
        default_factory=list, description="more launcher arguments, e.g. ['--num_machines', '2', '--machine_rank', '0']"
    )


class TrainSettings(_Strict):
    stages: list[Literal["sft", "kd", "dpo", "rlaif"]] = Field(
        default_factory=lambda: ["sft"],
        min_length=1,
        description="objectives run in order each iteration, e.g. [sft, kd]",
    )
    epochs: float = Field(3.0, gt=0, le=1000)
    max_steps: int = Field(-1, ge=-1, description="-1 = derive from epochs (per stage)")
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1, le=4096)
    max_seq_length: int = Field(384, ge=16, le=131072)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    save_steps: int = Field(20, ge=1, description="checkpoint interval, so a killed run resumes mid-training")
    logging_steps: int = Field(5, ge=1)
    bf16: Literal["auto", "on", "off"] = Field(
        "auto",
        description="bf16 autocast; auto = on where a CUDA GPU supports it, or on a CPU with native bf16 (AVX512-BF16 or AMX)",
    )
    deepspeed: Optional[str] = Field(
        None,
        description="path to a DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json); a bare name is looked up in the shipped configs/deepspeed/",
    )
    gradient_checkpointing: bool = False
    report_to: list[Literal["none", "tensorboard", "trackio", "wandb"]] = Field(
        default_factory=lambda: ["none"],
        description="where TRL logs training curves besides the report: none, tensorboard (event files under each "
        "objective's checkpoints folder: `tensorboard --logdir RUN_DIR`), trackio, wandb; a list or a comma-separated string",
    )
    replay_fraction: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="share of each stage's data that is general-domain replay (guards against forgetting)",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    kd: KDSettings = Field(default_factory=KDSettings)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    rlaif: RLAIFSettings = Field(default_factory=RLAIFSettings)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)

    @field_validator("report_to", mode="before")
    @classmethod
    def _split_report_to(cls, value):
        """`--set train.report_to=tensorboard,wandb` arrives as one string."""
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _stages(self) -> TrainSettings:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must not repeat an objective, got {self.stages}")
        if self.launcher.kind == "accelerate" and not self.launcher.config:
            raise ValueError("launcher.kind 'accelerate' needs launcher.config (an accelerate YAML, e.g. zero3.yaml)")
        if self.launcher.kind == "deepspeed" and not self.deepspeed:
            raise ValueError("launcher.kind 'deepspeed' needs train.deepspeed (a DeepSpeed JSON, e.g. zero3.json)")
        return self


class AdversarialSettings(_Strict):
    """The Lion-style loop: imitation -> discrimination (referee) -> generation, repeated."""

    iterations: int = Field(1, ge=1, le=1000, description="loop iterations; each writes iter_<k>/")
    referee: Literal["auto", "likelihood", "llm", "both"] = Field(
        "auto",
        description="auto = likelihood when the teacher is a local (white-box) model, else llm; both = score with both and report agreement",
    )
    tau: Optional[float] = Field(
        None,
        gt=0.0,
        le=9.0,
        description="score gap (teacher - student, 1-10) that makes an instruction hard (null = the pack's)",
    )
    new_per_iteration: int = Field(
        16, ge=0, le=1_000_000, description="N_new: generated instructions kept per iteration"
    )
    max_attempts: int = Field(
        64, ge=0, le=10_000_000, description="generator calls allowed per iteration to reach N_new"
    )
    hard_share: float = Field(
        0.5, ge=0.0, le=1.0, description="share of generated instructions made from hard examples (Lion: 0.5)"
    )
    feedback: Literal["referee", "none"] = Field(
        "referee",
        description="referee = generation draws parents from the referee's hard and easy instructions (Lion); "
        "none = the ablation baseline: parents drawn uniformly from the whole cache pool, the split ignored",
    )
    max_refereed: Optional[int] = Field(
        None, ge=1, description="cap on cache-pool instructions refereed per iteration (sampled; null = all)"
    )
    severe_findings_hard: bool = Field(
        True, description="a verifier finding of severity 'error' on the student's answer makes the instruction hard"
    )
    carry_fraction: float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="iterations after the first also train on earlier, already-labelled instructions: this many per new one (0 = new ones only, as in Lion)",
    )
    generate_last: bool = Field(
        False,
        description="the last iteration also generates new instructions; off by default, since no iteration would train on them (a later `distill resume --set adversarial.iterations=N+1` generates them then)",
    )
    min_domain_similarity: Optional[float] = Field(
        0.25,
        ge=-1.0,
        le=1.0,
        description="a generated instruction whose cosine similarity to every seed is below this is rejected as off-domain (null = no check)",
    )


class ForgettingSettings(_Strict):
    """General-ability check: lm-eval tasks scored on the student before and after training (docs/forgetting.md)."""

    enabled: bool = Field(True, description="run the forgetting check before and after training")
    tasks: Optional[list[str]] = Field(
        None,
        description="lm-eval task names or the SDK's local tasks, e.g. [distillery_general, arc_easy] "
        "(null or [] = the pack's list; enabled=false skips the check)",
    )
    max_drop: Optional[float] = Field(
        None,
        ge=0.0,
        le=1.0,
        description="allowed drop per task (null = the pack's): accuracy points for accuracy-type metrics, "
        "relative increase for bits per byte",
    )
    limit: Optional[int] = Field(None, ge=1, description="items per task (null = all)")
    batch_size: int = Field(8, ge=1, le=1024, description="lm-eval batch size")
    local_only: bool = Field(
        False, description="allow only the SDK's bundled tasks, so the check can never reach the network"
    )


class HealSettings(_Strict):
    """Healing the pruned student before the loop: white-box KD from the teacher on the domain's corpus
    chunks (not the held-out ones) mixed with general text (sdk/train/heal.py, docs/pruning.md)."""

    steps: int = Field(40, ge=0, le=1_000_000, description="optimizer steps (0 = no healing)")
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=4096)
    max_length: int = Field(256, ge=16, le=131072, description="tokens per training sequence")
    general_fraction: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="share of sequences that are general text: the shipped replay instructions answered by the teacher (never the forgetting suite)",
    )
    beta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="divergence: 0 = forward KL over the full vocabulary, 1 = reverse KL, between = generalized JSD",
    )
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    bf16: Literal["auto", "on", "off"] = Field(
        "auto",
        description="bf16 autocast; auto = on where a CUDA GPU supports it, or on a CPU with native bf16 (AVX512-BF16 or AMX)",
    )
    cache: bool = Field(
        True,
        description="reuse a healed student from the user cache when teacher, pruning, corpus, these settings and the seed match",
    )


class EvalSettings(_Strict):
    max_new_tokens: int = Field(96, ge=1, le=8192, description="answer length for eval generations")
    batch_size: int = Field(8, ge=1, le=1024)
    heldout_chunks: int = Field(
        16,
        ge=0,
        le=100_000,
        description="held-out corpus chunks for domain perplexity (never used for healing or calibration; 0 = off)",
    )
    teacher_cache: bool = Field(
        True,
        description="keep a local teacher's held-out answers and perplexity in the user cache, keyed on its weights, "
        "and reuse them in later runs",
    )


class Recipe(_Strict):
    preset: str = Field("custom", description="the preset this recipe started from")
    domain: Optional[str] = Field(None, description="domain pack name or alias")
    pack_paths: list[str] = Field(default_factory=list, description="extra folders to discover packs in")
    seed: int = Field(0, ge=0)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    curation: CurationSettings = Field(default_factory=CurationSettings)
    heal: HealSettings = Field(default_factory=HealSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    adversarial: AdversarialSettings = Field(default_factory=AdversarialSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    forgetting: ForgettingSettings = Field(default_factory=ForgettingSettings)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# loading


def preset_path(preset: str) -> Path:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (allowed: {', '.join(PRESETS)})")
    return data_dir("configs") / "recipes" / f"{preset}.yaml"


def printable(text: str) -> str:
    """`text` with its control characters (newlines, NULs, ...) escaped, so an error message stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


# yaml.safe_load raises plain errors too: ValueError for `2001-02-30` or `!!int x`, AttributeError for
# `!!timestamp x`, RecursionError for brackets nested a few hundred deep
YAML_LOAD_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, RecursionError)


def yaml_problem(exc: BaseException) -> str:
    """One line on why yaml.safe_load failed."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark:
        mark = exc.problem_mark
        return f"{printable(exc.problem)} (line {mark.line + 1}, column {mark.column + 1})"
    lines = str(exc).splitlines()
    first = printable(lines[0]) if lines else type(exc).__name__
    if isinstance(exc, yaml.YAMLError):
        return first
    return f"a value cannot be converted ({type(exc).__name__}: {first})"


def not_utf8(exc: UnicodeDecodeError) -> str:
    """One line on where a file stops being UTF-8."""
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe file {path} is {not_utf8(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"recipe file {path} cannot be read: {exc.strerror or exc}") from None
    except YAML_LOAD_ERRORS as exc:
        raise ConfigError(f"recipe file {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.epochs=2' -> (['train', 'epochs'], 2). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{printable(item)}'")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key in '{printable(item)}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except YAML_LOAD_ERRORS:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str] | dict | None) -> dict:
    data = copy.deepcopy(data)
    if not overrides:
        return data
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names allowed at the parent of `loc` (for 'unknown key' messages)."""
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}).keys())


def format_validation_error(exc: ValidationError, source: str = "recipe") -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = printable(".".join(loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            problems.append(f"unknown key '{key}'{hint}")
        else:
            msg = printable(err["msg"].removeprefix("Value error, "))
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f", got {got!r}"
            problems.append(f"'{key}': {msg}{shown}")
    return f"{source}: " + "; ".join(problems)


def validate_recipe(data: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_recipe(
    preset: str | None = "demo",
    config_file: str | Path | None = None,
    overrides: list[str] | dict | None = None,
) -> Recipe:
    """Build a recipe from a preset, an optional YAML file and key=value overrides."""
    data: dict = {}
    if config_file is not None:
        user = _read_yaml(Path(config_file))
        preset = user.get("preset", preset)
    if preset is not None:
        try:
            data = _read_yaml(preset_path(preset))
        except ConfigError as exc:
            if config_file is None or "preset" not in user:
                raise
            raise ConfigError(f"recipe {config_file}: 'preset': {exc}") from None
        data["preset"] = preset
    if config_file is not None:
        data = deep_merge(data, user)
    data = apply_overrides(data, overrides)
    source = f"recipe {config_file}" if config_file else f"recipe (preset {preset})"
    return validate_recipe(data, source)
