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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

from sdk.errors import DistilleryError
from sdk.faults import RunLock, atomic_section

MANIFEST = "manifest.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder and rename it into place; a signal waits until it is done."""
    path = Path(path)
    with atomic_section():
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


def read_json_or_none(path: Path) -> Any:
    """A cache file's JSON, or None when it is missing or damaged (the caller measures again and rewrites it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: Path, bad_lines: Optional[list[int]] = None) -> Iterator[dict]:
    """Yield one dict per line. With `bad_lines`, a line that is not JSON is skipped and its number recorded
    there (a journal killed mid-write ends in a torn line); without it, such a line is an error."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if bad_lines is None:
                    raise DistilleryError(f"{path}:{lineno}: not valid JSON") from None
                bad_lines.append(lineno)


class Journal:
    """Append-only JSONL of finished rows keyed by `id`, flushed row by row."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.done: dict[str, dict] = {}
        self.corrupt: list[int] = []  # numbers of lines that were not JSON (skipped)
        if self.path is not None and self.path.exists():
            for row in iter_jsonl(self.path, bad_lines=self.corrupt):
                if isinstance(row, dict) and "id" in row:
                    self.done[row["id"]] = row
            total = sum(1 for _ in open(self.path, "rb"))
            inner = [n for n in self.corrupt if n < total]  # a torn last line is what a kill leaves: no warning
            if inner:
                from sdk.progress import log

                log(
                    f"[yellow]journal {self.path}: skipped {len(inner)} corrupt line(s) ({', '.join(map(str, inner[:10]))}); those rows are asked again[/yellow]"
                )

    @classmethod
    def in_memory(cls) -> Journal:
        """A journal that keeps rows for this process only (nothing to resume from)."""
        return cls(None)

    def append(self, rows: Iterable[dict]) -> None:
        if self.path is None:
            self.done.update((row["id"], row) for row in rows)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_section(), open(self.path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.done[row["id"]] = row
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _Folder:
    """A folder of the run layout; each attribute below is one file in it, written by one stage."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)

    def __truediv__(self, name: str) -> Path:
        return self.dir / name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dir})"


def _file(name: str) -> property:
    return property(lambda self: self.dir / name, doc=name)


class EvalLayout(_Folder):
    """eval/: the held-out set, answered by the teacher and by the student before and after the loop."""

    teacher = _file("teacher.jsonl")  # eval_teacher
    teacher_journal = _file("teacher.partial.jsonl")
    teacher_summary = _file("teacher.json")
    teacher_logits = _file("teacher_logits")  # an endpoint teacher's top-k on its answers, when kd stores them
    student_before = _file("student_before.jsonl")  # eval_before
    referee_before = _file("referee_before.jsonl")
    before = _file("before.json")
    forgetting_before = _file("forgetting_before.json")  # forgetting_before
    forgetting = _file("forgetting.json")  # forgetting_after
    domain = _file("domain.json")  # finalize
    student_after = _file("student_after.jsonl")


class IterationLayout(_Folder):
    """iter_<k>/: one iteration of the loop."""

    def __init__(self, folder: Path, k: int):
        super().__init__(folder)
        self.k = k

    # synthesize and pool (iteration 0 only for the first three)
    synthesized = _file("synthesized.jsonl")
    synthesis_rejected = _file("synthesis_rejected.jsonl")
    synthesis_journal = _file("synthesis.partial.jsonl")
    seed_grounding = _file("seed_grounding.jsonl")
    train_pool = _file("train_pool.jsonl")
    cache_pool = _file("cache_pool.jsonl")
    # label
    teacher = _file("teacher.jsonl")
    teacher_journal = _file("teacher.partial.jsonl")
    teacher_logits = _file("teacher_logits")  # the teacher's top-k per answer token, for kd from the store
    # train
    dpo_pairs = _file("dpo_pairs.jsonl")
    dpo_pairs_dropped = _file("dpo_pairs_dropped.jsonl")  # written by the dpo objective
    # a launched training job's files (sdk/train/launch.py): its recipe, request, accelerate config and log
    train_recipe = _file("train_recipe.yaml")
    train_request = _file("train_request.json")
    accelerate_config = _file("accelerate_config.yaml")
    train_launch_log = _file("train_launch.log")
    train_metrics = _file("train_metrics.json")
    student = _file("student")
    checkpoints = _file("checkpoints")
    # eval
    eval_student = _file("eval_student.jsonl")
    eval_referee = _file("eval_referee.jsonl")
    eval = _file("eval.json")
    # discriminate
    student_answers = _file("student_answers.jsonl")
    student_answers_journal = _file("student_answers.partial.jsonl")
    referee = _file("referee.jsonl")
    hard = _file("hard.jsonl")
    easy = _file("easy.jsonl")
    discrimination = _file("discrimination.json")
    # generate
    generated = _file("generated.jsonl")
    generation_rejected = _file("generation_rejected.jsonl")
    generation = _file("generation.json")
    generation_journal = _file("generation.partial.jsonl")


def referee_file(primary: Path, kind: str, is_primary: bool = True) -> Path:
    """A second referee's verdicts sit beside the primary's: referee.jsonl -> referee.llm.jsonl."""
    return primary if is_primary else primary.with_name(f"{primary.stem}.{kind}{primary.suffix}")


def referee_journal(primary: Path, kind: str) -> Path:
    """Each referee's journal beside its verdicts: referee.jsonl -> referee.likelihood.partial.jsonl."""
    return primary.with_name(f"{primary.stem}.{kind}.partial.jsonl")


class RunLayout(_Folder):
    """Where every artifact of a run lives. Nothing else in the SDK spells a run-directory path."""

    config = _file("config.yaml")
    manifest = _file(MANIFEST)
    lock = _file(".lock")
    knowledge = _file("knowledge.json")  # ingest
    student_init = _file("student_init.json")  # student
    student_init_dir = _file("student_init")  # a healed student built outside the shared cache (heal.cache false)
    metrics = _file("metrics.json")  # finalize
    report = _file("report.html")
    student = _file("student")  # the student handed back, fixed from the start
    model_card = _file("student/README.md")  # finalize, and `distill report`: the Hugging Face model card

    def __init__(self, root: Path):
        super().__init__(root)
        self.eval = EvalLayout(self.dir / "eval")

    def budget(self, role: str) -> Path:
        return self.dir / "budget" / f"{role}.json"

    def iteration(self, k: int) -> IterationLayout:
        return IterationLayout(self.dir / f"iter_{k:02d}", k)

    def iterations(self) -> list[IterationLayout]:
        """The iteration folders that exist, in order."""
        found = sorted(p for p in self.dir.glob("iter_[0-9]*") if p.is_dir())
        return [IterationLayout(p, int(p.name.split("_")[1])) for p in found]

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.dir))


class RunStore:
    """A run directory with a manifest of finished stages."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout = RunLayout(self.root)
        self._manifest = self._load_manifest()

    def sweep_temp_files(self) -> int:
        """Remove what a killed session left half-written: temp files of atomic writes (`.<name>.<random>.tmp`)
        and temp folders (`student.tmp`, `final.tmp`). Call it with the run's lock held. Returns how many."""
        import shutil

        found = sorted(self.root.rglob("*.tmp"), key=lambda p: len(p.parts), reverse=True)
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(found)

    def lock(self) -> RunLock:
        """The run directory's exclusive lock: `with store.lock(): ...` (one writer per run)."""
        return RunLock(self.root)

    # paths ------------------------------------------------------------------------------------
    def path(self, *parts: str | Path) -> Path:
        return self.root.joinpath(*parts)

    # manifest ---------------------------------------------------------------------------------
    def _load_manifest(self) -> dict:
        path = self.path(MANIFEST)
        if not path.exists():
            return {"created_at": _now(), "stages": {}}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(manifest.get("stages"), dict):
                raise ValueError("no 'stages' mapping")
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise DistilleryError(
                f"{path} is damaged ({str(exc).splitlines()[0][:120]}), so which stages finished is unknown; "
                f"move it aside (mv {path} {path}.bad) and `distill resume {self.root}` redoes the stages, "
                "with endpoint replies served from the response cache"
            ) from None
        return manifest

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
    def write_jsonl(self, rel: str | Path, rows: Iterable[dict]) -> Path:
        path = self.path(rel)
        atomic_write_jsonl(path, rows)
        return path

    def read_jsonl(self, rel: str | Path) -> list[dict]:
        return read_jsonl(self.path(rel))

    def write_json(self, rel: str | Path, obj: Any) -> Path:
        path = self.path(rel)
        atomic_write_json(path, obj)
        return path

    def read_json(self, rel: str | Path) -> Any:
        return json.loads(self.path(rel).read_text(encoding="utf-8"))

    def journal(self, rel: str | Path) -> Journal:
        return Journal(self.path(rel))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
