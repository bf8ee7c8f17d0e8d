"""The general-domain replay set and how many of its rows a stage mixes in."""

import pytest

from sdk.errors import DistilleryError
from sdk.train.replay import general_instructions, replay_count, replay_instructions


def test_shipped_set_is_large_varied_and_unique():
    rows = general_instructions()
    assert len(rows) >= 200
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["instruction"].lower() for r in rows}) == len(rows)
    assert len({r["category"] for r in rows}) >= 5
    assert all(set(r) == {"id", "instruction", "category"} and len(r["instruction"].split()) >= 3 for r in rows)


@pytest.mark.parametrize(
    "pool,fraction,expected",
    [(100, 0.0, 0), (100, 0.2, 25), (30, 0.5, 30), (10, 0.1, 1), (0, 0.3, 0), (10_000, 0.5, 210)],
)
def test_replay_count_makes_the_fraction_of_the_mix(pool, fraction, expected):
    n = replay_count(pool, fraction)
    assert n == min(expected, len(general_instructions()))
    if 0 < n < len(general_instructions()):
        assert n / (pool + n) == pytest.approx(fraction, abs=0.05)


def test_replay_instructions_are_deterministic_rows_with_provenance():
    a, b, c = replay_instructions(12, seed=3), replay_instructions(12, seed=3), replay_instructions(12, seed=4)
    assert a == b and a != c
    assert len({r["id"] for r in a}) == 12
    assert all(
        r["source"] == "replay" and r["provenance"]["stage"] == "replay" and r["id"].startswith("replay-") for r in a
    )
    with pytest.raises(DistilleryError, match="only"):
        replay_instructions(10_000, seed=0)
    with pytest.raises(DistilleryError):
        replay_count(10, 1.0)
