"""The Python entry points: `sdk.distill(...)` and `sdk.resume(...)`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from sdk.config import Recipe, apply_overrides, load_recipe, parse_override, validate_recipe
from sdk.errors import ConfigError
from sdk.faults import RunLock
from sdk.pipeline import Pipeline, RunResult
from sdk.stages.base import changed_keys
from sdk.store import RunLayout, RunStore, atomic_write_text


def _flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`train__epochs=2` or `train={"epochs": 2}` -> {"train.epochs": 2}."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for key, value in overrides.items():
        walk(key.replace("__", "."), value)
    return flat


def default_run_dir(domain: str, preset: str) -> Path:
    return Path("runs") / f"{domain}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def distill(
    domain: str = "medicine",
    preset: str | None = "demo",
    run_dir: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    set: list[str] | None = None,  # noqa: A002  ("--set key=value" strings, as on the CLI)
    **overrides: Any,
) -> RunResult:
    """Distill a student for `domain` and return its RunResult (run_dir, metrics, student_path).

    Overrides are recipe keys: `__` for nesting (`train__epochs=2`) or nested dicts (`train={"epochs": 2}`);
    `pack_paths=[folder, ...]` adds folders to discover packs in.
    """
    items = {".".join(parts): value for parts, value in map(parse_override, set or [])}
    items.update(_flatten_overrides(overrides))
    items["domain"] = domain
    if items.get("pack_paths"):
        items["pack_paths"] = [str(p) for p in items["pack_paths"]]
    recipe = load_recipe(preset, config, items)
    run_dir = Path(run_dir) if run_dir else default_run_dir(domain, recipe.preset)
    with RunLock(run_dir):  # one writer per run directory, for the whole run
        store = RunStore(run_dir)
        if store.manifest["stages"]:
            raise ConfigError(
                f"run directory {run_dir} already holds a run: use `distill resume {run_dir}` or another --run-dir"
            )
        pipeline = Pipeline(recipe, store)  # resolves the pack and checks every role before anything is written
        atomic_write_text(store.layout.config, pipeline.recipe.to_yaml())  # resolved: the pack's defaults merged in
        return pipeline.run()


def load_run_recipe(run_dir: str | os.PathLike) -> Recipe:
    path = RunLayout(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    return validate_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))


def resume(run_dir: str | os.PathLike, set: list[str] | None = None) -> RunResult:  # noqa: A002
    """Finish a run that was stopped: finished stages are skipped, journaled teacher calls are reused.

    `set` changes recipe keys first (`["models.teacher.budget.max_calls=500"]`), e.g. to raise a budget
    that stopped the run, or add iterations; the run's config.yaml is updated to match. A change to a
    recipe section that a finished stage depended on is refused (ConfigError naming the stage and key).
    """
    old = load_run_recipe(run_dir)
    recipe, changed = old, []
    if set:
        recipe = validate_recipe(
            apply_overrides(old.model_dump(mode="json"), set), source=f"{run_dir}/config.yaml with --set"
        )
        changed = changed_keys(old.model_dump(mode="json"), recipe.model_dump(mode="json"))
    with RunLock(run_dir):
        store = RunStore(run_dir)
        store.sweep_temp_files()  # what a killed session was writing when it died
        pipeline = Pipeline(recipe, store, changed)  # refuses a change to a section a finished stage read
        if set:
            atomic_write_text(store.layout.config, pipeline.recipe.to_yaml())
        return pipeline.run()
