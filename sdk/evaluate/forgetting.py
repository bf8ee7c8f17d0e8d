"""Forgetting check: general ability before and after training, measured with lm-eval.

The SDK ships a small general suite as local lm-eval tasks (sdk/evaluate/tasks/, YAML + JSONL):
  distillery_general_mc   4-option general knowledge and commonsense, acc_norm / acc (higher is better)
  distillery_general_ppl  perplexity on plain English paragraphs, bits_per_byte (lower is better)
  distillery_general      a group of both, each reported and gated on its own
Any task lm-eval knows (mmlu, arc_easy, hellaswag, ...) works too, when its data is in the local HF cache.

The gate compares each task's primary metric before and after training; "drop" is how much worse it got:
  higher is better (accuracy):     drop = before - after                 (absolute, in accuracy points)
  lower is better (bits per byte): drop = (after - before) / before      (relative increase, 0.05 = 5% worse)
A task fails when drop > max_drop.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from pathlib import Path
from typing import Optional

from sdk.errors import DistilleryError

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_SUITE = "distillery_general"

# The first of these that a task reports is its primary (gated) metric; otherwise its first metric.
# acc_norm (log-likelihood per byte of the option) comes first: it does not favour short options.
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mcc", "bits_per_byte", "word_perplexity")


def local_task_names() -> list[str]:
    """The SDK's own tasks and group; each YAML file is named after the task or group it defines."""
    return sorted(path.stem for path in LOCAL_TASKS_DIR.glob("*.yaml"))


def resolve_tasks(recipe_tasks: Optional[list[str]], pack_tasks: list[str], local_only: bool = False) -> list[str]:
    """The recipe's list when it names tasks, else the pack's, else the local suite (forgetting.enabled=false
    turns the check off). Duplicates are dropped, order kept. local_only refuses anything but the SDK's local
    tasks, for runs that must never reach the network."""
    chosen = recipe_tasks or pack_tasks or [LOCAL_SUITE]
    tasks = list(dict.fromkeys(chosen))
    if local_only:
        local = set(local_task_names())
        other = [t for t in tasks if t not in local]
        if other:
            raise DistilleryError(
                f"forgetting.local_only allows only the SDK's local tasks ({', '.join(sorted(local))}), not: {', '.join(other)}"
            )
    return tasks


@functools.lru_cache(maxsize=2)
def _task_manager(with_defaults: bool):
    """Indexing lm-eval's ~15k built-in task files takes seconds, so local-only runs skip it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=with_defaults)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def _quiet():
    """lm-eval, datasets and transformers log at INFO/WARNING per task and draw progress bars on stderr;
    keep only errors (logging handlers keep the real stderr, so errors still show)."""
    names = ("lm_eval", "datasets", "transformers", "accelerate")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    import lm_eval.evaluator

    # simple_evaluate records the git commit of the user's working directory by running `git describe`, whose
    # "fatal: not a git repository" goes to the terminal's stderr (a child process, past redirect_stderr); the
    # run records its own provenance, so that field is left empty instead.
    git_hash = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = git_hash
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def check_task_names(tasks: list[str]) -> None:
    """Every name is a local task or an lm-eval one (the lm-eval index is read only when a name is not local)."""
    local = set(local_task_names())
    unknown = [t for t in tasks if t not in local]
    if not unknown:
        return
    with _quiet():
        index = _task_manager(with_defaults=True).task_index
    for name in unknown:
        if name not in index:
            raise DistilleryError(
                f"forgetting task '{name}' is neither an lm-eval task nor one of the SDK's local tasks "
                f"({', '.join(sorted(local))})"
            )


def load_tasks(tasks: list[str]):
    """Build lm-eval Task/Group objects for each name, loading their data now (fails fast, one line per error).

    Returns (task_manager, {name: [Task or Group, ...]}).
    """
    if not tasks:
        raise DistilleryError("no forgetting tasks given")
    local = set(local_task_names())
    manager = _task_manager(with_defaults=not set(tasks) <= local)
    built = {}
    with _quiet():
        for name in tasks:
            if name not in manager.task_index:
                raise DistilleryError(
                    f"forgetting task '{name}' is neither an lm-eval task nor one of the SDK's local tasks "
                    f"({', '.join(sorted(local))})"
                )
            try:
                loaded = manager.load([name])
            except Exception as exc:  # datasets raises many types when data is missing offline
                raise DistilleryError(
                    f"forgetting task '{name}': its data cannot be loaded ({_first_line(exc)}); "
                    "pre-download it into the HF cache (see docs/forgetting.md)"
                ) from None
            if name in loaded["groups"]:
                built[name] = [loaded["groups"][name]]
            elif name in loaded["tasks"]:
                built[name] = [loaded["tasks"][name]]
            else:  # a tag: the tasks it names
                built[name] = list(loaded["tasks"].values())
    return manager, built


def _metrics(entry: dict) -> tuple[dict, dict]:
    """lm-eval keys results as "metric,filter" and "metric_stderr,filter"; keep the filter only when it is not "none"."""
    values, stderr = {}, {}
    for key, value in entry.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        target = stderr if metric.endswith("_stderr") else values
        metric = metric.removesuffix("_stderr")
        name = metric if filt == "none" else f"{metric},{filt}"
        target[name] = float(value) if isinstance(value, (int, float)) else None
    return values, stderr


def _summarise(results: dict, name: str, leaves: list[str]) -> dict:
    values, stderr = _metrics(results["results"][name])
    primary = next((m for m in PRIMARY_METRICS if m in values), next(iter(values)))
    higher = results.get("higher_is_better", {}).get(name, {})
    n_samples = results.get("n-samples", {})
    n = sum(n_samples[leaf]["effective"] for leaf in leaves if leaf in n_samples)
    return {
        "metrics": values,
        "primary": primary,
        "higher_is_better": bool(higher.get(primary.split(",")[0], True)),
        "n": n,
        "stderr": stderr.get(primary),
    }


def evaluate_general(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 8) -> dict:
    """Run lm-eval on an in-memory model. Returns {task: {"metrics": {name: value}, "primary": name,
    "higher_is_better": bool, "n": items, "stderr": stderr of the primary metric or None}}.

    A requested task reports its own metrics; a group or tag without an aggregate reports each of its tasks.
    Unknown tasks, or tasks whose data is not available offline, raise DistilleryError before any scoring.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager, built = load_tasks(list(tasks))
    objects = [obj for objs in built.values() for obj in objs]
    was_training = model.training
    with _quiet():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            results = simple_evaluate(
                model=lm,
                tasks=objects,
                limit=limit,
                task_manager=manager,
                bootstrap_iters=100,  # only perplexity-type stderrs are bootstrapped; accuracy has a closed form
                log_samples=False,
            )
        finally:
            model.train(was_training)

    out = {}
    for name, objs in built.items():
        if name in results["results"] and _metrics(results["results"][name])[0]:
            leaves = [
                t.task_name for obj in objs for t in (obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj])
            ]
            out[name] = _summarise(results, name, leaves)
            continue
        for obj in objs:
            for task in obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]:
                out[task.task_name] = _summarise(results, task.task_name, [task.task_name])
    return out


def _drop(before: float, after: float, higher_is_better: bool) -> float:
    """How much worse `after` is than `before` (negative = better); see the module docstring."""
    if higher_is_better:
        return before - after
    return (after - before) / before if before > 0 else after - before


def forgetting_gate(before: dict, after: dict, max_drop: float) -> dict:
    """Compare two evaluate_general results. Returns {"passed": bool, "max_drop": x, "tasks": {task: {"primary",
    "before", "after", "delta", "drop", "passed"}}, "verdict": "passed forgetting check" |
    "failed forgetting check: <task> dropped by ..."}."""
    rows, failures = {}, []
    for task, b in before.items():
        if task not in after:
            raise DistilleryError(f"forgetting task '{task}' was measured before training but not after")
        primary = b["primary"]
        b_value, a_value = b["metrics"][primary], after[task]["metrics"][primary]
        drop = _drop(b_value, a_value, b["higher_is_better"])
        passed = drop <= max_drop + 1e-9  # tolerate float noise at the boundary
        rows[task] = {
            "primary": primary,
            "higher_is_better": b["higher_is_better"],
            "before": round(b_value, 6),
            "after": round(a_value, 6),
            "delta": round(a_value - b_value, 6),
            "drop": round(drop, 6),
            "passed": passed,
        }
        if not passed:
            unit = "" if b["higher_is_better"] else " (relative increase)"
            failures.append(
                f"{task} dropped by {drop:.4f}{unit} on {primary} ({b_value:.4f} -> {a_value:.4f}), more than {max_drop}"
            )
    verdict = "passed forgetting check" if not failures else "failed forgetting check: " + "; ".join(failures)
    return {"passed": not failures, "max_drop": max_drop, "tasks": rows, "verdict": verdict}


def forgetting_record(
    before: dict,
    after: dict,
    max_drop: float,
    replay_fraction: float = 0.0,
    limit: Optional[int] = None,
    reference: Optional[dict] = None,
) -> dict:
    """The content of eval/forgetting.json: both measurements, the gate, and the replay ratio the run trained
    with, with a one-line hint relating them (runs with different train.replay_fraction can then be compared).
    `reference` is an optional evaluate_general result for scale, e.g. the teacher's; it is not gated."""
    gate = forgetting_gate(before, after, max_drop)
    worst = max((row["drop"] for row in gate["tasks"].values()), default=0.0)
    if gate["passed"]:
        hint = f"general ability held (worst drop {worst:.4f}) with replay_fraction={replay_fraction}"
    elif replay_fraction > 0:
        hint = (
            f"replay_fraction={replay_fraction} did not hold general ability (worst drop {worst:.4f}): "
            "raise train.replay_fraction, or train fewer steps or at a lower learning rate"
        )
    else:
        hint = f"no general replay in training (worst drop {worst:.4f}): try train.replay_fraction=0.1 or more"
    return {
        "tasks": list(before),
        "limit": limit,
        "replay_fraction": replay_fraction,
        "before": before,
        "after": after,
        "reference": reference,
        "gate": gate,
        "hint": hint,
    }
