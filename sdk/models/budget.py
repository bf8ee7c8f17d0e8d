"""Spend limits for one role: calls, tokens and cost, kept in a state file so a resumed run remembers them.

One call is one request sent to an endpoint (retries included) or one local generation of one
conversation; cache hits are free. A call is reserved *before* it is sent, so max_calls is exact even
with many requests in flight. Tokens and cost are known only when a reply arrives: they are checked
before each request, so requests already in flight when a limit is crossed may still add to them.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sdk.config import BudgetSettings
from sdk.errors import BudgetExhausted
from sdk.store import atomic_write_json


class Budget:
    def __init__(self, settings: BudgetSettings | None = None, state_path: str | Path | None = None, label: str = ""):
        self.settings = settings or BudgetSettings()
        self.state_path = Path(state_path) if state_path is not None else None
        self.label = label  # e.g. the role, named in the stop message
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._lock = threading.Lock()
        if self.state_path is not None and self.state_path.exists():
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            self.calls, self.prompt_tokens, self.completion_tokens = (
                state["calls"],
                state["prompt_tokens"],
                state["completion_tokens"],
            )

    # spend ------------------------------------------------------------------------------------
    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float:
        s = self.settings
        # cost = prompt tokens * price per prompt token + completion tokens * price per completion token
        return (
            self.prompt_tokens * (s.prompt_price_per_mtok or 0.0)
            + self.completion_tokens * (s.completion_price_per_mtok or 0.0)
        ) / 1e6

    def exhausted(self) -> str | None:
        """The limit that is reached, as 'max_calls 20', or None while there is budget left."""
        s = self.settings
        if s.max_calls is not None and self.calls >= s.max_calls:
            return f"max_calls {s.max_calls}"
        if s.max_tokens is not None and self.tokens >= s.max_tokens:
            return f"max_tokens {s.max_tokens}"
        if s.max_cost is not None and self.cost >= s.max_cost:
            return f"max_cost {s.max_cost:g}"
        return None

    def reserve(self, n: int = 1) -> int:
        """Take up to n calls from the budget before sending them; returns how many may be sent (0 = none)."""
        with self._lock:
            if self.exhausted():
                return 0
            left = n if self.settings.max_calls is None else min(n, self.settings.max_calls - self.calls)
            if left > 0:
                self.calls += left
                self._save()
            return left

    def record(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Add the tokens a reply used (from the server's usage)."""
        if not (prompt_tokens or completion_tokens):
            return
        with self._lock:
            self.prompt_tokens += int(prompt_tokens)
            self.completion_tokens += int(completion_tokens)
            self._save()

    def spent(self) -> str:
        text = f"{self.calls} calls, {self.tokens} tokens"
        if self.settings.prompt_price_per_mtok is not None or self.settings.completion_price_per_mtok is not None:
            text += f", cost {self.cost:.4f}"
        return text

    def error(self, model_name: str = "") -> BudgetExhausted:
        """The one-line stop message: who, which limit, what was spent."""
        who = " / ".join(x for x in (self.label, model_name) if x) or "model"
        return BudgetExhausted(f"budget reached for {who}: {self.exhausted() or 'limit'} (spent {self.spent()})")

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
        }

    def _save(self) -> None:
        if self.state_path is not None:
            atomic_write_json(self.state_path, {**self.as_dict(), "limits": self.settings.model_dump()})
