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
stage.

`loglik` scores answers under the endpoint's model (the likelihood referee, the RLAIF reward) the way
vLLM offers it: the conversation and the answer are tokenized by the server's free /tokenize route, and
one /v1/completions call per answer sends those token ids with `echo: true, logprobs: 1, max_tokens: 1`,
so the reply carries the log-probability of every prompt token (`choices[0].logprobs.token_logprobs`, or
vLLM's `prompt_logprobs`). Those calls go through the same slots, limits, budget, retries and response
cache as chat completions. A server without /tokenize (OpenAI, most hosted APIs) cannot do this and is
refused before anything is paid for. A /tokenize call that fails is not retried: that answer is left
unscored, with the reason.

The key is read from the environment variable named by `api_key_env` when a call starts, and is
scrubbed from every message this module produces.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sdk.config import GenerationSettings, ModelSpec
from sdk.errors import BudgetExhausted, ConfigError, ModelError
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
        limits = self._limits()

        async def ask(client, messages):
            return await self._ask(client, messages, settings, budget, limits)

        run_coroutine(self._run_async(items, ask, budget, emit))

    async def _run_async(self, items, ask, budget, emit: Emit) -> None:
        """Run `ask(client, payload)` for every (index, payload), `in_flight` at a time, emitting as rows finish."""
        client = self._client()
        spec = self.spec
        pending = iter(items)
        stop: list[BaseException] = []

        async def worker() -> None:
            for index, payload in pending:  # workers share one iterator: each item is taken once
                if stop:
                    return
                try:
                    out = await ask(client, payload)
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
        """One chat completion: the reply text (a Reply with its logprobs when asked for), or a ModelError."""

        def parse(reply):
            text, reason = _content(reply)
            if reason is None and settings.top_logprobs:
                text, reason = _with_logprobs(reply, text)
            return text, reason

        estimate = sum(len(str(m.get("content", ""))) for m in messages) / 4 + settings.max_new_tokens
        body = self._request(messages, settings)
        return await self._send(client, "/chat/completions", body, parse, estimate, budget, limits)

    async def _send(self, client, route: str, body: dict, parse, estimate: float, budget, limits):
        """One request: send, retry as the module docstring says; parse(reply) -> (value, None) or (None, why
        not). Returns the value, or a ModelError with the reason."""
        import openai

        spec = self.spec
        requests, tokens = limits
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
                reply = await client.post(route, body=body, cast_to=object)
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
                        ModelError(f"{spec.base_url} has no model '{spec.model}' or no {route} route (HTTP 404)")
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
                value, reason = parse(reply)
                if reason is None:
                    return value
                malformed += 1
            if transient > spec.max_retries:
                return ModelError(self._scrub(f"{reason}; gave up after {spec.max_retries} retries"))
            if malformed > spec.max_malformed_retries:
                return ModelError(self._scrub(f"{reason}; gave up after {malformed} tries"))
            await asyncio.sleep(self._backoff(max(transient, malformed), retry_after))

    # log-likelihoods (vLLM /tokenize + /v1/completions with echo) ------------------------------
    def server_root(self) -> str:
        """The server's root URL, where vLLM serves /tokenize (base_url without its /v1)."""
        root = self.spec.base_url.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root

    def _headers(self) -> dict:
        env = self.spec.api_key_env
        key = os.environ.get(env) if env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def tokenize(self, body: dict) -> list[int] | None:
        """Token ids from the server's /tokenize route (vLLM; free, not billed), or None where it has none."""
        import httpx

        try:
            reply = httpx.post(
                f"{self.server_root()}/tokenize",
                json=dict(body, model=self.spec.model),
                headers=self._headers(),
                timeout=self.spec.timeout_s,
            )
            tokens = reply.json().get("tokens") if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return tokens if isinstance(tokens, list) else None

    def check_loglik(self, purpose: str, alternative: str = "use the LLM referee (adversarial.referee: llm)") -> None:
        """Refuse, before anything is paid for, a server that cannot score answers (no /tokenize route)."""
        probe = [{"role": "user", "content": "Distillery checks that this server can score answers."}]
        if self.tokenize({"messages": probe, "add_generation_prompt": True}) is None:
            raise ConfigError(
                f"{purpose} needs the teacher's log-probabilities of given answers, which an endpoint offers only as "
                f"vLLM does (/tokenize and /v1/completions with echo and logprobs); {self.spec.base_url} has no "
                f"/tokenize route: {alternative}, or a local teacher"
            )

    def loglik(
        self, conversations: Sequence[Messages], answers: Sequence[str], budget=None, description: str = "scoring"
    ) -> list[float | None]:
        """Mean per-token log-likelihood of each answer given its conversation, under the endpoint's model:
        LocalChatModel.loglik's figure, (1/|a|) * sum_t log p(a_t | prompt, a_<t), from the prompt log-probs that
        a completions call with echo returns (see the module docstring). An empty answer has no score (None);
        an answer the server could not score after the retries is None too, with the reason logged."""
        from sdk.models.cache import cache_key
        from sdk.progress import log, progress_bar

        answers = [a.strip() for a in answers]
        results: list[float | None] = [None] * len(answers)
        keys = [
            cache_key(
                self.cache_provider, self.cache_model, list(c) + [{"role": "assistant", "content": a}], {"loglik": 1}
            )
            for c, a in zip(conversations, answers)
        ]
        cache = self.cache
        found = cache.get_many([k for k, a in zip(keys, answers) if a]) if cache is not None else {}
        todo = []
        for i, (key, answer) in enumerate(zip(keys, answers)):
            if key in found:
                results[i] = json.loads(found[key])
            elif answer:
                todo.append((i, (conversations[i], answer)))
        failed: list[str] = []
        limits = self._limits()

        async def ask(client, payload):
            messages, answer = payload
            # /tokenize is free and fast; on a thread, so the event loop keeps the other requests moving
            prompt = await asyncio.to_thread(self.tokenize, {"messages": list(messages), "add_generation_prompt": True})
            tokens = await asyncio.to_thread(self.tokenize, {"prompt": answer, "add_special_tokens": False})
            if prompt is None or tokens is None:
                return ModelError(f"{self.server_root()}/tokenize did not answer")
            body = {
                "model": self.spec.model,
                "prompt": prompt + tokens,
                "echo": True,
                "logprobs": 1,
                "max_tokens": 1,
                "temperature": 0.0,
            }
            return await self._send(
                client,
                "/completions",
                body,
                lambda reply: _echo_loglik(reply, prompt, tokens),
                len(body["prompt"]),
                budget,
                limits,
            )

        with progress_bar(f"{description} ({self.name}, log-likelihood)", len(answers)) as advance:
            advance(len(answers) - len(todo))

            def emit(done: list) -> None:
                for i, out in done:
                    if isinstance(out, BaseException):
                        failed.append(str(out))
                        continue
                    results[i] = out
                    if cache is not None:
                        cache.put(keys[i], self.cache_provider, self.cache_model, json.dumps(out))
                advance(len(done))

            if todo:
                run_coroutine(self._run_async(todo, ask, budget, emit))
        if cache is not None:
            cache.count(self.cache_model, len(found), len(todo))
        if failed:
            log(f"{self.name}: {len(failed)} of {len(todo)} answers could not be scored (first reason: {failed[0]})")
        return results


def _echo_loglik(reply, prompt: list[int], answer: list[int]) -> tuple[float | None, str | None]:
    """The answer tokens' mean log-prob from an echoed completion: (value, None), else (None, why not)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, "malformed reply (no choices)"
    choice = choices[0]
    n, span = len(prompt) + len(answer), range(len(prompt), len(prompt) + len(answer))
    values = None
    if isinstance(choice.get("prompt_logprobs"), list):  # vLLM: [None, {"<id>": {"logprob": ...}, ...}, ...]
        entries = choice["prompt_logprobs"]
        try:
            ids = prompt + answer
            values = [float(entries[t][str(ids[t])]["logprob"]) for t in span]
        except (IndexError, KeyError, TypeError, ValueError):
            values = None
    if values is None:
        logprobs = choice.get("logprobs")
        token_logprobs = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
        if not isinstance(token_logprobs, list) or len(token_logprobs) < n:
            return None, "reply without the prompt's log-probabilities (does the server support echo with logprobs?)"
        try:
            values = [float(token_logprobs[t]) for t in span]
        except (TypeError, ValueError):
            return None, "malformed prompt log-probabilities in the reply"
    if not all(math.isfinite(v) and v <= 1e-6 for v in values):
        return None, "malformed prompt log-probabilities in the reply (not finite, or above 0)"
    return sum(values) / len(values), None


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
