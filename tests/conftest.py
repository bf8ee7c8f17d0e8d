import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
TINY_PACKS = FIXTURES / "packs"


@pytest.fixture(autouse=True)
def private_response_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own response cache, so a reply cached by one test never answers another."""
    monkeypatch.setenv("DISTILLERY_RESPONSE_CACHE", str(tmp_path_factory.mktemp("cache") / "responses.sqlite"))


@pytest.fixture(scope="session")
def tiny_packs() -> Path:
    return TINY_PACKS


def distill_cmd() -> list[str]:
    """The console script from the same environment as the tests."""
    return [str(Path(sys.executable).parent / "distill")]
