"""The run directory: everything needed to audit a run and to resume it.

    config.yaml  manifest.json  metrics.json  report.html
    iter_00/ train_pool.jsonl teacher.jsonl ...
    student/     eval/ domain.json ...

Every artifact is written to a temp file in the same folder and renamed into place, so a kill never
leaves half a file. Expensive per-row work (teacher calls) is also appended to a `*.partial.jsonl`
journal as it finishes, so a resumed run pays only for rows it has not seen yet.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: Path, tolerate_torn_tail: bool = False) -> Iterator[dict]:
    """Yield one dict per line. A journal killed mid-write may end in a torn line: skip it."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if tolerate_torn_tail:
                    continue
                raise ValueError(f"{path}:{lineno}: not valid JSON") from None


class Journal:
    """Append-only JSONL of finished rows keyed by `id`, flushed row by row."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.done: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            for row in iter_jsonl(self.path, tolerate_torn_tail=True):
                self.done[row["id"]] = row

    @classmethod
    def in_memory(cls) -> "Journal":
        """A journal that keeps rows for this process only (nothing to resume from)."""
        return cls(None)

    def append(self, rows: Iterable[dict]) -> None:
        if self.path is None:
            self.done.update((row["id"], row) for row in rows)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.done[row["id"]] = row
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class RunStore:
    """A run directory with a manifest of finished stages."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._manifest = self._load_manifest()

    # paths ------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def iter_dir(self, iteration: int) -> Path:
        return self.path(f"iter_{iteration:02d}")

    # manifest ---------------------------------------------------------------------------------
    def _load_manifest(self) -> dict:
        path = self.path(MANIFEST)
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        return {"created_at": _now(), "stages": {}}

    @property
    def manifest(self) -> dict:
        return self._manifest

    def is_done(self, stage: str) -> bool:
        return stage in self._manifest["stages"]

    def stage_info(self, stage: str) -> dict:
        return self._manifest["stages"].get(stage, {})

    def mark_done(self, stage: str, outputs: list[str] | None = None, **info: Any) -> None:
        rel = [str(Path(o).relative_to(self.root)) if Path(o).is_absolute() else str(o) for o in outputs or []]
        self._manifest["stages"][stage] = {"finished_at": _now(), "outputs": rel, **info}
        atomic_write_json(self.path(MANIFEST), self._manifest)

    def mark_stale(self, stage: str) -> None:
        """Forget that a stage finished, so the next run of the pipeline does it again."""
        if self._manifest["stages"].pop(stage, None) is not None:
            atomic_write_json(self.path(MANIFEST), self._manifest)

    def set_status(self, status: str, **info: Any) -> None:
        self._manifest.update(status=status, updated_at=_now(), **info)
        atomic_write_json(self.path(MANIFEST), self._manifest)

    # artifacts --------------------------------------------------------------------------------
    def write_jsonl(self, rel: str, rows: Iterable[dict]) -> Path:
        path = self.path(rel)
        atomic_write_jsonl(path, rows)
        return path

    def read_jsonl(self, rel: str) -> list[dict]:
        return read_jsonl(self.path(rel))

    def write_json(self, rel: str, obj: Any) -> Path:
        path = self.path(rel)
        atomic_write_json(path, obj)
        return path

    def read_json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text(encoding="utf-8"))

    def journal(self, rel: str) -> Journal:
        return Journal(self.path(rel))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
