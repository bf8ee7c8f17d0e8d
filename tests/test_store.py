import json
import os

from sdk.store import Journal, RunStore, atomic_write_jsonl, read_jsonl


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "rows.jsonl"
    atomic_write_jsonl(path, [{"id": "1"}, {"id": "2"}])
    assert read_jsonl(path) == [{"id": "1"}, {"id": "2"}]
    assert os.listdir(path.parent) == ["rows.jsonl"]


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    atomic_write_jsonl(path, [{"id": "old"}])

    def rows():
        yield {"id": "new"}
        raise RuntimeError("killed mid-way")

    try:
        atomic_write_jsonl(path, rows())
    except RuntimeError:
        pass
    assert read_jsonl(path) == [{"id": "old"}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_journal_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append([{"id": "a", "answer": "x"}, {"id": "b", "answer": "y"}])
    with open(path, "a") as fh:
        fh.write('{"id": "c", "ans')  # a kill in the middle of a write
    again = Journal(path)
    assert set(again.done) == {"a", "b"}


def test_manifest_records_stages(tmp_path):
    store = RunStore(tmp_path)
    assert not store.is_done("label")
    store.mark_done("label", outputs=[tmp_path / "iter_00" / "teacher.jsonl"])
    reopened = RunStore(tmp_path)
    assert reopened.is_done("label")
    assert reopened.stage_info("label")["outputs"] == ["iter_00/teacher.jsonl"]
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["label"]["finished_at"]
