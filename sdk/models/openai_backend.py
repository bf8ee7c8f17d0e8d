"""OpenAI-compatible chat endpoints (vLLM, TGI, Ollama, hosted APIs) through the official client.

The key is read from the environment variable named by `api_key_env` at call time; the key itself is
never stored in the spec, the config, a log or the run directory. The client retries timeouts, 429 and
5xx with exponential backoff (`max_retries`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Sequence

from sdk.config import GenerationSettings, ModelSpec
from sdk.errors import ModelError
from sdk.models.base import ChatBackend

Messages = list[dict]


@dataclass
class OpenAIChatModel(ChatBackend):
    spec: ModelSpec
    settings: GenerationSettings

    @property
    def name(self) -> str:
        return f"openai:{self.spec.model}"

    def _api_key(self) -> str:
        env = self.spec.api_key_env
        if not env:
            return "EMPTY"  # local servers (vLLM, Ollama) accept any key
        key = os.environ.get(env)
        if not key:
            raise ModelError(f"models: api_key_env names '{env}', but that environment variable is not set")
        return key

    def _client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            base_url=self.spec.base_url,
            api_key=self._api_key(),
            timeout=self.spec.timeout_s,
            max_retries=self.spec.max_retries,
        )

    def chunk_size(self, settings: GenerationSettings) -> int:
        return settings.batch_size * 4  # requests in flight at once are capped at batch_size

    def _generate_chunk(self, conversations: Sequence[Messages], settings: GenerationSettings) -> list:
        return asyncio.run(self._generate_all(list(conversations), settings))

    async def _generate_all(self, conversations: list[Messages], settings: GenerationSettings) -> list:
        client = self._client()
        limit = asyncio.Semaphore(settings.batch_size)

        async def one(messages: Messages) -> str:
            async with limit:
                reply = await client.chat.completions.create(
                    model=self.spec.model,
                    messages=messages,
                    max_tokens=settings.max_new_tokens,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                )
            return (reply.choices[0].message.content or "").strip()

        try:
            return await asyncio.gather(*(one(m) for m in conversations), return_exceptions=True)
        finally:
            await client.close()
