from sdk.config import GenerationSettings
from sdk.curation.labeling import Teacher, label_rows
from sdk.curation.seeds import seed_pool
from sdk.models.base import ChatBackend
from sdk.packs import resolve_pack
from sdk.store import Journal


class CountingBackend(ChatBackend):
    """Canned replies; counts what it was asked. Row 'boom' fails, row 'blank' answers nothing."""

    name = "counting"

    def __init__(self):
        self.settings = GenerationSettings(batch_size=2)
        self.asked: list[str] = []

    def _generate_chunk(self, conversations, settings):
        out = []
        for conv in conversations:
            q = conv[-1]["content"]
            self.asked.append(q)
            out.append(
                RuntimeError("HTTP 500 after retries") if q == "boom" else "" if q == "blank" else f"answer to {q}"
            )
        return out


def rows(*qs):
    return [{"id": f"r{i}", "instruction": q, "provenance": {"stage": "seed"}} for i, q in enumerate(qs)]


def test_failed_rows_are_kept_with_their_reason(tmp_path):
    out = label_rows(
        rows("a", "boom", "blank", "d"), Teacher(CountingBackend(), "t", "sys"), Journal(tmp_path / "j.jsonl")
    )
    assert [r["status"] for r in out] == ["ok", "failed", "failed", "ok"]
    assert out[1]["error"] == "RuntimeError: HTTP 500 after retries" and out[1]["answer"] is None
    assert out[2]["error"] == "empty answer"
    assert out[0]["answer"] == "answer to a" and out[0]["provenance"] == {
        "stage": "seed",
        "labeled_by": "t",
        "teacher_saw_passage": False,
    }


def test_journaled_rows_are_not_asked_again(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    first = CountingBackend()
    label_rows(rows("a", "b"), Teacher(first, "t", "sys"), journal)
    second = CountingBackend()
    out = label_rows(rows("a", "b", "c", "d"), Teacher(second, "t", "sys"), Journal(tmp_path / "j.jsonl"))
    assert second.asked == ["c", "d"]
    assert [r["answer"] for r in out] == ["answer to a", "answer to b", "answer to c", "answer to d"]


def test_seed_cap_spreads_over_subareas():
    pack = resolve_pack("medicine")
    pool = seed_pool(pack, max_seeds=10, seed=0)
    assert len(pool) == 10
    assert len({r["subarea"] for r in pool}) == 10  # medicine has ten sub-areas
    assert pool == seed_pool(pack, max_seeds=10, seed=0)  # deterministic
    assert all(r["provenance"]["stage"] == "seed" for r in pool)
    assert len(seed_pool(pack)) == len(pack.seeds())
