"""What a pipeline stage is, and the fingerprint a resume checks.

A stage is declared once, in its own module, like a distilabel step declares its inputs and outputs:

    STAGE = Stage("label", run, per_iteration=True,
                  reads=("iteration.train_pool", "previous.teacher"), writes=("iteration.teacher",),
                  recipe=("models.teacher", "curation.teacher_context"))

`reads` and `writes` name files of the run layout (sdk/store.py): `knowledge`, `eval.teacher`,
`iteration.teacher` (this iteration's), `previous.teacher` (the iteration before), `first.synthesized`
(iteration 0's), `every.eval` (all iterations'). `recipe` names the recipe sections the stage depends
on; a finished stage records their fingerprint in the manifest, and a resume that changed one of them
is refused (a changed input would silently mix two recipes in one run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sdk.store import RunLayout

# Keys a resume may change: raising a budget, or asking for more iterations, is what resume is for.
RESUMABLE_KEYS = ("budget", "adversarial.iterations", "adversarial.generate_last")


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., Optional[list[Path]]]  # run(ctx) or, per iteration, run(ctx, k); returns the files written
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    recipe: tuple[str, ...] = ()
    per_iteration: bool = False

    def key(self, layout: RunLayout, k: Optional[int] = None) -> str:
        """The manifest's name for this stage (iteration stages are prefixed with their folder)."""
        return f"{layout.iteration(k).dir.name}/{self.name}" if self.per_iteration else self.name

    def outputs(self, layout: RunLayout, k: Optional[int] = None, last: Optional[int] = None) -> list[Path]:
        return [p for ref in self.writes for p in resolve(layout, ref, k, last)]


def resolve(layout: RunLayout, ref: str, k: Optional[int] = None, last: Optional[int] = None) -> list[Path]:
    """The paths a declared reference names (several for `every.*`)."""
    head, _, attr = ref.partition(".")
    if head == "every":
        return [getattr(layout.iteration(j), attr) for j in range(last + 1)] if last is not None else []
    folders = {"iteration": k, "previous": None if k is None else k - 1, "first": 0, "last": last}
    if head in folders:
        index = folders[head]
        return [getattr(layout.iteration(index), attr)] if index is not None and index >= 0 else []
    if head == "eval":
        return [getattr(layout.eval, attr)]
    return [getattr(layout, ref)]


def _without_resumable(section: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_resumable(f"{section}.{k}", v) for k, v in value.items() if not _resumable(f"{section}.{k}")
        }
    return value


def _resumable(key: str) -> bool:
    return any(key == r or key.endswith("." + r) or key.startswith(r + ".") or f".{r}." in key for r in RESUMABLE_KEYS)


def section_value(recipe_dump: dict, section: str) -> Any:
    value: Any = recipe_dump
    for part in section.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return _without_resumable(section, value)


def fingerprint(recipe_dump: dict, sections: tuple[str, ...]) -> dict[str, str]:
    """A short hash per recipe section a stage read (resumable keys left out)."""
    return {
        s: hashlib.sha256(json.dumps(section_value(recipe_dump, s), sort_keys=True, default=str).encode()).hexdigest()[
            :12
        ]
        for s in sections
    }


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dumps."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            k
            for key in sorted(old.keys() | new.keys())
            for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [prefix.rstrip(".")] if old != new else []


def blocking_change(recorded: dict[str, str], recipe_dump: dict, changed: list[str]) -> Optional[tuple[str, str]]:
    """(section, key) of the first change a finished stage depended on, or None.

    `recorded` is the stage's fingerprint from the manifest; `changed` names keys that differ from the
    recipe it ran with, when known (to name the key rather than the section).
    """
    now = fingerprint(recipe_dump, tuple(recorded))
    for section, digest in recorded.items():
        if now[section] != digest:
            keys = [k for k in changed if (k == section or k.startswith(section + ".")) and not _resumable(k)]
            return section, keys[0] if keys else section
    return None


def stage_table(stages: tuple[Stage, ...]) -> str:
    """The markdown table of stages (docs/architecture.md holds it; a test checks it matches)."""
    rows = ["| stage | reads | writes | recipe sections |", "|---|---|---|---|"]
    for s in stages:
        name = f"`iter_<k>/{s.name}`" if s.per_iteration else f"`{s.name}`"
        cell = lambda refs: ", ".join(f"`{r}`" for r in refs) or "-"  # noqa: E731
        rows.append(f"| {name} | {cell(s.reads)} | {cell(s.writes)} | {cell(s.recipe)} |")
    return "\n".join(rows)
