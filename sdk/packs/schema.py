"""The `pack.yaml` schema, strict: an unknown key, a bad weight or a missing file is an error that
names the file and the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[a-z][a-z0-9_-]{1,40}$"
TASK_TYPES = ("explain", "compare", "calculate", "draft", "classify", "advise")
PROMPT_NAMES = ("referee", "synthesis", "generate_hard", "generate_easy")


def _usable_path(value: str) -> str:
    """A path the filesystem can be asked about (os calls raise on a NUL or an over-long name)."""
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    try:
        names = [part.encode("utf-8") for part in re.split(r"[\\/]", value)]
    except UnicodeEncodeError:
        raise ValueError("a path cannot contain a lone surrogate character") from None
    if any(len(name) > 255 for name in names):
        raise ValueError("a file or folder name in the path is longer than 255 bytes")
    return value


PackPath = Annotated[str, AfterValidator(_usable_path)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _reject_duplicates(names: list[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} name(s): {', '.join(dupes)}")


class CorpusSettings(_Strict):
    path: PackPath = Field(..., description="folder of documents, relative to the pack folder")
    extensions: list[str] = Field(default_factory=lambda: [".md", ".txt", ".html"])


class RetrievalSettings(_Strict):
    chunk_size: int = Field(384, ge=32, le=8192, description="tokens per chunk")
    chunk_overlap: int = Field(48, ge=0, le=4096)
    top_k: int = Field(4, ge=1, le=100)

    @model_validator(mode="after")
    def _overlap(self):
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class Criterion(_Strict):
    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$")
    weight: float = Field(..., gt=0.0, le=1.0, description="weights of all criteria sum to 1")
    description: str = Field(..., min_length=5)


class RefereeSettings(_Strict):
    tau: float = Field(
        ..., gt=0.0, le=10.0, description="score gap (teacher - student, 1-10 scale) that makes an instruction hard"
    )
    criteria: list[Criterion] = Field(..., min_length=1)

    @field_validator("criteria")
    @classmethod
    def _weights(cls, criteria: list[Criterion]):
        _reject_duplicates([c.name for c in criteria], "criterion")
        total = sum(c.weight for c in criteria)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"criterion weights must sum to 1.0, got {total:.4g}")
        return criteria


class VerifierRef(_Strict):
    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$")
    function: str = Field(
        ..., description="'module:function', module relative to the pack folder (e.g. verifiers:check_units)"
    )

    @field_validator("function")
    @classmethod
    def _form(cls, value: str):
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"must look like 'module:function', got {value!r}")
        _usable_path(value.split(":")[0].replace(".", "/") + ".py")
        return value


class EvalSettings(_Strict):
    path: PackPath = "eval.jsonl"


class ForgettingSettings(_Strict):
    tasks: list[str] = Field(default_factory=list, description="lm-eval task names, or names of the SDK's local tasks")
    max_drop: float = Field(0.05, ge=0.0, le=1.0, description="allowed absolute accuracy drop before the gate fails")


class PackSpec(_Strict):
    name: str = Field(..., pattern=NAME_RE)
    aliases: list[str] = Field(default_factory=list)
    version: str = Field(..., pattern=r"^\d+\.\d+(\.\d+)?([.-][0-9A-Za-z.]+)?$")
    description: str = Field(..., min_length=10)
    licence: str = Field(..., min_length=2, description="SPDX id or a short licence statement")
    caveat: Optional[str] = Field(
        None,
        min_length=10,
        max_length=2000,
        description="what the assistant must not be relied on for; the student's model card repeats it",
    )
    system_prompt: str = Field(..., min_length=10, description="system message for teacher and student answers")
    corpus: CorpusSettings
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    referee: RefereeSettings
    prompts: dict[Literal["referee", "synthesis", "generate_hard", "generate_easy"], PackPath] = Field(
        default_factory=dict,
        description="prompt name -> template file relative to the pack; unnamed ones use SDK defaults",
    )
    verifiers: list[VerifierRef] = Field(default_factory=list)
    seeds: PackPath = "seeds.jsonl"
    eval: EvalSettings = Field(default_factory=EvalSettings)
    forgetting: ForgettingSettings = Field(default_factory=ForgettingSettings)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, aliases: list[str]):
        for alias in aliases:
            if not re.fullmatch(NAME_RE, alias):
                raise ValueError(f"alias {alias!r} must match {NAME_RE}")
        if len(set(aliases)) != len(aliases):
            raise ValueError("duplicate alias")
        return aliases

    @field_validator("verifiers")
    @classmethod
    def _unique_verifiers(cls, verifiers: list[VerifierRef]):
        _reject_duplicates([v.name for v in verifiers], "verifier")
        return verifiers


class SeedRow(_Strict):
    id: str = Field(..., min_length=1)
    instruction: str = Field(..., min_length=5)
    subarea: str = Field(..., min_length=1)
    task_type: Literal["explain", "compare", "calculate", "draft", "classify", "advise"]


class EvalRow(_Strict):
    id: str = Field(..., min_length=1)
    instruction: str = Field(..., min_length=5)
    reference: str = Field(..., min_length=5)
    key_points: list[str] = Field(..., min_length=2, max_length=5)
    subarea: str = Field(..., min_length=1)
    task_type: Literal["explain", "compare", "calculate", "draft", "classify", "advise"]
