"""`adversarial.feedback`: generation with the referee's hard/easy split (Lion) or without it (the ablation).

The generator is a canned fake: these tests check which parents each prompt gets, not what a model writes.
"""

import pytest

from sdk.adversarial.generation import Parents, generate_instructions, parent_pools
from sdk.config import GenerationSettings, load_recipe
from sdk.errors import ConfigError
from sdk.models.base import ChatBackend
from sdk.packs import resolve_pack
from sdk.store import Journal
from tests.conftest import TINY_PACKS
from tests.test_adversarial import DISTINCT, EASY, HARD, _rows
from tests.test_adversarial import _plan as adversarial_plan


class CannedGenerator(ChatBackend):
    """Replies with the next of a list of distinct instructions; keeps every prompt it was asked."""

    name = "canned"

    def __init__(self, replies, offset=0):
        self.replies, self.offset = replies, offset
        self.settings = GenerationSettings(batch_size=4)
        self.prompts = []

    def _generate_chunk(self, conversations, settings):
        out = []
        for m in conversations:
            self.prompts.append(m[-1]["content"])
            out.append(self.replies[(self.offset + len(self.prompts) - 1) % len(self.replies)])
        return out


# in the cache pool but in neither split: not sampled for refereeing, no teacher answer, or an unparsed verdict
NEITHER = _rows(
    "n",
    [
        "Describe the stages of wound healing after a small cut.",
        "List the side effects of long-term oral corticosteroids.",
        "What is the normal resting heart rate of a healthy adult?",
        "How is iron-deficiency anaemia treated in pregnancy?",
    ],
)
CACHE = HARD + EASY + NEITHER
NEW = DISTINCT + [
    "Plan the follow-up of a child after a first febrile seizure.",
    "Which vaccines should an adult with no spleen receive?",
]


@pytest.fixture(scope="module")
def pack():
    return resolve_pack("tiny", [TINY_PACKS])


def _plan(feedback, **kw):
    """test_adversarial's plan, with 16 attempts for 16 instructions and the feedback knob."""
    return adversarial_plan(**{"n_new": 16, "max_attempts": 16, "feedback": feedback, **kw})


def _generate(pack, feedback, generator, journal=None):
    """As the pipeline's generate stage does it: parent pools by the feedback knob, then generation."""
    hard, easy = parent_pools(feedback, HARD, EASY, CACHE)
    return generate_instructions(
        pack, generator, Parents(hard, easy, CACHE), _plan(feedback, generator_name="canned"), journal=journal
    )


def _prompted(generator, template):
    """The instructions of the parents shown through `template` ("HARD" or "EASY")."""
    shown = [p for p in generator.prompts if f"was {template} for the student" in p]
    return [r["instruction"] for r in CACHE if any(r["instruction"] in p for p in shown)], len(shown)


def test_without_feedback_parents_come_from_the_whole_cache_pool(pack):
    generator = CannedGenerator(NEW)
    out = _generate(pack, "none", generator)
    rows = out.kept + out.rejected
    parent_ids = {r["parent_id"] for r in rows}
    assert out.stats["feedback"] == "none" and out.stats["attempts"] == 16 == len(generator.prompts)
    assert parent_ids <= {r["id"] for r in CACHE}
    assert parent_ids & {r["id"] for r in NEITHER}, "rows that were neither hard nor easy are parents too"
    # each template draws from the whole pool, ignoring the split
    by_template = {side: {r["parent_id"] for r in rows if r["source"] == side} for side in ("hard", "easy")}
    assert by_template["hard"] - {r["id"] for r in HARD} and by_template["easy"] - {r["id"] for r in EASY}
    hard_shown, n_hard = _prompted(generator, "HARD")
    easy_shown, n_easy = _prompted(generator, "EASY")
    assert n_hard == n_easy == 8  # hard_share 0.5: half of the attempts through each template
    assert set(hard_shown) - {r["instruction"] for r in HARD} and set(easy_shown) - {r["instruction"] for r in EASY}
    # the same filters: a reply that copies a cache-pool instruction is still rejected
    copier = CannedGenerator([EASY[0]["instruction"]])
    copied = _generate(pack, "none", copier)
    assert copied.kept == [] and copied.stats["rejected_by_reason"] == {"rouge": 16}


def test_with_feedback_parents_come_only_from_the_split(pack):
    generator = CannedGenerator(NEW)
    out = _generate(pack, "referee", generator)
    rows = out.kept + out.rejected
    assert out.stats["feedback"] == "referee" and out.stats["attempts"] == 16
    assert {r["parent_id"] for r in rows if r["source"] == "hard"} <= {r["id"] for r in HARD}
    assert {r["parent_id"] for r in rows if r["source"] == "easy"} <= {r["id"] for r in EASY}
    hard_shown, n_hard = _prompted(generator, "HARD")
    easy_shown, n_easy = _prompted(generator, "EASY")
    assert n_hard == n_easy == 8
    assert set(hard_shown) <= {r["instruction"] for r in HARD} and set(easy_shown) <= {r["instruction"] for r in EASY}


def test_without_feedback_a_resumed_stage_replays_the_same_parents(pack, tmp_path):
    first = CannedGenerator(NEW)
    path = tmp_path / "generation.partial.jsonl"
    full = _generate(pack, "none", first, journal=Journal(path))
    path.write_text("\n".join(path.read_text().splitlines()[:5]) + "\n")  # killed after five replies
    second = CannedGenerator(NEW, offset=5)  # the replies the remaining attempts got the first time
    resumed = _generate(pack, "none", second, journal=Journal(path))
    assert len(second.prompts) == len(first.prompts) - 5 and second.prompts == first.prompts[5:]
    assert [(r["id"], r["instruction"], r["parent_id"]) for r in resumed.kept] == [
        (r["id"], r["instruction"], r["parent_id"]) for r in full.kept
    ]


def test_feedback_knob_is_validated():
    assert load_recipe("smoke").adversarial.feedback == "referee"
    assert load_recipe("smoke", overrides=["adversarial.feedback=none"]).adversarial.feedback == "none"
    with pytest.raises(ConfigError) as err:
        load_recipe("smoke", overrides=["adversarial.feedback=random"])
    assert "adversarial.feedback" in str(err.value)
    with pytest.raises(ValueError, match="feedback must be"):
        parent_pools("random", HARD, EASY, CACHE)
