"""One writer per run, OS faults and damaged stores as one-line errors, signals, role checks before compute."""

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdk.config import load_recipe
from sdk.errors import DistilleryError, RunLocked, SystemFault
from sdk.faults import RunLock, os_fault
from sdk.models.cache import ResponseCache
from sdk.pipeline import Pipeline
from sdk.store import Journal, RunStore
from tests.conftest import TINY_PACKS, distill_cmd
from tests.train_helpers import tiny_model_dir

TINY = ["--domain", "tiny", "--pack-path", str(TINY_PACKS), "--preset", "smoke"]


def _one_line_error(proc) -> str:
    """The run's log may precede it, but the error itself is one line, and there is no traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def _cheap_run(student_dir: Path) -> list[str]:
    """The tiny pack with a tiny random student: every stage, in about a minute."""
    sets = [
        f"models.student.name_or_path={student_dir}",
        "models.student.provider=hf",
        "heal.steps=0",
        "adversarial.iterations=1",
        "forgetting.enabled=false",
        "data.max_eval=3",
        "data.max_seeds=4",
        "curation.passages=2",
    ]
    return TINY + [a for s in sets for a in ("--set", s)]


# the run-directory lock --------------------------------------------------------------------------
def test_a_second_process_is_refused_in_one_line_while_the_first_holds_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        load_recipe("smoke", overrides={"domain": "tiny", "pack_paths": [str(TINY_PACKS)]}).to_yaml()
    )
    with RunLock(run_dir):
        start = time.time()
        proc = subprocess.run(distill_cmd() + ["resume", str(run_dir)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and time.time() - start < 60
        err = _one_line_error(proc)
        assert f"is in use by process {os.getpid()}" in err and "since" in err
        with pytest.raises(RunLocked):
            RunLock(run_dir).acquire()  # another open file description: refused in this process too


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    code = f"from sdk.faults import RunLock; RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"process {holder.pid} on"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    RunLock(tmp_path).acquire().release()  # the OS dropped the lock with its process


# operating-system faults ---------------------------------------------------------------------------
def test_os_fault_finds_the_cause_in_library_errors():
    assert (
        os_fault(OSError(errno.ENOSPC, "No space left on device", "/run/x.json"))
        == "no space left on device at /run/x.json"
    )
    assert os_fault(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    wrapped = RuntimeError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )
    assert os_fault(wrapped).startswith("no space left on device")
    try:
        try:
            raise OSError(errno.EACCES, "Permission denied", "/ckpt")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert os_fault(outer) == "permission denied at /ckpt"
    assert os_fault(ValueError("a bug")) is None and os_fault(OSError(errno.ENOENT, "missing")) is None


def test_a_disk_full_stage_stops_the_run_with_one_line_and_is_not_marked_done(tmp_path, monkeypatch):
    from sdk.stages import ingest

    recipe = load_recipe(
        "smoke", overrides={"domain": "tiny", "pack_paths": [str(TINY_PACKS)], "forgetting.enabled": False}
    )
    store = RunStore(tmp_path / "run")

    def full(ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.layout.knowledge))

    monkeypatch.setattr("sdk.pipeline.BEFORE_LOOP", (ingest.STAGE.__class__("ingest", full, writes=("knowledge",)),))
    with pytest.raises(SystemFault) as caught:
        Pipeline(recipe, store).run()
    message = str(caught.value)
    assert "\n" not in message and "no space left on device at" in message and "during stage ingest" in message
    assert f"distill resume {store.root}" in message and "not marked done" in message
    manifest = json.loads(store.layout.manifest.read_text())
    assert (
        manifest["status"] == "stopped" and "ingest" not in manifest["stages"] and "no space left" in manifest["reason"]
    )


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_real_full_disk_then_resume_after_freeing_space(tmp_path):
    """A run directory on a 3 MB tmpfs: one line, exit 2, the stage not done; with more space, resume finishes."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "3m"):
        pytest.skip("this machine does not let the test mount a tmpfs (the in-process disk-full test still runs)")
    try:
        student = tiny_model_dir(tmp_path / "student", layers=2)
        run_dir = mount / "run"
        proc = subprocess.run(
            distill_cmd() + ["run", *_cheap_run(student), "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        err = _one_line_error(proc)
        assert "no space left on device" in err and "was not marked done" in err and f"distill resume {run_dir}" in err
        manifest = json.loads((run_dir / "manifest.json").read_text())
        stage = err.split("during stage ")[1].split(",")[0]
        assert manifest["status"] == "stopped" and stage not in manifest["stages"]
        assert not list(run_dir.rglob("checkpoint-*/trainer_state.json.tmp"))

        subprocess.run(["mount", "-o", "remount,size=512m", str(mount)], check=True)  # space freed
        done = subprocess.run(distill_cmd() + ["resume", str(run_dir)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        after = json.loads((run_dir / "manifest.json").read_text())
        assert after["status"] == "finished" and stage in after["stages"]
        for name, info in manifest["stages"].items():  # what finished before the fault was not redone
            assert after["stages"][name]["finished_at"] == info["finished_at"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# damaged stores ---------------------------------------------------------------------------------------
def test_a_corrupt_response_cache_is_moved_aside_and_replaced(tmp_path):
    path = tmp_path / "responses.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    cache = ResponseCache(path)
    assert cache.stats()["entries"] == 0
    cache.put("k", "openai", "m", "reply")
    assert cache.get_many(["k"]) == {"k": "reply"}
    moved = list(tmp_path.glob("responses.sqlite.corrupt-*"))
    assert moved and moved[0].read_bytes().startswith(b"this is not a database")
    sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()  # the fresh one is a database

    path.write_bytes(b"garbage again" * 50)
    env = dict(os.environ, DISTILLERY_RESPONSE_CACHE=str(path))
    proc = subprocess.run(distill_cmd() + ["cache", "stats"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_a_journal_with_a_corrupt_middle_line_keeps_the_rest_and_names_the_line(tmp_path, capsys):
    path = tmp_path / "teacher.partial.jsonl"
    path.write_text('{"id": "a", "answer": "1"}\n{"id": "b", "ans\n{"id": "c", "answer": "3"}\n{"id": "d", "ans')
    journal = Journal(path)
    assert set(journal.done) == {"a", "c"} and journal.corrupt == [2, 4]
    out = capsys.readouterr()
    assert (
        "teacher.partial.jsonl" in out.out + out.err and "(2)" in out.out + out.err
    )  # line 2 named; the torn tail is not


def test_a_damaged_manifest_is_one_line_that_says_how_to_recover(tmp_path):
    (tmp_path / "manifest.json").write_text('{"stages": {"ingest": ')
    with pytest.raises(DistilleryError) as caught:
        RunStore(tmp_path)
    message = str(caught.value)
    assert (
        "\n" not in message
        and "manifest.json is damaged" in message
        and "distill resume" in message
        and "mv " in message
    )


# role checks before any compute ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            {
                "models.teacher.provider": "openai",
                "models.teacher.base_url": "http://127.0.0.1:9/v1",
                "models.teacher.model": "t",
            },
            "models.student is pruned from models.teacher",
        ),
        (
            {
                "models.teacher.provider": "openai",
                "models.teacher.base_url": "http://127.0.0.1:9/v1",
                "models.teacher.model": "t",
                "models.student.base": "generator",
                "train.stages": ["kd"],
            },
            "white-box KD",
        ),
        ({"forgetting.tasks": ["no_such_task_anywhere"]}, "no_such_task_anywhere"),
        (
            {
                "adversarial.referee": "likelihood",
                "models.teacher.provider": "openai",
                "models.teacher.base_url": "http://127.0.0.1:9/v1",
                "models.teacher.model": "t",
                "models.student.base": "generator",
            },
            "referee",
        ),
        (
            {
                "train.stages": ["sft", "rlaif"],
                "models.teacher.provider": "openai",
                "models.teacher.base_url": "http://127.0.0.1:9/v1",
                "models.teacher.model": "t",
                "models.student.base": "generator",
            },
            "rlaif.*has no /tokenize route.*train.stages \\[sft\\] or \\[sft, dpo\\]",
        ),
    ],
)
def test_every_role_check_runs_before_any_compute(tmp_path, overrides, needle):
    recipe = load_recipe("smoke", overrides={"domain": "tiny", "pack_paths": [str(TINY_PACKS)], **overrides})
    store = RunStore(tmp_path / "run")
    with pytest.raises(DistilleryError, match=needle):
        Pipeline(recipe, store)
    assert not store.layout.knowledge.exists() and not store.layout.manifest.exists()


def test_endpoint_teacher_with_a_pruned_student_is_refused_within_seconds(tmp_path):
    sets = ["models.teacher.provider=openai", "models.teacher.base_url=http://127.0.0.1:9/v1", "models.teacher.model=t"]
    start = time.time()
    proc = subprocess.run(
        distill_cmd() + ["run", *TINY, "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and time.time() - start < 45
    assert "pruned from models.teacher" in _one_line_error(proc)
    assert not (tmp_path / "run" / "knowledge.json").exists()


# signals ---------------------------------------------------------------------------------------------
def test_sigterm_marks_the_run_stopped_and_prints_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    student = tiny_model_dir(tmp_path / "student", layers=2)
    proc = subprocess.Popen(
        distill_cmd() + ["run", *_cheap_run(student), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600

    def ingested() -> bool:  # the manifest lists ingest: eval_teacher (loading the teacher, answering) is under way
        try:
            return "ingest" in json.loads((run_dir / "manifest.json").read_text())["stages"]
        except (OSError, ValueError, KeyError):
            return False

    while time.time() < deadline and not ingested() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in out + err and "stopped by SIGTERM" in err and f"distill resume {run_dir}" in err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["reason"].startswith("stopped by SIGTERM during stage")
    assert not list(run_dir.rglob("*.tmp"))  # no half-written file


def test_a_resume_sweeps_what_a_killed_session_was_writing(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "budget").mkdir()
    (tmp_path / "budget" / ".teacher.json.k2j3.tmp").write_text("{")
    (tmp_path / "iter_00" / "checkpoints" / "sft" / "final.tmp").mkdir(parents=True)
    (tmp_path / "iter_00" / "checkpoints" / "sft" / "final.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "iter_00" / "teacher.jsonl").write_text("{}\n")
    assert store.sweep_temp_files() == 2  # the temp file and the temp folder (with what it held)
    assert not list(tmp_path.rglob("*.tmp")) and (tmp_path / "iter_00" / "teacher.jsonl").is_file()


def test_a_read_only_run_directory_is_one_line(tmp_path):
    """A run directory on a read-only filesystem: refused in one line at the first write, exit status 2."""
    mount = tmp_path / "ro"
    if not _mount_tmpfs(mount, "1m"):
        pytest.skip("this machine does not let the test mount a tmpfs")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        proc = subprocess.run(
            distill_cmd() + ["run", *TINY, "--run-dir", str(mount / "run")], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "read-only file system" in _one_line_error(proc)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
