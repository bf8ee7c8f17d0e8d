"""What every chat backend offers: `generate` over many conversations, with a progress bar, the
persistent response cache, a spend budget, and a callback per finished group of rows for journals.

A backend implements either `_generate_chunk` (answer a list of conversations at once) or, for
finer control, `_answer` (answer indexed conversations and `emit` results as they finish).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Optional

from sdk.config import GenerationSettings
from sdk.progress import progress_bar

Messages = list[dict]
ChunkCallback = Callable[[int, list], None]
Emit = Callable[[list], None]  # emit([(index, output), ...]) as rows finish


class Reply(str):
    """A reply's text that also carries the endpoint's per-token log-probabilities (when they were asked for).

    logprobs: one entry per generated token, as OpenAI-compatible servers return `choices[0].logprobs.content`,
    reduced to [token, logprob, bytes, [[token, logprob, bytes], ...top_logprobs]]; `token` is the token's
    text, or "token_id:<id>" from vLLM with return_tokens_as_token_ids; `bytes` may be None.
    """

    logprobs: list

    def __new__(cls, text: str, logprobs: list):
        reply = super().__new__(cls, text)
        reply.logprobs = logprobs
        return reply


def cached_value(out: str) -> str:
    """What the response cache stores for a reply: the text, or JSON with the log-probabilities too."""
    if isinstance(out, Reply):
        return json.dumps({"text": str(out), "logprobs": out.logprobs}, ensure_ascii=False, separators=(",", ":"))
    return out


def from_cache(value: str, settings: GenerationSettings) -> str:
    """A cached value back as a reply: a Reply when the request asked for log-probabilities (then the key said so)."""
    if not settings.top_logprobs:
        return value
    data = json.loads(value)
    return Reply(data["text"], data["logprobs"])


def contiguous_runs(done: list[tuple[int, object]]) -> list[tuple[int, list]]:
    """[(3, a), (1, b), (2, c), (7, d)] -> [(1, [b, c, a]), (7, [d])]: runs of consecutive indices."""
    runs: list[tuple[int, list]] = []
    for index, out in sorted(done, key=lambda pair: pair[0]):
        if runs and runs[-1][0] + len(runs[-1][1]) == index:
            runs[-1][1].append(out)
        else:
            runs.append((index, [out]))
    return runs


class ChatBackend:
    name: str
    settings: GenerationSettings
    cache = None  # an sdk.models.cache.ResponseCache, or None for no caching
    cache_provider = "local"  # provider and model name that, with the request, make a cache key
    cache_model: Optional[str] = None

    def _generate_chunk(self, conversations: Sequence[Messages], settings: GenerationSettings) -> list:
        """Answer one chunk. Returns a str per conversation, or an Exception where one failed."""
        raise NotImplementedError

    def chunk_size(self, settings: GenerationSettings) -> int:
        return settings.batch_size

    def _answer(self, items: list[tuple[int, Messages]], settings: GenerationSettings, budget, emit: Emit) -> None:
        """Answer (index, conversation) items in chunks; one budget call per conversation."""
        step = self.chunk_size(settings)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            granted = budget.reserve(len(chunk)) if budget is not None else len(chunk)
            if granted:
                outputs = self._generate_chunk([m for _, m in chunk[:granted]], settings)
                emit([(i, out) for (i, _), out in zip(chunk, outputs)])
            if granted < len(chunk):
                raise budget.error(self.name)

    # cache ------------------------------------------------------------------------------------
    def cache_params(self, settings: GenerationSettings) -> dict:
        """The sampling parameters that decide a reply (the seed only matters when sampling)."""
        params = {"temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_new_tokens}
        if settings.temperature > 0:
            params["seed"] = settings.seed
        if settings.top_logprobs:  # a reply without log-probabilities is never used where they are needed
            params["top_logprobs"] = settings.top_logprobs
        return params

    def cache_keys(self, conversations: list[Messages], settings: GenerationSettings) -> list[str]:
        from sdk.models.cache import cache_key

        params = self.cache_params(settings)
        model = self.cache_model or self.name
        keys, seen = [], {}
        for messages in conversations:
            key = cache_key(self.cache_provider, model, messages, params)
            if settings.temperature > 0:
                # When sampling, the n-th copy of one prompt in a call is its own sample.
                seen[key] = seen.get(key, -1) + 1
                key = cache_key(self.cache_provider, model, messages, dict(params, sample=seen[key]))
            keys.append(key)
        return keys

    # generate ---------------------------------------------------------------------------------
    def generate(
        self,
        conversations: Sequence[Messages],
        settings: Optional[GenerationSettings] = None,
        description: str = "generating",
        on_chunk: Optional[ChunkCallback] = None,
        return_errors: bool = False,
        budget=None,
    ) -> list:
        """Answer every conversation, in input order.

        on_chunk(start, outputs) is called as soon as rows finish, for each run of consecutive rows
        (cache hits first), so a caller can journal them. With return_errors=True a failed row comes
        back as its Exception instead of raising. `budget` (an sdk.models.budget.Budget) is charged per
        call; when it runs out, the finished rows are handed to on_chunk and BudgetExhausted is raised.
        """
        settings = settings or self.settings
        conversations = list(conversations)
        results: list = [None] * len(conversations)
        cache = self.cache
        keys = self.cache_keys(conversations, settings) if cache is not None else None
        found = cache.get_many(keys) if keys else {}
        hits = [(i, from_cache(found[k], settings)) for i, k in enumerate(keys or []) if k in found]
        todo = [(i, m) for i, m in enumerate(conversations) if not keys or keys[i] not in found]

        with progress_bar(f"{description} ({self.name})", len(conversations)) as advance:

            def emit(done: list) -> None:
                if not return_errors:
                    for _, out in done:
                        if isinstance(out, BaseException):
                            raise out
                for i, out in done:
                    results[i] = out
                    if cache is not None and isinstance(out, str) and out and keys[i] not in found:
                        cache.put(keys[i], self.cache_provider, self.cache_model or self.name, cached_value(out))
                if on_chunk is not None:
                    for start, outs in contiguous_runs(done):
                        on_chunk(start, outs)
                advance(len(done))

            try:
                if hits:
                    emit(hits)
                if todo:
                    self._answer(todo, settings, budget, emit)
            finally:
                if cache is not None:
                    cache.count(self.cache_model or self.name, len(hits), len(todo))
        return results

    def generate_journaled(
        self,
        keys: Sequence[str],
        conversations: Sequence[Messages],
        journal,
        to_row: Callable[[int, object], dict],
        description: str = "generating",
        budget=None,
    ) -> None:
        """Answer the conversations whose key is not yet in `journal` (an sdk.store.Journal).

        As rows finish, `to_row(index, output)` of each is appended to the journal (output is the
        reply, or its Exception), so a resumed caller pays only for the rest. A spent budget raises
        BudgetExhausted after the finished rows are journaled.
        """
        todo = [i for i, key in enumerate(keys) if key not in journal.done]
        if not todo:
            return

        def record(start: int, outputs: list) -> None:
            journal.append([to_row(i, out) for i, out in zip(todo[start : start + len(outputs)], outputs)])

        self.generate(
            [conversations[i] for i in todo],
            description=description,
            on_chunk=record,
            return_errors=True,
            budget=budget,
        )
