"""OpenAI-compatible chat endpoints (vLLM, TGI, Ollama, hosted APIs) through the official async client.

Per request, in order: wait for a free slot (`concurrency` in flight), for the request and token rate
limits, take one call from the budget, send. The client's own retries are off (max_retries=0);
retries are done here so they are explicit and tested:

  429, 408, 409, 5xx, timeouts, dropped connections   retried up to max_retries times, waiting
      backoff_base_s * 2^(n-1) with jitter, or the server's Retry-After (429/503), capped at backoff_max_s
  malformed JSON, no choices, empty message            re-asked up to max_malformed_retries times
  other 4xx                                            not retried: the row fails with its reason
  401, 403, 404                                        the whole call stops with a ModelError (wrong key/URL/model)

A row that still fails comes back as a ModelError whose message is the reason; it never crashes the
stage. The key is read from the environment variable named by `api_key_env` when a call starts, and
is scrubbed from every message this module produces.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sdk.config import GenerationSettings, ModelSpec
from sdk.errors import BudgetExhausted, ModelError
from sdk.models.base import ChatBackend, Emit, Reply

Messages = list[dict]


class _Stop(Exception):
    """Ends the whole call: carries the error to raise once the requests in flight are done."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class TokenBucket:
    """A rate limit of `per_minute` units, refilled continuously, with one second's worth of burst."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        # Wait until the bucket holds the amount (or is full, for an amount larger than a burst);
        # the level may then go below zero, which delays later takers.
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def adjust(self, extra: float) -> None:
        """Charge (or refund, if negative) the difference between an estimate and the real use."""
        self._refill()
        self.level -= extra


def retry_after_seconds(headers) -> float | None:
    """Retry-After in seconds: `retry-after-ms`, `retry-after` as seconds, or as an HTTP date."""
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def run_coroutine(coro):
    """asyncio.run, also from code that already runs an event loop (a notebook): then on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class OpenAIChatModel(ChatBackend):
    spec: ModelSpec
    settings: GenerationSettings

    cache_provider = "openai"

    @property
    def name(self) -> str:
        return f"openai:{self.spec.model}"

    @property
    def cache_model(self) -> str:
        return self.spec.model

    def _api_key(self) -> str:
        env = self.spec.api_key_env
        if not env:
            return "EMPTY"  # local servers (vLLM, Ollama) accept any key
        key = os.environ.get(env)
        if not key:
            raise ModelError(f"models: api_key_env names '{env}', but that environment variable is not set")
        return key

    def _scrub(self, text: str) -> str:
        """The text with the API key's value masked."""
        env = self.spec.api_key_env
        key = os.environ.get(env) if env else None
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            base_url=self.spec.base_url, api_key=self._api_key(), timeout=self.spec.timeout_s, max_retries=0
        )

    def _limits(self) -> tuple:
        """The request and token buckets, one pair per model object, so limits hold across calls."""
        if getattr(self, "_buckets", None) is None:
            rpm, tpm = self.spec.requests_per_minute, self.spec.tokens_per_minute
            self._buckets = (TokenBucket(rpm) if rpm else None, TokenBucket(tpm) if tpm else None)
        return self._buckets

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.spec
        if retry_after is not None:
            return min(s.backoff_max_s, retry_after * random.uniform(1.0, 1.1))  # honour it, plus a little jitter
        delay = min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)  # "equal jitter": spread retries, never hammer

    # generation -------------------------------------------------------------------------------
    def _generate_chunk(self, conversations: Sequence[Messages], settings: GenerationSettings) -> list:
        results: list = [None] * len(conversations)

        def keep(done):
            for i, out in done:
                results[i] = out

        self._answer(list(enumerate(conversations)), settings, None, keep)
        return results

    def _answer(self, items: list[tuple[int, Messages]], settings: GenerationSettings, budget, emit: Emit) -> None:
        run_coroutine(self._answer_async(items, settings, budget, emit))

    async def _answer_async(self, items, settings: GenerationSettings, budget, emit: Emit) -> None:
        client = self._client()
        spec = self.spec
        limits = self._limits()
        pending = iter(items)
        stop: list[BaseException] = []

        async def worker() -> None:
            for index, messages in pending:  # workers share one iterator: each item is taken once
                if stop:
                    return
                try:
                    out = await self._ask(client, messages, settings, budget, limits)
                    emit([(index, out)])
                except _Stop as exc:
                    stop.append(exc.error)
                    return
                except asyncio.CancelledError:
                    raise
                except (
                    Exception
                ) as exc:  # emit raised (a failed row with return_errors=False, or the caller's callback)
                    stop.append(exc)
                    return

        try:
            await asyncio.gather(*(worker() for _ in range(min(spec.in_flight, len(items)))))
        finally:
            await client.close()
        if stop:
            if isinstance(stop[0], BudgetExhausted) and budget is not None:
                raise budget.error(self.name)  # the spend now, with the replies that were in flight
            raise stop[0]

    def _request(self, messages: Messages, settings: GenerationSettings) -> dict:
        kwargs = dict(
            model=self.spec.model,
            messages=messages,
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
        )
        if settings.seed is not None:
            kwargs["seed"] = settings.seed
        if settings.top_logprobs:
            kwargs.update(logprobs=True, top_logprobs=settings.top_logprobs)
            if self.spec.token_ids:
                kwargs["return_tokens_as_token_ids"] = True  # vLLM: "token_id:<id>" instead of text
        return kwargs

    async def _ask(self, client, messages: Messages, settings: GenerationSettings, budget, limits) -> str | ModelError:
        """One row: send, retry as the module docstring says; the reply text, or a ModelError with the reason."""
        import openai

        spec = self.spec
        requests, tokens = limits
        estimate = sum(len(str(m.get("content", ""))) for m in messages) / 4 + settings.max_new_tokens
        transient = malformed = 0
        while True:
            if requests is not None:
                await requests.take(1)
            if tokens is not None:
                await tokens.take(estimate)
            if budget is not None and not budget.reserve(1):
                raise _Stop(budget.error(self.name))
            retry_after = None
            try:
                # The chat completions route through the client's documented raw-request method: the body
                # is built from validated settings, so the per-request TypedDict transform of
                # `chat.completions.create` (about 1 ms of CPU each) is skipped; auth, timeouts and
                # error mapping are the client's own.
                reply = await client.post("/chat/completions", body=self._request(messages, settings), cast_to=object)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status in (401, 403):
                    raise _Stop(
                        ModelError(
                            f"{spec.base_url} refused the API key (HTTP {status}); check the variable named by api_key_env ({spec.api_key_env or 'none set'})"
                        )
                    )
                if status == 404:
                    raise _Stop(
                        ModelError(
                            f"{spec.base_url} has no model '{spec.model}' or no chat completions route (HTTP 404)"
                        )
                    )
                if not (status in (408, 409, 429) or status >= 500):
                    return ModelError(self._scrub(f"HTTP {status}: {_detail(exc)}"))
                reason, transient = f"HTTP {status}", transient + 1
                if status in (429, 503):
                    retry_after = retry_after_seconds(exc.response.headers)
            except openai.APITimeoutError:
                reason, transient = f"timed out after {spec.timeout_s:g}s", transient + 1
            except openai.APIConnectionError:
                reason, transient = "connection dropped", transient + 1
            except (ValueError, openai.APIResponseValidationError):  # a body that is not JSON
                reason, malformed = "malformed reply (not JSON)", malformed + 1
            else:
                usage = reply.get("usage") if isinstance(reply, dict) else None
                usage = usage if isinstance(usage, dict) else {}
                used = (_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
                if budget is not None:
                    budget.record(*used)
                if tokens is not None and sum(used):
                    tokens.adjust(sum(used) - estimate)
                text, reason = _content(reply)
                if reason is None and settings.top_logprobs:
                    text, reason = _with_logprobs(reply, text)
                if reason is None:
                    return text
                malformed += 1
            if transient > spec.max_retries:
                return ModelError(self._scrub(f"{reason}; gave up after {spec.max_retries} retries"))
            if malformed > spec.max_malformed_retries:
                return ModelError(self._scrub(f"{reason}; gave up after {malformed} tries"))
            await asyncio.sleep(self._backoff(max(transient, malformed), retry_after))


def _int(value) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _content(reply) -> tuple[str | None, str | None]:
    """(text, None) for a usable chat completion (parsed JSON), else (None, why not)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, "malformed reply (no choices)"
    message = choices[0].get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        return None, "malformed reply (no message content)"
    if not text.strip():
        return None, "empty reply"
    return text.strip(), None


def _with_logprobs(reply: dict, text: str) -> tuple[Reply | None, str | None]:
    """(Reply, None) with the per-token top log-probabilities of choices[0].logprobs.content, else (None, why not)."""
    logprobs = reply["choices"][0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None, "reply without logprobs (does the server return logprobs and top_logprobs?)"
    tokens = []
    try:
        for entry in content:
            top = [[t["token"], float(t["logprob"]), t.get("bytes")] for t in entry.get("top_logprobs") or []]
            tokens.append([entry["token"], float(entry["logprob"]), entry.get("bytes"), top])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, "malformed logprobs in the reply"
    return Reply(text, tokens), None


def _detail(exc) -> str:
    """The server's error message, short."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    return str(body or exc)[:300]


__all__ = ["OpenAIChatModel", "TokenBucket", "retry_after_seconds"]
