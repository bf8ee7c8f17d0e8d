"""The run: the order of the stages and the loop. Each stage lives in its own module under sdk/stages/
and declares what it reads, what it writes and which recipe sections it depends on (docs/architecture.md).

    ingest  eval_teacher  student  forgetting_before  synthesize  eval_before
    for k in 0 .. adversarial.iterations-1, in iter_<k>/ (Lion's loop):
        pool  label  train  eval  discriminate  generate
    forgetting_after  finalize

Each finished stage is recorded in the manifest with a fingerprint of the recipe sections it read; a
resumed run skips it, and refuses to go on if one of those sections changed since.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdk.config import Recipe
from sdk.errors import BudgetExhausted, ConfigError, Interrupted, SystemFault
from sdk.faults import graceful_stop, os_fault, stop_reason
from sdk.packs import resolve_pack
from sdk.progress import log, quiet_libraries
from sdk.stages import (
    discriminate,
    eval_teacher,
    evaluate,
    finalize,
    forgetting,
    generate,
    ingest,
    label,
    pool,
    student,
    synthesize,
    train,
)
from sdk.stages.base import Stage, blocking_change, fingerprint
from sdk.stages.context import RunContext, resolve_recipe
from sdk.store import RunStore

BEFORE_LOOP = (ingest.STAGE, eval_teacher.STAGE, student.STAGE, forgetting.BEFORE, synthesize.STAGE, evaluate.BEFORE)
LOOP = (pool.STAGE, label.STAGE, train.STAGE, evaluate.ITERATION, discriminate.STAGE, generate.STAGE)
AFTER_LOOP = (forgetting.AFTER, finalize.STAGE)
STAGES = BEFORE_LOOP + LOOP + AFTER_LOOP


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    student_path: Path
    status: str = "finished"


def seed_stage(seed: int, stage: str) -> int:
    """Seed python, numpy and torch for one stage from (recipe seed, stage name), so what a stage samples does
    not depend on what ran before it in the process: a resumed run samples what an uninterrupted one does."""
    import hashlib

    from transformers import set_seed

    stage_seed = int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "big") % 2**31
    set_seed(stage_seed)
    return stage_seed


class Pipeline:
    def __init__(self, recipe: Recipe, store: RunStore, changed: Optional[list[str]] = None):
        """`changed` names the recipe keys a resume changed (to name them if a finished stage read one)."""
        pack = resolve_pack(recipe.domain, recipe.pack_paths)
        self.recipe = resolve_recipe(recipe, pack)
        self.store = store
        self.ctx = RunContext(self.recipe, pack, store)
        self.changed = changed or []
        self.ran: list[str] = []  # stages run in this session
        self.current = "start"  # the stage running now, for error messages
        self.check_finished_stages()

    def check_finished_stages(self) -> None:
        """A finished stage whose recipe sections changed since would mix two recipes in one run: refuse."""
        dump = self.recipe.model_dump(mode="json")
        for name, info in self.store.manifest["stages"].items():
            found = blocking_change(info.get("recipe") or {}, dump, self.changed)
            if found:
                raise ConfigError(
                    f"{found[1]} changed, but stage {name} already ran with the old value; "
                    f"start a new run directory (distill run --run-dir NEW ...) or put the old value back"
                )

    def _stage(self, stage: Stage, k: Optional[int] = None) -> None:
        name = self.current = stage.key(self.store.layout, k)
        if self.store.is_done(name):
            log(f"[dim]skip[/dim] {name} (finished in an earlier session)")
            return
        log(f"[bold cyan]stage[/bold cyan] {name}")
        seed_stage(self.recipe.seed, name)
        start = time.time()
        outputs = (stage.run(self.ctx, k) if stage.per_iteration else stage.run(self.ctx)) or []
        self.ran.append(name)
        self.ctx.timings[name] = round(time.time() - start, 1)
        self.store.manifest["timings"] = self.ctx.timings
        sections = fingerprint(self.recipe.model_dump(mode="json"), stage.recipe)
        self.store.mark_done(name, outputs=[str(o) for o in outputs], recipe=sections)

    def _run_stages(self) -> None:
        adv = self.recipe.adversarial
        for stage in BEFORE_LOOP:
            if stage is not forgetting.BEFORE or self.ctx.forgetting_tasks():
                self._stage(stage)
        for k in range(adv.iterations):
            for stage in LOOP:
                if stage is not generate.STAGE or k < adv.iterations - 1 or adv.generate_last:
                    self._stage(stage, k)
        if self.ran:  # e.g. `distill resume --set adversarial.iterations=N+1` of a finished run: redo the ending
            for stage in AFTER_LOOP:
                self.store.mark_stale(stage.name)
        for stage in AFTER_LOOP:
            if stage is not forgetting.AFTER or self.ctx.forgetting_tasks():
                self._stage(stage)

    def stopped(self, reason: str) -> None:
        """Record why the run stopped, if the disk still lets us (a full disk may not)."""
        log(f"[bold yellow]{reason}[/bold yellow]")
        with contextlib.suppress(OSError):
            self.store.set_status("stopped", reason=reason)

    def run(self) -> RunResult:
        """Run every stage not yet finished. A budget stops the run cleanly; a signal or an OS fault (disk
        full, permissions) stops it with a one-line error; either way it can be resumed."""
        from transformers import set_seed

        quiet_libraries()
        set_seed(self.recipe.seed)
        self.store.set_status("running")
        resume = f"`distill resume {self.store.root}`"
        try:
            with graceful_stop():
                self._run_stages()
        except BudgetExhausted as exc:
            self.stopped(f"stopped: budget reached ({exc})")
            log(f"everything finished so far is kept; raise the budget and run {resume}")
            return RunResult(self.store.root, {}, self.store.layout.student, status="stopped")
        except KeyboardInterrupt:
            self.stopped(f"{stop_reason()} during stage {self.current}")
            raise Interrupted(
                f"{stop_reason()} during stage {self.current}; all finished work is kept: {resume}"
            ) from None
        except Exception as exc:
            fault = os_fault(exc)
            if fault is None:
                raise
            self.stopped(f"{fault} during stage {self.current}")
            raise SystemFault(
                f"{fault} during stage {self.current}, which was not marked done; "
                f"free space or fix the permissions, then {resume}"
            ) from None
        self.store.set_status("finished")
        return RunResult(self.store.root, self.store.read_json(self.store.layout.metrics), self.store.layout.student)
